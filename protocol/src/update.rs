//! Model versions: what a member announces after a round, and the payload it points to.
//!
//! A [`Version`] is small and signed: the experiment, the model spec, the round, the author, how
//! many samples it was trained on, the content ids of the versions it was averaged from (its
//! lineage), training metrics, and a [`PayloadDescriptor`] with the BLAKE3 digest of the parameter
//! bytes. The payload itself (megabytes) is fetched separately by content id and checked against
//! that digest, so the signature never has to be computed over the tensor (LIMITS.md: signing a
//! digest is ~20× cheaper than signing 4 MiB).
//!
//! Payloads are little-endian `f32`, encoded and decoded as one cast (`bytemuck`) into reusable
//! buffers. Decoding refuses non-finite values: a NaN or infinity from a hostile peer would
//! otherwise spread through every average.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{ContentId, Digest, MemberId, Signable};

/// Longest experiment name.
pub const MAX_EXPERIMENT_LEN: usize = 64;
/// Most parents (versions averaged from) one version may name.
pub const MAX_PARENTS: usize = 256;
/// Most metrics one version may carry.
pub const MAX_METRICS: usize = 32;
/// Longest metric name.
pub const MAX_METRIC_NAME: usize = 64;

const PAYLOAD_CONTEXT: &str = "medmesh 2026-11 payload v1";

/// How a payload's bytes encode the parameters. Only dense `f32` exists today; quantized and
/// sparse-delta encodings will be further variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Encoding {
    /// Dense little-endian IEEE-754 `f32`, 4 bytes per parameter.
    F32Le,
}

/// What the payload of a version is, so a receiver can check it before trusting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadDescriptor {
    /// Encoding of the bytes.
    pub encoding: Encoding,
    /// Number of parameters.
    pub params: u64,
    /// Length of the payload in bytes.
    pub len: u64,
    /// BLAKE3 (payload context) of the payload bytes.
    pub digest: Digest,
}

/// A model version as announced by its author.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Name of the experiment (a mesh may run several).
    pub experiment: String,
    /// Digest of the model spec (architecture and parameter order), so incompatible vectors are
    /// never averaged.
    pub model: Digest,
    /// Round number of the author; strictly increasing per author.
    pub round: u64,
    /// The author; must equal the signer.
    pub author: MemberId,
    /// Samples behind this version (the author's local training set size), the averaging weight.
    pub samples: u64,
    /// How many neighbours the author mixes with (Metropolis–Hastings weights need it).
    pub degree: u32,
    /// Content ids of the versions this one was averaged from; empty for an initialization.
    pub parents: Vec<ContentId>,
    /// Training metrics of the author (loss, accuracy, ...), sorted by name.
    pub metrics: BTreeMap<String, f64>,
    /// The parameters, fetched separately.
    pub payload: PayloadDescriptor,
}

impl Signable for Version {
    const CONTEXT: &'static str = "medmesh 2026-11 model version v1";
    const MAX_LEN: usize = 64 * 1024;
}

/// Why a version or a payload is not acceptable, beyond its signature.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// Signed by someone other than the named author.
    #[error("version names author {author} but is signed by {signer}")]
    AuthorMismatch {
        /// Named author.
        author: MemberId,
        /// Actual signer.
        signer: MemberId,
    },
    /// A field is outside its allowed range.
    #[error("invalid version: {0}")]
    Invalid(&'static str),
    /// The payload length is not what the descriptor says.
    #[error("payload has {found} bytes, expected {expected}")]
    PayloadLength {
        /// From the descriptor.
        expected: u64,
        /// Received.
        found: u64,
    },
    /// The payload does not hash to the announced digest.
    #[error("payload digest does not match its announcement")]
    PayloadDigest,
    /// The payload holds a NaN or an infinity.
    #[error("payload parameter {index} is not finite")]
    NotFinite {
        /// Index of the first bad parameter.
        index: usize,
    },
}

