//! Member identities and signed envelopes.
//!
//! A member is an ed25519 key; its [`MemberId`] is the 32-byte public key (the node derives its
//! libp2p peer id from the same key). Everything a member says travels as a [`Signed`] envelope:
//! the canonical bincode bytes of the value, the signer, and an ed25519 signature over the BLAKE3
//! digest of those bytes, hashed in a context that is unique per message type (domain separation,
//! so a signed roster can never be replayed as a model version). Only [`Signed::verify`] turns an
//! envelope into a [`Verified`] value, and the rules accept nothing else ("parse, don't validate").
//!
//! This module never reads files or the OS random number generator: key files are parsed and
//! formatted here (PKCS#8 PEM) but read and written by the node, and keys are made from seeds the
//! caller supplies.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::wire;

/// Errors from keys and signed envelopes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The public key bytes are not a valid ed25519 point, or are a point of small order (a
    /// key no one holds the secret of, for which signatures can be made up).
    #[error("invalid public key {0}")]
    InvalidKey(MemberId),
    /// The signature does not verify for the signer and the bytes.
    #[error("bad signature from {0}")]
    BadSignature(MemberId),
    /// The signed body is larger than this message type allows.
    #[error("signed body of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length of the body.
        len: usize,
        /// Limit for the message type.
        limit: usize,
    },
    /// The signature verified but the body does not decode as the expected type.
    #[error("signed body does not decode: {0}")]
    Decode(#[from] wire::DecodeError),
    /// A key file could not be parsed.
    #[error("not an ed25519 PKCS#8 PEM private key: {0}")]
    KeyFormat(String),
    /// A hex id could not be parsed.
    #[error("invalid id {text:?}: expected 64 hex digits")]
    IdFormat {
        /// The text that was given.
        text: String,
    },
}

/// A value that can be signed: its type decides the domain-separation context and the size limit.
pub trait Signable: Serialize + DeserializeOwned {
    /// BLAKE3 key-derivation context for the digest that is signed; unique per type and version.
    const CONTEXT: &'static str;
    /// Largest canonical encoding accepted for this type.
    const MAX_LEN: usize;
}

macro_rules! id32 {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 8 hex digits, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self, Error> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut bytes)
                    .map_err(|_| Error::IdFormat { text: text.to_owned() })?;
                Ok(Self(bytes))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&self.to_string())
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = String::deserialize(deserializer)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(deserializer).map(Self)
                }
            }
        }
    };
}

id32!(
    /// A member of the mesh: its ed25519 public key.
    MemberId
);
id32!(
    /// The content address of a signed item: BLAKE3 over its signer, signature and body digest.
    ContentId
);
id32!(
    /// A BLAKE3 digest (of a payload, a model spec, a roster body).
    Digest
);

impl MemberId {
    /// Whether these bytes are a public key that can sign: a valid curve point that is not of
    /// small order (a roster must not list members that could never sign).
    pub fn is_usable_key(&self) -> bool {
        VerifyingKey::from_bytes(&self.0).is_ok_and(|key| !key.is_weak())
    }
}

impl Digest {
    /// BLAKE3 of `bytes` in the key-derivation mode with `context`, so digests of different kinds
    /// of data never collide by construction.
    pub fn of(context: &str, bytes: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(context);
        hasher.update(bytes);
        Self(*hasher.finalize().as_bytes())
    }
}

/// An ed25519 signing key of a member.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.id().short())
    }
}

impl Keypair {
    /// A key from 32 secret bytes (the caller draws them from a CSPRNG, or from a seeded RNG in
    /// simulations).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32 secret bytes (for deriving the libp2p identity from the same key).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), as written by
    /// [`Keypair::to_pem`] or `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|signing| Self { signing })
            .map_err(|e| Error::KeyFormat(e.to_string()))
    }

    /// Formats the key as PKCS#8 PEM. The returned string is zeroized on drop.
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, Error> {
        self.signing
            .to_pkcs8_pem(Default::default())
            .map_err(|e| Error::KeyFormat(e.to_string()))
    }

    /// This member's id (public key).
    pub fn id(&self) -> MemberId {
        MemberId(self.signing.verifying_key().to_bytes())
    }

    /// Signs a value: canonical bytes, digest in the type's context, signature over the digest.
    pub fn sign<T: Signable>(&self, value: T) -> Verified<T> {
        let body = wire::encode(&value);
        let digest = Digest::of(T::CONTEXT, &body);
        let signature = self.signing.sign(digest.as_bytes()).to_bytes();
        let signed = Signed {
            body: serde_bytes::ByteBuf::from(body),
            signer: self.id(),
            signature: serde_bytes::ByteArray::new(signature),
            kind: PhantomData,
        };
        let id = content_id(&signed.signer, &signature, &digest);
        Verified { value, signed, id }
    }

    /// A raw ed25519 signature over a digest (rosters carry several of these over one body).
    pub fn sign_digest(&self, digest: &Digest) -> [u8; 64] {
        self.signing.sign(digest.as_bytes()).to_bytes()
    }
}

