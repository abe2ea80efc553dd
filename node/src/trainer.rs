//! The training thread: local training runs on a dedicated OS thread, never on the async
//! runtime, and talks to the event loop over bounded channels.
//!
//! The learner is built inside the thread (libtorch objects stay on the thread that made them).
//! Jobs and results travel over capacity-1 tokio channels, which the async side awaits and the
//! thread uses blocking; so at most one round is queued and the event loop never blocks on
//! training. Dropping the [`Trainer`] closes the job channel and the thread ends after its
//! current job.

use std::collections::BTreeMap;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::learner::{Error, Learner};

/// A request to train one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The protocol round.
    pub round: u64,
    /// Parameters to start from.
    pub params: Vec<f32>,
    /// Optimizer steps.
    pub steps: usize,
}

/// The answer to a [`Job`].
#[derive(Debug)]
pub struct Done {
    /// The round of the job.
    pub round: u64,
    /// Trained parameters and training metrics, or why training failed.
    pub result: Result<(Vec<f32>, BTreeMap<String, f64>), Error>,
}

/// Handle to the training thread.
#[derive(Debug)]
pub struct Trainer {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// Parameter count, reported by the thread at start.
    pub dim: usize,
    /// Local training samples.
    pub samples: usize,
    /// The freshly initialized parameters (the shared initialization when every member builds
    /// the same spec from the same seed).
    pub init: Vec<f32>,
}

impl Trainer {
    /// Starts the thread and builds the learner on it with `make`. Fails if `make` does.
    pub fn spawn<L, F>(name: &str, make: F) -> Result<Self, Error>
    where
        L: Learner,
        F: FnOnce() -> Result<L, Error> + Send + 'static,
    {
        let (jobs_tx, mut jobs_rx) = mpsc::channel::<Job>(1);
        let (done_tx, done_rx) = mpsc::channel::<Done>(1);
        type Ready = Result<(usize, usize, Vec<f32>), Error>;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Ready>(1);
        let thread = std::thread::Builder::new()
            .name(format!("train-{name}"))
            .spawn(move || {
                let mut learner = match make() {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok((l.dim(), l.samples(), l.params())));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = jobs_rx.blocking_recv() {
                    let result = learner
                        .load(&job.params)
                        .and_then(|()| learner.train(job.steps))
                        .map(|metrics| (learner.params(), metrics));
                    if done_tx
                        .blocking_send(Done {
                            round: job.round,
                            result,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(|source| Error::Io {
                path: "training thread".into(),
                source,
            })?;
        let (dim, samples, init) = ready_rx
            .recv()
            .map_err(|_| Error::Config("the training thread ended while starting".into()))??;
        Ok(Self {
            jobs: jobs_tx,
            done: done_rx,
            thread: Some(thread),
            dim,
            samples,
            init,
        })
    }

    /// Queues a job (waits while the previous one is still queued).
    pub async fn submit(&self, job: Job) -> Result<(), Error> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::Config("the training thread has stopped".into()))
    }

    /// The next finished job; `None` once the thread has stopped.
    pub async fn next(&mut self) -> Option<Done> {
        self.done.recv().await
    }

    /// Blocking versions for callers outside an async runtime (tools, the simulator).
    pub fn submit_blocking(&self, job: Job) -> Result<(), Error> {
        self.jobs
            .blocking_send(job)
            .map_err(|_| Error::Config("the training thread has stopped".into()))
    }

    /// Blocking version of [`Trainer::next`].
    pub fn next_blocking(&mut self) -> Option<Done> {
        self.done.blocking_recv()
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        // Closing the job channel ends the thread's loop; unblock a pending result send too.
        self.done.close();
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Table;
    use crate::learner::{ModelSpec, TchLearner, TrainConfig};

    fn table() -> Table {
        Table {
            x: (0..40)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } * (i as f32 / 40.0))
                .collect(),
            rows: 20,
            cols: 2,
            y: (0..20).map(|i| (i % 2) as f32).collect(),
            time: vec![],
            event: vec![],
        }
    }

    #[test]
    fn trains_on_its_own_thread_and_answers_in_order() {
        let data = table();
        let mut trainer = Trainer::spawn("test", move || {
            TchLearner::new(
                ModelSpec::Logistic { inputs: 2 },
                TrainConfig::default(),
                1,
                &data,
            )
        })
        .expect("starts");
        assert_eq!(
            (trainer.dim, trainer.samples, trainer.init.len()),
            (3, 20, 3)
        );
        let caller = std::thread::current().id();
        for round in 1..=3 {
            trainer
                .submit_blocking(Job {
                    round,
                    params: vec![0.0; 3],
                    steps: 5,
                })
                .expect("queued");
            let done = trainer.next_blocking().expect("answer");
            assert_eq!(done.round, round);
            let (params, metrics) = done.result.expect("trained");
            assert_eq!(params.len(), 3);
            assert_ne!(params, vec![0.0; 3], "training moved the model");
            assert!(metrics.contains_key("loss"));
        }
        assert_eq!(std::thread::current().id(), caller);
        // A bad job is an error result, not a dead thread.
        trainer
            .submit_blocking(Job {
                round: 4,
                params: vec![0.0; 2],
                steps: 1,
            })
            .expect("queued");
        assert!(trainer.next_blocking().expect("answer").result.is_err());
    }

    #[test]
    fn a_learner_that_cannot_start_is_an_error() {
        let err = Trainer::spawn("bad", || {
            TchLearner::new(
                ModelSpec::Logistic { inputs: 5 },
                TrainConfig::default(),
                1,
                &table(),
            )
        });
        assert!(err.is_err());
    }
}