impl Version {
    /// Checks the rules a version must follow whoever signed it.
    pub fn check(&self, signer: MemberId) -> Result<(), Error> {
        if self.author != signer {
            return Err(Error::AuthorMismatch {
                author: self.author,
                signer,
            });
        }
        if self.experiment.is_empty() || self.experiment.len() > MAX_EXPERIMENT_LEN {
            return Err(Error::Invalid("experiment name must be 1 to 64 bytes"));
        }
        if self.samples == 0 {
            return Err(Error::Invalid("sample count must be positive"));
        }
        if self.parents.len() > MAX_PARENTS {
            return Err(Error::Invalid("too many parents"));
        }
        if self.metrics.len() > MAX_METRICS
            || self
                .metrics
                .keys()
                .any(|k| k.is_empty() || k.len() > MAX_METRIC_NAME)
        {
            return Err(Error::Invalid("too many metrics or a bad metric name"));
        }
        if self.metrics.values().any(|v| !v.is_finite()) {
            return Err(Error::Invalid("metric values must be finite"));
        }
        let p = &self.payload;
        match p.encoding {
            Encoding::F32Le => {
                if p.params == 0 || p.params.checked_mul(4) != Some(p.len) {
                    return Err(Error::Invalid(
                        "payload length must be 4 bytes per parameter",
                    ));
                }
            }
        }
        if p.len > crate::wire::MAX_PAYLOAD as u64 {
            return Err(Error::Invalid("payload larger than the wire limit"));
        }
        Ok(())
    }
}

/// Bytes per step of the fused encode and decode loops: a step's bytes are still in L1/L2 when
/// they are copied, hashed and scanned, so a payload crosses memory once instead of three times
/// (LIMITS.md: 40 MiB copies at ~20 GB/s, BLAKE3 hashes at ~9 GB/s).
const STEP: usize = 64 * 1024;

/// The hasher behind [`payload_digest`], for the loops that hash a payload step by step.
fn payload_hasher() -> blake3::Hasher {
    blake3::Hasher::new_derive_key(PAYLOAD_CONTEXT)
}

/// Digest of payload bytes, as a [`PayloadDescriptor`] carries it.
pub fn payload_digest(bytes: &[u8]) -> Digest {
    Digest::of(PAYLOAD_CONTEXT, bytes)
}

/// Encodes parameters as dense little-endian `f32` into `out` (cleared first, capacity reused)
/// and returns the descriptor.
pub fn encode_f32(params: &[f32], out: &mut Vec<u8>) -> PayloadDescriptor {
    out.clear();
    out.reserve(std::mem::size_of_val(params));
    let mut hasher = payload_hasher();
    for step in params.chunks(STEP / 4) {
        let start = out.len();
        if cfg!(target_endian = "little") {
            out.extend_from_slice(bytemuck::cast_slice(step));
        } else {
            out.extend(step.iter().flat_map(|p| p.to_le_bytes()));
        }
        hasher.update(&out[start..]);
    }
    PayloadDescriptor {
        encoding: Encoding::F32Le,
        params: params.len() as u64,
        len: out.len() as u64,
        digest: Digest(*hasher.finalize().as_bytes()),
    }
}

/// Checks a payload against its descriptor (length, digest) and decodes it into `out` (resized,
/// capacity reused). Refuses non-finite parameters. A payload that does not match its digest is
/// refused as such whatever it holds. On error the contents of `out` are unspecified.
pub fn decode_payload(
    descriptor: &PayloadDescriptor,
    bytes: &[u8],
    out: &mut Vec<f32>,
) -> Result<(), Error> {
    if bytes.len() as u64 != descriptor.len {
        return Err(Error::PayloadLength {
            expected: descriptor.len,
            found: bytes.len() as u64,
        });
    }
    let mut hasher = payload_hasher();
    // Hashed while decoding, in one pass; the verdict on the contents waits for the digest.
    let decoded = match descriptor.encoding {
        Encoding::F32Le => decode_f32_steps(bytes, out, Some(&mut hasher)),
    };
    if Digest(*hasher.finalize().as_bytes()) != descriptor.digest {
        return Err(Error::PayloadDigest);
    }
    decoded
}

/// Decodes dense little-endian `f32` bytes into `out`; refuses a ragged length or non-finite values.
pub fn decode_f32(bytes: &[u8], out: &mut Vec<f32>) -> Result<(), Error> {
    decode_f32_steps(bytes, out, None)
}

