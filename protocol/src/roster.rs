//! Membership: who is in the mesh, decided by the members themselves through a signed chain of
//! rosters.
//!
//! A [`Roster`] is one version of the member list (id, name, site, country, [`Role`], addresses)
//! with a signature threshold. Version 0, the genesis, must be signed by every member it names
//! (the founders). Version n+1 must name the digest of version n's body as `previous` and carry
//! valid signatures from at least `threshold` distinct members of version n; admitting a hospital
//! or removing one is just such a next version. A [`SignedRoster`] is a body plus the signatures
//! collected for it, and a [`Chain`] is what a peer follows: it accepts the next version, ignores
//! duplicates and refuses forks, rollbacks and gaps, so every peer that sees the same versions
//! reaches the same roster on its own.
//!
//! This module must never let anyone but a threshold of the previous members change the roster,
//! never trust a roster decoded from outside before [`Roster::check`] has passed, never panic on
//! hostile input (every broken rule is a typed [`Error`]), and never do I/O, read a clock or use
//! OS randomness.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::{self, Digest, Keypair, MemberId};
use crate::wire;

/// BLAKE3 key-derivation context of a roster body's digest (the value members sign).
pub const ROSTER_CONTEXT: &str = "medmesh 2026-11 roster v1";
/// Most members one roster may hold. A roster of more than about a thousand members no longer
/// fits one gossip message ([`wire::MAX_GOSSIP`]); nodes then learn new versions by roster sync
/// only. The simulator runs meshes up to this size.
pub const MAX_MEMBERS: usize = 16_384;
/// Longest mesh name, in bytes.
pub const MAX_MESH_LEN: usize = 64;
/// Longest member name or site, in bytes.
pub const MAX_TEXT_LEN: usize = 128;
/// Most addresses one member may list.
pub const MAX_ADDRESSES: usize = 16;
/// Longest address, in bytes.
pub const MAX_ADDRESS_LEN: usize = 256;

/// An ed25519 signature as it travels in a [`SignedRoster`].
type Signature = serde_bytes::ByteArray<64>;

/// Why a roster, a set of signatures or a chain step is not acceptable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The roster breaks a shape rule (sizes, order, threshold, text), or a history or a set of
    /// signatures is malformed; the text says which.
    #[error("invalid roster: {0}")]
    Invalid(&'static str),
    /// A chain must start at version 0.
    #[error("a chain starts at version 0, not {version}")]
    NotGenesis {
        /// Version of the roster offered as genesis.
        version: u64,
    },
    /// The roster belongs to another mesh; the genesis fixes the mesh name for good.
    #[error("roster of mesh {got:?} offered to a chain of mesh {expected:?}")]
    OtherMesh {
        /// Mesh name of the chain.
        expected: String,
        /// Mesh name of the roster.
        got: String,
    },
    /// Fewer valid signatures from distinct entitled members than required (every founder for a
    /// genesis, the previous version's threshold otherwise). Signatures by non-members and
    /// signatures that do not verify are not counted.
    #[error("{have} valid member signatures, {need} needed")]
    NotEnoughSignatures {
        /// Valid signatures from distinct entitled members.
        have: usize,
        /// Signatures required.
        need: usize,
    },
    /// Another roster was already accepted at this version, or the roster does not link to the
    /// accepted previous version: it branches off the chain.
    #[error("roster version {version} forks from the accepted chain")]
    Fork {
        /// The version offered.
        version: u64,
    },
    /// An older version that differs from the one accepted at that version.
    #[error("roster version {got} conflicts with the accepted chain, which is at version {have}")]
    Rollback {
        /// Current version of the chain.
        have: u64,
        /// Version offered.
        got: u64,
    },
    /// A version more than one ahead: the versions in between are missing.
    #[error("roster version {got} skips ahead of the current version {have}")]
    Gap {
        /// Current version of the chain.
        have: u64,
        /// Version offered.
        got: u64,
    },
    /// Signatures can only be merged for the same roster body.
    #[error("cannot merge signatures of different roster bodies")]
    DifferentBodies,
    /// A chain history must hold at least the genesis.
    #[error("empty roster history")]
    EmptyHistory,
}

/// What a member may do in the mesh besides signing roster changes, which every member may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Trains on its own data and validates others' models.
    Hospital,
    /// Validates models on its own data but does not train.
    Validator,
    /// Follows the mesh (models, reports) without training or validating.
    Observer,
    /// Relays connections for members behind NAT: a node at a public address (its roster
    /// addresses) that others reserve a slot on and reach each other through until they connect
    /// directly. It neither trains nor validates. (Added last: rosters signed before it decode
    /// as they did.)
    Relay,
}

impl Role {
    /// Whether a member with this role may publish model versions it trained.
    pub fn may_train(self) -> bool {
        matches!(self, Role::Hospital)
    }

    /// Whether a member with this role may publish validation reports.
    pub fn may_validate(self) -> bool {
        matches!(self, Role::Hospital | Role::Validator)
    }
}

/// One member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its ed25519 public key.
    pub id: MemberId,
    /// Human-readable name, 1 to 128 bytes.
    pub name: String,
    /// Site (hospital campus, institute), at most 128 bytes.
    pub site: String,
    /// ISO 3166-1 alpha-2 country code, uppercase (`DE`, `US`).
    pub country: String,
    /// The group it averages with first under two-level averaging (its medical centre, e.g.
    /// `centre-a`), at most 128 bytes; empty for none. One level: members with the same text
    /// form a group. Changed, like any field, by a roster update.
    pub group: String,
    /// What it may do.
    pub role: Role,
    /// libp2p multiaddrs to reach it, possibly none; at most 16 of at most 256 bytes each.
    pub addresses: Vec<String>,
}

