//! Roster updates, in every form they arrive in: bincode (gossip), JSON (the genesis file and
//! the admin endpoint), and the JSON roster-sync response (`network::RosterResponse`), offered to
//! a small valid chain with `Chain::apply`.
//!
//! The first byte picks what the rest is:
//! - `0`: a bincode `SignedRoster`;
//! - `1`: a JSON `SignedRoster`, which must also survive a JSON round trip;
//! - `2`: a JSON `RosterResponse`, whose updates are applied in order, as a syncing node does;
//! - `3`: a bincode `Roster` body, which a threshold of the chain's members then signs (a fuzzer
//!   cannot forge signatures, so this is how arbitrary bodies reach the acceptance rules): it
//!   must be accepted exactly when it is a well-formed next version of the chain.
//!
//! Checks, whatever was offered: nothing panics; an accepted update becomes the current roster,
//! passes `Roster::check`, and the chain's history replays to the same chain; a refused update
//! leaves the chain unchanged; merging the signatures of an update for the genesis body never
//! spoils the genesis.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medmesh_fuzz::{THRESHOLD, key};
use medmesh_node::network::RosterResponse;
use medmesh_protocol::roster::{Chain, Outcome, Roster, SignedRoster};
use medmesh_protocol::wire;

static CHAIN: LazyLock<Chain> = LazyLock::new(medmesh_fuzz::chain);

/// Applies `update` to `chain` and checks what that did.
fn offer(chain: &mut Chain, update: SignedRoster) -> bool {
    let before = chain.history().len();
    let body = update.roster().clone();
    match chain.apply(update) {
        Ok(Outcome::Advanced { version }) => {
            assert_eq!(version, body.version);
            assert_eq!(chain.current(), &body);
            assert_eq!(chain.history().len(), before + 1);
            assert_eq!(body.check(), Ok(()));
            let replayed = Chain::from_history(chain.history().to_vec()).expect("history replays");
            assert_eq!(replayed.history(), chain.history());
            true
        }
        Ok(Outcome::Duplicate) => {
            assert_eq!(chain.history().len(), before);
            let index = usize::try_from(body.version).expect("an accepted version is small");
            assert_eq!(chain.history()[index].roster(), &body);
            false
        }
        Err(_) => {
            assert_eq!(
                chain.history().len(),
                before,
                "a refused update changed the chain"
            );
            false
        }
    }
}

/// Merging whatever signatures came with a copy of the genesis body must keep it valid.
fn merge_into_genesis(update: &SignedRoster) {
    let genesis = CHAIN.history()[0].clone();
    if update.roster() != genesis.roster() {
        return;
    }
    let mut merged = genesis;
    merged.merge(update).expect("same body");
    Chain::from_genesis(merged).expect("merging cannot spoil a valid genesis");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(update) = wire::decode::<SignedRoster>(rest) {
                merge_into_genesis(&update);
                offer(&mut CHAIN.clone(), update);
            }
        }
        1 => {
            if let Ok(update) = serde_json::from_slice::<SignedRoster>(rest) {
                let text = serde_json::to_string(&update).expect("serializes");
                let back: SignedRoster = serde_json::from_str(&text).expect("parses back");
                assert_eq!(back, update);
                merge_into_genesis(&update);
                offer(&mut CHAIN.clone(), update);
            }
        }
        2 => {
            if let Ok(response) = serde_json::from_slice::<RosterResponse>(rest) {
                let mut chain = CHAIN.clone();
                for update in response.updates {
                    offer(&mut chain, update);
                }
            }
        }
        _ => {
            let Ok(body) = wire::decode::<Roster>(rest) else {
                return;
            };
            let mut update = SignedRoster::new(body.clone());
            for n in 1..=u8::try_from(THRESHOLD).expect("small threshold") {
                update.sign(&key(n));
            }
            let current = CHAIN.current();
            let well_formed_next = body.check().is_ok()
                && body.mesh == current.mesh
                && Some(body.version) == current.version.checked_add(1)
                && body.previous == Some(current.digest());
            let accepted = offer(&mut CHAIN.clone(), update);
            assert_eq!(
                accepted,
                well_formed_next,
                "a threshold-signed body was {} although it is {}a well-formed next version",
                if accepted { "accepted" } else { "refused" },
                if well_formed_next { "" } else { "not " },
            );
        }
    }
});
