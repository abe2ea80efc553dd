//! The training thread: local training runs in the `medmesh-train` worker process
//! ([`crate::worker`]), driven from a dedicated OS thread of the peer, never from the async
//! runtime; the thread talks to the event loop over bounded channels.
//!
//! Jobs and results travel over capacity-1 tokio channels, which the async side awaits and the
//! thread uses blocking; so at most one round is queued and the event loop never blocks on
//! training. The worker runs from the first job until the trainer is dropped (see
//! [`Trainer::spawn`]). If it dies (killed, out of memory, an abort inside libtorch), the
//! thread starts a new one, rebuilds the learner and retries the job once before it reports the
//! failure; the new learner starts with fresh optimizer state, as after a restart of the node.
//! Dropping the [`Trainer`] closes the job channel and kills the worker, abandoning a round in
//! flight (a node that stops resumes from its checkpoint), and joins the thread.
//!
//! The thread keeps the hospital's privacy ledger (the DP accountant's state): it starts from the
//! one the node stored, goes with every round to the worker, and comes back updated in each
//! [`Trained`], for the node to store. A replaced worker continues from it, so ε never drops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::worker::{Built, Killer, Setup, Worker, lock};
use medmesh_learning::learner::Error;
use medmesh_learning::privacy::AccountantState;

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

/// A round trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    /// The parameters after training.
    pub params: Vec<f32>,
    /// The published training metrics (`loss`, or under DP-SGD only `epsilon`).
    pub metrics: BTreeMap<String, f64>,
    /// The privacy ledger after the round, to store; `None` without DP (and no stored ledger).
    pub privacy: Option<AccountantState>,
}

/// The answer to a [`Job`].
#[derive(Debug)]
pub struct Done {
    /// The round of the job.
    pub round: u64,
    /// The trained round, or why training failed (a spent privacy budget among the reasons).
    pub result: Result<Trained, Error>,
}

/// Handle to the training thread.
#[derive(Debug)]
pub struct Trainer {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// The running worker, if any, to kill from [`Drop`].
    current: Arc<Mutex<Option<Killer>>>,
    stopping: Arc<AtomicBool>,
    /// Parameter count, reported by the thread at start.
    pub dim: usize,
    /// Local training samples.
    pub samples: usize,
    /// The freshly initialized parameters (the shared initialization when every member builds
    /// the same spec from the same seed).
    pub init: Vec<f32>,
}

impl Trainer {
    /// Starts the thread, which starts the worker `program` (normally
    /// [`crate::worker::program`]) to build the learner of `setup` once, for its size and
    /// initial parameters, and then lets it go: a worker runs only from the first job until
    /// the trainer is dropped, so a peer that waits (for members, for a round's versions, after
    /// its last round) does not hold libtorch. A learner rebuilt from the same setup is the same
    /// learner (seeded initialization and batch order), so this changes no result. `privacy` is
    /// the ledger the node stored: the first round continues from it. Fails if the worker cannot
    /// be started or refuses the setup.
    pub fn spawn(
        name: &str,
        program: &Path,
        setup: Setup,
        privacy: Option<AccountantState>,
    ) -> Result<Self, Error> {
        let program = program.to_path_buf();
        let (jobs_tx, mut jobs_rx) = mpsc::channel::<Job>(1);
        let (done_tx, done_rx) = mpsc::channel::<Done>(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<Built, Error>>(1);
        let current = Arc::new(Mutex::new(None));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut driver = Driver {
            program: program.clone(),
            current: Arc::clone(&current),
            stopping: Arc::clone(&stopping),
            privacy,
        };
        let thread = std::thread::Builder::new()
            .name(format!("train-{name}"))
            .spawn(move || {
                let ready = start(&program, &setup).map(|(_, built)| built);
                let failed = ready.is_err();
                let _ = ready_tx.send(ready);
                if failed {
                    return;
                }
                let mut worker = None;
                while let Some(job) = jobs_rx.blocking_recv() {
                    let result = driver.train(&mut worker, &setup, &job);
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
                driver.set_current(None);
            })
            .map_err(|source| Error::Io {
                path: "training thread".into(),
                source,
            })?;
        let built = ready_rx
            .recv()
            .map_err(|_| Error::Config("the training thread ended while starting".into()))??;
        Ok(Self {
            jobs: jobs_tx,
            done: done_rx,
            thread: Some(thread),
            current,
            stopping,
            dim: built.dim,
            samples: built.samples,
            init: built.init,
        })
    }

    /// Process id of the running worker; `None` before the first job.
    pub fn worker_pid(&self) -> Option<u32> {
        lock(&self.current).as_ref().map(Killer::pid)
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

    /// Blocking version of [`Trainer::submit`], for callers outside an async runtime.
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
        // A round in flight is abandoned: its worker is killed rather than waited for.
        self.stopping.store(true, Ordering::SeqCst);
        self.done.close();
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.jobs, closed));
        let running = lock(&self.current).clone();
        if let Some(worker) = running {
            worker.kill();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A new worker with the learner of `setup` built.
fn start(program: &Path, setup: &Setup) -> Result<(Worker, Built), Error> {
    let mut worker = Worker::start_program(program)?;
    let built = worker.build(setup)?;
    tracing::debug!(pid = worker.id(), dim = built.dim, "training worker ready");
    Ok((worker, built))
}

/// What the training thread needs to run jobs, shared with the [`Trainer`].
struct Driver {
    program: PathBuf,
    current: Arc<Mutex<Option<Killer>>>,
    stopping: Arc<AtomicBool>,
    /// The privacy ledger after the last round trained (or as stored).
    privacy: Option<AccountantState>,
}

impl Driver {
    fn set_current(&self, worker: Option<&Worker>) {
        *lock(&self.current) = worker.map(Worker::killer);
    }

    /// Trains `job` in the worker in `slot`, starting one if there is none or it has died; if
    /// it dies during the job, starts another and retries once (unless the trainer is being
    /// dropped, which kills it). A new worker continues from the ledger.
    fn train(
        &mut self,
        slot: &mut Option<Worker>,
        setup: &Setup,
        job: &Job,
    ) -> Result<Trained, Error> {
        let mut retried = false;
        loop {
            if let Some(worker) = slot
                && !worker.is_alive()
            {
                tracing::warn!(
                    pid = worker.id(),
                    "the training worker has died; starting another"
                );
                *slot = None;
                self.set_current(None);
            }
            let worker = match slot {
                Some(worker) => worker,
                None => {
                    let worker = slot.insert(start(&self.program, setup)?.0);
                    worker.restore_privacy(self.privacy.clone());
                    self.set_current(Some(worker));
                    if self.stopping.load(Ordering::SeqCst) {
                        return Err(Error::Worker("the trainer is stopping".into()));
                    }
                    worker
                }
            };
            match worker.train(&job.params, job.steps) {
                Err(e)
                    if !retried && !worker.is_alive() && !self.stopping.load(Ordering::SeqCst) =>
                {
                    tracing::warn!(round = job.round, error = %e, "the training worker died during the round; retrying in another");
                    *slot = None;
                    self.set_current(None);
                    retried = true;
                }
                result => {
                    let (params, metrics) = result?;
                    self.privacy = worker.privacy().cloned();
                    return Ok(Trained {
                        params,
                        metrics,
                        privacy: self.privacy.clone(),
                    });
                }
            }
        }
    }
}
