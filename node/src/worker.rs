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
//! **Protocol.** The peer writes [`Request`]s to the worker's standard input and reads one
//! [`Response`] per request from its standard output, in order. Each message is a frame: its
//! length as a little-endian `u64`, then the value in bincode's standard encoding. The first
//! exchange is [`Request::Hello`], which refuses a worker of another protocol version (a stale
//! build next to a new peer); then [`Request::Build`] makes the learner, and
//! [`Request::Train`] / [`Request::Predict`] use it. A request the learner refuses is answered
//! with [`Response::Failed`] and the worker carries on. The worker ends when its input closes.
//! Its standard error is the peer's, for its log lines.
//!
//! **Finding the program.** [`program`]: the `MEDMESH_TRAIN` environment variable if set, else
//! `medmesh-train` next to the running executable (or next to its parent folder, for test
//! binaries in `target/<profile>/deps`), else `medmesh-train` on the `PATH`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::Table;
use crate::learner::{Error, ModelSpec, TrainConfig};

/// Version of the request/response protocol; both sides must speak the same.
pub const PROTOCOL: u32 = 2;
/// The worker program's file name.
pub const PROGRAM: &str = "medmesh-train";
/// Environment variable naming the worker program.
pub const PROGRAM_ENV: &str = "MEDMESH_TRAIN";
/// Largest frame either side reads (parameters and tables of a few hundred million values).
pub const MAX_FRAME: u64 = 4 << 30;
/// Size asked for the worker's pipes.
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1 << 20;
/// How long a worker whose input closed may take to finish before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Everything the worker needs to build a learner: the experiment's model and training
/// settings, and the rows it trains on (or, for evaluation only, any rows of the right shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// The model.
    #[serde(with = "as_json")]
    pub spec: ModelSpec,
    /// Local training settings.
    #[serde(with = "as_json")]
    pub training: TrainConfig,
    /// Seed of the shared initialization.
    pub init_seed: u64,
    /// The training rows.
    pub data: Table,
}

/// The model spec and training settings are internally tagged enums, which bincode cannot
/// decode (they need a self-describing format): they travel as their JSON text, as in the
/// node's config.
mod as_json {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<T: Serialize, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(S::Error::custom)?;
        serializer.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

/// Vectors of `f32` (parameters, predictions, table columns) travel as their little-endian
/// bytes: one copy, where serde's default would make one encoder call per value (35× slower
/// than the in-process copy at 1M parameters).
pub(crate) mod f32_le {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<T: AsRef<[f32]>, S: Serializer>(
        values: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let values = values.as_ref();
        if cfg!(target_endian = "little") {
            serializer.serialize_bytes(bytemuck::cast_slice(values))
        } else {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            serializer.serialize_bytes(&bytes)
        }
    }

    pub(crate) fn deserialize<'de, T: From<Vec<f32>>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        deserializer.deserialize_bytes(F32s).map(T::from)
    }

    struct F32s;

    impl Visitor<'_> for F32s {
        type Value = Vec<f32>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("little-endian f32 bytes")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<f32>, E> {
            if !bytes.len().is_multiple_of(4) {
                return Err(E::invalid_length(bytes.len(), &self));
            }
            let mut values = vec![0f32; bytes.len() / 4];
            if cfg!(target_endian = "little") {
                bytemuck::cast_slice_mut::<f32, u8>(&mut values).copy_from_slice(bytes);
            } else {
                for (value, chunk) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                    *value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
            }
            Ok(values)
        }
    }
}

/// What the peer asks of the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// The first request: the peer's protocol version.
    Hello {
        /// [`PROTOCOL`] of the peer.
        protocol: u32,
    },
    /// Build the learner (replacing any earlier one).
    Build(Cow<'a, Setup>),
    /// Load `params`, train `steps` optimizer steps, answer with the new parameters.
    Train {
        /// Parameters to start from.
        #[serde(with = "f32_le")]
        params: Cow<'a, [f32]>,
        /// Optimizer steps.
        steps: usize,
    },
    /// Load `params` and predict every row of `table` (probabilities for a binary task,
    /// log-risk scores for survival).
    Predict {
        /// The model's parameters.
        #[serde(with = "f32_le")]
        params: Cow<'a, [f32]>,
        /// The rows.
        table: Cow<'a, Table>,
    },
}

/// What the learner is, once built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Built {
    /// Parameter count.
    pub dim: usize,
    /// Training rows (the averaging weight).
    pub samples: usize,
    /// The freshly initialized parameters.
    #[serde(with = "f32_le")]
    pub init: Vec<f32>,
    /// Variable names and shapes in flattening order.
    pub layout: Vec<(String, Vec<i64>)>,
}

/// The worker's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Hello`].
    Hello {
        /// [`PROTOCOL`] of the worker.
        protocol: u32,
        /// The worker's crate version.
        version: String,
    },
    /// The learner was built.
    Built(Built),
    /// Trained parameters and training metrics.
    Trained {
        /// The parameters after training.
        #[serde(with = "f32_le")]
        params: Vec<f32>,
        /// Training metrics (`loss`, `epsilon` under DP).
        metrics: BTreeMap<String, f64>,
    },
    /// Predictions, one per row.
    Predicted(#[serde(with = "f32_le")] Vec<f32>),
    /// The request was refused (the learner's error, as text); the worker carries on.
    Failed(String),
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Writes `value` as one frame and flushes. A value that cannot be encoded, or whose frame
/// would be over [`MAX_FRAME`], is an [`io::ErrorKind::InvalidInput`] error before anything is
/// written.
pub fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> io::Result<()> {
    write_frame_with(out, value, &mut Vec::new())
}

/// [`write_frame`], encoding into `scratch` (cleared first), so that a caller sending many
/// large frames reuses one buffer instead of faulting in a fresh one every time.
pub fn write_frame_with<T: Serialize>(
    out: &mut impl Write,
    value: &T,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    scratch.clear();
    bincode::serde::encode_into_std_write(value, scratch, bincode_config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if scratch.len() as u64 > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a frame of {} bytes is over the limit of {MAX_FRAME}",
                scratch.len()
            ),
        ));
    }
    out.write_all(&(scratch.len() as u64).to_le_bytes())?;
    out.write_all(scratch)?;
    out.flush()
}

