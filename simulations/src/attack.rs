//! Byzantine members of a simulated mesh.
//!
//! Attackers are on the roster and run the real protocol [`Peer`]: they train, announce, pull and
//! merge like everyone else, and sign with their own keys. The simulator lets them lie in one of
//! two places:
//! - **in their parameters** ([`Poisoned`], a [`Learner`] wrapper): sign flip, noise, "a little
//!   is enough", inner-product manipulation and model replacement announce a correctly signed
//!   version of poisoned parameters, which only the merge rule can hold back; label flipping
//!   poisons the attackers' training data instead ([`flip_labels`]), and they train honestly on
//!   it;
//! - **on the wire** ([`Byzantine`], an [`Adversary`]): stale replays of old announcements,
//!   announcements with forged signatures, and equivocation (two signed versions for one round).
//!   These reach honest peers as bytes and go through exactly the checks a hospital's node runs,
//!   so what is refused is counted by the honest peers themselves.
//!
//! Which peers attack is [`Attack::attackers`]: a fraction, placed at random or as the first
//! peers. Honest peers are never altered. Everything random comes from the seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use medmesh_learning::data::Table;
use medmesh_protocol::identity::{Keypair, MemberId, Signed};
use medmesh_protocol::peer::Peer;
use medmesh_protocol::update::{self, Version};
use medmesh_protocol::wire::Message;
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{Adversary, Evaluate, Learner, Outbox, Score};

/// Most recent honest updates an ALIE attacker estimates the honest mean and spread from.
const ALIE_WINDOW: usize = 256;

/// Byzantine members, as a scenario's `[attack]` section.
///
/// ```toml
/// [attack]
/// kind = "alie"            # see AttackKind
/// fraction = 0.2           # ⌊fraction · peers⌋ attackers
/// placement = "random"     # or "first"
/// z = 1.0
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Attack {
    /// What they do.
    pub kind: AttackKind,
    /// Fraction of peers that attack, in `[0, 0.5)`.
    pub fraction: f64,
    /// Which peers attack.
    pub placement: Placement,
    /// Sign flip: the attacker sends its start minus `scale` × its honest update. Equivocation:
    /// the second version's parameters are `-scale` × the first's.
    pub scale: f32,
    /// Noise: the attacker sends its start plus Gaussian noise of this standard deviation.
    pub std: f32,
    /// "A little is enough": the attacker sends its start plus `mean + z · std` of recent honest
    /// updates, per coordinate (a small `|z|` hides inside the honest spread).
    pub z: f32,
    /// Model replacement: the attacker sends `start + boost · (target − start)`, its target being
    /// the label-flipped model (for a logistic model, the negation of its honestly trained one).
    pub boost: f32,
    /// Stale replay: with each new announcement the attacker re-sends its own announcement of
    /// `lag` rounds earlier.
    pub lag: u64,
    /// Inner-product manipulation: the attacker sends its start minus `epsilon` × the mean of
    /// the honest updates of the round (small: the robust rules' blind spot; large: a flip).
    pub epsilon: f32,
}

impl Default for Attack {
    fn default() -> Self {
        Self {
            kind: AttackKind::None,
            fraction: 0.0,
            placement: Placement::Random,
            scale: 10.0,
            std: 1.0,
            z: 1.0,
            boost: 10.0,
            lag: 2,
            epsilon: 0.5,
        }
    }
}