/// [`decode_f32`], feeding every byte to `hasher` (when given) as it goes.
fn decode_f32_steps(
    bytes: &[u8],
    out: &mut Vec<f32>,
    mut hasher: Option<&mut blake3::Hasher>,
) -> Result<(), Error> {
    if !bytes.len().is_multiple_of(4) {
        if let Some(hasher) = hasher {
            hasher.update(bytes);
        }
        return Err(Error::PayloadLength {
            expected: (bytes.len() as u64 / 4) * 4,
            found: bytes.len() as u64,
        });
    }
    // Extended rather than zero-filled and overwritten: one write of `out`, not two.
    out.clear();
    out.reserve(bytes.len() / 4);
    let mut finite = true;
    for step in bytes.chunks(STEP) {
        if let Some(hasher) = hasher.as_deref_mut() {
            hasher.update(step);
        }
        let start = out.len();
        out.extend(
            step.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        // Branch-free scan so it vectorizes; the position is looked up only on failure.
        finite &= out[start..].iter().fold(true, |ok, v| ok & v.is_finite());
    }
    if !finite {
        let index = out.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(Error::NotFinite { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn version(author: MemberId, payload: PayloadDescriptor) -> Version {
        Version {
            experiment: "heart".into(),
            model: Digest([3; 32]),
            round: 1,
            author,
            samples: 199,
            degree: 3,
            parents: vec![ContentId([1; 32])],
            metrics: BTreeMap::from([("loss".to_string(), 0.5)]),
            payload,
        }
    }

    #[test]
    fn payload_round_trip_is_bit_exact() {
        let params: Vec<f32> = (0..1000).map(|i| (i as f32).sin() * 1e-3).collect();
        let mut bytes = Vec::new();
        let d = encode_f32(&params, &mut bytes);
        assert_eq!(d.len, 4000);
        let mut back = Vec::new();
        decode_payload(&d, &bytes, &mut back).expect("decodes");
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            params.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn payload_mismatches_are_refused() {
        let mut bytes = Vec::new();
        let d = encode_f32(&[1.0, 2.0, 3.0], &mut bytes);
        let mut out = Vec::new();
        let mut tampered = bytes.clone();
        tampered[5] ^= 1;
        assert_eq!(
            decode_payload(&d, &tampered, &mut out),
            Err(Error::PayloadDigest)
        );
        assert!(matches!(
            decode_payload(&d, &bytes[..8], &mut out),
            Err(Error::PayloadLength { .. })
        ));
        let mut nan = Vec::new();
        let d = encode_f32(&[1.0, f32::NAN], &mut nan);
        assert_eq!(
            decode_payload(&d, &nan, &mut out),
            Err(Error::NotFinite { index: 1 })
        );
        assert!(decode_f32(&[0, 0, 0], &mut out).is_err());
    }

    #[test]
    fn payloads_longer_than_a_step() {
        // Several fused steps and a partial last one: still bit-exact, still the same digest as
        // hashing the whole payload at once, and a bad value is found at its exact index.
        let mut params: Vec<f32> = (0..3 * STEP / 4 + 5).map(|i| i as f32 * 0.25).collect();
        let mut bytes = Vec::new();
        let d = encode_f32(&params, &mut bytes);
        assert_eq!(d.digest, payload_digest(&bytes));
        let mut back = vec![9.0; 7];
        decode_payload(&d, &bytes, &mut back).expect("decodes");
        assert_eq!(back, params);
        let index = 2 * STEP / 4 + 3;
        params[index] = f32::NEG_INFINITY;
        let d = encode_f32(&params, &mut bytes);
        assert_eq!(
            decode_payload(&d, &bytes, &mut back),
            Err(Error::NotFinite { index })
        );
        // A payload that is not the announced one is refused as such, even when it also holds
        // a non-finite value.
        bytes[0] ^= 1;
        assert_eq!(
            decode_payload(&d, &bytes, &mut back),
            Err(Error::PayloadDigest)
        );
    }

    #[test]
    fn version_rules() {
        let k = Keypair::from_seed([1; 32]);
        let mut bytes = Vec::new();
        let d = encode_f32(&[0.5; 10], &mut bytes);
        let v = version(k.id(), d);
        assert_eq!(v.check(k.id()), Ok(()));
        assert!(matches!(
            v.check(Keypair::from_seed([2; 32]).id()),
            Err(Error::AuthorMismatch { .. })
        ));
        let mut bad = v.clone();
        bad.samples = 0;
        assert!(bad.check(k.id()).is_err());
        let mut bad = v.clone();
        bad.payload.len = 41;
        assert!(bad.check(k.id()).is_err());
        let mut bad = v.clone();
        bad.metrics.insert("acc".into(), f64::NAN);
        assert!(bad.check(k.id()).is_err());
        let mut bad = v;
        bad.experiment = "x".repeat(65);
        assert!(bad.check(k.id()).is_err());
    }

    #[test]
    fn signed_version_fits_gossip() {
        let k = Keypair::from_seed([1; 32]);
        let mut bytes = Vec::new();
        let d = encode_f32(&[0.5; 10], &mut bytes);
        let mut v = version(k.id(), d);
        v.parents = vec![ContentId([7; 32]); MAX_PARENTS];
        let signed = k.sign(v);
        let msg = crate::wire::Message::Announce(signed.signed().clone()).to_bytes();
        assert!(msg.len() < crate::wire::MAX_GOSSIP);
    }
}
