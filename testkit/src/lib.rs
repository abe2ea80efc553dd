//! # medmesh-testkit
//!
//! Signed fixtures for medmesh's tests, written once: member keys from fixed seeds, members and
//! signed roster chains, model versions with their payloads, validation reports, and a small
//! mesh history (three hospitals over three rounds, one validator) as the items a store would
//! hold. It is a dev-dependency of the other crates and must never be reachable from a shipped
//! binary: its keys are public.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use medmesh_protocol::identity::{ContentId, Keypair, Verified};
use medmesh_protocol::peer::Item;
use medmesh_protocol::roster::{Member, Role, Roster, SignedRoster};
use medmesh_protocol::update::{self, Version};
use medmesh_protocol::validation::{Dataset, Metric, Report};

use medmesh_learning::learner::ModelSpec;

/// The member key with seed `[n; 32]`.
pub fn key(n: u8) -> Keypair {
    Keypair::from_seed([n; 32])
}

/// Country of fixture member `n`, so reports and summaries cross borders.
pub fn country(n: u8) -> &'static str {
    ["DE", "FR", "US", "NL", "IT", "ES"][usize::from(n.saturating_sub(1)) % 6]
}

/// Member `n` with `role`: named `Hospital n` (or `Validator n`), at `Campus n`.
pub fn member(n: u8, role: Role) -> Member {
    let title = match role {
        Role::Hospital => "Hospital",
        Role::Validator => "Validator",
        Role::Observer => "Observer",
        Role::Relay => "Relay",
    };
    Member {
        id: key(n).id(),
        name: format!("{title} {n}"),
        site: format!("Campus {n}"),
        country: country(n).into(),
        group: String::new(),
        role,
        addresses: Vec::new(),
    }
}

/// `roster` signed by the keys `signers`.
pub fn signed_by(roster: Roster, signers: &[u8]) -> SignedRoster {
    let mut signed = SignedRoster::new(roster);
    for &n in signers {
        signed.sign(&key(n));
    }
    signed
}

/// The model every fixture version trains: logistic regression over 3 inputs (4 parameters).
pub fn spec() -> ModelSpec {
    ModelSpec::Logistic { inputs: 3 }
}

/// A version of [`spec`] by `author`, signed, with its payload bytes.
pub fn version(
    author: &Keypair,
    round: u64,
    parents: Vec<ContentId>,
    params: &[f32],
) -> (Verified<Version>, Bytes) {
    version_with(author, round, parents, params, |_| {})
}

/// [`version`] with `edit` applied before `author` signs it, for a test that needs another
/// experiment, model digest, sample count, degree, metrics or author (a forgery). The payload
/// descriptor is already that of `params`; the returned bytes are always the payload of
/// `params`.
pub fn version_with(
    author: &Keypair,
    round: u64,
    parents: Vec<ContentId>,
    params: &[f32],
    edit: impl FnOnce(&mut Version),
) -> (Verified<Version>, Bytes) {
    let mut bytes = Vec::new();
    let payload = update::encode_f32(params, &mut bytes);
    let model = spec().digest().expect("a built-in spec hashes");
    let mut version = Version {
        experiment: "heart".into(),
        model,
        round,
        author: author.id(),
        samples: 100 + round * 10 + u64::from(author.id().0[0] % 7),
        degree: 2,
        parents,
        metrics: BTreeMap::from([
            ("accuracy".to_string(), 0.7 + round as f64 / 100.0),
            ("loss".to_string(), 0.6 - round as f64 / 20.0),
        ]),
        payload,
    };
    edit(&mut version);
    (author.sign(version), Bytes::from(bytes))
}

/// A report by `validator` on `model` with an AUC and its confidence interval.
pub fn report(validator: &Keypair, n: u8, model: ContentId, auc: f64) -> Verified<Report> {
    validator.sign(Report {
        model,
        validator: validator.id(),
        dataset: Dataset {
            name: format!("test split {n}"),
            site: format!("Campus {n}"),
            country: country(n).into(),
            description: "held-out patients".into(),
        },
        samples: 80 + u64::from(n),
        metrics: BTreeMap::from([(
            "auc".to_string(),
            Metric {
                value: auc,
                low: Some(auc - 0.05),
                high: Some(auc + 0.04),
            },
        )]),
        issued_at_ms: 1_795_000_000_000,
    })
}

/// A version and its payload as the items a store keeps.
pub fn items(version: &Verified<Version>, bytes: &Bytes) -> [Item; 2] {
    [
        Item::Version(version.signed().clone()),
        Item::Payload {
            id: version.id(),
            bytes: bytes.clone(),
        },
    ]
}