impl Member {
    fn check(&self) -> Result<(), Error> {
        if self.name.is_empty() || self.name.len() > MAX_TEXT_LEN || !printable(&self.name) {
            return Err(Error::Invalid(
                "member name must be 1 to 128 bytes without control characters",
            ));
        }
        if self.site.len() > MAX_TEXT_LEN || !printable(&self.site) {
            return Err(Error::Invalid(
                "site must be at most 128 bytes without control characters",
            ));
        }
        if self.group.len() > MAX_TEXT_LEN || !printable(&self.group) {
            return Err(Error::Invalid(
                "group must be at most 128 bytes without control characters",
            ));
        }
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::Invalid(
                "country must be an uppercase ISO 3166-1 alpha-2 code",
            ));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(Error::Invalid("a member lists at most 16 addresses"));
        }
        if self
            .addresses
            .iter()
            .any(|a| a.is_empty() || a.len() > MAX_ADDRESS_LEN || !printable(a))
        {
            return Err(Error::Invalid(
                "addresses must be 1 to 256 bytes without control characters",
            ));
        }
        // A member whose key can never produce a valid (strict) signature would still count
        // towards the number of members, and could make the threshold unreachable for good.
        if !MemberId::is_usable_key(&self.id) {
            return Err(Error::Invalid(
                "member id is not a usable ed25519 public key",
            ));
        }
        Ok(())
    }
}

/// Names and addresses end up in logs and terminals; control characters have no business there.
fn printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// One version of the member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Name of the mesh, 1 to 64 bytes; fixed by the genesis.
    pub mesh: String,
    /// Version number; the genesis is 0 and each change adds 1.
    pub version: u64,
    /// Digest of version − 1's body; `None` only for the genesis.
    pub previous: Option<Digest>,
    /// How many members of this version must sign the next one; 1 to the number of members.
    pub threshold: u32,
    /// The members, sorted by id, without duplicate ids.
    pub members: Vec<Member>,
}

impl Roster {
    /// The founding roster (version 0) of a mesh. Sorts the members by id and checks the shape;
    /// the founders must then all sign it (see [`Chain::from_genesis`]).
    pub fn genesis(
        mesh: impl Into<String>,
        threshold: u32,
        mut members: Vec<Member>,
    ) -> Result<Roster, Error> {
        members.sort_by_key(|m| m.id);
        let roster = Roster {
            mesh: mesh.into(),
            version: 0,
            previous: None,
            threshold,
            members,
        };
        roster.check()?;
        Ok(roster)
    }

    /// A proposal for the version after this one, with the given members and threshold (same
    /// mesh, version + 1, linked to this version's digest). Sorts the members and checks the
    /// shape; a threshold of this version's members must then sign it.
    pub fn next(&self, mut members: Vec<Member>, threshold: u32) -> Result<Roster, Error> {
        let version = self
            .version
            .checked_add(1)
            .ok_or(Error::Invalid("roster version overflows"))?;
        members.sort_by_key(|m| m.id);
        let next = Roster {
            mesh: self.mesh.clone(),
            version,
            previous: Some(self.digest()),
            threshold,
            members,
        };
        next.check()?;
        Ok(next)
    }

    /// Checks the shape rules every roster must follow whoever signed it: a mesh name of 1 to 64
    /// bytes, `previous` absent exactly for version 0, 1 to 4096 members sorted by id without
    /// duplicates, a threshold between 1 and the number of members, bounded texts without control
    /// characters, uppercase two-letter country codes and usable ed25519 keys as ids.
    pub fn check(&self) -> Result<(), Error> {
        if self.mesh.is_empty() || self.mesh.len() > MAX_MESH_LEN || !printable(&self.mesh) {
            return Err(Error::Invalid(
                "mesh name must be 1 to 64 bytes without control characters",
            ));
        }
        if (self.version == 0) != self.previous.is_none() {
            return Err(Error::Invalid(
                "previous digest must be absent exactly for version 0",
            ));
        }
        if self.members.is_empty() {
            return Err(Error::Invalid("a roster needs at least one member"));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(Error::Invalid("a roster holds at most 4096 members"));
        }
        let threshold = usize::try_from(self.threshold).unwrap_or(usize::MAX);
        if threshold == 0 || threshold > self.members.len() {
            return Err(Error::Invalid(
                "threshold must be between 1 and the number of members",
            ));
        }
        if !self.members.windows(2).all(|w| w[0].id < w[1].id) {
            return Err(Error::Invalid(
                "members must be sorted by id, without duplicate ids",
            ));
        }
        self.members.iter().try_for_each(Member::check)
    }

    /// BLAKE3 (roster context) of the canonical encoding of this body: what members sign and what
    /// the next version names as `previous`.
    pub fn digest(&self) -> Digest {
        Digest::of(ROSTER_CONTEXT, &wire::encode(self))
    }

    /// The member with this id, if any (binary search: meaningful on a checked roster).
    pub fn member(&self, id: &MemberId) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.id.cmp(id))
            .ok()
            .and_then(|i| self.members.get(i))
    }

    /// Whether this id is a member.
    pub fn contains(&self, id: &MemberId) -> bool {
        self.member(id).is_some()
    }
}

