//! The training worker: local training runs in a child process, `medmesh-train worker`, which
//! links libtorch; the peer that stays up (network, store, protocol) does not.
//!
//! Loading libtorch maps several hundred megabytes of library and registers thousands of
//! operators before `main` runs: about 110 MB resident for a process that does nothing else.
//! Keeping it out of the peer keeps the peer's footprint to its own needs, lets the operating
//! system reclaim the trainer's memory between experiments, and turns a crash inside libtorch
//! (an abort, an out-of-memory kill) into an error the peer sees, instead of its own death: the
//! trainer replaces the worker and retries the round once ([`crate::trainer`]).
//!
//! The worker's standard output carries the frames only: the worker points its file descriptor
//! 1 at standard error before it loads a model, so text that libtorch or a TorchScript module
//! prints lands in the log instead of in the protocol.
//!
//! The frames themselves are `medmesh_learning::frame`.
//!
//! **Finding the program.** [`program`]: the `MEDMESH_TRAIN` environment variable if set, else
//! `medmesh-train` next to the running executable (or next to its parent folder, for test
//! binaries in `target/<profile>/deps`), else `medmesh-train` on the `PATH`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter};
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use medmesh_learning::data::Table;
pub use medmesh_learning::frame::{Built, PROGRAM, PROGRAM_ENV, Setup};
use medmesh_learning::frame::{PROTOCOL, Request, Response, read_frame_with, write_frame_with};
use medmesh_learning::learner::{Error, ModelSpec, TrainConfig};
use medmesh_learning::personal::{Personalized, Search};
use medmesh_learning::privacy::AccountantState;

/// Size asked for the worker's pipes.
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1 << 20;
/// How long a worker whose input closed may take to finish before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The worker program: see the [module documentation](self).
pub fn program() -> PathBuf {
    if let Some(path) = std::env::var_os(PROGRAM_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let name = format!("{PROGRAM}{}", std::env::consts::EXE_SUFFIX);
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let beside = dir.join(&name);
        if beside.is_file() {
            return beside;
        }
        if dir.file_name().is_some_and(|d| d == "deps")
            && let Some(parent) = dir.parent()
            && parent.join(&name).is_file()
        {
            return parent.join(&name);
        }
    }
    PathBuf::from(name)
}

/// A running worker process.
#[derive(Debug)]
pub struct Worker {
    program: PathBuf,
    pid: u32,
    child: Arc<Mutex<Child>>,
    input: Option<BufWriter<ChildStdin>>,
    output: Option<BufReader<ChildStdout>>,
    /// Frame buffer, reused by every call.
    scratch: Vec<u8>,
    /// The privacy ledger: sent with every training request, replaced by the one its answer
    /// returns.
    privacy: Option<AccountantState>,
}

/// Kills a worker from another thread (the one driving it may be blocked on its answer).
#[derive(Debug, Clone)]
pub struct Killer {
    pid: u32,
    child: Arc<Mutex<Child>>,
}

impl Killer {
    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the worker (SIGKILL); its driver then sees it gone.
    pub fn kill(&self) {
        let _ = lock(&self.child).kill();
    }
}

