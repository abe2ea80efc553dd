//! The simulated network: what lies between the peers of a run. Its settings and faults as
//! scenario files spell them ([`Network`] with its [`Partition`]s and [`Churn`], and
//! [`Stragglers`]), and [`Links`], which answers the event loop's questions from them: who hears
//! a broadcast, whether a message is lost or cut by a partition, how long it travels, whether a
//! peer is offline.
//!
//! It only answers: it never holds a message or schedules a delivery (that is [`crate::Sim`]'s
//! job), never touches a socket or the wall clock, and draws randomness only from the generator
//! the event loop hands it or from generators of its own seeded by the run's seed (one per fault,
//! so turning a fault on shifts no other draw of the run).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The simulated network between every pair of peers. With [`Groups`], its latency and
/// bandwidth are those between groups (the WAN), and the groups' own hold inside a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// One-way latency, milliseconds: the minimum.
    pub latency_ms: f64,
    /// One-way latency, milliseconds: mean of the exponential jitter added to the minimum.
    pub jitter_ms: f64,
    /// Link bandwidth for payload transfers, megabytes (not megabits) per second. In TOML
    /// `bandwidth_mb_s`; the old name `bandwidth_mbps` is still read (with a deprecation warning
    /// from [`crate::scenario::Scenario::load`]).
    #[serde(rename = "bandwidth_mb_s", alias = "bandwidth_mbps")]
    pub bandwidth_mb_s: f64,
    /// Probability that a gossip message to one peer is lost.
    pub loss: f64,
    /// Probability that the answer to a payload pull is lost on its way: the pull fails (after
    /// the round trip it would have taken) and the puller retries as the protocol does (each
    /// author once more per round). Drawn from a generator of its own, so that 0 changes no
    /// other draw of the run.
    pub payload_loss: f64,
    /// Partitions that open and heal (`[[network.partition]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partition: Vec<Partition>,
    /// Peers that go offline and come back with their state (`[network.churn]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
    /// Peers in groups (medical centres) on fast local links (`[network.groups]`); the settings
    /// above then hold between groups. Bytes between groups are counted as WAN bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Groups>,
}

/// Groups of peers, as `[network.groups] size = 4, latency_ms = 1.0, bandwidth_mb_s = 1000.0`:
/// peers `0..size` form group 0, the next `size` group 1, and so on (the last group may be
/// smaller). Each group is a roster group (`group-0`, `group-1`, …), which two-level averaging
/// merges inside first. Inside a group, messages travel with this latency and bandwidth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    /// Peers per group; at least 1.
    pub size: usize,
    /// One-way latency inside a group, milliseconds: the minimum.
    #[serde(default = "lan_latency")]
    pub latency_ms: f64,
    /// Mean of the exponential jitter added inside a group, milliseconds.
    #[serde(default = "lan_jitter")]
    pub jitter_ms: f64,
    /// Bandwidth inside a group, megabytes (not megabits) per second; in TOML `bandwidth_mb_s`
    /// (the old name `bandwidth_mbps` is still read, with a deprecation warning).
    #[serde(
        default = "lan_bandwidth",
        rename = "bandwidth_mb_s",
        alias = "bandwidth_mbps"
    )]
    pub bandwidth_mb_s: f64,
}

fn lan_latency() -> f64 {
    1.0
}

fn lan_jitter() -> f64 {
    0.5
}

fn lan_bandwidth() -> f64 {
    1000.0
}

impl Groups {
    /// The group of peer `i`.
    pub fn of(&self, i: usize) -> usize {
        i / self.size.max(1)
    }

    /// The roster group names of `n` peers (`group-0`, …).
    pub fn names(&self, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("group-{}", self.of(i))).collect()
    }
}

