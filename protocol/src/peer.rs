//! The sans-IO peer: one member's side of decentralized learning, driven by the node or the
//! simulator.
//!
//! A [`Peer`] never touches a socket, a file, a clock or the OS random number generator. A driver
//! feeds it inputs and carries out what it asks for:
//!
//! | input | when |
//! |---|---|
//! | [`Peer::handle_message`] | gossip bytes arrived from another peer; returns the [`Verdict`] for gossip validation |
//! | [`Peer::handle_inbound`] | the same gossip after [`Inbound::inspect`] (decode, signature check), which a driver delivering one message to many peers runs once |
//! | [`Peer::handle_payload`] | a payload the peer asked for with [`Action::Fetch`] arrived (or failed) |
//! | [`Peer::handle_trained`] | local training that [`Action::Train`] asked for finished |
//! | [`Peer::handle_timeout`] | the time [`Peer::poll_timeout`] named has passed |
//! | [`Peer::handle_command`] | the operator asked for something (publish a report, a roster update) |
//!
//! After every input the driver drains [`Peer::poll_action`] and re-reads [`Peer::poll_timeout`].
//! Time is a [`Duration`] since an epoch the driver picks; randomness comes from the seed in
//! [`Config`].
//!
//! After the last round a peer announces its merged model as its final version (round
//! `max_rounds + 1`, see [`Config::max_rounds`]), the one a hospital deploys and validators
//! judge.
//!
//! A round: train locally → announce a signed [`Version`] by gossip → pull the payloads of
//! `fanout` sampled members' versions of the same round (Epidemic-Learning style), or of every
//! fixed neighbour → merge with the configured [`aggregate::Rule`] → next round. There is no global
//! barrier: a round closes when its pulls are done or at its timeout, whichever comes first, and
//! a peer that finds others ahead merges their newest versions and joins their round (it
//! trains and announces that round too, so the others, gathering there, get its version).
//!
//! Hostile input is a [`Verdict::Reject`] with a [`Reason`] and an [`Event::Rejected`], never a
//! panic: forged signatures, non-members, replays of older rounds, two different versions for one
//! author and round (equivocation: the author is flagged and excluded), payloads that do not
//! match their announcement, reports on unknown models, and roster forks and rollbacks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand::seq::IteratorRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::aggregate::{self, Contribution};
use crate::identity::{self, ContentId, Digest, Keypair, MemberId, Signed, Verified};
use crate::roster::{self, SignedRoster};
use crate::update::{self, Version};
use crate::validation::{self, Report};
use crate::wire::{self, Message};

/// How many recent rounds per author are remembered to tell duplicates, replays and
/// equivocations apart.
const AUTHOR_WINDOW: u64 = 16;
/// Announcements an author may send in a burst; an honest member sends one per round (two
/// with its final version), so only a flood comes near it.
const RATE_BURST: f64 = 32.0;
/// Announcements per second an author's allowance refills by.
const RATE_PER_SECOND: f64 = 4.0;
/// Announcements an author's allowance refills by for every round this peer completes: honest
/// members send one per round, so a mesh whose rounds are faster than the per-second rate is
/// never held back, while a flood still is (it does not make this peer's rounds go faster).
const RATE_PER_ROUND: f64 = 4.0;
/// How many versions per author at or above the current round are kept as candidates.
const CANDIDATES_PER_AUTHOR: usize = 2;
/// How many recent content ids of versions are remembered so reports can name them.
const KNOWN_VERSIONS: usize = 65_536;
/// How many recent pulls are remembered to recognize late answers.
const ASKED_REMEMBERED: usize = 1024;
/// How many rounds of own payloads are kept to serve to others.
const SERVED_ROUNDS: usize = 4;

/// What a peer needs to know to take part in an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of the experiment; versions of other experiments are ignored.
    pub experiment: String,
    /// Digest of the model spec every member trains; versions of another spec are refused.
    pub model: Digest,
    /// How versions are merged.
    pub rule: aggregate::Rule,
    /// How many other members' versions are pulled per round when no fixed neighbours are set.
    pub fanout: usize,
    /// Fixed neighbours (a topology); when set, every neighbour's version is pulled each round.
    pub neighbours: Option<Vec<MemberId>>,
    /// A round closes at this time after the own version was announced, whatever was pulled
    /// (`round_timeout_ms` in TOML; the older `round_timeout` is read too).
    #[serde(with = "millis", rename = "round_timeout_ms", alias = "round_timeout")]
    pub round_timeout: Duration,
    /// A payload pull that has not answered by then is given up and another member is tried
    /// (`fetch_timeout_ms` in TOML; the older `fetch_timeout` is read too).
    #[serde(with = "millis", rename = "fetch_timeout_ms", alias = "fetch_timeout")]
    pub fetch_timeout: Duration,
    /// Stop after this many rounds (`None`: run until stopped); the merged model of the last
    /// round is then announced as the final version, numbered `max_rounds + 1`.
    pub max_rounds: Option<u64>,
    /// Seed of the peer's random choices (which members to pull from).
    pub seed: u64,
    /// When a model version counts as certified by the validation reports (none: never).
    pub certification: Option<validation::Policy>,
    /// Flag and exclude members whose versions stay far from everyone else's (none: only
    /// equivocation flags a member).
    pub outliers: Option<Outliers>,
    /// Two-level averaging over the roster's groups ([`TwoLevel`]); none: flat, every member
    /// pulls from anyone.
    pub two_level: Option<TwoLevel>,
    /// An outer optimizer on each round's merged pseudo-gradient ([`Outer`]); `None` (`outer =
    /// "none"` in TOML): the merge is the next model (plain decentralized averaging). Default:
    /// [`Outer::RECOMMENDED`].
    #[serde(with = "outer_setting")]
    pub outer: Option<Outer>,
}

/// An outer optimizer, the decentralized counterpart of FedOpt (Reddi et al., 2021) and of
/// DiLoCo's outer Nesterov momentum (Douillard et al., 2023). Each round a peer starts training
/// from `x₀`; the merge of the round's versions gives `x̄`, and `Δ = x̄ − x₀` is the round's
/// pseudo-gradient (the direction the mesh moved). Instead of taking `x̄`, the peer steps from
/// `x₀` along `Δ` with this optimizer, whose state it keeps (in memory: a restarted peer starts
/// it again from zero). With `lr = 1` and no momentum it is plain averaging. Every peer applies
/// the same rule to nearly the same `Δ`, so the mesh still agrees; it lives in the protocol, so
/// the node and the simulator run the same code.
///
/// In TOML: `outer = { optimizer = "nesterov", lr = 0.7, momentum = 0.9 }`, or `"adam"`,
/// `"yogi"` and `"adagrad"` with `lr`, `tau` (and `beta1`, `beta2` but for Adagrad).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outer {
    /// Nesterov momentum: `m ← μ·m + Δ`, `x ← x₀ + lr·(μ·m + Δ)`.
    Nesterov {
        /// Outer learning rate, in (0, 10].
        lr: f32,
        /// Momentum μ, in [0, 1).
        momentum: f32,
    },
    /// Adam (FedAdam): `m ← β₁m + (1−β₁)Δ`, `v ← β₂v + (1−β₂)Δ²`, `x ← x₀ + lr·m/(√v + τ)`.
    Adam {
        /// Outer learning rate, in (0, 10].
        lr: f32,
        /// β₁, in [0, 1).
        beta1: f32,
        /// β₂, in [0, 1).
        beta2: f32,
        /// Adaptivity τ, in (0, 1].
        tau: f32,
    },
    /// Yogi (FedYogi): as Adam, with `v ← v − (1−β₂)·Δ²·sign(v − Δ²)`.
    Yogi {
        /// Outer learning rate, in (0, 10].
        lr: f32,
        /// β₁, in [0, 1).
        beta1: f32,
        /// β₂, in [0, 1).
        beta2: f32,
        /// Adaptivity τ, in (0, 1].
        tau: f32,
    },
    /// Adagrad (FedAdagrad): `v ← v + Δ²`, `x ← x₀ + lr·Δ/(√v + τ)`.
    Adagrad {
        /// Outer learning rate, in (0, 10].
        lr: f32,
        /// Adaptivity τ, in (0, 1].
        tau: f32,
    },
}

impl Outer {
    /// The default: decentralized FedAdam with outer lr 0.025, β₁ 0.9, β₂ 0.99, τ 0.001. In the
    /// simulator's sweep over Fed-Heart-Disease (the node's libtorch logistic regression from
    /// zeros, 15 rounds of 100 steps, seeds 42–46; simulations/scenarios/compare-outer-node.toml)
    /// it reached mean accuracy 0.747 against 0.725 for plain averaging.
    pub const RECOMMENDED: Outer = Outer::Adam {
        lr: 0.025,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.001,
    };

    /// What linear survival models train with (`Budget::for_task` of medmesh-learning):
    /// decentralized FedAdam with outer lr 0.4, β₁ 0.9, β₂ 0.99, τ 0.001 (a Cox model's
    /// coefficients travel further than a logistic regression's, in fewer rounds). In the
    /// simulator's sweep over Fed-TCGA-BRCA (the node's linear Cox model from zeros, FLamby's
    /// FedAvg budget of 5 rounds of 100 steps, seeds 42–46;
    /// simulations/scenarios/compare-outer-tcga.toml) it reached mean C-index 0.833 against 0.729
    /// for plain averaging.
    pub const SURVIVAL: Outer = Outer::Adam {
        lr: 0.4,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.001,
    };

