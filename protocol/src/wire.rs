//! The bytes that travel between peers: the versioned [`Message`] enum, hard size limits and
//! typed decode errors.
//!
//! Every message is one version byte followed by the canonical bincode encoding (standard config:
//! little-endian, variable-length integers) of a [`Message`]. Decoding never trusts a length it
//! reads: a global allocation limit bounds every collection, messages larger than their kind's
//! limit are refused before decoding, and trailing bytes are an error. Model payloads (the big
//! tensors) are not bincode: they are raw little-endian `f32` bytes, checked against the BLAKE3
//! digest their signed announcement carries (see [`crate::update`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::identity::{ContentId, Signed};
use crate::roster::SignedRoster;
use crate::update::Version;
use crate::validation::Report;

/// The wire format version this code speaks; a message with another leading byte is refused.
pub const VERSION: u8 = 1;

/// Largest gossip message (announcements, reports, roster updates). Gossip stays small: the
/// node sets its gossipsub `max_transmit_size` to this.
pub const MAX_GOSSIP: usize = 256 * 1024;

/// Largest payload response: 512 MiB, i.e. 128 M `f32` parameters.
pub const MAX_PAYLOAD: usize = 512 * 1024 * 1024;

/// Allocation bound for decoding any bincode value except a payload's raw bytes.
const DECODE_LIMIT: usize = 1024 * 1024;

/// Why bytes from outside were refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty message")]
    Empty,
    /// The leading version byte is not [`VERSION`].
    #[error("unsupported wire version {0} (this peer speaks {VERSION})")]
    Version(u8),
    /// Larger than the limit for its kind.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Limit that applies.
        limit: usize,
    },
    /// Not a valid encoding of the expected type.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The value ended before the bytes did.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A gossip message in another encoding than the one this value has (e.g. a variable-length
    /// integer written the long way). Each gossip message has exactly one encoding, so a copy
    /// cannot pass gossipsub's deduplication, which goes by the bytes, under new bytes.
    #[error("not the canonical encoding of its value")]
    NonCanonical,
}

/// Everything peers say to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A new model version is available (gossip). Small: the payload is fetched separately.
    Announce(Signed<Version>),
    /// Asks a peer for the payload of a version it announced or holds (request-response).
    Request(ContentId),
    /// The payload bytes of a version (response); `None` when the peer does not have it.
    Payload {
        /// The version the payload belongs to.
        id: ContentId,
        /// Raw little-endian payload bytes, or `None` if unavailable.
        data: Option<serde_bytes::ByteBuf>,
    },
    /// A validation report (gossip).
    Report(Signed<Report>),
    /// A roster version signed by a threshold of the previous one's members (gossip).
    Roster(SignedRoster),
}

impl Message {
    /// Short name of the kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Announce(_) => "announce",
            Message::Request(_) => "request",
            Message::Payload { .. } => "payload",
            Message::Report(_) => "report",
            Message::Roster(_) => "roster",
        }
    }

    /// Whether this kind travels by gossip (and so is bound by [`MAX_GOSSIP`]).
    pub fn is_gossip(&self) -> bool {
        matches!(
            self,
            Message::Announce(_) | Message::Report(_) | Message::Roster(_)
        )
    }

    /// Encodes with the version byte.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        append(self, &mut out);
        out
    }

    /// Decodes bytes from outside, refusing anything longer than `limit` before looking inside.
    /// Use [`MAX_GOSSIP`] for gossip and [`MAX_PAYLOAD`] for request-response.
    pub fn from_bytes(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        // A payload's bytes may exceed the generic allocation bound; everything else may not.
        let message: Message = decode_with_limit(rest, limit.max(DECODE_LIMIT))?;
        if message.is_gossip() {
            if bytes.len() > MAX_GOSSIP {
                return Err(DecodeError::TooLarge {
                    len: bytes.len(),
                    limit: MAX_GOSSIP,
                });
            }
            // bincode accepts non-minimal variable-length integers; re-encoding (a small value:
            // gossip is bounded) tells them apart.
            if message.to_bytes() != bytes {
                return Err(DecodeError::NonCanonical);
            }
        }
        Ok(message)
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Canonical bytes of a value (the encoding that is signed and hashed).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    append(value, &mut out);
    out
}

fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail for the plain data types of this crate (no maps with
    // non-string keys, no `deserialize_any`); if a future type breaks that, tests catch it.
    if let Err(e) = bincode::serde::encode_into_std_write(value, out, config()) {
        debug_assert!(false, "encoding into a Vec failed: {e}");
    }
}

/// Decodes a canonical encoding, bounding allocations and refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_with_limit(bytes, DECODE_LIMIT)
}

fn decode_with_limit<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    // bincode counts the bytes that length prefixes claim against this bound, and reads slices in
    // place, so a hostile length cannot make it allocate more than the bound or the input allows.
    // The bound is a const generic: one for ordinary values, one for payload responses.
    let result = if limit <= DECODE_LIMIT {
        bincode::serde::decode_from_slice::<T, _>(bytes, config().with_limit::<DECODE_LIMIT>())
    } else {
        bincode::serde::decode_from_slice::<T, _>(bytes, config().with_limit::<MAX_PAYLOAD>())
    };
    let (value, read) = result.map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let m = Message::Request(ContentId([9; 32]));
        let bytes = m.to_bytes();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(Message::from_bytes(&bytes, MAX_GOSSIP), Ok(m));
    }

    #[test]
    fn payload_round_trips() {
        let m = Message::Payload {
            id: ContentId([1; 32]),
            data: Some(serde_bytes::ByteBuf::from(vec![7u8; 3000])),
        };
        let bytes = m.to_bytes();
        assert_eq!(Message::from_bytes(&bytes, MAX_PAYLOAD), Ok(m));
    }

    #[test]
    fn gossip_has_one_encoding() {
        use crate::roster::{Member, Role, Roster, SignedRoster};
        let member = Member {
            id: crate::identity::Keypair::from_seed([1; 32]).id(),
            name: "a".into(),
            site: "a".into(),
            country: "NL".into(),
            group: String::new(),
            role: Role::Hospital,
            addresses: Vec::new(),
        };
        let m = Message::Roster(SignedRoster::new(
            Roster::genesis("m", 1, vec![member]).expect("roster"),
        ));
        let bytes = m.to_bytes();
        assert_eq!(Message::from_bytes(&bytes, MAX_GOSSIP), Ok(m));
        // The variant index (2) written as a 3-byte integer: same value, other bytes.
        let mut long = vec![bytes[0], 251, bytes[1], 0];
        long.extend_from_slice(&bytes[2..]);
        assert_eq!(
            Message::from_bytes(&long, MAX_GOSSIP),
            Err(DecodeError::NonCanonical)
        );
    }

    #[test]
    fn hostile_bytes_are_typed_errors() {
        assert_eq!(
            Message::from_bytes(&[], MAX_GOSSIP),
            Err(DecodeError::Empty)
        );
        assert_eq!(
            Message::from_bytes(&[2, 0], MAX_GOSSIP),
            Err(DecodeError::Version(2))
        );
        assert!(matches!(
            Message::from_bytes(&vec![1; MAX_GOSSIP + 1], MAX_GOSSIP),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            Message::from_bytes(&[VERSION, 200, 1, 2], MAX_GOSSIP),
            Err(DecodeError::Malformed(_))
        ));
        let mut bytes = Message::Request(ContentId([9; 32])).to_bytes();
        bytes.push(0);
        assert_eq!(
            Message::from_bytes(&bytes, MAX_GOSSIP),
            Err(DecodeError::Trailing(1))
        );
    }

    #[test]
    fn huge_claimed_length_does_not_allocate() {
        // Payload variant with a length prefix claiming ~2^62 bytes.
        let mut bytes = vec![VERSION, 2];
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.push(1); // Some
        bytes.push(0xFF); // u64 varint marker
        bytes.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
        assert!(matches!(
            Message::from_bytes(&bytes, MAX_PAYLOAD),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(0..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Some(b) = bytes.first_mut() {
                *b = VERSION;
            }
            let _ = Message::from_bytes(&bytes, MAX_GOSSIP);
        }
    }
}