impl Network {
    /// Checks every setting's range; each error names its key (`network.loss`,
    /// `network.partition[0].heal`, `network.groups.bandwidth_mb_s`, …). What needs the number
    /// of peers (partition groups, outage peers) is checked by [`Network::check_peers`].
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.loss.is_finite() && (0.0..=1.0).contains(&self.loss),
            "`network.loss` = {} must be a probability in [0, 1]",
            self.loss
        );
        anyhow::ensure!(
            self.payload_loss.is_finite() && (0.0..=1.0).contains(&self.payload_loss),
            "`network.payload_loss` = {} must be a probability in [0, 1]",
            self.payload_loss
        );
        for (i, p) in self.partition.iter().enumerate() {
            anyhow::ensure!(
                p.at.is_finite() && p.at >= 0.0,
                "`network.partition[{i}].at` = {} must be finite and >= 0 (virtual seconds)",
                p.at
            );
            anyhow::ensure!(
                p.heal.is_finite() && p.heal > p.at,
                "`network.partition[{i}].heal` = {} must be finite and after `at` = {}",
                p.heal,
                p.at
            );
            anyhow::ensure!(
                p.groups >= 2,
                "`network.partition[{i}].groups` = {} must be at least 2",
                p.groups
            );
        }
        if let Some(churn) = &self.churn {
            anyhow::ensure!(
                (0.0..=1.0).contains(&churn.fraction),
                "`network.churn.fraction` = {} must be in [0, 1]",
                churn.fraction
            );
            anyhow::ensure!(
                churn.fraction == 0.0
                    || (churn.down.is_finite()
                        && churn.every.is_finite()
                        && churn.down > 0.0
                        && churn.every > churn.down),
                "`network.churn.every` = {} and `network.churn.down` = {}: periodic churn needs \
                 every > down > 0",
                churn.every,
                churn.down
            );
            for (i, o) in churn.outages.iter().enumerate() {
                anyhow::ensure!(
                    o.at.is_finite() && o.at >= 0.0 && o.down.is_finite() && o.down > 0.0,
                    "`network.churn.outages[{i}]`: an outage needs at >= 0 and down > 0 (got at = \
                     {}, down = {})",
                    o.at,
                    o.down
                );
            }
        }
        let links = [(
            self.latency_ms,
            self.jitter_ms,
            self.bandwidth_mb_s,
            "network.",
        )]
        .into_iter()
        .chain(self.groups.as_ref().map(|g| {
            (
                g.latency_ms,
                g.jitter_ms,
                g.bandwidth_mb_s,
                "network.groups.",
            )
        }));
        for (latency, jitter, bandwidth, table) in links {
            anyhow::ensure!(
                latency.is_finite() && latency >= 0.0,
                "`{table}latency_ms` = {latency} must be finite and >= 0"
            );
            anyhow::ensure!(
                jitter.is_finite() && jitter >= 0.0,
                "`{table}jitter_ms` = {jitter} must be finite and >= 0"
            );
            anyhow::ensure!(
                bandwidth.is_finite() && bandwidth > 0.0,
                "`{table}bandwidth_mb_s` = {bandwidth} must be finite and > 0 (megabytes per \
                 second)"
            );
        }
        if let Some(g) = &self.groups {
            anyhow::ensure!(g.size >= 1, "`network.groups.size` = 0 must be at least 1");
        }
        Ok(())
    }

    /// Checks the settings that depend on the number of `peers`: a partition into more groups
    /// than peers, an outage of a peer that does not exist.
    pub fn check_peers(&self, peers: usize) -> anyhow::Result<()> {
        for (i, p) in self.partition.iter().enumerate() {
            anyhow::ensure!(
                p.groups <= peers,
                "`network.partition[{i}].groups` = {} is more than the {peers} peers (at most \
                 {peers})",
                p.groups
            );
        }
        if let Some(churn) = &self.churn {
            for (i, o) in churn.outages.iter().enumerate() {
                anyhow::ensure!(
                    o.peer < peers,
                    "`network.churn.outages[{i}].peer` = {} is not a peer: peers are 0 to {}",
                    o.peer,
                    peers.saturating_sub(1)
                );
            }
        }
        Ok(())
    }
}

impl Default for Network {
    fn default() -> Self {
        Self {
            latency_ms: 20.0,
            jitter_ms: 10.0,
            bandwidth_mb_s: 100.0,
            loss: 0.0,
            payload_loss: 0.0,
            partition: Vec::new(),
            churn: None,
            groups: None,
        }
    }
}

/// A partition of the network, as `[[network.partition]] at = 30.0, heal = 60.0, groups = 2`:
/// from `at` until `heal` (virtual seconds) gossip and payload pulls between peers of different
/// groups are dropped, those already in flight across the cut included. Peers are cut into
/// `groups` contiguous blocks of indices (two halves by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// When the partition opens, virtual seconds.
    pub at: f64,
    /// When it heals, virtual seconds.
    pub heal: f64,
    /// How many groups of peers it cuts the network into.
    #[serde(default = "two")]
    pub groups: usize,
}

fn two() -> usize {
    2
}

impl Partition {
    /// Whether peers `a` and `b` of `n` are on different sides at virtual time `t`.
    fn cuts(&self, a: usize, b: usize, n: usize, t: f64) -> bool {
        self.at <= t && t < self.heal && a * self.groups / n != b * self.groups / n
    }
}