/// Locks `mutex`, also after a panic elsewhere while it was held (the guarded values here, a
/// child process handle or the handle to kill one, stay valid).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    /// Starts [`program`] and checks it speaks this protocol.
    pub fn start() -> Result<Self, Error> {
        Self::start_program(&program())
    }

    /// Starts `program` as the worker and checks it speaks this protocol.
    pub fn start_program(program: &Path) -> Result<Self, Error> {
        let mut command = Command::new(program);
        command
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Its own process group: a Ctrl-C in the terminal stops the peer, which then closes the
        // worker's input, instead of killing the worker in the middle of a round.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| {
            Error::Worker(format!(
                "cannot start {}: {e}. It is built with the peer (`cargo build --release` \
                 at the workspace root puts it next to `medmesh`); or set {PROGRAM_ENV} to its path",
                program.display()
            ))
        })?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Worker("the worker's pipes are missing".into()));
        };
        // A 1 MiB pipe (the unprivileged maximum by default) instead of 64 KiB: a 4 MB frame
        // then crosses in 4 wake-ups instead of 64, about 3× the throughput here.
        #[cfg(target_os = "linux")]
        for fd in [input.as_fd(), output.as_fd()] {
            if let Err(e) = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE) {
                tracing::debug!(error = %e, "the worker's pipe keeps its default size");
            }
        }
        let mut worker = Self {
            program: program.to_path_buf(),
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            input: Some(BufWriter::with_capacity(1 << 20, input)),
            output: Some(BufReader::with_capacity(1 << 20, output)),
            scratch: Vec::new(),
            privacy: None,
        };
        match worker.call(&Request::Hello { protocol: PROTOCOL })? {
            Response::Hello { protocol, .. } if protocol == PROTOCOL => Ok(worker),
            Response::Hello { protocol, version } => Err(Error::Worker(format!(
                "{} (medmesh-trainer {version}) speaks worker protocol {protocol}, this peer \
                 {PROTOCOL}: build both from the same sources",
                worker.program.display()
            ))),
            other => Err(worker.unexpected(&other)),
        }
    }

    /// Whether the process still runs and takes requests (not after it failed to answer).
    pub fn is_alive(&mut self) -> bool {
        self.input.is_some() && matches!(lock(&self.child).try_wait(), Ok(None))
    }

    /// A handle that kills this worker from another thread.
    pub fn killer(&self) -> Killer {
        Killer {
            pid: self.pid,
            child: Arc::clone(&self.child),
        }
    }

    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Builds the learner; what it is. The new learner starts with an empty privacy ledger
    /// unless one is restored ([`Worker::restore_privacy`]).
    pub fn build(&mut self, setup: &Setup) -> Result<Built, Error> {
        self.privacy = None;
        match self.call(&Request::Build(Cow::Borrowed(setup)))? {
            Response::Built(built) => Ok(built),
            other => Err(self.refused(other)),
        }
    }

    /// Trains `steps` steps from `params`; the new parameters and the training metrics. The
    /// learner continues from this worker's privacy ledger ([`Worker::restore_privacy`]), if it
    /// has one, and [`Worker::privacy`] is the ledger after the round.
    pub fn train(
        &mut self,
        params: &[f32],
        steps: usize,
    ) -> Result<(Vec<f32>, BTreeMap<String, f64>), Error> {
        let privacy = self.privacy.take();
        let answer = self.call(&Request::Train {
            params: Cow::Borrowed(params),
            steps,
            privacy: privacy.as_ref().map(Cow::Borrowed),
        });
        // A refused round spent nothing: the ledger stays as it was.
        self.privacy = privacy;
        match answer? {
            Response::Trained {
                params,
                metrics,
                privacy,
            } => {
                if privacy.is_some() {
                    self.privacy = privacy;
                }
                Ok((params, metrics))
            }
            other => Err(self.refused(other)),
        }
    }

    /// Sets the privacy ledger the next round continues from (what the hospital has spent, as
    /// stored), instead of the fresh learner's empty one.
    pub fn restore_privacy(&mut self, ledger: Option<AccountantState>) {
        self.privacy = ledger;
    }

    /// The privacy ledger after the last round (or as restored); `None` before any, and for a
    /// learner without DP.
    pub fn privacy(&self) -> Option<&AccountantState> {
        self.privacy.as_ref()
    }

    /// Predictions of the model `params` for every row of `table`.
    pub fn predict(&mut self, params: &[f32], table: &Table) -> Result<Vec<f32>, Error> {
        match self.call(&Request::Predict {
            params: Cow::Borrowed(params),
            table: Cow::Borrowed(table),
        })? {
            Response::Predicted(values) if values.len() == table.rows => Ok(values),
            Response::Predicted(values) => Err(Error::Worker(format!(
                "{} predictions for {} rows",
                values.len(),
                table.rows
            ))),
            other => Err(self.refused(other)),
        }
    }

    /// The personalized model derived from the shared `params` on the built learner's training
    /// rows (`medmesh_learning::personal`).
    pub fn personalize(&mut self, params: &[f32], search: Search) -> Result<Personalized, Error> {
        match self.call(&Request::Personalize {
            params: Cow::Borrowed(params),
            search,
        })? {
            Response::Personalized(p) if p.params.len() == params.len() => Ok(p),
            Response::Personalized(p) => Err(Error::Worker(format!(
                "a personalized model of {} parameters for a shared model of {}",
                p.params.len(),
                params.len()
            ))),
            other => Err(self.refused(other)),
        }
    }

    /// Sends one request and reads its answer. An error here means the process is gone or
    /// out of step: [`Error::Worker`].
    fn call(&mut self, request: &Request<'_>) -> Result<Response, Error> {
        let (Some(input), Some(output)) = (self.input.as_mut(), self.output.as_mut()) else {
            return Err(Error::Worker("the worker's input is closed".into()));
        };
        match write_frame_with(input, request, &mut self.scratch) {
            Ok(()) => {}
            // Nothing was written: the worker is fine, the request is not.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(Error::Worker(format!("cannot send the request: {e}")));
            }
            Err(e) => return Err(self.gone(&format!("writing to it failed ({e})"))),
        }
        match read_frame_with::<Response>(output, &mut self.scratch) {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(self.gone("it closed its output")),
            Err(e) => Err(self.gone(&format!("reading its answer failed ({e})"))),
        }
    }

    /// A request the learner refused is that error; anything else is out of step.
    fn refused(&mut self, response: Response) -> Error {
        match response {
            Response::Failed(reason) => Error::Worker(reason),
            other => self.unexpected(&other),
        }
    }

    fn unexpected(&mut self, response: &Response) -> Error {
        let kind = match response {
            Response::Hello { .. } => "hello",
            Response::Built(_) => "built",
            Response::Trained { .. } => "trained",
            Response::Predicted(_) => "predicted",
            Response::Personalized(_) => "personalized",
            Response::Failed(_) => "failed",
        };
        self.input = None;
        Error::Worker(format!(
            "{} answered out of turn ({kind}); it is stopped",
            self.program.display()
        ))
    }

    /// The error for a worker that stopped answering, with its exit status if it has one.
    fn gone(&mut self, what: &str) -> Error {
        self.input = None;
        let deadline = Instant::now() + Duration::from_millis(500);
        let status = loop {
            match lock(&self.child).try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => break None,
            }
        };
        let status = status.map_or_else(
            || "it is still running".to_owned(),
            |s| format!("it exited: {s}"),
        );
        Error::Worker(format!(
            "{} (pid {}): {what}; {status}",
            self.program.display(),
            self.pid
        ))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the input ends the worker after its current request; give it a moment. Its
        // output closes too, so a worker still writing an answer gets an error, not a wait.
        self.input = None;
        self.output = None;
        let deadline = Instant::now() + EXIT_GRACE;
        let mut child = lock(&self.child);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Predictions on demand (validation, the final test): a worker started on first use, with a