/// A roster body plus the signatures collected for it (several members sign the same digest).
///
/// Signatures are kept sorted by signer, one per signer. A value decoded from outside may break
/// that order; [`SignedRoster::sign`] and [`SignedRoster::merge`] restore it, and [`Chain`]
/// counts each signer once whatever the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRoster {
    roster: Roster,
    signatures: Vec<(MemberId, Signature)>,
}

impl SignedRoster {
    /// A proposal with no signatures yet.
    pub fn new(roster: Roster) -> SignedRoster {
        SignedRoster {
            roster,
            signatures: Vec::new(),
        }
    }

    /// Adds this key's signature over the body's digest, replacing an earlier one by the same key.
    /// Signing says nothing about whether the key is entitled to; the chain decides that.
    pub fn sign(&mut self, key: &Keypair) {
        self.sign_all([key]);
    }

    /// [`SignedRoster::sign`] with each key in turn, hashing the body once (founders of a
    /// simulated mesh of thousands sign one genesis).
    pub fn sign_all<'a>(&mut self, keys: impl IntoIterator<Item = &'a Keypair>) {
        self.normalize();
        let digest = self.roster.digest();
        let mut signatures: BTreeMap<MemberId, Signature> = self.signatures.drain(..).collect();
        for key in keys {
            signatures.insert(key.id(), Signature::new(key.sign_digest(&digest)));
        }
        self.signatures = signatures.into_iter().collect();
    }

    /// Adds the signatures of `other`, which must carry the same body, to this one. Only
    /// signatures that verify are taken, and a valid signature is never replaced by an invalid
    /// one, so merging what a hostile peer sent cannot spoil a proposal. Whether a signer is
    /// entitled is left to the chain. Nothing changes when the union would hold more than
    /// [`MAX_MEMBERS`] signatures (no roster has that many members to sign it).
    pub fn merge(&mut self, other: &SignedRoster) -> Result<(), Error> {
        if self.roster != other.roster {
            return Err(Error::DifferentBodies);
        }
        self.normalize();
        let digest = self.roster.digest();
        let valid = |signer: &MemberId, signature: &Signature| {
            identity::verify_digest(signer, &digest, signature).is_ok()
        };
        let mut merged: BTreeMap<MemberId, Signature> = self.signatures.iter().copied().collect();
        let mut seen = BTreeSet::new();
        for (signer, theirs) in &other.signatures {
            // One look per signer keeps the number of verifications bounded by the signers.
            if !seen.insert(*signer) {
                continue;
            }
            match merged.get(signer) {
                Some(ours) if ours == theirs => {}
                Some(ours) => {
                    if !valid(signer, ours) && valid(signer, theirs) {
                        merged.insert(*signer, *theirs);
                    }
                }
                None => {
                    if valid(signer, theirs) {
                        merged.insert(*signer, *theirs);
                    }
                }
            }
        }
        if merged.len() > MAX_MEMBERS {
            return Err(Error::Invalid(
                "more signatures than a roster may have members",
            ));
        }
        self.signatures = merged.into_iter().collect();
        Ok(())
    }

    /// The roster body.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Who signed, as claimed (not verified), in signer order.
    pub fn signers(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.signatures.iter().map(|(signer, _)| *signer)
    }

    /// The members of `electorate` whose signature over this body verifies, in id order (what
    /// a tool shows before the chain counts them).
    pub fn valid_signers(&self, electorate: &Roster) -> Vec<MemberId> {
        tally(self, electorate, &self.roster.digest(), 0)
            .map(|counted| counted.into_iter().map(|(id, _)| id).collect())
            .unwrap_or_default()
    }

    /// Restores the signer order and drops repeated signers (the first entry stays), in case this
    /// value was decoded from outside.
    fn normalize(&mut self) {
        self.signatures.sort_by_key(|(signer, _)| *signer);
        self.signatures.dedup_by_key(|(signer, _)| *signer);
    }
}

/// Counts the valid signatures of distinct members of `electorate` over `digest`, stopping as
/// soon as `need` are found (0: counts them all). Each signer's first entry is the only one verified, so the work is
/// bounded by the electorate whatever was sent. Returns the counted signatures, sorted by signer.
fn tally(
    signed: &SignedRoster,
    electorate: &Roster,
    digest: &Digest,
    need: usize,
) -> Result<Vec<(MemberId, Signature)>, Error> {
    let mut tried = BTreeSet::new();
    let mut counted = Vec::new();
    for (signer, signature) in &signed.signatures {
        if need > 0 && counted.len() >= need {
            break;
        }
        if !electorate.contains(signer) || !tried.insert(*signer) {
            continue;
        }
        if identity::verify_digest(signer, digest, signature).is_ok() {
            counted.push((*signer, *signature));
        }
    }
    if counted.len() < need {
        return Err(Error::NotEnoughSignatures {
            have: counted.len(),
            need,
        });
    }
    counted.sort_by_key(|(signer, _)| *signer);
    Ok(counted)
}

/// What [`Chain::apply`] did with a roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The roster was the next version and is now current.
    Advanced {
        /// The new current version.
        version: u64,
    },
    /// The roster was already accepted; nothing changed.
    Duplicate,
}

/// The roster chain a peer follows. Holds the current verified roster and the digests of every
/// version it accepted (to tell duplicates from forks).
///
/// Each accepted version is stored with only the signatures that made it valid (verified, from
/// entitled members, sorted), which is all a peer needs to replay the chain with
/// [`Chain::from_history`].
///
/// Cloning a chain is cheap: clones share the accepted versions until one of them advances (the
/// simulator gives each of thousands of peers a copy of one large roster).
#[derive(Debug, Clone)]
pub struct Chain {
    /// Every accepted version, genesis first; never empty, index = version.
    history: Arc<Vec<SignedRoster>>,
    /// Digest of each accepted body, index = version.
    digests: Arc<Vec<Digest>>,
}