/// Churn, as `[network.churn] fraction = 0.1, down = 5.0, every = 30.0`: a seeded `fraction` of
/// the peers each go offline for `down` virtual seconds once every `every` seconds (at a seeded
/// phase of their own), plus any explicit `outages`. An offline peer receives nothing and sends
/// nothing; its timers and a training result that completes meanwhile are held until it comes
/// back, with its state, and catches up.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Share of peers that go offline periodically.
    pub fraction: f64,
    /// How long each outage lasts, virtual seconds.
    pub down: f64,
    /// Period of a churning peer's outages, virtual seconds.
    pub every: f64,
    /// Explicit outages, as `outages = [{ peer = 3, at = 10.0, down = 5.0 }]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outages: Vec<Outage>,
}

/// One peer offline from `at` for `down` virtual seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Index of the peer.
    pub peer: usize,
    /// When it goes offline, virtual seconds.
    pub at: f64,
    /// How long it stays offline, virtual seconds.
    pub down: f64,
}

/// Slow trainers, as `[timing] stragglers = { fraction = 0.2, slowdown = 5.0 }`: a seeded
/// `fraction` of the peers take `slowdown` times longer to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stragglers {
    /// Share of peers that are slow.
    pub fraction: f64,
    /// Factor on their training time.
    pub slowdown: f64,
}

impl Stragglers {
    /// Checks the ranges.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.fraction),
            "`timing.stragglers.fraction` = {} must be in [0, 1]",
            self.fraction
        );
        anyhow::ensure!(
            self.slowdown.is_finite() && self.slowdown > 0.0,
            "`timing.stragglers.slowdown` = {} must be finite and > 0",
            self.slowdown
        );
        Ok(())
    }

    /// Each of `n` peers' factor on its training time in a run seeded by `seed`: `slowdown` for
    /// the seeded share of slow peers, 1 for the others.
    pub(crate) fn slowdowns(&self, n: usize, seed: u64) -> Vec<f64> {
        let (chosen, _) = pick(n, self.fraction, seed, 0x5709_9a1e_5000_0002);
        chosen
            .into_iter()
            .map(|c| if c { self.slowdown } else { 1.0 })
            .collect()
    }
}

/// `round(fraction × n)` distinct peers of `n`, drawn from a generator of their own so that
/// turning a feature on does not shift any other random draw of the run.
fn pick(n: usize, fraction: f64, seed: u64, salt: u64) -> (Vec<bool>, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt);
    let k = ((fraction * n as f64).round() as usize).min(n);
    let mut chosen = vec![false; n];
    for i in rand::seq::index::sample(&mut rng, n, k) {
        chosen[i] = true;
    }
    (chosen, rng)
}

/// Salt of the generator of payload losses.
const PAYLOAD_LOSS_SALT: u64 = 0x9a71_0a55_0000_0007;

/// The network of one run between its `peers`: the settings, who gossips to whom, and each
/// peer's outages drawn from the run's seed.
#[derive(Debug)]
pub(crate) struct Links {
    network: Network,
    peers: usize,
    /// Fixed neighbours per peer (indices): gossip travels only along these edges.
    neighbours: Option<Vec<Vec<usize>>>,
    /// Without fixed neighbours: how many random peers hear each broadcast; `None` = every peer.
    gossip_reach: Option<usize>,
    /// Periodic churn: each churning peer's first outage, nanoseconds of virtual time.
    churn_phase: Vec<Option<u64>>,
    /// Explicit outages per peer: (start, end) in nanoseconds of virtual time.
    outages: Vec<Vec<(u64, u64)>>,
    /// The generator of payload losses (`payload_loss`), of its own.
    payload_rng: ChaCha8Rng,
}

impl Links {
    /// Checks `network` and draws the churning peers of a run of `peers` seeded by `seed`.
    pub(crate) fn new(
        network: Network,
        peers: usize,
        seed: u64,
        neighbours: Option<Vec<Vec<usize>>>,
        gossip_reach: Option<usize>,
    ) -> anyhow::Result<Self> {
        network.check()?;
        let mut churn_phase = vec![None; peers];
        let mut outages = vec![Vec::new(); peers];
        if let Some(churn) = &network.churn {
            let (chosen, mut rng) = pick(peers, churn.fraction, seed, 0xc4a2_0c4a_2000_0001);
            for (i, phase) in churn_phase.iter_mut().enumerate() {
                if chosen[i] {
                    let p: f64 = rng.random_range(0.0..1.0);
                    *phase = Some(nanos((1.0 - p) * churn.every));
                }
            }
            for o in &churn.outages {
                anyhow::ensure!(o.peer < peers, "outage of peer {} of {peers}", o.peer);
                outages[o.peer].push((nanos(o.at), nanos(o.at + o.down)));
            }
        }
        Ok(Self {
            network,
            peers,
            neighbours,
            gossip_reach,
            churn_phase,
            outages,
            payload_rng: ChaCha8Rng::seed_from_u64(seed ^ PAYLOAD_LOSS_SALT),
        })
    }