/// Attack kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// Honest.
    None,
    /// A flipped, amplified update.
    SignFlip,
    /// Random parameters around the start.
    Noise,
    /// "A little is enough" (Baruch et al., 2019): per coordinate, the mean of honest updates
    /// plus `z` of their standard deviations — small enough to pass robust rules' filters.
    Alie,
    /// Model replacement (Bagdasaryan et al., 2020): a boosted step toward the attacker's own
    /// target model.
    ModelReplacement,
    /// Inner-product manipulation (Xie et al., 2019): the start minus `epsilon` × the mean of
    /// the honest updates of the round, so that the merged update's inner product with the
    /// honest one shrinks (and turns negative once the attackers' weight outgrows it).
    Ipm,
    /// Label flipping: the attacker trains honestly, on its own train rows with every label
    /// flipped (y ↦ 1 − y): data poisoning, which signs and announces like honest training.
    LabelFlip,
    /// Re-announces its own version of `lag` rounds earlier with every new one.
    StaleReplay,
    /// With every announcement, a forged one in an honest member's name (its signature does
    /// not verify under that member's key).
    ForgedSignature,
    /// Announces two different, correctly signed versions for each round.
    Equivocation,
}

impl AttackKind {
    /// Whether the attack works through the parameters the attacker announces.
    pub fn poisons(self) -> bool {
        matches!(
            self,
            Self::SignFlip
                | Self::Noise
                | Self::Alie
                | Self::ModelReplacement
                | Self::Ipm
                | Self::LabelFlip
        )
    }

    /// Whether the attackers train on flipped labels ([`flip_labels`] on their train rows).
    pub fn flips_labels(self) -> bool {
        self == Self::LabelFlip
    }

    /// Whether the attack works through the messages the attacker sends.
    pub fn on_wire(self) -> bool {
        matches!(
            self,
            Self::StaleReplay | Self::ForgedSignature | Self::Equivocation
        )
    }
}

/// Where attackers sit among the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The first ⌊fraction · n⌋ peers of a seeded shuffle.
    #[default]
    Random,
    /// Peers `0 … k−1`: neighbours of each other on a ring, torus or exponential graph.
    First,
}

impl Attack {
    /// Checks ranges.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..0.5).contains(&self.fraction),
            "`attack.fraction` = {} must be in [0, 0.5)",
            self.fraction
        );
        for (key, value) in [
            ("scale", self.scale),
            ("std", self.std),
            ("z", self.z),
            ("boost", self.boost),
        ] {
            anyhow::ensure!(value.is_finite(), "`attack.{key}` = {value} must be finite");
        }
        anyhow::ensure!(
            self.epsilon.is_finite() && self.epsilon > 0.0,
            "`attack.epsilon` = {} must be finite and > 0",
            self.epsilon
        );
        anyhow::ensure!(self.lag >= 1, "`attack.lag` = 0 must be at least 1 round");
        Ok(())
    }

    /// Which of `peers` attack under `seed`: `⌊fraction · peers⌋` of them, none if the kind is
    /// `none`.
    pub fn attackers(&self, peers: usize, seed: u64) -> Vec<bool> {
        let count = if self.kind == AttackKind::None {
            0
        } else {
            ((self.fraction * peers as f64).floor() as usize).min(peers)
        };
        let mut order: Vec<usize> = (0..peers).collect();
        if self.placement == Placement::Random {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00a7_7ac4);
            order.shuffle(&mut rng);
        }
        let mut attacker = vec![false; peers];
        for &i in &order[..count] {
            attacker[i] = true;
        }
        attacker
    }
}

/// Flips every label of `table` (y ↦ 1 − y): the train rows of a label-flipping attacker.
pub fn flip_labels(table: &mut Table) {
    for y in &mut table.y {
        *y = 1.0 - *y;
    }
}

/// Rounds of honest updates an IPM attacker keeps summed (the current one and a few before).
const IPM_ROUNDS: u64 = 3;

/// A learner whose attackers announce poisoned parameters; honest peers train as `inner` does.
#[derive(Debug)]
pub struct Poisoned<L> {
    inner: L,
    attackers: Vec<bool>,
    attack: Attack,
    rng: ChaCha8Rng,
    /// Recent honest updates, oldest first (only kept for ALIE).
    honest: VecDeque<Vec<f32>>,
    /// Per round, the sum and count of the honest updates trained so far (only kept for IPM).
    rounds: BTreeMap<u64, (Vec<f64>, usize)>,
}