impl Chain {
    /// Starts a chain. Genesis is valid only when signed by ALL its members (the founders) and
    /// has version 0, previous None.
    pub fn from_genesis(genesis: SignedRoster) -> Result<Chain, Error> {
        let roster = &genesis.roster;
        roster.check()?;
        if roster.version != 0 {
            return Err(Error::NotGenesis {
                version: roster.version,
            });
        }
        let digest = roster.digest();
        let signatures = tally(&genesis, roster, &digest, roster.members.len())?;
        Ok(Chain {
            history: Arc::new(vec![SignedRoster {
                roster: genesis.roster,
                signatures,
            }]),
            digests: Arc::new(vec![digest]),
        })
    }

    /// Follows a chain from genesis through each later version (what a restarted or new peer does
    /// with the stored/fetched chain). Every version must advance the chain by one: a repeated,
    /// forked, tampered or missing version is an error.
    pub fn from_history(history: Vec<SignedRoster>) -> Result<Chain, Error> {
        let mut versions = history.into_iter();
        let genesis = versions.next().ok_or(Error::EmptyHistory)?;
        let mut chain = Chain::from_genesis(genesis)?;
        for update in versions {
            match chain.apply(update)? {
                Outcome::Advanced { .. } => {}
                Outcome::Duplicate => {
                    return Err(Error::Invalid("a history lists a version twice"));
                }
            }
        }
        Ok(chain)
    }

    /// The current roster.
    pub fn current(&self) -> &Roster {
        &self.current_signed().roster
    }

    /// The current roster with the signatures that made it valid.
    pub fn current_signed(&self) -> &SignedRoster {
        // Never empty: a chain is built from a genesis and only grows.
        &self.history[self.history.len() - 1]
    }

    /// All accepted versions, genesis first (the node stores/exports them).
    pub fn history(&self) -> &[SignedRoster] {
        &self.history
    }