    /// Replaces `targets` with the peers that hear a broadcast of peer `i`: its fixed
    /// neighbours, a random sample of `gossip_reach` peers, or everyone else.
    pub(crate) fn targets(&self, i: usize, rng: &mut impl Rng, targets: &mut Vec<usize>) {
        let n = self.peers;
        targets.clear();
        match (&self.neighbours, self.gossip_reach) {
            (Some(neighbours), _) => targets.extend_from_slice(&neighbours[i]),
            (None, Some(reach)) if reach + 1 < n => targets.extend(
                rand::seq::index::sample(rng, n - 1, reach)
                    .into_iter()
                    .map(|j| if j >= i { j + 1 } else { j }),
            ),
            (None, _) => targets.extend((0..n).filter(|&to| to != i)),
        }
    }

    /// Whether one gossip message is lost on its way.
    pub(crate) fn lost(&self, rng: &mut impl Rng) -> bool {
        self.network.loss > 0.0 && rng.random_bool(self.network.loss)
    }

    /// Whether the answer to one payload pull is lost on its way (`payload_loss`); draws only
    /// when the probability is positive.
    pub(crate) fn payload_lost(&mut self) -> bool {
        self.network.payload_loss > 0.0 && self.payload_rng.random_bool(self.network.payload_loss)
    }

    /// Whether peers `a` and `b` are in different [`Groups`] (never without groups): what
    /// travels between them crosses the WAN.
    pub(crate) fn across(&self, a: usize, b: usize) -> bool {
        self.network
            .groups
            .as_ref()
            .is_some_and(|g| g.of(a) != g.of(b))
    }

    /// The (latency, jitter, bandwidth) of the link between peers `a` and `b`.
    fn link(&self, a: usize, b: usize) -> (f64, f64, f64) {
        match &self.network.groups {
            Some(g) if g.of(a) == g.of(b) => (g.latency_ms, g.jitter_ms, g.bandwidth_mb_s),
            _ => (
                self.network.latency_ms,
                self.network.jitter_ms,
                self.network.bandwidth_mb_s,
            ),
        }
    }

    /// A one-way latency between peers `a` and `b`: the minimum plus exponential jitter.
    pub(crate) fn latency(&self, a: usize, b: usize, rng: &mut impl Rng) -> Duration {
        let (latency, jitter_ms, _) = self.link(a, b);
        let jitter: f64 = if jitter_ms > 0.0 {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            -u.ln() * jitter_ms
        } else {
            0.0
        };
        Duration::from_secs_f64((latency + jitter).max(0.0) / 1e3)
    }

    /// How long `bytes` of payload take over the bandwidth between peers `a` and `b`.
    pub(crate) fn transfer(&self, a: usize, b: usize, bytes: usize) -> Duration {
        let size = bytes as f64;
        Duration::from_secs_f64(size / (self.link(a, b).2 * 1e6))
    }

    /// Whether a partition separates peers `a` and `b` at virtual time `now`.
    pub(crate) fn cut(&self, a: usize, b: usize, now: Duration) -> bool {
        let (n, t) = (self.peers, now.as_secs_f64());
        self.network.partition.iter().any(|p| p.cuts(a, b, n, t))
    }

    /// When peer `i`, offline at virtual time `t`, comes back; `None` if it is online.
    pub(crate) fn offline_until(&self, i: usize, t: Duration) -> Option<Duration> {
        let t = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        let mut end = None;
        if let (Some(phase), Some(churn)) = (self.churn_phase[i], &self.network.churn)
            && t >= phase
        {
            let (every, down) = (nanos(churn.every).max(1), nanos(churn.down));
            let into = (t - phase) % every;
            if into < down {
                end = Some(t - into + down);
            }
        }
        for &(start, stop) in &self.outages[i] {
            if start <= t && t < stop {
                end = end.max(Some(stop));
            }
        }
        end.map(Duration::from_nanos)
    }

    /// Peers that go offline now and then (periodic churn or explicit outages).
    pub(crate) fn churned(&self) -> Vec<usize> {
        (0..self.peers)
            .filter(|&i| self.churn_phase[i].is_some() || !self.outages[i].is_empty())
            .collect()
    }
}

/// Virtual seconds as nanoseconds.
fn nanos(seconds: f64) -> u64 {
    Duration::try_from_secs_f64(seconds.max(0.0)).map_or(u64::MAX, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    })
}