impl<L> Poisoned<L> {
    /// Wraps `inner`; `attackers[i]` says whether peer `i` attacks.
    pub fn new(inner: L, attackers: Vec<bool>, attack: Attack, seed: u64) -> Self {
        Self {
            inner,
            attackers,
            attack,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xbad),
            honest: VecDeque::new(),
            rounds: BTreeMap::new(),
        }
    }

    /// The honest learner.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    fn alie(&self, start: &[f32], params: &mut [f32]) {
        // Too few honest updates seen yet: look honest.
        if self.honest.len() < 2 {
            return;
        }
        let n = self.honest.len() as f64;
        for (k, (p, s)) in params.iter_mut().zip(start).enumerate() {
            let mean = self.honest.iter().map(|u| f64::from(u[k])).sum::<f64>() / n;
            let var = self
                .honest
                .iter()
                .map(|u| (f64::from(u[k]) - mean).powi(2))
                .sum::<f64>()
                / (n - 1.0);
            *p = s + (mean + f64::from(self.attack.z) * var.sqrt()) as f32;
        }
    }
}

impl<L> Poisoned<L> {
    /// Adds an honest update of `round` to its round's sum (IPM).
    fn observe(&mut self, round: u64, start: &[f32], params: &[f32]) {
        let (sum, count) = self
            .rounds
            .entry(round)
            .or_insert_with(|| (vec![0.0; params.len()], 0));
        if sum.len() != params.len() {
            return;
        }
        for (a, (p, s)) in sum.iter_mut().zip(params.iter().zip(start)) {
            *a += f64::from(p - s);
        }
        *count += 1;
        // Only the latest rounds matter.
        let newest = self.rounds.keys().next_back().copied().unwrap_or(round);
        self.rounds.retain(|r, _| *r + IPM_ROUNDS > newest);
    }

    /// IPM: `start − epsilon × mean` of the honest updates of `round` seen so far, else of the
    /// latest earlier round with any; with none yet (the attacker trained first), it looks
    /// honest.
    fn ipm(&self, round: u64, start: &[f32], params: &mut [f32]) {
        let Some((sum, count)) = self
            .rounds
            .range(..=round)
            .rev()
            .map(|(_, v)| v)
            .find(|(sum, count)| *count > 0 && sum.len() == params.len())
        else {
            return;
        };
        let epsilon = f64::from(self.attack.epsilon);
        for ((p, s), a) in params.iter_mut().zip(start).zip(sum) {
            *p = (f64::from(*s) - epsilon * a / *count as f64) as f32;
        }
    }
}

impl<L: Learner> Learner for Poisoned<L> {
    fn train(&mut self, peer: usize, round: u64, params: &mut [f32]) -> BTreeMap<String, f64> {
        let kind = self.attack.kind;
        if !kind.poisons() {
            return self.inner.train(peer, round, params);
        }
        let start = params.to_vec();
        let metrics = self.inner.train(peer, round, params);
        let attacker = self.attackers.get(peer).copied().unwrap_or(false);
        if !attacker {
            if kind == AttackKind::Ipm {
                self.observe(round, &start, params);
            }
            if kind == AttackKind::Alie {
                if self.honest.len() == ALIE_WINDOW {
                    self.honest.pop_front();
                }
                self.honest
                    .push_back(params.iter().zip(&start).map(|(p, s)| p - s).collect());
            }
            return metrics;
        }
        match kind {
            AttackKind::SignFlip => {
                for (p, s) in params.iter_mut().zip(&start) {
                    *p = s - self.attack.scale * (*p - s);
                }
            }
            AttackKind::Noise => {
                for (p, s) in params.iter_mut().zip(&start) {
                    let z: f32 = StandardNormal.sample(&mut self.rng);
                    *p = s + self.attack.std * z;
                }
            }
            AttackKind::Alie => self.alie(&start, params),
            AttackKind::Ipm => self.ipm(round, &start, params),
            // Its data is poisoned, not its training: the update stands as trained.
            AttackKind::LabelFlip => {}
            AttackKind::ModelReplacement => {
                for (p, s) in params.iter_mut().zip(&start) {
                    let target = -*p;
                    *p = s + self.attack.boost * (target - s);
                }
            }
            AttackKind::None
            | AttackKind::StaleReplay
            | AttackKind::ForgedSignature
            | AttackKind::Equivocation => {}
        }
        metrics
    }
}