/// learner built on the first table it is given, and kept for the next call until
/// [`Evaluator::release_idle`] lets it go; a worker that died is replaced on the next call.
#[derive(Debug, Default)]
pub struct Evaluator {
    /// The worker and the model it was built for.
    worker: Option<(Worker, ModelSpec, TrainConfig, u64)>,
    last_used: Option<Instant>,
}

impl Evaluator {
    /// Predictions of the model `params` of `spec` (built with `training`'s settings, e.g. its
    /// thread count, and `init_seed`) for every row of `table`. A worker built for another
    /// model is replaced.
    pub fn predict(
        &mut self,
        spec: &ModelSpec,
        training: &TrainConfig,
        init_seed: u64,
        params: &[f32],
        table: &Table,
    ) -> Result<Vec<f32>, Error> {
        if let Some((worker, built_spec, built_training, built_seed)) = &mut self.worker
            && (!worker.is_alive()
                || built_spec != spec
                || built_training != training
                || *built_seed != init_seed)
        {
            self.worker = None;
        }
        let worker = match &mut self.worker {
            Some((worker, ..)) => worker,
            None => {
                let mut worker = Worker::start()?;
                worker.build(&Setup {
                    spec: spec.clone(),
                    training: training.clone(),
                    init_seed,
                    data: table.clone(),
                })?;
                &mut self
                    .worker
                    .insert((worker, spec.clone(), training.clone(), init_seed))
                    .0
            }
        };
        let result = worker.predict(params, table);
        self.last_used = Some(Instant::now());
        result
    }

    /// Stops the worker if it has not been used for `idle`.
    pub fn release_idle(&mut self, idle: Duration) {
        if self.worker.is_some() && self.last_used.is_none_or(|t| t.elapsed() >= idle) {
            self.worker = None;
        }
    }

    /// Whether a worker is running.
    pub fn is_running(&self) -> bool {
        self.worker.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let err = Worker::start_program(Path::new("/nonexistent/medmesh-train"))
            .expect_err("no such program");
        let text = err.to_string();
        assert!(
            text.contains("cannot start /nonexistent/medmesh-train") && text.contains(PROGRAM_ENV),
            "{text}"
        );
    }

    #[test]
    fn a_program_that_is_not_a_worker_is_a_clear_error() {
        // `true` exits at once without answering the hello.
        let err = Worker::start_program(Path::new("true")).expect_err("not a worker");
        let text = err.to_string();
        assert!(
            text.contains("closed its output") || text.contains("writing"),
            "{text}"
        );
        assert!(text.contains("exited"), "{text}");
    }
}