    /// Offers a roster to the chain.
    ///
    /// Version n+1 is accepted only when previous == digest of version n and it carries valid
    /// signatures from at least `threshold` DISTINCT members of version n (signatures by
    /// non-members of n, or that do not verify, do not count; a bad signature alone never makes an
    /// otherwise sufficient set fail, it only shows in the count of
    /// [`Error::NotEnoughSignatures`] when the set is short). Removal of members is just a next
    /// version without them.
    ///
    /// A version at or below the current one whose digest equals the accepted one at that version
    /// is [`Outcome::Duplicate`]; with another digest it is [`Error::Fork`] at the current version
    /// and [`Error::Rollback`] below it. A version beyond current + 1 is [`Error::Gap`], and a
    /// next version that does not link to the current digest is [`Error::Fork`] (it branches
    /// off). A roster of another mesh is [`Error::OtherMesh`]. On any error the chain is unchanged.
    ///
    /// The shape rules ([`Roster::check`]) run before anything can be accepted, but after the
    /// digest comparison for old versions: a digest equal to an accepted one means the very body
    /// that was checked then, and anything else there is refused anyway, so the common duplicate
    /// costs one hash instead of a key check per member.
    pub fn apply(&mut self, update: SignedRoster) -> Result<Outcome, Error> {
        let body = &update.roster;
        let current = self.current();
        if body.mesh != current.mesh {
            return Err(Error::OtherMesh {
                expected: current.mesh.clone(),
                got: body.mesh.clone(),
            });
        }
        let (have, got) = (current.version, body.version);
        if got <= have {
            let accepted = usize::try_from(got).ok().and_then(|i| self.digests.get(i));
            return match accepted {
                Some(digest) if *digest == body.digest() => Ok(Outcome::Duplicate),
                _ if got == have => Err(Error::Fork { version: got }),
                _ => Err(Error::Rollback { have, got }),
            };
        }
        if got - have > 1 {
            return Err(Error::Gap { have, got });
        }
        body.check()?;
        if body.previous.as_ref() != self.digests.last() {
            return Err(Error::Fork { version: got });
        }
        let digest = body.digest();
        let need = usize::try_from(current.threshold).unwrap_or(usize::MAX);
        let signatures = tally(&update, current, &digest, need)?;
        Arc::make_mut(&mut self.history).push(SignedRoster {
            roster: update.roster,
            signatures,
        });
        Arc::make_mut(&mut self.digests).push(digest);
        Ok(Outcome::Advanced { version: got })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Keypair {
        Keypair::from_seed([n; 32])
    }

    fn member(n: u8) -> Member {
        Member {
            id: key(n).id(),
            name: format!("Hospital {n}"),
            site: format!("Campus {n}"),
            country: "DE".into(),
            group: String::new(),
            role: Role::Hospital,
            addresses: vec![format!("/ip4/10.0.0.{n}/tcp/4001")],
        }
    }

    fn members(ns: &[u8]) -> Vec<Member> {
        ns.iter().copied().map(member).collect()
    }

    fn signed_by(roster: Roster, signers: &[u8]) -> SignedRoster {
        let mut signed = SignedRoster::new(roster);
        for &n in signers {
            signed.sign(&key(n));
        }
        signed
    }

    /// A chain founded by members 1..=4 with threshold 3.
    fn founded() -> Chain {
        let genesis = Roster::genesis("test mesh", 3, members(&[1, 2, 3, 4])).expect("genesis");
        Chain::from_genesis(signed_by(genesis, &[1, 2, 3, 4])).expect("founded")
    }

    /// A forged signature: right length, made by the wrong key over the right digest.
    fn forged(signed: &mut SignedRoster, claimed: u8) {
        let bad = key(200).sign_digest(&signed.roster.digest());
        signed
            .signatures
            .push((key(claimed).id(), Signature::new(bad)));
        signed.signatures.sort_by_key(|(signer, _)| *signer);
    }

    #[test]
    fn roles_grant_training_and_validation() {
        assert!(Role::Hospital.may_train() && Role::Hospital.may_validate());
        assert!(!Role::Validator.may_train() && Role::Validator.may_validate());
        assert!(!Role::Observer.may_train() && !Role::Observer.may_validate());
        assert!(!Role::Relay.may_train() && !Role::Relay.may_validate());
    }

    #[test]
    fn genesis_sorts_members_and_finds_them() {
        let roster = Roster::genesis("m", 2, members(&[9, 3, 7, 1])).expect("genesis");
        assert!(roster.members.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(roster.version, 0);
        assert_eq!(roster.previous, None);
        assert_eq!(roster.member(&key(7).id()), Some(&member(7)));
        assert!(roster.contains(&key(3).id()));
        assert!(!roster.contains(&key(4).id()));
        assert_eq!(
            Roster::genesis("m", 1, members(&[1, 2, 1])),
            Err(Error::Invalid(
                "members must be sorted by id, without duplicate ids"
            ))
        );
    }

    #[test]
    fn genesis_needs_every_founder() {
        let genesis = Roster::genesis("m", 1, members(&[1, 2, 3])).expect("genesis");
        assert_eq!(
            Chain::from_genesis(signed_by(genesis.clone(), &[1, 3])).map(|_| ()),
            Err(Error::NotEnoughSignatures { have: 2, need: 3 })
        );
        // An outsider cannot stand in for a missing founder.
        assert_eq!(
            Chain::from_genesis(signed_by(genesis.clone(), &[1, 3, 8])).map(|_| ()),
            Err(Error::NotEnoughSignatures { have: 2, need: 3 })
        );
        let chain = Chain::from_genesis(signed_by(genesis.clone(), &[3, 2, 1])).expect("founded");
        assert_eq!(chain.current(), &genesis);
        assert_eq!(chain.history().len(), 1);
    }

    #[test]
    fn genesis_must_be_version_zero() {
        let next = founded()
            .current()
            .next(members(&[1, 2, 3]), 2)
            .expect("next");
        assert_eq!(
            Chain::from_genesis(signed_by(next, &[1, 2, 3])).map(|_| ()),
            Err(Error::NotGenesis { version: 1 })
        );
    }

    #[test]
    fn next_version_needs_the_threshold() {
        let mut chain = founded();
        let next = chain
            .current()
            .next(members(&[1, 2, 3, 4]), 2)
            .expect("next");
        assert_eq!(
            chain.apply(signed_by(next.clone(), &[1, 2])),
            Err(Error::NotEnoughSignatures { have: 2, need: 3 })
        );
        assert_eq!(
            chain.current().version,
            0,
            "a rejected roster changes nothing"
        );
        assert_eq!(
            chain.apply(signed_by(next.clone(), &[1, 2, 4])),
            Ok(Outcome::Advanced { version: 1 })
        );
        assert_eq!(chain.current(), &next);
        // The new threshold governs the version after.
        let after = next.next(members(&[1, 2, 3]), 2).expect("next");
        assert_eq!(
            chain.apply(signed_by(after, &[3, 4])),
            Ok(Outcome::Advanced { version: 2 })
        );
    }

    #[test]
    fn non_member_signatures_do_not_count() {
        let mut chain = founded();
        let next = chain
            .current()
            .next(members(&[1, 2, 3, 4]), 3)
            .expect("next");
        assert_eq!(
            chain.apply(signed_by(next, &[1, 2, 50, 51])),
            Err(Error::NotEnoughSignatures { have: 2, need: 3 })
        );
    }

    #[test]
    fn forged_signatures_do_not_count_and_do_not_spoil() {
        let mut chain = founded();
        let next = chain
            .current()
            .next(members(&[1, 2, 3, 4]), 3)
            .expect("next");
        let mut short = signed_by(next.clone(), &[1, 2]);
        forged(&mut short, 3);
        assert_eq!(
            chain.apply(short),
            Err(Error::NotEnoughSignatures { have: 2, need: 3 })
        );
        // A signature over another body does not count either.
        let mut other_body = signed_by(next.clone(), &[1, 2]);
        let elsewhere = next.next(members(&[1, 2]), 1).expect("next");
        other_body.signatures.push((
            key(3).id(),
            Signature::new(key(3).sign_digest(&elsewhere.digest())),
        ));
        assert_eq!(
            chain.apply(other_body),
            Err(Error::NotEnoughSignatures { have: 2, need: 3 })
        );
        // Whichever member the forgery names, enough good signatures still carry the roster.
        for claimed in [1, 2, 3, 4] {
            let mut enough = signed_by(next.clone(), &[1, 2, 3, 4]);
            enough.signatures.retain(|(s, _)| *s != key(claimed).id());
            forged(&mut enough, claimed);
            let mut chain = chain.clone();
            assert_eq!(chain.apply(enough), Ok(Outcome::Advanced { version: 1 }));
            assert_eq!(chain.current_signed().signers().count(), 3);
        }
    }

    #[test]
    fn a_signer_counts_once() {
        let mut chain = founded();
        let next = chain
            .current()
            .next(members(&[1, 2, 3, 4]), 3)
            .expect("next");
        let mut twice = signed_by(next, &[1, 2]);
        let again = twice.signatures[0];
        twice.signatures.push(again);
        twice.signatures.push(again);
        assert_eq!(
            chain.apply(twice),
            Err(Error::NotEnoughSignatures { have: 2, need: 3 })
        );
    }

    #[test]
    fn members_admit_a_new_hospital() {
        let mut chain = founded();
        let newcomer = 9;
        let proposal = chain
            .current()
            .next(members(&[1, 2, 3, 4, newcomer]), 3)
            .expect("next");
        let mut collected = SignedRoster::new(proposal.clone());
        // The newcomer's own signature is not required and does not count.
        collected.sign(&key(newcomer));
        for (signer, have) in [(1, 1), (2, 2)] {
            collected.sign(&key(signer));
            assert_eq!(
                chain.apply(collected.clone()),
                Err(Error::NotEnoughSignatures { have, need: 3 })
            );
        }
        // Signatures gathered elsewhere merge in.
        let mut from_peer = SignedRoster::new(proposal.clone());
        from_peer.sign(&key(4));
        collected.merge(&from_peer).expect("same body");
        assert_eq!(chain.apply(collected), Ok(Outcome::Advanced { version: 1 }));
        assert!(chain.current().contains(&key(newcomer).id()));
        assert_eq!(
            chain.current_signed().signers().collect::<BTreeSet<_>>(),
            [1, 2, 4].map(|n| key(n).id()).into()
        );
        // From now on the newcomer's signature counts.
        let after = proposal
            .next(members(&[1, 2, 3, 4, newcomer]), 4)
            .expect("next");
        assert_eq!(
            chain.apply(signed_by(after, &[newcomer, 1, 2])),
            Ok(Outcome::Advanced { version: 2 })
        );
    }

    #[test]
    fn members_remove_a_member() {
        let mut chain = founded();
        let removal = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        // The removed member may help sign its own removal: it is a member of the previous version.
        assert_eq!(
            chain.apply(signed_by(removal, &[2, 3, 4])),
            Ok(Outcome::Advanced { version: 1 })
        );
        assert!(!chain.current().contains(&key(4).id()));
        // ... but it can no longer sign what comes after.
        let after = chain.current().next(members(&[1, 2]), 1).expect("next");
        assert_eq!(
            chain.apply(signed_by(after.clone(), &[1, 4])),
            Err(Error::NotEnoughSignatures { have: 1, need: 2 })
        );
        assert_eq!(
            chain.apply(signed_by(after, &[1, 3])),
            Ok(Outcome::Advanced { version: 2 })
        );
    }

    #[test]
    fn a_second_roster_at_the_same_version_is_a_fork() {
        let mut chain = founded();
        let a = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        let b = chain.current().next(members(&[1, 2, 4]), 2).expect("next");
        assert_eq!(
            chain.apply(signed_by(a.clone(), &[1, 2, 3])),
            Ok(Outcome::Advanced { version: 1 })
        );
        assert_eq!(
            chain.apply(signed_by(b, &[1, 2, 4])),
            Err(Error::Fork { version: 1 })
        );
        assert_eq!(chain.current(), &a);
    }

    #[test]
    fn a_next_version_with_a_bad_link_is_a_fork() {
        let mut chain = founded();
        let mut unlinked = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        unlinked.previous = Some(Digest([7; 32]));
        assert_eq!(
            chain.apply(signed_by(unlinked, &[1, 2, 3, 4])),
            Err(Error::Fork { version: 1 })
        );
    }

    #[test]
    fn older_conflicting_versions_are_rollbacks() {
        let mut chain = founded();
        let v1 = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        let other_v1 = chain.current().next(members(&[1, 2, 4]), 2).expect("next");
        let v2 = v1.next(members(&[1, 2, 3]), 1).expect("next");
        chain.apply(signed_by(v1, &[1, 2, 3])).expect("v1");
        chain.apply(signed_by(v2, &[1, 2])).expect("v2");
        assert_eq!(
            chain.apply(signed_by(other_v1, &[1, 2, 4])),
            Err(Error::Rollback { have: 2, got: 1 })
        );
        let other_genesis = Roster::genesis("test mesh", 1, members(&[1])).expect("genesis");
        assert_eq!(
            chain.apply(signed_by(other_genesis, &[1])),
            Err(Error::Rollback { have: 2, got: 0 })
        );
    }

    #[test]
    fn skipping_a_version_is_a_gap() {
        let mut chain = founded();
        let v1 = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        let v2 = v1.next(members(&[1, 2, 3]), 2).expect("next");
        assert_eq!(
            chain.apply(signed_by(v2.clone(), &[1, 2, 3])),
            Err(Error::Gap { have: 0, got: 2 })
        );
        chain.apply(signed_by(v1, &[1, 2, 3])).expect("v1");
        assert_eq!(
            chain.apply(signed_by(v2, &[1, 2, 3])),
            Ok(Outcome::Advanced { version: 2 })
        );
    }

    #[test]
    fn accepted_versions_come_back_as_duplicates() {
        let mut chain = founded();
        let genesis = chain.current().clone();
        let v1 = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        chain.apply(signed_by(v1.clone(), &[1, 2, 3])).expect("v1");
        assert_eq!(
            chain.apply(signed_by(v1.clone(), &[2, 3, 4])),
            Ok(Outcome::Duplicate)
        );
        assert_eq!(chain.apply(SignedRoster::new(v1)), Ok(Outcome::Duplicate));
        assert_eq!(
            chain.apply(SignedRoster::new(genesis)),
            Ok(Outcome::Duplicate)
        );
        assert_eq!(chain.history().len(), 2);
    }

    #[test]
    fn clones_share_history_until_one_advances() {
        let chain = founded();
        let mut ahead = chain.clone();
        let v1 = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        ahead.apply(signed_by(v1, &[1, 2, 3])).expect("v1");
        assert_eq!((chain.current().version, ahead.current().version), (0, 1));
        assert_eq!((chain.history().len(), ahead.history().len()), (1, 2));
        assert_eq!(chain.history()[0], ahead.history()[0]);
    }

    #[test]
    fn sign_all_equals_signing_one_by_one() {
        let roster = founded().current().clone();
        let keys = [key(3), key(1), key(2)];
        let mut together = SignedRoster::new(roster.clone());
        together.sign(&key(1));
        together.sign_all(&keys);
        let mut apart = SignedRoster::new(roster);
        for k in &keys {
            apart.sign(k);
        }
        assert_eq!(together, apart);
        assert_eq!(together.signers().count(), 3);
        let signers: Vec<MemberId> = together.signers().collect();
        assert!(signers.is_sorted());
    }

    #[test]
    fn another_mesh_is_refused() {
        let mut chain = founded();
        let mut renamed = chain.current().next(members(&[1, 2, 3]), 2).expect("next");
        renamed.mesh = "other mesh".into();
        assert!(matches!(
            chain.apply(signed_by(renamed, &[1, 2, 3, 4])),
            Err(Error::OtherMesh { .. })
        ));
    }

    fn three_versions() -> Vec<SignedRoster> {
        let mut chain = founded();
        let v1 = chain
            .current()
            .next(members(&[1, 2, 3, 4, 5]), 3)
            .expect("next");
        chain.apply(signed_by(v1.clone(), &[1, 2, 3])).expect("v1");
        let v2 = v1.next(members(&[2, 3, 4, 5]), 2).expect("next");
        chain.apply(signed_by(v2, &[5, 4, 3])).expect("v2");
        chain.history().to_vec()
    }

    #[test]
    fn history_replays_and_refuses_tampering() {
        let history = three_versions();
        assert_eq!(history.len(), 3);
        let chain = Chain::from_history(history.clone()).expect("replays");
        assert_eq!(chain.current().version, 2);
        assert_eq!(chain.history(), history.as_slice());

        let mut tampered = history.clone();
        tampered[1].roster.members[0].name = "Mallory General".into();
        assert!(Chain::from_history(tampered).is_err());

        let mut missing = history.clone();
        missing.remove(1);
        assert_eq!(
            Chain::from_history(missing).map(|_| ()),
            Err(Error::Gap { have: 0, got: 2 })
        );
        let mut repeated = history.clone();
        repeated.insert(2, history[1].clone());
        assert_eq!(
            Chain::from_history(repeated).map(|_| ()),
            Err(Error::Invalid("a history lists a version twice"))
        );
        assert_eq!(
            Chain::from_history(Vec::new()).map(|_| ()),
            Err(Error::EmptyHistory)
        );
    }

    #[test]
    fn signed_roster_survives_the_wire_but_not_a_flipped_byte() {
        let mut chain = founded();
        let next = chain
            .current()
            .next(members(&[1, 2, 3, 4]), 2)
            .expect("next");
        let signed = signed_by(next, &[1, 2, 3]);
        let bytes = wire::encode(&signed);
        let back: SignedRoster = wire::decode(&bytes).expect("decodes");
        assert_eq!(back, signed);
        assert_eq!(back.roster().digest(), signed.roster().digest());
        // The last 64 bytes are the last signature.
        for offset in [1, 10, 33, 64] {
            let mut bad = bytes.clone();
            let at = bad.len() - offset;
            bad[at] ^= 0x40;
            let decoded: SignedRoster = wire::decode(&bad).expect("still decodes");
            assert_eq!(
                chain.clone().apply(decoded),
                Err(Error::NotEnoughSignatures { have: 2, need: 3 })
            );
        }
        assert_eq!(chain.apply(back), Ok(Outcome::Advanced { version: 1 }));
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        use rand::{Rng, SeedableRng};
        let chain = founded();
        let bytes = wire::encode(chain.current_signed());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..2000 {
            let mut bad = bytes.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bad.len());
                bad[at] = rng.random();
            }
            if let Ok(decoded) = wire::decode::<SignedRoster>(&bad) {
                let outcome = chain.clone().apply(decoded.clone());
                assert!(
                    outcome.is_err() || decoded.roster == *chain.current(),
                    "a damaged roster was accepted: {outcome:?}"
                );
            }
        }
    }