impl<L: Evaluate> Evaluate for Poisoned<L> {
    fn accuracy(&self, peer: usize, params: &[f32]) -> f64 {
        self.inner.accuracy(peer, params)
    }

    fn score(&self, peer: usize, params: &[f32]) -> Score {
        self.inner.score(peer, params)
    }
}

/// Attackers on the wire: replays, forged signatures and equivocation (see [`AttackKind`]).
/// Their messages are signed with the attackers' real keys where a signature is meant to verify.
#[derive(Debug)]
pub struct Byzantine {
    attack: Attack,
    attackers: Vec<bool>,
    /// Every peer's key, by index (an attacker signs with its own).
    keys: Vec<Keypair>,
    /// Honest members, whom forgeries impersonate.
    victims: Vec<MemberId>,
    /// Each attacker's recent announcements, oldest first.
    history: BTreeMap<usize, VecDeque<Message>>,
    rng: ChaCha8Rng,
    buf: Vec<u8>,
    params: Vec<f32>,
}

impl Byzantine {
    /// Attackers among peers holding `keys` (by index) act as `attack.kind` says.
    pub fn new(attack: Attack, attackers: Vec<bool>, keys: &[Keypair], seed: u64) -> Self {
        let victims = keys
            .iter()
            .zip(&attackers)
            .filter(|(_, a)| !**a)
            .map(|(k, _)| k.id())
            .collect();
        Self {
            attack,
            attackers,
            keys: keys.to_vec(),
            victims,
            history: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xb12a_4714),
            buf: Vec::new(),
            params: Vec::new(),
        }
    }

    fn key(&self, index: usize) -> anyhow::Result<&Keypair> {
        self.keys
            .get(index)
            .with_context(|| format!("no key for peer {index}"))
    }
}

/// The same envelope claiming another signer: a forgery whose signature cannot verify.
///
/// `Signed` keeps its fields private so that only a key can make one; an attacker on the wire is
/// not bound by that, and rewrites the encoded envelope instead (here through its serde form).
pub fn impersonate(signed: &Signed<Version>, victim: MemberId) -> anyhow::Result<Signed<Version>> {
    let mut value = serde_json::to_value(signed)?;
    value
        .as_object_mut()
        .context("a signed envelope encodes as a map")?
        .insert("signer".into(), serde_json::to_value(victim)?);
    Ok(serde_json::from_value(value)?)
}

impl Adversary for Byzantine {
    fn controls(&self, peer: usize) -> bool {
        self.attack.kind.on_wire() && self.attackers.get(peer).copied().unwrap_or(false)
    }