/// Checks a raw signature over a digest, strictly (no malleable or small-order signatures).
pub fn verify_digest(
    signer: &MemberId,
    digest: &Digest,
    signature: &[u8; 64],
) -> Result<(), Error> {
    let key =
        VerifyingKey::from_bytes(signer.as_bytes()).map_err(|_| Error::InvalidKey(*signer))?;
    key.verify_strict(digest.as_bytes(), &Signature::from_bytes(signature))
        .map_err(|_| Error::BadSignature(*signer))
}

fn content_id(signer: &MemberId, signature: &[u8; 64], digest: &Digest) -> ContentId {
    let mut hasher = blake3::Hasher::new_derive_key("medmesh 2026-11 content id v1");
    hasher.update(signer.as_bytes());
    hasher.update(signature);
    hasher.update(digest.as_bytes());
    ContentId(*hasher.finalize().as_bytes())
}

/// A signed envelope as it travels: canonical body bytes, signer and signature. Not trusted until
/// [`Signed::verify`] returns a [`Verified`].
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    body: serde_bytes::ByteBuf,
    signer: MemberId,
    signature: serde_bytes::ByteArray<64>,
    #[serde(skip)]
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            signer: self.signer,
            signature: self.signature,
            kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.signer == other.signer && self.signature == other.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("signer", &self.signer)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// What a single envelope needs before its signature can be checked.
struct Prepared<T> {
    key: VerifyingKey,
    digest: Digest,
    value: T,
}

impl<T: Signable> Signed<T> {
    /// The claimed signer (not yet checked).
    pub fn signer(&self) -> MemberId {
        self.signer
    }

    /// The canonical body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Decodes the body and checks sizes and the key, short of the signature itself. Decoding
    /// before verifying costs little for these small bodies and lets batch verification skip
    /// envelopes that could never be valid.
    fn prepare(&self) -> Result<Prepared<T>, Error> {
        if self.body.len() > T::MAX_LEN {
            return Err(Error::TooLarge {
                len: self.body.len(),
                limit: T::MAX_LEN,
            });
        }
        // A small-order key is refused here, not only by the strict check: the batch check
        // does not test for it, and then takes a made-up signature (`R` the identity, `s = 0`)
        // for one of any body by the identity point, and of some bodies by the other such keys.
        let key = VerifyingKey::from_bytes(self.signer.as_bytes())
            .ok()
            .filter(|key| !key.is_weak())
            .ok_or(Error::InvalidKey(self.signer))?;
        let digest = Digest::of(T::CONTEXT, &self.body);
        let value = wire::decode(&self.body)?;
        Ok(Prepared { key, digest, value })
    }

    fn finish(self, prepared: Prepared<T>) -> Verified<T> {
        let id = content_id(&self.signer, &self.signature, &prepared.digest);
        Verified {
            value: prepared.value,
            signed: self,
            id,
        }
    }

    /// Checks the signature (strictly: malleable and small-order signatures are refused) and
    /// decodes the body.
    pub fn verify(self) -> Result<Verified<T>, Error> {
        let prepared = self.prepare()?;
        prepared
            .key
            .verify_strict(
                prepared.digest.as_bytes(),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| Error::BadSignature(self.signer))?;
        Ok(self.finish(prepared))
    }
}

/// Verifies many envelopes at once. When every signature is good a single ed25519 batch check
/// (about half the cost per signature, see LIMITS.md) confirms them all; when the batch fails,
/// each envelope is checked on its own so that one forgery cannot hide good messages. Results are
/// in input order.
///
/// A batch check is cofactored while [`Signed::verify`] is strict; the difference concerns only
/// signatures the key holder crafted on purpose, never a forgery by someone else.
pub fn verify_batch<T: Signable>(envelopes: Vec<Signed<T>>) -> Vec<Result<Verified<T>, Error>> {
    let prepared: Vec<Result<Prepared<T>, Error>> = envelopes.iter().map(Signed::prepare).collect();
    let candidates: Vec<usize> = (0..envelopes.len())
        .filter(|&i| prepared[i].is_ok())
        .collect();
    let batch_ok = candidates.len() > 1 && {
        let mut messages = Vec::with_capacity(candidates.len());
        let mut signatures = Vec::with_capacity(candidates.len());
        let mut keys = Vec::with_capacity(candidates.len());
        for &i in &candidates {
            if let Ok(p) = &prepared[i] {
                messages.push(p.digest.as_bytes().as_slice());
                signatures.push(Signature::from_bytes(&envelopes[i].signature));
                keys.push(p.key);
            }
        }
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    };
    envelopes
        .into_iter()
        .zip(prepared)
        .map(|(envelope, prepared)| {
            let prepared = prepared?;
            if !batch_ok {
                prepared
                    .key
                    .verify_strict(
                        prepared.digest.as_bytes(),
                        &Signature::from_bytes(&envelope.signature),
                    )
                    .map_err(|_| Error::BadSignature(envelope.signer))?;
            }
            Ok(envelope.finish(prepared))
        })
        .collect()
}