/// Reads one frame; `None` if the input ends before a frame starts.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> io::Result<Option<T>> {
    read_frame_with(input, &mut Vec::new())
}

/// [`read_frame`], reading the frame's bytes into `scratch` (cleared first).
pub fn read_frame_with<T: DeserializeOwned>(
    input: &mut impl Read,
    scratch: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 8];
    let mut filled = 0;
    while filled < len.len() {
        match input.read(&mut len[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    // Trust the length for at most 256 MiB up front; beyond that, grow with what arrives.
    scratch.clear();
    scratch.reserve(len.min(256 << 20) as usize);
    input.take(len).read_to_end(scratch)?;
    if scratch.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let (value, used) = bincode::serde::decode_from_slice(scratch, bincode_config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if used != scratch.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes after the value in a frame", scratch.len() - used),
        ));
    }
    Ok(Some(value))
}

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

    /// Builds the learner; what it is.
    pub fn build(&mut self, setup: &Setup) -> Result<Built, Error> {
        match self.call(&Request::Build(Cow::Borrowed(setup)))? {
            Response::Built(built) => Ok(built),
            other => Err(self.refused(other)),
        }
    }

    /// Trains `steps` steps from `params`; the new parameters and the training metrics.
    pub fn train(
        &mut self,
        params: &[f32],
        steps: usize,
    ) -> Result<(Vec<f32>, BTreeMap<String, f64>), Error> {
        match self.call(&Request::Train {
            params: Cow::Borrowed(params),
            steps,
        })? {
            Response::Trained { params, metrics } => Ok((params, metrics)),
            other => Err(self.refused(other)),
        }
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

    fn setup() -> Setup {
        Setup {
            spec: ModelSpec::Logistic { inputs: 2 },
            training: TrainConfig::default(),
            init_seed: 7,
            data: Table {
                x: vec![0.5, -1.0, 2.0, 0.25],
                rows: 2,
                cols: 2,
                y: vec![1.0, 0.0],
                time: vec![],
                event: vec![],
            },
        }
    }

    #[test]
    fn frames_round_trip_and_borrowed_requests_read_as_owned() {
        let setup = setup();
        let params = [1.5f32, -0.0, f32::MIN_POSITIVE];
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Build(Cow::Borrowed(&setup))).expect("writes");
        write_frame(
            &mut buf,
            &Request::Train {
                params: Cow::Borrowed(&params),
                steps: 3,
            },
        )
        .expect("writes");
        let mut input = buf.as_slice();
        let first: Request<'static> = read_frame(&mut input).expect("reads").expect("a frame");
        assert_eq!(first, Request::Build(Cow::Owned(setup)));
        let second: Request<'static> = read_frame(&mut input).expect("reads").expect("a frame");
        match second {
            Request::Train { params: got, steps } => {
                assert_eq!(steps, 3);
                let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = params.iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits, want);
            }
            other => panic!("read {other:?}"),
        }
        assert!(
            read_frame::<Request<'static>>(&mut input)
                .expect("clean end")
                .is_none()
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut frame = Vec::new();
        write_frame(&mut frame, &Response::Predicted(vec![0.25; 4])).expect("writes");
        // Cut anywhere after the start: an error, never a value or a panic.
        for cut in 1..frame.len() {
            let mut input = &frame[..cut];
            assert!(read_frame::<Response>(&mut input).is_err(), "cut at {cut}");
        }
        // A length over the limit is refused before anything is read or allocated.
        let mut huge = (MAX_FRAME + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        let err = read_frame::<Response>(&mut huge.as_slice()).expect_err("refused");
        assert!(err.to_string().contains("over the limit"), "{err}");
        // Garbage of the announced length, and trailing bytes after a value.
        let mut garbage = 5u64.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 5]);
        assert!(read_frame::<Response>(&mut garbage.as_slice()).is_err());
        let mut trailing = frame.clone();
        let len = u64::from_le_bytes(trailing[..8].try_into().expect("8 bytes")) + 1;
        trailing[..8].copy_from_slice(&len.to_le_bytes());
        trailing.push(0);
        let err = read_frame::<Response>(&mut trailing.as_slice()).expect_err("refused");
        assert!(err.to_string().contains("after the value"), "{err}");
        // Predictions whose bytes are not whole `f32`s: variant 3, then 5 bytes.
        let body = [3u8, 5, 1, 2, 3, 4, 5];
        let mut ragged = (body.len() as u64).to_le_bytes().to_vec();
        ragged.extend_from_slice(&body);
        let err = read_frame::<Response>(&mut ragged.as_slice()).expect_err("refused");
        assert!(err.to_string().contains("f32"), "{err}");
        let whole = [3u8, 8, 0, 0, 128, 63, 0, 0, 0, 64];
        let mut frame = (whole.len() as u64).to_le_bytes().to_vec();
        frame.extend_from_slice(&whole);
        let read = read_frame::<Response>(&mut frame.as_slice()).expect("reads");
        assert_eq!(read, Some(Response::Predicted(vec![1.0, 2.0])));
    }

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