    #[test]
    fn check_catches_every_shape_error() {
        let good = Roster::genesis("mesh", 2, members(&[1, 2, 3])).expect("genesis");
        assert_eq!(good.check(), Ok(()));
        type Breaker = fn(&mut Roster);
        let breakers: &[(&str, Breaker)] = &[
            ("empty mesh name", |r| r.mesh.clear()),
            ("long mesh name", |r| r.mesh = "m".repeat(65)),
            ("control in mesh name", |r| r.mesh = "a\u{1b}[2J".into()),
            ("genesis with previous", |r| {
                r.previous = Some(Digest([1; 32]))
            }),
            ("later version without previous", |r| r.version = 1),
            ("no members", |r| r.members.clear()),
            ("unsorted", |r| r.members.swap(0, 2)),
            ("duplicate id", |r| r.members[1].id = r.members[0].id),
            ("threshold 0", |r| r.threshold = 0),
            ("threshold above members", |r| r.threshold = 4),
            ("huge threshold", |r| r.threshold = u32::MAX),
            ("empty name", |r| r.members[0].name.clear()),
            ("long name", |r| r.members[0].name = "n".repeat(129)),
            ("control in name", |r| r.members[0].name = "a\nb".into()),
            ("long site", |r| r.members[1].site = "s".repeat(129)),
            ("lowercase country", |r| r.members[2].country = "de".into()),
            ("three-letter country", |r| {
                r.members[2].country = "DEU".into()
            }),
            ("digit in country", |r| r.members[2].country = "D1".into()),
            ("non-ASCII country", |r| r.members[2].country = "É".into()),
            ("too many addresses", |r| {
                r.members[0].addresses = vec!["/ip4/1.2.3.4/tcp/1".into(); 17]
            }),
            ("long address", |r| {
                r.members[0].addresses = vec!["a".repeat(257)]
            }),
            ("empty address", |r| {
                r.members[0].addresses = vec![String::new()]
            }),
            ("id not a curve point", |r| {
                // About half of all y have no x on the curve: take the first small one.
                let off_curve = (2u8..)
                    .map(|y| {
                        let mut bytes = [0u8; 32];
                        bytes[0] = y;
                        bytes
                    })
                    .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
                    .expect("some y is off the curve");
                r.members = vec![Member {
                    id: MemberId(off_curve),
                    ..member(1)
                }];
                r.threshold = 1;
            }),
            ("small-order id", |r| {
                let mut identity = [0u8; 32];
                identity[0] = 1;
                r.members = vec![Member {
                    id: MemberId(identity),
                    ..member(1)
                }];
                r.threshold = 1;
            }),
            ("too many members", |r| {
                r.members = (0..=MAX_MEMBERS)
                    .map(|i| {
                        let mut id = [0u8; 32];
                        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                        Member {
                            id: MemberId(id),
                            ..member(1)
                        }
                    })
                    .collect();
            }),
        ];
        for (what, breaker) in breakers {
            let mut bad = good.clone();
            breaker(&mut bad);
            assert!(
                matches!(bad.check(), Err(Error::Invalid(_))),
                "{what} passed check"
            );
        }
        // The limits themselves are fine.
        let mut edge = good.clone();
        edge.mesh = "m".repeat(64);
        edge.members[0].name = "n".repeat(128);
        edge.members[0].site = String::new();
        edge.members[0].addresses = vec!["a".repeat(256); 16];
        edge.threshold = 3;
        assert_eq!(edge.check(), Ok(()));
    }

