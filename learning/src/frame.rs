//! The frames between the peer and its training worker (`medmesh-train worker`): what the peer
//! asks ([`Request`]), what the worker answers ([`Response`]), and how each travels.
//!
//! **Protocol.** The peer writes [`Request`]s to the worker's standard input and reads one
//! [`Response`] per request from its standard output, in order. Each message is a frame: its
//! length as a little-endian `u64`, then the value in bincode's standard encoding. The first
//! exchange is [`Request::Hello`], which refuses a worker of another protocol version (a stale
//! build next to a new peer); then [`Request::Build`] makes the learner, and
//! [`Request::Train`] / [`Request::Predict`] use it. A request the learner refuses is answered
//! with [`Response::Failed`] and the worker carries on. The worker ends when its input closes.
//!
//! **The privacy ledger is the peer's.** [`Request::Train`] carries the accountant state the
//! learner continues from (what the hospital has spent, as the peer stored it), and
//! [`Response::Trained`] the state after the round, which the peer stores with its checkpoint:
//! ε never restarts from zero when a worker is replaced or the node restarts.
//!
//! This module only encodes and decodes: it never starts a process or touches a file. The
//! peer's side (starting, feeding and replacing workers) is the node's `worker` module; the
//! worker's side is `medmesh_trainer::worker`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::Table;
use crate::learner::{ModelSpec, TrainConfig};
use crate::personal::{Personalized, Search};
use crate::privacy::AccountantState;

/// Version of the request/response protocol; both sides must speak the same.
pub const PROTOCOL: u32 = 4;
/// The worker program's file name.
pub const PROGRAM: &str = "medmesh-train";
/// Environment variable naming the worker program.
pub const PROGRAM_ENV: &str = "MEDMESH_TRAIN";
/// Largest frame either side reads (parameters and tables of a few hundred million values).
pub const MAX_FRAME: u64 = 4 << 30;

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
pub mod f32_le {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes the values as one byte string of little-endian `f32`s.
    pub fn serialize<T: AsRef<[f32]>, S: Serializer>(
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

    /// Reads a byte string of little-endian `f32`s; a length that is not a multiple of 4 is
    /// an error.
    pub fn deserialize<'de, T: From<Vec<f32>>, D: Deserializer<'de>>(
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
    /// Load `params` (and the privacy ledger `privacy`, if given), train `steps` optimizer
    /// steps, answer with the new parameters.
    Train {
        /// Parameters to start from.
        #[serde(with = "f32_le")]
        params: Cow<'a, [f32]>,
        /// Optimizer steps.
        steps: usize,
        /// The accountant state to continue from (replacing the learner's own); `None` keeps
        /// the learner's.
        privacy: Option<Cow<'a, AccountantState>>,
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
    /// Derive the personalized model from the shared `params` on the built learner's training
    /// rows ([`crate::personal`]).
    Personalize {
        /// The shared model's parameters.
        #[serde(with = "f32_le")]
        params: Cow<'a, [f32]>,
        /// The search.
        search: Search,
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
        /// Training metrics: `loss` without DP; under DP-SGD only `epsilon`.
        metrics: BTreeMap<String, f64>,
        /// The accountant state after training, for the peer to store; `None` for a learner
        /// that has never accounted for anything (no DP and no ledger given).
        privacy: Option<AccountantState>,
    },
    /// Predictions, one per row.
    Predicted(#[serde(with = "f32_le")] Vec<f32>),
    /// The personalized model.
    Personalized(Personalized),
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
        let ledger = AccountantState {
            history: vec![crate::privacy::Steps {
                noise_multiplier: 1.1,
                sample_rate: 0.01,
                steps: 250,
            }],
        };
        write_frame(
            &mut buf,
            &Request::Train {
                params: Cow::Borrowed(&params),
                steps: 3,
                privacy: Some(Cow::Borrowed(&ledger)),
            },
        )
        .expect("writes");
        let trained = Response::Trained {
            params: params.to_vec(),
            metrics: BTreeMap::from([("epsilon".to_owned(), 0.5)]),
            privacy: Some(ledger.clone()),
        };
        write_frame(&mut buf, &trained).expect("writes");
        let mut input = buf.as_slice();
        let first: Request<'static> = read_frame(&mut input).expect("reads").expect("a frame");
        assert_eq!(first, Request::Build(Cow::Owned(setup)));
        let second: Request<'static> = read_frame(&mut input).expect("reads").expect("a frame");
        match second {
            Request::Train {
                params: got,
                steps,
                privacy,
            } => {
                assert_eq!(steps, 3);
                assert_eq!(privacy.as_deref(), Some(&ledger));
                let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = params.iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits, want);
            }
            other => panic!("read {other:?}"),
        }
        let third: Response = read_frame(&mut input).expect("reads").expect("a frame");
        assert_eq!(third, trained);
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
}