/// A value whose signature has been checked, with its content id. Only [`Signed::verify`],
/// [`verify_batch`] and [`Keypair::sign`] make one.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified<T> {
    value: T,
    signed: Signed<T>,
    id: ContentId,
}

impl<T> Verified<T> {
    /// The verified value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Who signed it.
    pub fn signer(&self) -> MemberId {
        self.signed.signer
    }

    /// Its content id.
    pub fn id(&self) -> ContentId {
        self.id
    }

    /// The envelope, to forward or store as received.
    pub fn signed(&self) -> &Signed<T> {
        &self.signed
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
        round: u64,
    }

    impl Signable for Note {
        const CONTEXT: &'static str = "medmesh test note";
        const MAX_LEN: usize = 128;
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct OtherNote {
        text: String,
        round: u64,
    }

    impl Signable for OtherNote {
        const CONTEXT: &'static str = "medmesh test other note";
        const MAX_LEN: usize = 128;
    }

    fn key(n: u8) -> Keypair {
        Keypair::from_seed([n; 32])
    }

    fn note() -> Note {
        Note {
            text: "hello".into(),
            round: 7,
        }
    }

    fn envelope_bytes(signed: &Signed<Note>) -> Vec<u8> {
        wire::encode(signed)
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let k = key(1);
        let v = k.sign(note());
        let bytes = envelope_bytes(v.signed());
        let back: Signed<Note> = wire::decode(&bytes).expect("decodes");
        let checked = back.verify().expect("verifies");
        assert_eq!(checked.value(), &note());
        assert_eq!(checked.signer(), k.id());
        assert_eq!(checked.id(), v.id());
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let v = key(2).sign(note());
        let bytes = envelope_bytes(v.signed());
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let verdict = wire::decode::<Signed<Note>>(&bad)
                .map_err(Error::from)
                .and_then(Signed::verify);
            assert!(verdict.is_err(), "bit {i} flipped and still accepted");
        }
    }

    #[test]
    fn contexts_separate_message_types() {
        let v = key(3).sign(note());
        let bytes = envelope_bytes(v.signed());
        let as_other: Signed<OtherNote> = wire::decode(&bytes).expect("same shape decodes");
        assert!(matches!(as_other.verify(), Err(Error::BadSignature(_))));
    }

    #[test]
    fn oversized_body_is_refused_before_decoding() {
        let v = key(4).sign(Note {
            text: "x".repeat(200),
            round: 1,
        });
        let back: Signed<Note> = wire::decode(&envelope_bytes(v.signed())).expect("decodes");
        assert!(matches!(
            back.verify(),
            Err(Error::TooLarge { limit: 128, .. })
        ));
    }

    #[test]
    fn content_ids_differ_per_signer_and_value() {
        let a = key(5).sign(note());
        let b = key(6).sign(note());
        let c = key(5).sign(Note {
            text: "hello".into(),
            round: 8,
        });
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id(), key(5).sign(note()).id(), "ed25519 is deterministic");
    }

    #[test]
    fn batch_verification_finds_the_forgery() {
        let mut envelopes: Vec<Signed<Note>> = (0..16)
            .map(|i| {
                key(i).sign(Note {
                    text: format!("n{i}"),
                    round: u64::from(i),
                })
            })
            .map(|v| v.signed().clone())
            .collect();
        let all = verify_batch(envelopes.clone());
        assert!(all.iter().all(Result::is_ok));
        // Swap a signer: the body is now claimed by someone who never signed it.
        envelopes[5].signer = key(99).id();
        let results = verify_batch(envelopes);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 5, "envelope {i}");
        }
    }

    #[test]
    fn pem_round_trip_and_garbage() {
        let k = key(7);
        let pem = k.to_pem().expect("formats");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = Keypair::from_pem(&pem).expect("parses");
        assert_eq!(back.id(), k.id());
        assert!(matches!(
            Keypair::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(Error::KeyFormat(_))
        ));
        assert!(Keypair::from_pem("").is_err());
    }

    #[test]
    fn ids_parse_and_print_as_hex() {
        let id = key(8).id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<MemberId>().expect("parses"), id);
        assert!("zz".parse::<MemberId>().is_err());
        assert!(format!("{id:?}").contains(&id.short()));
    }
}
