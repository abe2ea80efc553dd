//! Fixtures shared by the medmesh fuzz targets and the seed generator (`examples/seeds.rs`):
//! fixed member keys, a small roster chain and valid signed items, so that the seeds a target
//! starts from and the chain it checks them against agree on who the members are; and
//! [`replace_file`], for the targets whose code under test reads files.
//!
//! Everything here is deterministic (keys come from fixed seeds and ed25519 signing is
//! deterministic), so the seed corpus is byte-for-byte the same on every machine. Fixtures are
//! built from constants, so a failing `expect` here is a bug in the fixture, not a finding.

use std::collections::BTreeMap;

use medmesh_protocol::identity::{ContentId, Digest, Keypair, Verified};
use medmesh_protocol::roster::{Chain, Member, Role, Roster, SignedRoster};
use medmesh_protocol::update::{self, Version};
use medmesh_protocol::validation::{Dataset, Metric, Report};

/// Name of the fixture mesh.
pub const MESH: &str = "fuzz mesh";
/// Name of the fixture experiment.
pub const EXPERIMENT: &str = "fuzz";
/// Key numbers of the founders (see [`key`]).
pub const FOUNDERS: [u8; 3] = [1, 2, 3];
/// Signatures of the genesis members needed for version 1.
pub const THRESHOLD: u32 = 2;

/// The key of member `n` (seed `[n; 32]`).
pub fn key(n: u8) -> Keypair {
    Keypair::from_seed([n; 32])
}

/// Member `n`: a hospital, except member 3, a validator in another country.
pub fn member(n: u8) -> Member {
    let validator = n == 3;
    Member {
        id: key(n).id(),
        name: format!("Hospital {n}"),
        site: format!("Campus {n}"),
        country: if validator { "NL" } else { "DE" }.into(),
        group: String::new(),
        role: if validator {
            Role::Validator
        } else {
            Role::Hospital
        },
        addresses: vec![format!("/ip4/10.0.0.{n}/tcp/4001")],
    }
}

fn signed_by(roster: Roster, signers: &[u8]) -> SignedRoster {
    let mut signed = SignedRoster::new(roster);
    for &n in signers {
        signed.sign(&key(n));
    }
    signed
}

/// The genesis roster of [`FOUNDERS`] with [`THRESHOLD`], signed by every founder.
pub fn genesis() -> SignedRoster {
    let roster = Roster::genesis(MESH, THRESHOLD, FOUNDERS.map(member).to_vec())
        .expect("the fixture genesis is well formed");
    signed_by(roster, &FOUNDERS)
}

/// The chain that starts at [`genesis`].
pub fn chain() -> Chain {
    Chain::from_genesis(genesis()).expect("the fixture genesis is signed by every founder")
}

/// The version after the chain's current one, with `members` and `threshold`, signed by
/// `signers`.
pub fn next(chain: &Chain, members: &[u8], threshold: u32, signers: &[u8]) -> SignedRoster {
    let roster = chain
        .current()
        .next(members.iter().copied().map(member).collect(), threshold)
        .expect("the fixture next version is well formed");
    signed_by(roster, signers)
}

/// A version by `author` at `round` over `params`, signed, with its payload bytes.
pub fn version(author: &Keypair, round: u64, params: &[f32]) -> (Verified<Version>, Vec<u8>) {
    let mut bytes = Vec::new();
    let payload = update::encode_f32(params, &mut bytes);
    let version = author.sign(Version {
        experiment: EXPERIMENT.into(),
        model: Digest([7; 32]),
        round,
        author: author.id(),
        samples: 199,
        degree: 2,
        parents: vec![ContentId([1; 32]), ContentId([2; 32])],
        metrics: BTreeMap::from([("accuracy".into(), 0.75), ("loss".into(), 0.5)]),
        payload,
    });
    (version, bytes)
}

/// A report by `validator` on `model`, signed.
pub fn report(validator: &Keypair, model: ContentId) -> Verified<Report> {
    validator.sign(Report {
        model,
        validator: validator.id(),
        dataset: Dataset {
            name: "cleveland-test".into(),
            site: "Campus 3".into(),
            country: "NL".into(),
            description: "FLamby test split of center 0".into(),
        },
        samples: 104,
        metrics: BTreeMap::from([
            (
                "auc".into(),
                Metric {
                    value: 0.85,
                    low: Some(0.78),
                    high: Some(0.91),
                },
            ),
            (
                "accuracy".into(),
                Metric {
                    value: 0.8,
                    low: None,
                    high: None,
                },
            ),
        ]),
        issued_at_ms: 1_795_000_000_000,
    })
}

/// Writes `bytes` to `path` as a new file, for targets that hand their input to code that reads
/// files. Removing the old file first matters: ext4 flushes a file that is truncated and written
/// again to disk when it is closed, which made such a target wait on the disk on every run.
pub fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    // A missing file is fine; any other failure shows in the write.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).expect("the temporary folder is writable");
}