    fn broadcast(
        &mut self,
        _now: Duration,
        index: usize,
        peer: &Peer,
        message: Message,
        out: &mut Outbox,
    ) -> anyhow::Result<()> {
        let Message::Announce(signed) = &message else {
            out.messages.push(message);
            return Ok(());
        };
        match self.attack.kind {
            AttackKind::StaleReplay => {
                let lag = usize::try_from(self.attack.lag).unwrap_or(usize::MAX);
                let history = self.history.entry(index).or_default();
                history.push_back(message.clone());
                out.messages.push(message);
                if history.len() > lag
                    && let Some(old) = history.pop_front()
                {
                    out.messages.push(old);
                }
            }
            AttackKind::ForgedSignature => {
                let version = signed.clone().verify()?;
                out.messages.push(message.clone());
                let Some(&victim) = self.victims.choose(&mut self.rng) else {
                    return Ok(());
                };
                let forged = self.key(index)?.sign(Version {
                    author: victim,
                    ..version.value().clone()
                });
                out.messages
                    .push(Message::Announce(impersonate(forged.signed(), victim)?));
            }
            AttackKind::Equivocation => {
                let version = signed.clone().verify()?;
                let payload = peer
                    .payload(&version.id())
                    .context("an attacker serves its own announced payload")?;
                update::decode_payload(&version.payload, &payload, &mut self.params)?;
                for p in &mut self.params {
                    *p *= -self.attack.scale;
                }
                let descriptor = update::encode_f32(&self.params, &mut self.buf);
                let twin = self.key(index)?.sign(Version {
                    payload: descriptor,
                    ..version.value().clone()
                });
                out.payloads
                    .push((twin.id(), Bytes::copy_from_slice(&self.buf)));
                out.messages.push(message);
                out.messages.push(Message::Announce(twin.signed().clone()));
            }
            _ => out.messages.push(message),
        }
        Ok(())
    }
}

/// Authors each honest peer flagged, split into attackers and honest members (a false alarm).
pub fn flags(peers: &[Peer], attackers: &[bool]) -> (u64, u64) {
    let bad: BTreeSet<MemberId> = peers
        .iter()
        .zip(attackers)
        .filter(|(_, a)| **a)
        .map(|(p, _)| p.id())
        .collect();
    let (mut of_attackers, mut of_honest) = (0, 0);
    for (p, _) in peers.iter().zip(attackers).filter(|(_, a)| !**a) {
        for author in p.flagged() {
            if bad.contains(&author) {
                of_attackers += 1;
            } else {
                of_honest += 1;
            }
        }
    }
    (of_attackers, of_honest)
}

#[cfg(test)]
mod tests {
    use medmesh_protocol::identity::Error;
    use medmesh_testkit::{key, version_with};

    use super::*;

    #[test]
    fn an_impersonation_names_the_victim_and_does_not_verify() {
        let attacker = key(1);
        let victim = key(2).id();
        // Signed by the attacker, naming the victim as its author.
        let (signed, _) = version_with(&attacker, 3, vec![], &[1.0, 2.0], |v| v.author = victim);
        let forged = impersonate(signed.signed(), victim).expect("rewrites");
        assert_eq!(forged.signer(), victim);
        assert_eq!(forged.body(), signed.signed().body());
        assert_eq!(forged.verify(), Err(Error::BadSignature(victim)));
        // The untouched envelope is fine.
        assert!(signed.signed().clone().verify().is_ok());
    }

    #[test]
    fn placement_and_count() {
        let first = Attack {
            kind: AttackKind::SignFlip,
            fraction: 0.25,
            placement: Placement::First,
            ..Attack::default()
        };
        assert_eq!(
            first.attackers(8, 1),
            [true, true, false, false, false, false, false, false]
        );
        let random = Attack {
            placement: Placement::Random,
            ..first.clone()
        };
        let a = random.attackers(40, 1);
        assert_eq!(a.iter().filter(|x| **x).count(), 10);
        assert_eq!(a, random.attackers(40, 1), "seeded");
        assert_ne!(a, random.attackers(40, 2));
        let none = Attack {
            kind: AttackKind::None,
            ..first
        };
        assert!(none.attackers(8, 1).iter().all(|x| !x));
    }