    #[test]
    fn the_chain_refuses_a_badly_shaped_roster() {
        let mut chain = founded();
        let mut bad = chain
            .current()
            .next(members(&[1, 2, 3, 4]), 2)
            .expect("next");
        bad.members.reverse();
        assert!(matches!(
            chain.apply(signed_by(bad, &[1, 2, 3, 4])),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn next_links_to_the_digest_and_digests_differ() {
        let genesis = Roster::genesis("mesh", 1, members(&[1, 2])).expect("genesis");
        let next = genesis.next(members(&[2, 1]), 2).expect("next");
        assert_eq!(next.version, 1);
        assert_eq!(next.previous, Some(genesis.digest()));
        assert_eq!(next.mesh, genesis.mesh);
        assert_ne!(next.digest(), genesis.digest());
        assert_eq!(
            next.digest(),
            Digest::of(ROSTER_CONTEXT, &wire::encode(&next))
        );
        let mut last = genesis.clone();
        last.version = u64::MAX;
        last.previous = Some(Digest([0; 32]));
        assert!(matches!(
            last.next(members(&[1]), 1),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn signing_twice_keeps_one_signature() {
        let roster = Roster::genesis("mesh", 1, members(&[1, 2])).expect("genesis");
        let mut signed = signed_by(roster, &[2, 1, 2]);
        assert_eq!(signed.signers().count(), 2);
        signed.sign(&key(1));
        assert_eq!(signed.signers().count(), 2);
        assert!(signed.signers().collect::<Vec<_>>().is_sorted());
    }

    #[test]
    fn merge_unites_valid_signatures_only() {
        let roster = Roster::genesis("mesh", 1, members(&[1, 2, 3])).expect("genesis");
        let mut ours = signed_by(roster.clone(), &[1]);
        let theirs = signed_by(roster.clone(), &[2, 3]);
        ours.merge(&theirs).expect("same body");
        assert_eq!(ours.signers().count(), 3);
        assert!(Chain::from_genesis(ours.clone()).is_ok());

        // A hostile peer's forged signatures neither get in nor replace good ones.
        let mut hostile = SignedRoster::new(roster.clone());
        forged(&mut hostile, 1);
        forged(&mut hostile, 4);
        ours.merge(&hostile).expect("same body");
        assert_eq!(ours.signers().count(), 3);
        assert!(Chain::from_genesis(ours.clone()).is_ok());

        // A good signature replaces a bad one we held.
        let mut spoiled = signed_by(roster.clone(), &[2, 3]);
        forged(&mut spoiled, 1);
        spoiled
            .merge(&signed_by(roster.clone(), &[1]))
            .expect("same body");
        assert!(Chain::from_genesis(spoiled).is_ok());

        let other = Roster::genesis("mesh", 2, members(&[1, 2, 3])).expect("genesis");
        assert_eq!(
            ours.merge(&signed_by(other, &[1])),
            Err(Error::DifferentBodies)
        );
    }
}
