//! Gossip bytes as a peer receives them: `wire::Message::from_bytes` with the gossip limit, then
//! what `Peer::handle_message` does with each kind: verify and check an announced version or a
//! report, offer a roster update to a small valid chain.
//!
//! Checks: nothing panics; a decoded message re-encodes to no more bytes than it came in, and
//! those bytes decode to the same message; an envelope that verifies re-encodes its value to
//! bytes that decode to the same value.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medmesh_protocol::identity::{Signable, Signed};
use medmesh_protocol::roster::Chain;
use medmesh_protocol::wire::{self, MAX_GOSSIP, Message};

static CHAIN: LazyLock<Chain> = LazyLock::new(medmesh_fuzz::chain);

/// Verifies `signed`; when it verifies, checks that its value survives a round trip.
fn verified_round_trip<T: Signable>(signed: Signed<T>) -> Option<T> {
    let verified = signed.verify().ok()?;
    let bytes = wire::encode(verified.value());
    let back: T = wire::decode(&bytes).expect("a verified value re-encodes to a decodable value");
    assert_eq!(wire::encode(&back), bytes, "re-encoding is not stable");
    Some(back)
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::from_bytes(data, MAX_GOSSIP) else {
        return;
    };
    let again = message.to_bytes();
    // A gossip message has one encoding (`DecodeError::NonCanonical`); the others (requests and
    // payloads, accepted here only as the peer would refuse them on this channel) at least do
    // not grow.
    if message.is_gossip() {
        assert_eq!(again, data, "an accepted gossip message is not its canonical encoding");
    }
    assert!(
        again.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        again.len()
    );
    assert_eq!(
        Message::from_bytes(&again, MAX_GOSSIP).as_ref(),
        Ok(&message)
    );
    match message {
        Message::Announce(signed) => {
            let signer = signed.signer();
            if let Some(version) = verified_round_trip(signed) {
                let _ = version.check(signer);
            }
        }
        Message::Report(signed) => {
            let signer = signed.signer();
            if let Some(report) = verified_round_trip(signed) {
                let _ = report.check(signer);
            }
        }
        Message::Roster(update) => {
            let _ = CHAIN.clone().apply(update);
        }
        Message::Request(_) | Message::Payload { .. } => {}
    }
});