    /// Checks the ranges; the error says which setting is out of its range.
    pub fn check(&self) -> Result<(), String> {
        let in_range = |x: f32, lo: f32, hi: f32, open_lo: bool, open_hi: bool| {
            x.is_finite()
                && (if open_lo { x > lo } else { x >= lo })
                && (if open_hi { x < hi } else { x <= hi })
        };
        let (lr, beta1, beta2, tau, momentum) = match *self {
            Outer::Nesterov { lr, momentum } => (lr, 0.0, 0.0, 1.0, momentum),
            Outer::Adam {
                lr,
                beta1,
                beta2,
                tau,
            }
            | Outer::Yogi {
                lr,
                beta1,
                beta2,
                tau,
            } => (lr, beta1, beta2, tau, 0.0),
            Outer::Adagrad { lr, tau } => (lr, 0.0, 0.0, tau, 0.0),
        };
        if !in_range(lr, 0.0, 10.0, true, false) {
            return Err(format!("outer lr must be in (0, 10], not {lr}"));
        }
        if !(in_range(beta1, 0.0, 1.0, false, true)
            && in_range(beta2, 0.0, 1.0, false, true)
            && in_range(momentum, 0.0, 1.0, false, true))
        {
            return Err("outer beta1, beta2 and momentum must be in [0, 1)".into());
        }
        if !in_range(tau, 0.0, 1.0, true, false) {
            return Err(format!("outer tau must be in (0, 1], not {tau}"));
        }
        Ok(())
    }

    /// Steps `x` (holding the merge `x̄`) to `x₀ + step(x̄ − x₀)`, updating the moments `m`
    /// and `v` (zeros at first, each as long as `x`).
    fn step(&self, x0: &[f32], x: &mut [f32], m: &mut [f32], v: &mut [f32]) {
        for (((x, x0), m), v) in x.iter_mut().zip(x0).zip(m.iter_mut()).zip(v.iter_mut()) {
            let delta = *x - *x0;
            let update = match *self {
                Outer::Nesterov { lr, momentum } => {
                    *m = momentum * *m + delta;
                    lr * (momentum * *m + delta)
                }
                Outer::Adam {
                    lr,
                    beta1,
                    beta2,
                    tau,
                } => {
                    *m = beta1 * *m + (1.0 - beta1) * delta;
                    *v = beta2 * *v + (1.0 - beta2) * delta * delta;
                    lr * *m / (v.sqrt() + tau)
                }
                Outer::Yogi {
                    lr,
                    beta1,
                    beta2,
                    tau,
                } => {
                    let square = delta * delta;
                    *m = beta1 * *m + (1.0 - beta1) * delta;
                    *v -= (1.0 - beta2) * square * (*v - square).signum();
                    lr * *m / (v.max(0.0).sqrt() + tau)
                }
                Outer::Adagrad { lr, tau } => {
                    *v += delta * delta;
                    lr * delta / (v.sqrt() + tau)
                }
            };
            let next = *x0 + update;
            // A non-finite step (an attacker's version that survived the merge) keeps the merge.
            if next.is_finite() {
                *x = next;
            }
        }
    }
}

/// Two-level averaging: a member merges with members of its own roster group (its medical
/// centre, on a fast local network) every round, and with other groups (across the slow,
/// metered WAN) only on the schedule set here, so the whole mesh still reaches consensus.
///
/// Each round a member pulls `fanout` versions of its own group (capped at the group's other
/// training members). On a round that mixes across groups it also pulls one version from each of
/// some other groups, drawn at random. A round that does not mix across groups announces its
/// version to its group only ([`Action::BroadcastGroup`]); the others announce to the mesh.
///
/// With the mean rule, the merge weighs groups by their training samples: the own group's
/// versions together stand for the own group's samples (each in proportion to its own), and the
/// version pulled from another group stands for that group's samples, since a member's model is
/// already averaged within its group. A group's samples are what its members' announcements
/// say (a member not heard from counts as the group's average). So when every group has
/// averaged internally, one round that pulls a version from every other group lands every
/// member on the global sample-weighted average (`protocol/tests/scenario.rs`). Robust rules
/// are unweighted, and the outlier screen ([`Outliers`]) judges the round's inputs as in flat
/// mode, inside a group too.
///
/// In TOML: `two_level = { across = "every", rounds = 4 }` or
/// `two_level = { across = "fanout", groups = 1 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "across", rename_all = "snake_case", deny_unknown_fields)]
pub enum TwoLevel {
    /// Every `rounds`-th round (rounds divisible by it) and the last round, a member also pulls
    /// one version from every other group; other rounds stay inside the group.
    Every {
        /// Rounds between rounds that mix across groups; at least 1.
        rounds: u64,
    },
    /// Every round, a member also pulls one version from each of `groups` other groups drawn at
    /// random (all of them if there are fewer), and announces to the whole mesh.
    Fanout {
        /// Other groups pulled from per round; at least 1.
        groups: usize,
    },
}

/// Excluding persistent outliers, on top of the merge rule. Robust rules bound what one bad
/// version does to a round, but a member that sends a bad version every round still biases every
/// round (a coordinate-wise trim keeps the honest values on the far side of the attacker; a
/// clipped neighbour still moves the model by its share of the radius), and in a small mesh those
/// biases add up. Each round that merges at least three other versions, a version whose L2
/// distance to the coordinate-wise median of the round's inputs (this peer's own model and the
/// versions pulled) exceeds `factor` times the lower median of those distances
/// (or of a millionth of the model's norm, if larger) is an outlier; an author whose versions are outliers in `rounds` merged rounds in a row is flagged
/// like an equivocator: its version is left out of that round's merge and everything it sends
/// afterwards is refused. Each peer judges alone, from what it merges. Flags, like those for
/// equivocation, live in the peer's memory: a restarted peer judges anew, so an attacker is
/// merged again until its streak flags it again.
///
/// The defaults (6×, 3 rounds) flag every sign-flipping or noise-sending hospital of the
/// heart-disease scenarios within a few rounds and no honest member, even under strong label
/// skew (Dirichlet 0.1 over 20 peers; `simulations/tests/heart_disease_byzantine.rs`), and both
/// poisoning members of `lab/tests/adversarial.rs` at every hospital. Measured against the own
/// model instead of the median, the non-IID hospitals there (Hungary, Switzerland) did not flag
/// them: their own models sit far from the others, so every version looked about as far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outliers {
    /// How many times the round's median distance makes a version an outlier; finite, `> 1`.
    pub factor: f32,
    /// Consecutive outlier rounds that flag an author; at least 1.
    pub rounds: u32,
}

impl Default for Outliers {
    fn default() -> Self {
        Self {
            factor: 6.0,
            rounds: 3,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            experiment: "default".into(),
            model: Digest::default(),
            rule: aggregate::Rule::default(),
            fanout: 3,
            neighbours: None,
            round_timeout: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
            max_rounds: None,
            seed: 0,
            certification: None,
            outliers: None,
            two_level: None,
            outer: Some(Outer::RECOMMENDED),
        }
    }
}

/// `outer` in TOML and JSON: an [`Outer`] table, or the string `"none"` for plain averaging.
pub mod outer_setting {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Outer;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Setting {
        Named(String),
        Optimizer(Outer),
    }

    /// Writes `None` as `"none"`.
    pub fn serialize<S: Serializer>(outer: &Option<Outer>, out: S) -> Result<S::Ok, S::Error> {
        match outer {
            Some(outer) => Setting::Optimizer(*outer),
            None => Setting::Named("none".into()),
        }
        .serialize(out)
    }

