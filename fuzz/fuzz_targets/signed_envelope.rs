//! Signed envelopes of the two kinds members publish, `Signed<Version>` and `Signed<Report>`:
//! decode, verify (alone and in a batch) and check the rules.
//!
//! The first byte picks what the rest is:
//! - `0` / `1`: an envelope (version / report) as received: it must verify the same way alone
//!   and in a batch of two, with the same content id, and a verified value is then checked;
//! - `2` / `3`: the body of a version / report, which a fixed member signs (a fuzzer cannot
//!   forge signatures, so this is how arbitrary values reach the rules): the envelope must then
//!   survive the wire and verify to the same value, and the rules must decide without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_protocol::identity::{self, Error, Signable, Signed, Verified};
use medmesh_protocol::update::Version;
use medmesh_protocol::validation::Report;
use medmesh_protocol::wire;

/// Verifies a received envelope alone and in a batch; both must agree.
fn received<T: Signable + std::fmt::Debug>(bytes: &[u8]) -> Option<Verified<T>> {
    let signed: Signed<T> = wire::decode(bytes).ok()?;
    let alone = signed.clone().verify();
    for batched in identity::verify_batch(vec![signed.clone(), signed]) {
        match (&alone, &batched) {
            (Ok(a), Ok(b)) => assert_eq!(a.id(), b.id(), "batch gives another content id"),
            (Err(_), Err(_)) => {}
            _ => panic!("alone: {alone:?}, in a batch: {batched:?}"),
        }
    }
    alone.ok()
}

/// Signs an arbitrary value with a fixed member's key and sends it through the wire.
fn signed_here<T: Signable>(bytes: &[u8]) -> Option<Verified<T>> {
    let value: T = wire::decode(bytes).ok()?;
    let signed = medmesh_fuzz::key(1).sign(value);
    let envelope: Signed<T> =
        wire::decode(&wire::encode(signed.signed())).expect("an envelope survives the wire");
    match envelope.verify() {
        Ok(verified) => {
            assert_eq!(verified.id(), signed.id());
            assert_eq!(wire::encode(verified.value()), wire::encode(signed.value()));
            Some(verified)
        }
        // Values whose canonical encoding exceeds the kind's limit are refused, as they must be.
        Err(Error::TooLarge { .. }) => None,
        Err(e) => panic!("an honestly signed envelope does not verify: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Some(v) = received::<Version>(rest) {
                let _ = v.check(v.signer());
            }
        }
        1 => {
            if let Some(r) = received::<Report>(rest) {
                let _ = r.check(r.signer());
            }
        }
        2 => {
            if let Some(v) = signed_here::<Version>(rest) {
                let _ = v.check(v.signer());
            }
        }
        _ => {
            if let Some(r) = signed_here::<Report>(rest) {
                let _ = r.check(r.signer());
            }
        }
    }
});