/// The roster chain of the fixture mesh: genesis founded by hospitals 1, 2, 3 and validator 4
/// (threshold 2), then version 1 admitting hospital 5, signed by 1, 2 and 3 (one more than
/// needed).
pub fn rosters() -> Vec<SignedRoster> {
    let founders = vec![
        member(1, Role::Hospital),
        member(2, Role::Hospital),
        member(3, Role::Hospital),
        member(4, Role::Validator),
    ];
    let genesis = Roster::genesis("test mesh", 2, founders.clone()).expect("genesis");
    let mut next = founders;
    next.push(member(5, Role::Hospital));
    let next = genesis.next(next, 2).expect("next roster");
    vec![
        signed_by(genesis, &[1, 2, 3, 4]),
        signed_by(next, &[1, 2, 3]),
    ]
}

/// A small mesh history: three rounds of hospitals 1 (`a`), 2 (`b`) and 3 (`c`): round 1
/// starts from nothing; `a2` averages `a1` and `b1`, `b2` averages `b1`, `c1` and a version that
/// was never stored, `c2` averages `c1` and `a1`; `a3` averages the three round-2 versions.
/// Hospital 5 adds `e1` on its own. Plus the roster chain of [`rosters`] and the reports below.
pub struct History {
    /// Every signed item in the order a store would receive them.
    pub items: Vec<Item>,
    /// Versions by name: `a1`, `b1`, `c1`, `a2`, `b2`, `c2`, `a3`, and `e1` (outside the
    /// lineage of `a3`).
    pub versions: BTreeMap<&'static str, Verified<Version>>,
    /// A parent of `b2` that was never stored.
    pub missing: ContentId,
    /// Reports on the lineage of `a3`: validator 4 on `a3` and `b2`, hospital 1 on `c1`.
    pub reports: Vec<Verified<Report>>,
    /// A report outside the lineage of `a3` (validator 4 on `e1`).
    pub unrelated: Verified<Report>,
}

impl History {
    /// The version named `name`.
    pub fn get(&self, name: &str) -> &Verified<Version> {
        self.versions.get(name).expect("a fixture version")
    }
}

/// The [`History`] fixture.
pub fn history() -> History {
    let mut items: Vec<Item> = rosters().into_iter().map(Item::Roster).collect();
    let params = |seed: f32| [seed, seed * 0.5, -seed, 0.25];
    let mut versions = BTreeMap::new();
    let mut add = |name: &'static str, n: u8, round, parents: Vec<ContentId>| {
        let (v, bytes) = version(
            &key(n),
            round,
            parents,
            &params(round as f32 + f32::from(n)),
        );
        items.extend(self::items(&v, &bytes));
        versions.insert(name, v.clone());
        v.id()
    };
    let missing = ContentId([0xAB; 32]);
    let a1 = add("a1", 1, 1, vec![]);
    let b1 = add("b1", 2, 1, vec![]);
    let c1 = add("c1", 3, 1, vec![]);
    let a2 = add("a2", 1, 2, vec![a1, b1]);
    let b2 = add("b2", 2, 2, vec![b1, c1, missing]);
    let c2 = add("c2", 3, 2, vec![c1, a1]);
    let a3 = add("a3", 1, 3, vec![a2, b2, c2]);
    let e1 = add("e1", 5, 1, vec![]);
    let reports = vec![
        report(&key(4), 4, a3, 0.86),
        report(&key(4), 4, b2, 0.81),
        report(&key(1), 1, c1, 0.78),
    ];
    let unrelated = report(&key(4), 4, e1, 0.7);
    items.extend(
        reports
            .iter()
            .chain([&unrelated])
            .map(|r| Item::Report(r.signed().clone())),
    );
    History {
        items,
        versions,
        missing,
        reports,
        unrelated,
    }
}

/// Copies every file of folder `from` into a new folder `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creates the copy");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copies");
    }
}

#[cfg(test)]
mod tests {
    use medmesh_protocol::identity::Digest;

    use super::*;

    #[test]
    fn version_with_edits_before_signing() {
        let (plain, bytes) = version(&key(1), 2, vec![], &[1.0; 4]);
        let (same, same_bytes) = version_with(&key(1), 2, vec![], &[1.0; 4], |_| {});
        assert_eq!((plain.id(), &bytes), (same.id(), &same_bytes));
        let (edited, edited_bytes) = version_with(&key(1), 2, vec![], &[1.0; 4], |v| {
            v.experiment = "other".into();
            v.model = Digest::default();
            v.samples = 10;
        });
        assert_eq!(edited_bytes, bytes);
        assert_eq!(
            (edited.experiment.as_str(), edited.model, edited.samples),
            ("other", Digest::default(), 10)
        );
        assert_eq!(edited.payload, plain.payload);
        assert_eq!(edited.signed().clone().verify(), Ok(edited.clone()));
        // A forgery: signed by key 1, naming member 2 as its author.
        let (forged, _) = version_with(&key(1), 2, vec![], &[1.0; 4], |v| v.author = key(2).id());
        assert_eq!(forged.signer(), key(1).id());
        assert_eq!(forged.author, key(2).id());
    }
}