    /// Reads `"none"` as `None` and a table as its optimizer.
    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Option<Outer>, D::Error> {
        match Setting::deserialize(input) {
            Ok(Setting::Optimizer(outer)) => Ok(Some(outer)),
            Ok(Setting::Named(name)) if name == "none" => Ok(None),
            _ => Err(serde::de::Error::custom(
                "outer must be \"none\" or a table such as { optimizer = \"adam\", lr = 0.025, \
                 beta1 = 0.9, beta2 = 0.99, tau = 0.001 } (optimizers: nesterov, adam, yogi, \
                 adagrad)",
            )),
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Why a peer cannot be built from a config.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConfigError {
    /// A field is out of range.
    #[error("invalid peer config: {0}")]
    Invalid(String),
    /// The aggregation rule's parameters are invalid.
    #[error("invalid aggregation rule: {0}")]
    Rule(#[from] aggregate::Error),
    /// This peer's key is not on the roster.
    #[error("this peer ({0}) is not a member of the roster")]
    NotMember(MemberId),
}

impl Config {
    /// Checks the rules that span fields.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.rule.check()?;
        if self.experiment.is_empty() || self.experiment.len() > update::MAX_EXPERIMENT_LEN {
            return Err(ConfigError::Invalid(
                "experiment name must be 1 to 64 bytes".into(),
            ));
        }
        if self.neighbours.is_none() && self.fanout == 0 {
            return Err(ConfigError::Invalid("fanout must be at least 1".into()));
        }
        if self.round_timeout.is_zero() || self.fetch_timeout.is_zero() {
            return Err(ConfigError::Invalid("timeouts must be positive".into()));
        }
        if let Some(p) = &self.certification
            && (p.metric.is_empty() || !p.min.is_finite() || p.validators == 0)
        {
            return Err(ConfigError::Invalid(
                "certification needs a metric, a finite bar and at least one validator".into(),
            ));
        }
        if let Some(o) = &self.outliers
            && !(o.factor.is_finite() && o.factor > 1.0 && o.rounds >= 1)
        {
            return Err(ConfigError::Invalid(
                "outliers needs a finite factor above 1 and at least 1 round".into(),
            ));
        }
        if let Some(outer) = &self.outer {
            outer.check().map_err(ConfigError::Invalid)?;
        }
        match self.two_level {
            Some(_) if self.neighbours.is_some() => {
                return Err(ConfigError::Invalid(
                    "two-level averaging picks its partners from the roster's groups: it cannot \
                     be combined with fixed neighbours"
                        .into(),
                ));
            }
            Some(TwoLevel::Every { rounds: 0 }) => {
                return Err(ConfigError::Invalid(
                    "two_level every: rounds must be at least 1".into(),
                ));
            }
            Some(TwoLevel::Fanout { groups: 0 }) => {
                return Err(ConfigError::Invalid(
                    "two_level fanout: groups must be at least 1".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The verdict on a gossip message, for the transport's validation hook (gossipsub forwards only
/// accepted messages and penalizes the sender of rejected ones).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Harmless but not worth forwarding (duplicate, other experiment).
    Ignore(Reason),
    /// Invalid: drop it and penalize the sender.
    Reject(Reason),
}

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reason {
    /// Not a valid encoding.
    #[error("malformed: {0}")]
    Malformed(#[from] wire::DecodeError),
    /// Request or payload bytes arrived on the gossip path.
    #[error("a {0} message cannot arrive by gossip")]
    WrongChannel(&'static str),
    /// The signature does not verify.
    #[error("signature: {0}")]
    Signature(#[from] identity::Error),
    /// The signer is not on the current roster.
    #[error("{0} is not a member")]
    NotMember(MemberId),
    /// The signer's role does not allow this message.
    #[error("{0}'s role does not allow this")]
    NotPermitted(MemberId),
    /// A version of another experiment.
    #[error("other experiment {0:?}")]
    OtherExperiment(String),
    /// A version of this experiment with another model spec or parameter count.
    #[error("model spec or shape differs from this peer's")]
    WrongModel,
    /// The version breaks a rule.
    #[error("invalid version: {0}")]
    Version(#[from] update::Error),
    /// The report breaks a rule.
    #[error("invalid report: {0}")]
    Report(#[from] validation::Error),
    /// Seen before.
    #[error("duplicate")]
    Duplicate,
    /// A version this peer already has, from a round older than the author's latest.
    #[error("replay of an older round")]
    Replay,
    /// A version this peer has not seen, from a round older than the author's latest.
    #[error("stale: older than the author's latest round")]
    Stale,
    /// A second, different version for an author and round.
    #[error("equivocation: two versions for one author and round")]
    Equivocation,
    /// The author was flagged earlier and is excluded.
    #[error("author is flagged")]
    Flagged,
    /// The author's versions stayed far from everyone else's ([`Outliers`]); the reason a member
    /// is flagged, never a message's.
    #[error("versions persistently far from the others'")]
    Outlier,
    /// A payload nobody asked for.
    #[error("unexpected payload")]
    UnexpectedPayload,
    /// A report on a model version this peer does not know.
    #[error("report on unknown model {0:?}")]
    UnknownModel(ContentId),
    /// A roster update that does not extend the chain.
    #[error("roster: {0}")]
    Roster(#[from] roster::Error),
    /// The author announces faster than any honest member would.
    #[error("{0} announces faster than its allowance")]
    RateLimited(MemberId),
}

impl Reason {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Malformed(wire::DecodeError::TooLarge { .. }) => "too_large",
            Reason::Malformed(wire::DecodeError::NonCanonical) => "non_canonical",
            Reason::Malformed(_) => "malformed",
            Reason::WrongChannel(_) => "wrong_channel",
            Reason::Signature(_) => "bad_signature",
            Reason::NotMember(_) => "not_member",
            Reason::NotPermitted(_) => "not_permitted",
            Reason::OtherExperiment(_) => "other_experiment",
            Reason::WrongModel => "wrong_model",
            Reason::Version(update::Error::PayloadDigest | update::Error::PayloadLength { .. }) => {
                "payload_mismatch"
            }
            Reason::Version(update::Error::NotFinite { .. }) => "payload_not_finite",
            Reason::Version(_) => "invalid_version",
            Reason::Report(_) => "invalid_report",
            Reason::Duplicate => "duplicate",
            Reason::Replay => "replay",
            Reason::Stale => "stale",
            Reason::Equivocation => "equivocation",
            Reason::Flagged => "flagged",
            Reason::Outlier => "outlier",
            Reason::UnexpectedPayload => "unexpected_payload",
            Reason::UnknownModel(_) => "unknown_model",
            Reason::Roster(_) => "roster",
            Reason::RateLimited(_) => "rate_limited",
        }
    }
}

/// Something the peer wants stored durably (the node writes it; the simulator may drop it).
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A verified model version (own or accepted).
    Version(Signed<Version>),
    /// The payload of a version, checked against its digest.
    Payload {
        /// The version it belongs to.
        id: ContentId,
        /// Little-endian payload bytes.
        bytes: Bytes,
    },
    /// A verified validation report.
    Report(Signed<Report>),
    /// A roster version that extended the chain.
    Roster(SignedRoster),
}

/// What happened, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message was accepted.
    Accepted {
        /// Its kind (`announce`, `report`, `roster`).
        kind: &'static str,
        /// Who signed it.
        signer: MemberId,
        /// Its content id.
        id: ContentId,
    },
    /// A message or payload was refused.
    Rejected {
        /// The peer that delivered it.
        from: MemberId,
        /// Why.
        reason: Reason,
    },
    /// An author was caught misbehaving and is excluded from now on.
    Flagged {
        /// The author.
        author: MemberId,
        /// What it did.
        reason: Reason,
    },
    /// This peer announced its version of a round.
    Announced {
        /// The round.
        round: u64,
        /// The version's content id.
        id: ContentId,
    },
    /// A round closed and the model was merged.
    RoundCompleted {
        /// The round that closed.
        round: u64,
        /// Authors merged, this peer first (a peer that adopts the finals of a mesh that ended
        /// while it was behind lists only their authors).
        contributors: Vec<MemberId>,
        /// What the rule did.
        summary: aggregate::Summary,
        /// Whether it closed on its timeout rather than on completed pulls.
        timed_out: bool,
        /// How far the own version was from the merge: their L2 distance over the merge's norm.
        /// This peer's view of the mesh's consensus distance, at the cost of one pass over the
        /// model; `None` when it merged nothing or adopted finals.
        spread: Option<f64>,
    },
    /// The roster advanced.
    RosterChanged {
        /// The new version.
        version: u64,
    },
    /// The configured number of rounds is done.
    Finished {
        /// Last round.
        round: u64,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Train the model from these parameters for one round, then call [`Peer::handle_trained`].
    Train {
        /// Round being trained.
        round: u64,
        /// Parameters to start from.
        params: Vec<f32>,
    },
    /// Publish a gossip message to the mesh.
    Broadcast(Message),
    /// Publish a gossip message to the members of this peer's roster group only: under
    /// [`TwoLevel`] averaging, the announcement of a round that does not mix across groups.
    /// A driver without groups may publish it to the mesh.
    BroadcastGroup(Message),
    /// Pull the payload of a version from a member, then call [`Peer::handle_payload`].
    Fetch {
        /// Whom to ask.
        from: MemberId,
        /// Which version.
        id: ContentId,
    },
    /// Store an item durably.
    Persist(Item),
    /// Report an event.
    Event(Event),
}

/// Operator requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Sign and publish a validation report as this peer.
    PublishReport(Report),
    /// Apply a roster update locally and publish it.
    Roster(SignedRoster),
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// The report breaks a rule or its model is unknown.
    #[error("report refused: {0}")]
    Report(Reason),
    /// The roster update does not extend the chain.
    #[error("roster update refused: {0}")]
    Roster(#[from] roster::Error),
}

/// Why a training result was refused (a bug in the driver or a diverged trainer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainedError {
    /// No [`Action::Train`] is outstanding.
    #[error("no training was asked for")]
    NotTraining,
    /// The trainer returned a vector of another length.
    #[error("trainer returned {found} parameters, the model has {expected}")]
    Shape {
        /// Returned length.
        found: usize,
        /// Model length.
        expected: usize,
    },
    /// The trainer diverged.
    #[error("trainer returned a non-finite parameter at index {index}")]
    NotFinite {
        /// First bad index.
        index: usize,
    },
}

/// Where a peer stands between rounds: what a node stores so a restart resumes there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The round to train next.
    pub round: u64,
    /// Content ids merged into the parameters the next round starts from.
    pub parents: Vec<ContentId>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// A member that does not train (validator, observer).
    Passive,
    /// Waiting for the trainer.
    Training,
    /// Own version announced; pulling until `deadline`.
    Gathering { deadline: Duration },
    /// `max_rounds` reached.
    Done,
}

#[derive(Debug, Default)]
struct AuthorState {
    latest: u64,
    /// The version seen for each round within [`AUTHOR_WINDOW`] of `latest`, sorted by round: a
    /// short vector, as a peer of a large mesh keeps one of these for every author it heard.
    seen: Vec<(u64, ContentId)>,
    flagged: bool,
    /// Training samples its newest announcement claimed (for [`TwoLevel`] group weights).
    samples: u64,
    /// Merged rounds in a row in which this author's version was an outlier ([`Outliers`]).
    outlier_streak: u32,
    /// Announcements this author may still send now (a token bucket, see [`RATE_BURST`]).
    tokens: f64,
    /// When the bucket was last filled.
    filled_at: Option<Duration>,
    /// This peer's round when the bucket was last filled.
    filled_round: u64,
}

impl AuthorState {
    fn seen(&self, round: u64) -> Option<&ContentId> {
        self.seen
            .binary_search_by_key(&round, |(r, _)| *r)
            .ok()
            .and_then(|i| self.seen.get(i))
            .map(|(_, id)| id)
    }

    /// Records the version of `round` (the caller has checked there was none) and forgets the
    /// rounds that fell out of the window.
    fn see(&mut self, round: u64, id: ContentId) {
        let at = self.seen.partition_point(|(r, _)| *r < round);
        // Most authors of a large mesh are heard once or twice: grow one slot at a time.
        if self.seen.len() == self.seen.capacity() {
            self.seen.reserve_exact(1);
        }
        self.seen.insert(at, (round, id));
        self.latest = self.latest.max(round);
        let floor = self.latest.saturating_sub(AUTHOR_WINDOW);
        self.seen.retain(|(r, _)| *r >= floor);
    }

    /// Takes a token for one announcement at `now`, this peer being at `round`; `false` when the
    /// author is over its allowance (refilled per second and per round this peer completed).
    fn take_token(&mut self, now: Duration, round: u64) -> bool {
        let refill = self.filled_at.map_or(RATE_BURST, |t| {
            now.saturating_sub(t).as_secs_f64() * RATE_PER_SECOND
                + round.saturating_sub(self.filled_round) as f64 * RATE_PER_ROUND
        });
        self.tokens = (self.tokens + refill).min(RATE_BURST);
        self.filled_at = Some(now);
        self.filled_round = self.filled_round.max(round);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a round pulls ([`Peer::targets`]).
#[derive(Debug, Clone, Copy)]
struct Targets {
    /// Versions of the own group (flat mode: of anyone, or every fixed neighbour).
    inside: usize,
    /// Other groups to pull one version from ([`TwoLevel`]).
    across: usize,
}

#[derive(Debug)]
struct InFlight {
    author: MemberId,
    deadline: Duration,
}

/// A gossip message decoded, and its signature checked when it is an announcement: the part of
/// [`Peer::handle_message`] that depends only on the bytes. A simulator that delivers one message
/// to many peers in one process checks it once and hands each peer a clone
/// ([`Peer::handle_inbound`]); a node just calls [`Peer::handle_message`].
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "short-lived: handed straight to a peer, or kept once per broadcast behind an Arc; \
              boxing would cost an allocation per receiver"
)]
pub enum Inbound {
    /// An announcement, verified or with why its signature failed.
    Announce(Result<Verified<Version>, identity::Error>),
    /// A validation report, checked by the peer against its roster.
    Report(Signed<Report>),
    /// A roster update, checked by the peer against its chain.
    Roster(SignedRoster),
    /// Bytes no peer accepts: malformed, or a kind that does not travel by gossip.
    Refused(Reason),
}

impl Inbound {
    /// Decodes gossip bytes and verifies an announcement's signature.
    pub fn inspect(bytes: &[u8]) -> Inbound {
        match Message::from_bytes(bytes, wire::MAX_GOSSIP) {
            Err(e) => Inbound::Refused(Reason::Malformed(e)),
            Ok(Message::Announce(signed)) => Inbound::Announce(signed.verify()),
            Ok(Message::Report(signed)) => Inbound::Report(signed),
            Ok(Message::Roster(update)) => Inbound::Roster(update),
            Ok(m @ (Message::Request(_) | Message::Payload { .. })) => {
                Inbound::Refused(Reason::WrongChannel(m.kind()))
            }
        }
    }
}

/// One member's protocol state. See the module docs for the call order.
#[derive(Debug)]
pub struct Peer {
    config: Config,
    key: Keypair,
    id: MemberId,
    chain: roster::Chain,
    rng: ChaCha8Rng,
    phase: Phase,
    round: u64,
    /// Current model: after merging, or the trained one while gathering. Empty while training
    /// (the trainer holds it).
    params: Vec<f32>,
    dim: usize,
    samples: u64,
    /// Other members of the roster that train (caps the fanout in small meshes).
    trainers: usize,
    /// The model the round in progress started training from (for [`Outer`]); empty without.
    round_start: Vec<f32>,
    /// [`Outer`]'s first and second moments, as long as the model once used.
    outer_m: Vec<f32>,
    outer_v: Vec<f32>,
    /// Under [`TwoLevel`] averaging: the training members that are not flagged, this peer
    /// included, by roster group; empty in flat mode.
    groups: BTreeMap<String, Vec<MemberId>>,
    /// Content ids merged into `params` (the next version's parents).
    parents: Vec<ContentId>,
    /// Own version of the current round, once announced.
    own: Option<Verified<Version>>,
    authors: BTreeMap<MemberId, AuthorState>,
    /// Versions of other authors at or above the current round, newest kept per author.
    candidates: BTreeMap<MemberId, BTreeMap<u64, Verified<Version>>>,
    fetching: BTreeMap<ContentId, InFlight>,
    /// Authors already tried this round (fetched or failed).
    tried: BTreeSet<MemberId>,
    /// Authors whose pull this round failed once and was asked again.
    retried: BTreeSet<MemberId>,
    fetched: Vec<(Verified<Version>, Vec<f32>)>,
    /// Parameter vectors of closed rounds, reused for the next payloads and merges: a fresh
    /// vector of millions of parameters costs more in page faults than the whole verified
    /// decode (BENCHMARKS.md, `decode_payload_fresh_vec`).
    spare: Vec<Vec<f32>>,
    served: VecDeque<(ContentId, Bytes)>,
    /// Content ids recently pulled, so a late answer is told from an unsolicited payload.
    asked: VecDeque<ContentId>,
    known: BTreeSet<ContentId>,
    known_order: VecDeque<ContentId>,
    actions: VecDeque<Action>,
    scratch: aggregate::Scratch,
    encode_buf: Vec<u8>,
}

impl Peer {
    /// A peer that starts training from `params` (the shared initialization) with `samples`
    /// local training samples. Members that may not train (validators, observers) stay passive
    /// and `params` may be empty.
    pub fn new(
        config: Config,
        key: Keypair,
        chain: roster::Chain,
        params: Vec<f32>,
        samples: u64,
    ) -> Result<Self, ConfigError> {
        Self::resume(config, key, chain, params, samples, Checkpoint::default())
    }

    /// A peer that continues from a [`Checkpoint`] (what a restarted node stored): it trains
    /// `checkpoint.round` next, from `params`, naming `checkpoint.parents` as the lineage.
    pub fn resume(
        config: Config,
        key: Keypair,
        chain: roster::Chain,
        params: Vec<f32>,
        samples: u64,
        checkpoint: Checkpoint,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let id = key.id();
        let role = chain
            .current()
            .member(&id)
            .map(|m| m.role)
            .ok_or(ConfigError::NotMember(id))?;
        let trains = role.may_train();
        if trains && (params.is_empty() || samples == 0) {
            return Err(ConfigError::Invalid(
                "a training member needs initial parameters and a positive sample count".into(),
            ));
        }
        let mut peer = Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            key,
            id,
            chain,
            phase: if trains {
                Phase::Training
            } else {
                Phase::Passive
            },
            round: checkpoint.round.max(1),
            trainers: 0,
            round_start: Vec::new(),
            outer_m: Vec::new(),
            outer_v: Vec::new(),
            groups: BTreeMap::new(),
            dim: params.len(),
            params: Vec::new(),
            samples,
            parents: checkpoint.parents,
            own: None,
            authors: BTreeMap::new(),
            candidates: BTreeMap::new(),
            fetching: BTreeMap::new(),
            tried: BTreeSet::new(),
            retried: BTreeSet::new(),
            fetched: Vec::new(),
            spare: Vec::new(),
            served: VecDeque::new(),
            asked: VecDeque::new(),
            known: BTreeSet::new(),
            known_order: VecDeque::new(),
            actions: VecDeque::new(),
            scratch: aggregate::Scratch::default(),
            encode_buf: Vec::new(),
        };
        peer.count_trainers();
        if trains {
            let round = peer.round;
            if peer.config.max_rounds.is_some_and(|m| round > m) {
                peer.phase = Phase::Done;
                peer.params = params;
            } else {
                if peer.config.outer.is_some() {
                    peer.round_start.clone_from(&params);
                }
                peer.actions.push_back(Action::Train { round, params });
            }
        }
        Ok(peer)
    }

    /// Counts the other members who may train and are not flagged: how many a round can merge.
    fn count_trainers(&mut self) {
        let id = self.id;
        let authors = &self.authors;
        self.trainers = self
            .chain
            .current()
            .members
            .iter()
            .filter(|m| m.id != id && m.role.may_train())
            .filter(|m| !authors.get(&m.id).is_some_and(|a| a.flagged))
            .count();
        self.groups.clear();
        if self.config.two_level.is_some() {
            for m in &self.chain.current().members {
                if m.role.may_train() && !authors.get(&m.id).is_some_and(|a| a.flagged) {
                    self.groups.entry(m.group.clone()).or_default().push(m.id);
                }
            }
        }
    }

    /// The checkpoint matching the parameters of the latest [`Action::Train`] (store both
    /// together when carrying out that action).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            round: self.round,
            parents: self.parents.clone(),
        }
    }

    /// This peer's member id.
    pub fn id(&self) -> MemberId {
        self.id
    }

    /// The round in progress.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The current model parameters (empty while the trainer holds them).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The roster chain this peer follows.
    pub fn chain(&self) -> &roster::Chain {
        &self.chain
    }

    /// Whether `max_rounds` is reached.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Authors flagged for misbehaviour.
    pub fn flagged(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.authors
            .iter()
            .filter(|(_, a)| a.flagged)
            .map(|(id, _)| *id)
    }

    /// The payload of a version this peer can serve (its own recent versions and what it pulled
    /// this round), for the transport's request handler.
    pub fn payload(&self, id: &ContentId) -> Option<Bytes> {
        self.served
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, b)| b.clone())
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the driver must call [`Peer::handle_timeout`] next, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let round = match self.phase {
            Phase::Gathering { deadline } => Some(deadline),
            _ => None,
        };
        self.fetching
            .values()
            .map(|f| f.deadline)
            .chain(round)
            .min()
    }

    fn event(&mut self, event: Event) {
        self.actions.push_back(Action::Event(event));
    }

    fn reject(&mut self, from: MemberId, reason: Reason) -> Verdict {
        self.event(Event::Rejected {
            from,
            reason: reason.clone(),
        });
        Verdict::Reject(reason)
    }

    /// Refuses a message for what its author did (flagged, over its rate). Sent by the author
    /// itself it is a rejection; relayed by another member, who forwarded it before it could
    /// know, it is ignored: not forwarded, and the relayer is not penalized for the author.
    fn refuse_author(&mut self, from: MemberId, author: MemberId, reason: Reason) -> Verdict {
        if from == author {
            self.reject(from, reason)
        } else {
            Verdict::Ignore(reason)
        }
    }

    /// Gossip bytes from `from` (the peer that delivered them, not necessarily the signer).
    pub fn handle_message(&mut self, now: Duration, from: MemberId, bytes: &[u8]) -> Verdict {
        self.handle_inbound(now, from, Inbound::inspect(bytes))
    }

    /// Gossip that [`Inbound::inspect`] has decoded and checked: the same as
    /// [`Peer::handle_message`] with its bytes.
    pub fn handle_inbound(&mut self, now: Duration, from: MemberId, inbound: Inbound) -> Verdict {
        match inbound {
            Inbound::Announce(Ok(version)) => self.handle_announce(now, from, version),
            Inbound::Announce(Err(e)) => self.reject(from, Reason::Signature(e)),
            Inbound::Report(signed) => match self.accept_report(signed) {
                Ok(v) => v,
                Err(reason) => self.reject(from, reason),
            },
            Inbound::Roster(update) => self.handle_roster(from, update),
            Inbound::Refused(reason) => self.reject(from, reason),
        }
    }

    fn handle_announce(
        &mut self,
        now: Duration,
        from: MemberId,
        version: Verified<Version>,
    ) -> Verdict {
        let author = version.signer();
        match self.chain.current().member(&author) {
            None => return self.reject(from, Reason::NotMember(author)),
            Some(m) if !m.role.may_train() => {
                return self.reject(from, Reason::NotPermitted(author));
            }
            Some(_) => {}
        }
        if let Err(e) = version.check(author) {
            return self.reject(from, Reason::Version(e));
        }
        if version.experiment != self.config.experiment {
            return Verdict::Ignore(Reason::OtherExperiment(version.experiment.clone()));
        }
        if version.model != self.config.model
            || (self.dim != 0 && version.payload.params != self.dim as u64)
        {
            return self.reject(from, Reason::WrongModel);
        }
        if author == self.id {
            // Our own version echoed back by the mesh.
            return Verdict::Ignore(Reason::Duplicate);
        }
        let (round, id) = (version.round, version.id());
        let state = self.authors.entry(author).or_default();
        if state.flagged {
            return self.refuse_author(from, author, Reason::Flagged);
        }
        if state.seen(round) != Some(&id) && !state.take_token(now, self.round) {
            return self.refuse_author(from, author, Reason::RateLimited(author));
        }
        match state.seen(round) {
            Some(seen) if *seen == id && round >= state.latest => {
                return Verdict::Ignore(Reason::Duplicate);
            }
            Some(seen) if *seen == id => return self.reject(from, Reason::Replay),
            Some(_) => {
                state.flagged = true;
                self.exclude(author);
                self.count_trainers();
                self.event(Event::Flagged {
                    author,
                    reason: Reason::Equivocation,
                });
                let verdict = self.reject(from, Reason::Equivocation);
                // Its pull may have been the one the round waited for: pull another author, or
                // close the round if what arrived is now enough.
                self.pull(now);
                self.maybe_close(now, false);
                return verdict;
            }
            // Within the window an unseen older round is an honest message that lost a race
            // with its successor (gossip does not keep order): not a fault. Still useful if it
            // is of the round this peer gathers (an author's last-round version that arrived
            // after its final one), else not worth forwarding. Beyond the window nobody can tell
            // it from a replay.
            None if round < state.latest
                && round + AUTHOR_WINDOW > state.latest
                && round < self.round =>
            {
                return Verdict::Ignore(Reason::Stale);
            }
            None if round < state.latest && round + AUTHOR_WINDOW > state.latest => {}
            None if round < state.latest => return self.reject(from, Reason::Replay),
            None => {}
        }
        state.see(round, id);
        state.samples = version.samples;

        self.remember(id);
        self.actions
            .push_back(Action::Persist(Item::Version(version.signed().clone())));
        self.event(Event::Accepted {
            kind: "announce",
            signer: author,
            id,
        });
        if round >= self.round && self.wants(author) {
            let slot = self.candidates.entry(author).or_default();
            slot.insert(round, version);
            // Keep the oldest (the round in progress, if present) and the newest.
            while slot.len() > CANDIDATES_PER_AUTHOR {
                let Some(&middle) = slot.keys().nth(1) else {
                    break;
                };
                slot.remove(&middle);
            }
            self.pull(now);
        }
        Verdict::Accept
    }

    /// Whether versions of `author` are merged by this peer (fixed neighbours, or anyone).
    fn wants(&self, author: MemberId) -> bool {
        match &self.config.neighbours {
            Some(n) => n.contains(&author),
            None => true,
        }
    }

    fn remember(&mut self, id: ContentId) {
        if self.known.insert(id) {
            self.known_order.push_back(id);
            if self.known_order.len() > KNOWN_VERSIONS
                && let Some(old) = self.known_order.pop_front()
            {
                self.known.remove(&old);
            }
        }
    }

    /// Drops everything of a flagged author from the round in progress.
    fn exclude(&mut self, author: MemberId) {
        self.candidates.remove(&author);
        self.fetched.retain(|(v, _)| v.signer() != author);
        self.fetching.retain(|_, f| f.author != author);
    }

    /// How many distinct authors this round should merge.
    fn target(&self) -> usize {
        let t = self.targets();
        t.inside + t.across
    }

    /// What this round pulls: versions inside the own group (in flat mode: from anyone) and
    /// other groups to pull one version from.
    fn targets(&self) -> Targets {
        let not_flagged = |id: &MemberId| !self.authors.get(id).is_some_and(|a| a.flagged);
        match (&self.config.neighbours, self.config.two_level) {
            (Some(n), _) => Targets {
                inside: n
                    .iter()
                    .filter(|id| **id != self.id && not_flagged(id))
                    .count(),
                across: 0,
            },
            (None, None) => Targets {
                inside: self.config.fanout.min(self.trainers),
                across: 0,
            },
            (None, Some(schedule)) => {
                let own = self.own_group();
                let mates = self
                    .groups
                    .get(own)
                    .map_or(0, |g| g.iter().filter(|id| **id != self.id).count());
                let others = self.groups.keys().filter(|g| g.as_str() != own).count();
                let across = match schedule {
                    _ if !self.mixes_across(self.round) => 0,
                    TwoLevel::Every { .. } => others,
                    TwoLevel::Fanout { groups } => groups.min(others),
                };
                Targets {
                    inside: self.config.fanout.min(mates),
                    across,
                }
            }
        }
    }

    /// This peer's roster group.
    fn own_group(&self) -> &str {
        self.group_of(&self.id).unwrap_or_default()
    }

    /// A member's roster group.
    fn group_of(&self, id: &MemberId) -> Option<&str> {
        self.chain.current().member(id).map(|m| m.group.as_str())
    }

    /// Whether `round` pulls from other groups too ([`TwoLevel`]); never in flat mode.
    fn mixes_across(&self, round: u64) -> bool {
        match self.config.two_level {
            None => false,
            Some(TwoLevel::Fanout { .. }) => true,
            Some(TwoLevel::Every { rounds }) => {
                round.is_multiple_of(rounds.max(1)) || self.config.max_rounds == Some(round)
            }
        }
    }

    /// Of the versions fetched (and, with `in_flight`, being fetched): how many are of the own
    /// group, and which other groups they cover. In flat mode every version counts as inside.
    fn pulled(&self, in_flight: bool) -> (usize, BTreeSet<String>) {
        let authors = self.fetched.iter().map(|(v, _)| v.signer()).chain(
            self.fetching
                .values()
                .filter(|_| in_flight)
                .map(|f| f.author),
        );
        if self.config.two_level.is_none() {
            return (authors.count(), BTreeSet::new());
        }
        let own = self.own_group();
        let mut inside = 0;
        let mut across = BTreeSet::new();
        for author in authors {
            match self.group_of(&author) {
                Some(g) if g != own => {
                    across.insert(g.to_owned());
                }
                _ => inside += 1,
            }
        }
        (inside, across)
    }

    /// Whether every (unflagged) training member of `group` has announced at least once, so
    /// the group's samples are known.
    fn group_heard(&self, group: &str) -> bool {
        self.groups.get(group).is_none_or(|members| {
            members
                .iter()
                .all(|id| self.authors.get(id).is_some_and(|a| a.samples > 0))
        })
    }

    /// Sample weight of a roster group: the samples its (unflagged) training members' newest
    /// announcements claim, a member not heard from counting as the group's average.
    fn group_samples(&self, group: &str) -> f64 {
        let Some(members) = self.groups.get(group) else {
            return 0.0;
        };
        let known: Vec<u64> = members
            .iter()
            .filter_map(|id| {
                if *id == self.id {
                    Some(self.samples)
                } else {
                    self.authors.get(id).map(|a| a.samples).filter(|s| *s > 0)
                }
            })
            .collect();
        if known.is_empty() {
            return 0.0;
        }
        let sum: f64 = known.iter().map(|s| *s as f64).sum();
        sum * members.len() as f64 / known.len() as f64
    }

    /// Starts pulls until enough are fetched or in flight. Prefers an author's version of the
    /// current round, else its newest.
    fn pull(&mut self, now: Duration) {
        if matches!(self.phase, Phase::Passive | Phase::Done) {
            return;
        }
        let mut skipped: Vec<MemberId> = Vec::new();
        let targets = self.targets();
        loop {
            let (inside, covered) = self.pulled(true);
            let want_inside = inside < targets.inside;
            let want_across = covered.len() < targets.across;
            if !want_inside && !want_across {
                break;
            }
            // In flat mode every candidate is "inside"; under two-level averaging a candidate
            // of the own group while the group's pulls are wanted, or of a group not yet
            // covered while other groups are.
            let two_level = self.config.two_level.is_some();
            // Borrowing fields, not `self`: the draw below takes the generator mutably.
            let roster = self.chain.current();
            let own = roster
                .member(&self.id)
                .map(|m| m.group.as_str())
                .unwrap_or_default();
            let eligible = |author: &MemberId| {
                if !two_level {
                    return true;
                }
                match roster.member(author).map(|m| m.group.as_str()) {
                    Some(g) if g != own => want_across && !covered.contains(g),
                    _ => want_inside,
                }
            };
            let choice = self
                .candidates
                .keys()
                .filter(|a| !self.tried.contains(*a) && !skipped.contains(a) && eligible(a))
                .choose(&mut self.rng)
                .copied();
            let Some(author) = choice else { break };
            self.tried.insert(author);
            let Some(version) = self.candidates.get(&author).and_then(|c| {
                c.get(&self.round)
                    .or_else(|| c.last_key_value().map(|(_, v)| v))
            }) else {
                continue;
            };
            // In the last round, an author's final version (its merge of this round) is not one
            // of this round's inputs: merging it would give this peer another model than the
            // others'. Its version of this round is awaited instead (announcements can arrive
            // out of order), unless most authors are done, which the merge then adopts.
            if self.config.max_rounds == Some(self.round)
                && version.round > self.round
                && !self.mesh_ended()
            {
                self.tried.remove(&author);
                skipped.push(author);
                continue;
            }
            let id = version.id();
            self.fetching.insert(
                id,
                InFlight {
                    author,
                    deadline: now + self.config.fetch_timeout,
                },
            );
            if self.asked.len() >= ASKED_REMEMBERED {
                self.asked.pop_front();
            }
            self.asked.push_back(id);
            self.actions.push_back(Action::Fetch { from: author, id });
        }
        self.maybe_close(now, false);
    }

    /// Whether most of the other training members have announced their final version (the
    /// lower median of their newest rounds is past `max_rounds`; one not heard from this round
    /// counts as at this peer's round).
    fn mesh_ended(&self) -> bool {
        let Some(m) = self.config.max_rounds else {
            return false;
        };
        let mut newest: Vec<u64> = self
            .candidates
            .values()
            .filter_map(|c| c.last_key_value().map(|(r, _)| *r))
            .collect();
        newest.resize(newest.len().max(self.trainers), self.round);
        lower_median(&mut newest).is_some_and(|r| r > m)
    }

    /// A payload arrived (`Some`) or the pull failed (`None`).
    pub fn handle_payload(
        &mut self,
        now: Duration,
        from: MemberId,
        id: ContentId,
        data: Option<Bytes>,
    ) {
        let Some(flight) = self.fetching.remove(&id) else {
            // A late answer to a pull this peer gave up is nobody's fault; only a payload it
            // never asked for is.
            if data.is_some() && !self.asked.contains(&id) {
                self.event(Event::Rejected {
                    from,
                    reason: Reason::UnexpectedPayload,
                });
            }
            return;
        };
        let version = self
            .candidates
            .get(&flight.author)
            .and_then(|c| c.values().find(|v| v.id() == id))
            .cloned();
        // A pull that failed (a connection closed under it, a timeout on the way) is asked once
        // more this round: leaving the author out would give this peer another merge than the
        // others'.
        if data.is_none() && self.retried.insert(flight.author) {
            self.tried.remove(&flight.author);
        }
        if let (Some(version), Some(bytes)) = (version, data) {
            {
                let mut params = self.spare.pop().unwrap_or_default();
                match update::decode_payload(&version.payload, &bytes, &mut params) {
                    Ok(()) => {
                        self.actions.push_back(Action::Persist(Item::Payload {
                            id,
                            bytes: bytes.clone(),
                        }));
                        self.served.push_back((id, bytes));
                        self.fetched.push((version, params));
                    }
                    Err(e) => {
                        self.spare.push(params);
                        self.event(Event::Rejected {
                            from,
                            reason: Reason::Version(e),
                        });
                    }
                }
            }
        }
        self.pull(now);
    }

    /// Local training of the current round finished.
    pub fn handle_trained(
        &mut self,
        now: Duration,
        params: Vec<f32>,
        metrics: BTreeMap<String, f64>,
    ) -> Result<(), TrainedError> {
        if self.phase != Phase::Training {
            return Err(TrainedError::NotTraining);
        }
        if params.len() != self.dim {
            return Err(TrainedError::Shape {
                found: params.len(),
                expected: self.dim,
            });
        }
        if let Some(index) = params.iter().position(|p| !p.is_finite()) {
            return Err(TrainedError::NotFinite { index });
        }
        let metrics = metrics.into_iter().filter(|(_, v)| v.is_finite()).collect();
        let payload = update::encode_f32(&params, &mut self.encode_buf);
        let version = self.key.sign(Version {
            experiment: self.config.experiment.clone(),
            model: self.config.model,
            round: self.round,
            author: self.id,
            samples: self.samples,
            degree: u32::try_from(self.target()).unwrap_or(u32::MAX),
            parents: std::mem::take(&mut self.parents),
            metrics,
            payload,
        });
        let id = version.id();
        let bytes = Bytes::copy_from_slice(&self.encode_buf);
        self.served.push_back((id, bytes.clone()));
        while self.served.len() > SERVED_ROUNDS * (1 + self.target()) {
            self.served.pop_front();
        }
        self.remember(id);
        self.actions
            .push_back(Action::Persist(Item::Version(version.signed().clone())));
        self.actions
            .push_back(Action::Persist(Item::Payload { id, bytes }));
        let announce = Message::Announce(version.signed().clone());
        self.actions.push_back(
            if self.config.two_level.is_some() && !self.mixes_across(self.round) {
                Action::BroadcastGroup(announce)
            } else {
                Action::Broadcast(announce)
            },
        );
        self.event(Event::Announced {
            round: self.round,
            id,
        });
        self.params = params;
        self.own = Some(version);
        self.phase = Phase::Gathering {
            deadline: now + self.config.round_timeout,
        };
        self.pull(now);
        Ok(())
    }

    /// Time has passed: give up late pulls, close the round at its deadline.
    pub fn handle_timeout(&mut self, now: Duration) {
        let expired: Vec<ContentId> = self
            .fetching
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.fetching.remove(id);
        }
        if !expired.is_empty() {
            self.pull(now);
        }
        if let Phase::Gathering { deadline } = self.phase
            && deadline <= now
        {
            self.maybe_close(now, true);
        }
    }

    /// Closes the round once every wanted pull is done, or at the deadline with what arrived.
    /// In sampling mode a round waits for late announcements rather than closing early with
    /// fewer than `fanout` versions.
    fn maybe_close(&mut self, now: Duration, timed_out: bool) {
        let Phase::Gathering { .. } = self.phase else {
            return;
        };
        let targets = self.targets();
        let (inside, covered) = self.pulled(false);
        // A round that merges other groups weighs each by its samples: it waits (up to its
        // deadline) until it has heard every member of those groups at least once.
        let enough = inside >= targets.inside
            && covered.len() >= targets.across
            && covered.iter().all(|g| self.group_heard(g));
        if enough || timed_out {
            self.close_round(now, !enough);
        }
    }

    /// Updates each merged author's outlier streak ([`Outliers`]) and flags and excludes those
    /// whose streak is long enough.
    fn screen_outliers(&mut self) {
        let Some(policy) = self.config.outliers else {
            return;
        };
        // Under two-level averaging the own group's versions are judged among themselves:
        // another group's model may sit far off for honest reasons (its centre's data), and the
        // robust rule's second step bounds it.
        let judged: Vec<bool> = match self.config.two_level {
            None => vec![true; self.fetched.len()],
            Some(_) => {
                let own = self.own_group();
                self.fetched
                    .iter()
                    .map(|(v, _)| self.group_of(&v.signer()).is_none_or(|g| g == own))
                    .collect()
            }
        };
        if judged.iter().filter(|j| **j).count() < 3 {
            return;
        }
        // Distances to the coordinate-wise median of the round's inputs (own model included),
        // not to the own model: a member whose own data pulls its model away from the others
        // (non-IID) would otherwise see every version as far and a poisoned one as no farther.
        let mut center = self.spare.pop().unwrap_or_default();
        center.clear();
        center.resize(self.dim, 0.0);
        let inputs: Vec<&[f32]> = std::iter::once(self.params.as_slice())
            .chain(
                self.fetched
                    .iter()
                    .zip(&judged)
                    .filter(|(_, j)| **j)
                    .map(|((_, p), _)| p.as_slice()),
            )
            .collect();
        if aggregate::coordinate_median(&mut center, &inputs, &mut self.scratch).is_err() {
            // Unreachable (inputs of the model's length): judge against the own model.
            center.copy_from_slice(&self.params);
        }
        drop(inputs);
        let distances: Vec<f64> = self
            .fetched
            .iter()
            .zip(&judged)
            .filter(|(_, j)| **j)
            .map(|((_, p), _)| aggregate::distance(p, &center))
            .collect();
        self.spare.push(center);
        let mut sorted = distances.clone();
        sorted.sort_by(f64::total_cmp);
        // Distances far below the model's own size are rounding, not disagreement: a mesh
        // that has converged must not start flagging members over its last bits.
        let own_norm = self
            .params
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = sorted[(sorted.len() - 1) / 2].max(1e-6 * own_norm);
        let bar = f64::from(policy.factor) * scale;
        let mut flagged = Vec::new();
        let judged = self
            .fetched
            .iter()
            .zip(&judged)
            .filter(|(_, j)| **j)
            .map(|(f, _)| f);
        for ((v, _), d) in judged.zip(&distances) {
            let author = v.signer();
            let state = self.authors.entry(author).or_default();
            if scale > 0.0 && *d > bar {
                state.outlier_streak += 1;
            } else {
                state.outlier_streak = 0;
            }
            if state.outlier_streak >= policy.rounds && !state.flagged {
                state.flagged = true;
                flagged.push(author);
            }
        }
        if flagged.is_empty() {
            return;
        }
        for author in flagged {
            self.exclude(author);
            self.event(Event::Flagged {
                author,
                reason: Reason::Outlier,
            });
        }
        self.count_trainers();
    }

    fn close_round(&mut self, _now: Duration, timed_out: bool) {
        self.screen_outliers();
        let Some(own) = self.own.take() else { return };
        if let Some(m) = self.config.max_rounds
            && self.merged_round() > m
            && self.fetched.iter().any(|(v, _)| v.round == m + 1)
        {
            return self.adopt_finals(m, timed_out);
        }
        let mut out = self.spare.pop().unwrap_or_default();
        out.clear();
        out.resize(self.dim, 0.0);
        let summary = self.merge(own.degree, &mut out);
        let spread = (!self.fetched.is_empty()).then(|| {
            let (mut moved, mut norm) = (0.0f64, 0.0f64);
            for (own, merged) in self.params.iter().zip(&out) {
                moved += (f64::from(*own) - f64::from(*merged)).powi(2);
                norm += f64::from(*merged).powi(2);
            }
            moved.sqrt() / norm.sqrt().max(1e-12)
        });
        // A peer that merged versions of a later round (it was behind: restarted, or newly
        // admitted) adopts the merge as it is: its distance to the mesh is no training signal,
        // and an outer step, bounded per coordinate, would keep it apart for many rounds. Its
        // moments start over from there.
        let mut fetched_rounds: Vec<u64> = self.fetched.iter().map(|(v, _)| v.round).collect();
        let catching_up = lower_median(&mut fetched_rounds).is_some_and(|r| r > self.round);
        if catching_up {
            self.outer_m.clear();
            self.outer_v.clear();
        }
        // The last round's merge is the final version as it is: members that merged the same
        // versions end on the same model, whatever their outer moments (each steps from its own
        // round start, so a mesh that was cut apart, or a member that restarted or joined late,
        // would otherwise end close but not equal).
        let last = self.config.max_rounds.is_some_and(|m| self.round >= m);
        if let Some(outer) = self.config.outer
            && !catching_up
            && !last
            && self.round_start.len() == out.len()
        {
            self.outer_m.resize(out.len(), 0.0);
            self.outer_v.resize(out.len(), 0.0);
            outer.step(
                &self.round_start,
                &mut out,
                &mut self.outer_m,
                &mut self.outer_v,
            );
        }
        let mut contributors = vec![self.id];
        self.parents = vec![own.id()];
        let mut rounds = Vec::with_capacity(self.fetched.len());
        for (v, params) in self.fetched.drain(..) {
            contributors.push(v.signer());
            self.parents.push(v.id());
            rounds.push(v.round);
            self.spare.push(params);
        }
        let newest = lower_median(&mut rounds).map_or(self.round, |r| r.max(self.round));
        let merged_from = std::mem::replace(&mut self.params, out);
        self.spare.push(merged_from);
        // Enough for the next round's pulls and its merge; the rest is freed.
        self.spare.truncate(self.target() + 1);
        let round = self.round;
        self.event(Event::RoundCompleted {
            round,
            contributors,
            summary,
            timed_out,
            spread,
        });
        // A peer that merged versions of a later round (it was behind: restarted, or newly
        // admitted) joins that round instead of skipping past it: the others are gathering
        // there and wait for its version.
        self.round = (round + 1).max(newest);
        self.fetching.clear();
        self.tried.clear();
        self.retried.clear();
        let floor = self.round;
        for slot in self.candidates.values_mut() {
            slot.retain(|r, _| *r >= floor);
        }
        self.candidates.retain(|_, slot| !slot.is_empty());
        if let Some(m) = self.config.max_rounds
            && self.round > m
        {
            self.phase = Phase::Done;
            self.announce_final(m + 1);
            self.event(Event::Finished {
                round: self.round - 1,
            });
        } else {
            self.phase = Phase::Training;
            if self.config.outer.is_some() {
                self.round_start.clone_from(&self.params);
            }
            self.actions.push_back(Action::Train {
                round: self.round,
                params: std::mem::take(&mut self.params),
            });
        }
    }

    /// Merges the own model with the versions fetched this round into `out`. In flat mode, one
    /// application of the rule, weighted by the samples each version claims. Under [`TwoLevel`]
    /// averaging, in two steps: the rule merges the own group's versions (the own one included)
    /// into the group's model, then, if versions of other groups were pulled, merges that with
    /// them, the group's model standing for the own group's samples and each other group's
    /// version(s) for that group's samples. For the mean this is the one sample-weighted mean
    /// of the mesh; a robust rule bounds a bad version inside its group in the first step and a
    /// bad representative of another group in the second.
    fn merge(&mut self, own_degree: u32, out: &mut [f32]) -> aggregate::Summary {
        let across: Vec<bool> = match self.config.two_level {
            None => vec![false; self.fetched.len()],
            Some(_) => {
                let own = self.own_group();
                self.fetched
                    .iter()
                    .map(|(v, _)| self.group_of(&v.signer()).is_some_and(|g| g != own))
                    .collect()
            }
        };
        // Second-step weights: each other group's samples, shared by its versions.
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let pulled_across = || {
            self.fetched
                .iter()
                .zip(&across)
                .filter(|(_, a)| **a)
                .map(|((v, _), _)| (v, self.group_of(&v.signer()).unwrap_or_default()))
        };
        for (_, group) in pulled_across() {
            *counts.entry(group).or_default() += 1;
        }
        let weights: Vec<f64> = pulled_across()
            .map(|(v, group)| {
                // A group whose samples are unknown falls back to the version's own claim.
                let samples = self.group_samples(group);
                if samples > 0.0 {
                    samples / counts[group] as f64
                } else {
                    v.samples as f64
                }
            })
            .collect();
        drop(counts);
        let own_group_samples = self.group_samples(self.own_group());

        let own = Contribution {
            params: &self.params,
            weight: self.samples as f64,
            degree: own_degree,
        };
        let inside: Vec<Contribution<'_>> = self
            .fetched
            .iter()
            .zip(&across)
            .filter(|(_, a)| !**a)
            .map(|((v, p), _)| Contribution {
                params: p,
                weight: v.samples as f64,
                degree: v.degree,
            })
            .collect();
        let rule = &self.config.rule;
        let scratch = &mut self.scratch;
        if weights.is_empty() {
            return apply_or_keep(rule, own, &inside, out, scratch);
        }
        let mut group = self.spare.pop().unwrap_or_default();
        group.clear();
        group.resize(self.dim, 0.0);
        let first = apply_or_keep(rule, own, &inside, &mut group, scratch);
        let in_samples: f64 = own.weight + inside.iter().map(|c| c.weight).sum::<f64>();
        let others: Vec<Contribution<'_>> = self
            .fetched
            .iter()
            .zip(&across)
            .filter(|(_, a)| **a)
            .zip(&weights)
            .map(|(((v, p), _), w)| Contribution {
                params: p,
                weight: *w,
                degree: v.degree,
            })
            .collect();
        let own_group = Contribution {
            params: &group,
            weight: if own_group_samples > 0.0 {
                own_group_samples
            } else {
                in_samples
            },
            degree: own_degree,
        };
        let second = match rule.apply(own_group, &others, out, scratch) {
            Ok(summary) => summary,
            // A robust rule that cannot take this few inputs (a trim of 1 over the group
            // and one other group): the coordinate-wise median, which takes any number.
            Err(_) => {
                let inputs: Vec<&[f32]> = std::iter::once(own_group.params)
                    .chain(others.iter().map(|c| c.params))
                    .collect();
                if aggregate::coordinate_median(out, &inputs, scratch).is_err() {
                    out.copy_from_slice(&group);
                }
                aggregate::Summary {
                    inputs: inputs.len(),
                    clipped: 0,
                    tau: None,
                }
            }
        };
        drop(others);
        drop(inside);
        self.spare.push(group);
        aggregate::Summary {
            inputs: first.inputs + second.inputs - 1,
            clipped: first.clipped + second.clipped,
            tau: second.tau.or(first.tau),
        }
    }

    /// The round the members pulled this round are at: the lower median of their rounds, so
    /// that one member claiming a far-off round cannot drag everyone there (and past
    /// `max_rounds`, or into adopting its "final").
    fn merged_round(&self) -> u64 {
        let mut rounds: Vec<u64> = self.fetched.iter().map(|(v, _)| v.round).collect();
        lower_median(&mut rounds).unwrap_or(self.round)
    }

    /// The mesh ended while this peer was behind (restarted, cut off, or slower): most of what
    /// it pulled are final versions (round `m + 1`). Its own model of an earlier round would only pull
    /// the finished consensus away, and every round it could still merge into is over, so it
    /// adopts the coordinate-wise median of the finals it pulled (equal to each of them when the
    /// mesh agrees; a minority of deviant finals cannot move it) as its own final version, their
    /// ids its parents.
    fn adopt_finals(&mut self, m: u64, timed_out: bool) {
        let mut out = self.spare.pop().unwrap_or_default();
        out.clear();
        out.resize(self.dim, 0.0);
        let (finals, stale): (Vec<_>, Vec<_>) =
            self.fetched.drain(..).partition(|(v, _)| v.round == m + 1);
        self.spare.extend(stale.into_iter().map(|(_, p)| p));
        let inputs: Vec<&[f32]> = finals.iter().map(|(_, p)| p.as_slice()).collect();
        if aggregate::coordinate_median(&mut out, &inputs, &mut self.scratch).is_err() {
            // Unreachable (at least one final, each of the model's length): keep the own model.
            out.copy_from_slice(&self.params);
        }
        drop(inputs);
        let contributors = finals.iter().map(|(v, _)| v.signer()).collect();
        self.parents = finals.iter().map(|(v, _)| v.id()).collect();
        let summary = aggregate::Summary {
            inputs: finals.len(),
            clipped: 0,
            tau: None,
        };
        self.spare.extend(finals.into_iter().map(|(_, p)| p));
        let stale_model = std::mem::replace(&mut self.params, out);
        self.spare.push(stale_model);
        self.spare.truncate(self.target() + 1);
        self.event(Event::RoundCompleted {
            round: self.round,
            contributors,
            summary,
            timed_out,
            spread: None,
        });
        self.round = m + 1;
        self.fetching.clear();
        self.tried.clear();
        self.retried.clear();
        self.candidates.clear();
        self.phase = Phase::Done;
        self.announce_final(m + 1);
        self.event(Event::Finished { round: m });
    }

    /// Signs and announces the merged model of the last round as this peer's final version:
    /// round `max_rounds + 1`, not trained further, its parents the versions it was averaged
    /// from. It is what the hospital deploys, exports and has validated.
    fn announce_final(&mut self, round: u64) {
        let payload = update::encode_f32(&self.params, &mut self.encode_buf);
        let version = self.key.sign(Version {
            experiment: self.config.experiment.clone(),
            model: self.config.model,
            round,
            author: self.id,
            samples: self.samples,
            degree: u32::try_from(self.target()).unwrap_or(u32::MAX),
            parents: self.parents.clone(),
            metrics: BTreeMap::new(),
            payload,
        });
        let id = version.id();
        let bytes = Bytes::copy_from_slice(&self.encode_buf);
        self.served.push_back((id, bytes.clone()));
        self.remember(id);
        self.actions
            .push_back(Action::Persist(Item::Version(version.signed().clone())));
        self.actions
            .push_back(Action::Persist(Item::Payload { id, bytes }));
        self.actions.push_back(Action::Broadcast(Message::Announce(
            version.signed().clone(),
        )));
        self.event(Event::Announced { round, id });
    }

    fn accept_report(&mut self, signed: Signed<Report>) -> Result<Verdict, Reason> {
        let report = signed.verify()?;
        let signer = report.signer();
        match self.chain.current().member(&signer) {
            None => return Err(Reason::NotMember(signer)),
            Some(m) if !m.role.may_validate() => return Err(Reason::NotPermitted(signer)),
            Some(_) => {}
        }
        report.check(signer)?;
        if !self.known.contains(&report.model) {
            return Err(Reason::UnknownModel(report.model));
        }
        self.actions
            .push_back(Action::Persist(Item::Report(report.signed().clone())));
        self.event(Event::Accepted {
            kind: "report",
            signer,
            id: report.id(),
        });
        Ok(Verdict::Accept)
    }

    fn handle_roster(&mut self, from: MemberId, update: SignedRoster) -> Verdict {
        match self.chain.apply(update) {
            Ok(roster::Outcome::Advanced { version }) => {
                self.after_roster_change(version);
                Verdict::Accept
            }
            Ok(roster::Outcome::Duplicate) => Verdict::Ignore(Reason::Duplicate),
            Err(e) => self.reject(from, Reason::Roster(e)),
        }
    }

    /// Stores the chain's own copy (only the signatures that counted), not the bytes received.
    fn after_roster_change(&mut self, version: u64) {
        let accepted = self.chain.current_signed().clone();
        self.actions
            .push_back(Action::Persist(Item::Roster(accepted)));
        self.event(Event::RosterChanged { version });
        self.count_trainers();
        // Members removed from the roster no longer count.
        let roster = self.chain.current();
        let removed: Vec<MemberId> = self
            .candidates
            .keys()
            .filter(|a| !roster.contains(a))
            .copied()
            .collect();
        for author in removed {
            self.exclude(author);
        }
    }

    /// An operator request.
    pub fn handle_command(&mut self, _now: Duration, command: Command) -> Result<(), CommandError> {
        match command {
            Command::PublishReport(report) => {
                let signed = self.key.sign(report);
                let message = Message::Report(signed.signed().clone());
                self.accept_report(signed.signed().clone())
                    .map_err(CommandError::Report)?;
                self.actions.push_back(Action::Broadcast(message));
                Ok(())
            }
            Command::Roster(update) => {
                if let roster::Outcome::Advanced { version } = self.chain.apply(update)? {
                    self.after_roster_change(version);
                }
                let accepted = self.chain.current_signed().clone();
                self.actions
                    .push_back(Action::Broadcast(Message::Roster(accepted)));
                Ok(())
            }
        }
    }
}

/// Applies `rule`; when it cannot take these inputs (e.g. too few for its trim), keeps the own
/// model for this round rather than stall.
fn apply_or_keep(
    rule: &aggregate::Rule,
    own: Contribution<'_>,
    others: &[Contribution<'_>],
    out: &mut [f32],
    scratch: &mut aggregate::Scratch,
) -> aggregate::Summary {
    rule.apply(own, others, out, scratch).unwrap_or_else(|_| {
        out.copy_from_slice(own.params);
        aggregate::Summary {
            inputs: 1,
            clipped: 0,
            tau: None,
        }
    })
}

/// The lower median of `rounds` (sorted in place), `None` if empty.
fn lower_median(rounds: &mut [u64]) -> Option<u64> {
    rounds.sort_unstable();
    rounds.get(rounds.len().saturating_sub(1) / 2).copied()
}