    #[test]
    fn alie_stays_within_the_honest_spread() {
        struct Step;
        impl Learner for Step {
            fn train(&mut self, peer: usize, _: u64, params: &mut [f32]) -> BTreeMap<String, f64> {
                // Honest updates 1.0 and 3.0 alternate with the peer.
                let step = if peer.is_multiple_of(2) { 1.0 } else { 3.0 };
                params.iter_mut().for_each(|p| *p += step);
                BTreeMap::new()
            }
        }
        let attack = Attack {
            kind: AttackKind::Alie,
            fraction: 0.2,
            z: 1.0,
            ..Attack::default()
        };
        let mut poisoned = Poisoned::new(Step, vec![false, false, true], attack, 0);
        let mut p = [0.0f32; 2];
        poisoned.train(0, 1, &mut p);
        poisoned.train(1, 1, &mut p);
        let mut q = [10.0f32; 2];
        poisoned.train(2, 1, &mut q);
        // mean 2, sample std sqrt(2): start + 2 + 1.414.
        assert!((q[0] - (12.0 + 2f32.sqrt())).abs() < 1e-5, "{q:?}");
    }

    #[test]
    fn ipm_sends_minus_epsilon_times_the_rounds_honest_mean() {
        struct Step;
        impl Learner for Step {
            fn train(
                &mut self,
                peer: usize,
                round: u64,
                params: &mut [f32],
            ) -> BTreeMap<String, f64> {
                // Honest updates 1 and 3 in round 1, 10 in round 2.
                let step = match (round, peer) {
                    (1, 0) => 1.0,
                    (1, _) => 3.0,
                    _ => 10.0,
                };
                params.iter_mut().for_each(|p| *p += step);
                BTreeMap::new()
            }
        }
        let attack = Attack {
            kind: AttackKind::Ipm,
            fraction: 0.2,
            epsilon: 0.5,
            ..Attack::default()
        };
        let mut poisoned = Poisoned::new(Step, vec![false, false, true], attack, 0);
        // Before any honest update: the attacker looks honest (its own update, 3).
        let mut first = [5.0f32; 2];
        poisoned.train(2, 1, &mut first);
        assert_eq!(first, [8.0; 2]);
        let mut p = [0.0f32; 2];
        poisoned.train(0, 1, &mut p);
        poisoned.train(1, 1, &mut p);
        let mut q = [10.0f32; 2];
        poisoned.train(2, 1, &mut q);
        // Honest mean 2: 10 − 0.5 × 2.
        assert_eq!(q, [9.0; 2]);
        // Round 2 with no honest update yet: round 1's mean still stands.
        let mut r = [10.0f32; 2];
        poisoned.train(2, 2, &mut r);
        assert_eq!(r, [9.0; 2]);
        poisoned.train(0, 2, &mut p);
        let mut r = [10.0f32; 2];
        poisoned.train(2, 2, &mut r);
        assert_eq!(r, [5.0; 2], "round 2's own mean, 10");
        // Bad epsilons are refused, naming the key.
        for epsilon in [0.0, -1.0, f32::NAN] {
            let bad = Attack {
                epsilon,
                ..Attack::default()
            };
            let error = bad.check().expect_err("refused");
            assert!(error.to_string().contains("`attack.epsilon`"), "{error}");
        }
    }

    #[test]
    fn label_flip_flips_train_labels_and_leaves_the_update_as_trained() {
        let mut table = Table {
            x: vec![0.0; 3],
            rows: 3,
            cols: 1,
            y: vec![0.0, 1.0, 1.0],
            time: vec![],
            event: vec![],
        };
        flip_labels(&mut table);
        assert_eq!(table.y, [1.0, 0.0, 0.0]);
        struct Step;
        impl Learner for Step {
            fn train(&mut self, _: usize, _: u64, params: &mut [f32]) -> BTreeMap<String, f64> {
                params.iter_mut().for_each(|p| *p += 1.0);
                BTreeMap::new()
            }
        }
        let attack = Attack {
            kind: AttackKind::LabelFlip,
            fraction: 0.2,
            ..Attack::default()
        };
        let mut poisoned = Poisoned::new(Step, vec![true], attack, 0);
        let mut p = [1.0f32; 2];
        poisoned.train(0, 1, &mut p);
        assert_eq!(p, [2.0; 2]);
        assert!(AttackKind::LabelFlip.poisons() && AttackKind::LabelFlip.flips_labels());
    }
}
