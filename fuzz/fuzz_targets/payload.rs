//! Model payloads as a peer pulls them: `update::decode_payload` of raw bytes against the
//! descriptor their signed announcement carries.
//!
//! The first byte picks the descriptor: even, the honest one (the bytes' own length, parameter
//! count and digest), so decoding reaches the value checks; odd, one read from the next 48 bytes
//! (parameter count, length, digest), which the payload after them rarely matches.
//!
//! Checks: nothing panics; a payload is accepted exactly when it matches the descriptor's length
//! and digest, holds whole `f32`s and all of them are finite; an accepted payload decodes
//! bit-exactly and re-encodes to the same bytes and descriptor; a refusal for a non-finite value
//! names the first one; `decode_f32` agrees with `decode_payload` on honest descriptors.

#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_protocol::identity::Digest;
use medmesh_protocol::update::{self, Encoding, Error, PayloadDescriptor};

fn honest(bytes: &[u8]) -> PayloadDescriptor {
    PayloadDescriptor {
        encoding: Encoding::F32Le,
        params: bytes.len() as u64 / 4,
        len: bytes.len() as u64,
        digest: update::payload_digest(bytes),
    }
}

fn read_descriptor(data: &[u8]) -> Option<(PayloadDescriptor, &[u8])> {
    let (params, rest) = data.split_first_chunk::<8>()?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let (digest, rest) = rest.split_first_chunk::<32>()?;
    let descriptor = PayloadDescriptor {
        encoding: Encoding::F32Le,
        params: u64::from_le_bytes(*params),
        len: u64::from_le_bytes(*len),
        digest: Digest(*digest),
    };
    Some((descriptor, rest))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (descriptor, bytes) = if mode % 2 == 0 {
        (honest(rest), rest)
    } else {
        match read_descriptor(rest) {
            Some(found) => found,
            None => return,
        }
    };
    // A reused buffer, as the node keeps one: stale contents must not leak into the result.
    let mut out = vec![f32::NAN; usize::from(mode)];
    let result = update::decode_payload(&descriptor, bytes, &mut out);

    let first_bad = bytes
        .chunks_exact(4)
        .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
    let matches =
        bytes.len() as u64 == descriptor.len && update::payload_digest(bytes) == descriptor.digest;
    match (&result, matches) {
        (Ok(()), true) => {
            assert!(bytes.len() % 4 == 0 && first_bad.is_none());
            assert_eq!(out.len(), bytes.len() / 4);
            let mut again = Vec::new();
            let re = update::encode_f32(&out, &mut again);
            assert_eq!(again, bytes, "decoding is not bit-exact");
            assert_eq!(re, honest(bytes));
        }
        (Err(Error::PayloadLength { .. }), _) => {
            assert!(bytes.len() as u64 != descriptor.len || bytes.len() % 4 != 0);
        }
        (Err(Error::PayloadDigest), false) => {}
        (Err(Error::NotFinite { index }), true) => {
            assert_eq!(Some(*index), first_bad, "not the first non-finite value");
        }
        _ => panic!(
            "{result:?} for a payload that {}matches",
            if matches { "" } else { "mis" }
        ),
    }

    if mode % 2 == 0 {
        let mut plain = Vec::new();
        let alone = update::decode_f32(bytes, &mut plain);
        assert_eq!(alone, result, "decode_f32 and decode_payload disagree");
        if alone.is_ok() {
            assert_eq!(
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
});
