//! The discrete-event loop: [`Sim`] keeps a queue of deliveries ordered by virtual time (ties
//! broken by insertion order), hands each to its peer and schedules what the peer does in reply.
//! Training plugs in as a [`Learner`], Byzantine behaviour on the wire as an [`Adversary`]; what
//! the network does to a message (reach, loss, latency, partitions, outages) is asked of
//! [`network::Links`].
//!
//! It must never read the wall clock, touch a socket, or draw randomness from anything but the
//! run's seed, and the order of deliveries must depend only on virtual time and the order they
//! were scheduled in: the one other thread only precomputes what is a pure function of the
//! bytes (see `Inspector`), so a run replays byte for byte.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use medmesh_protocol::identity::{ContentId, Keypair, MemberId};
use medmesh_protocol::peer::{Action, Config, Event, Inbound, Peer};
use medmesh_protocol::roster::{Chain, Member, Role, Roster, SignedRoster};
use medmesh_protocol::wire::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::network::{self, Network, Stragglers};

/// How long local training takes, in virtual milliseconds (uniform in `[min_ms, max_ms]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Training {
    /// Shortest training time.
    pub min_ms: f64,
    /// Longest training time.
    pub max_ms: f64,
}

impl Default for Training {
    fn default() -> Self {
        Self {
            min_ms: 50.0,
            max_ms: 500.0,
        }
    }
}

/// Local training as the simulator sees it: a function from the merged model to the trained one.
pub trait Learner {
    /// Trains peer `peer` for `round` in place and returns metrics.
    fn train(&mut self, peer: usize, round: u64, params: &mut [f32]) -> BTreeMap<String, f64>;
}

/// Learners that hold test data report a peer's accuracy (for per-round tables).
pub trait Evaluate {
    /// Accuracy of `params` on peer `peer`'s test rows.
    fn accuracy(&self, peer: usize, params: &[f32]) -> f64;

    /// Accuracy, loss and AUC of `params` on peer `peer`'s test rows. The default knows only
    /// the accuracy (loss and AUC `None`); learners that can score more override it, and must
    /// give the same accuracy as [`Evaluate::accuracy`].
    fn score(&self, peer: usize, params: &[f32]) -> Score {
        Score {
            accuracy: self.accuracy(peer, params),
            loss: None,
            auc: None,
            c_index: None,
        }
    }
}

/// What a model scores on one peer's test rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Accuracy at threshold 0.5 (NaN where nothing is scored: averaging-only runs, and
    /// survival models, which [`Score::c_index`] scores instead).
    pub accuracy: f64,
    /// Mean binary cross-entropy in nats (`medmesh_learning::metrics::binary`'s `log_loss`,
    /// probabilities clamped to [1e-7, 1 − 1e-7]); `None` if the learner cannot tell or the
    /// model's outputs are not finite.
    pub loss: Option<f64>,
    /// ROC AUC (`medmesh_learning::metrics::auc`); `None` when the test rows hold one class
    /// only, the outputs are not finite, or the learner cannot tell.
    pub auc: Option<f64>,
    /// Harrell's C-index of a survival model's risk scores
    /// (`medmesh_learning::metrics::concordance_index`); `None` for a classifier, or when the
    /// test rows have no comparable pair or the outputs are not finite.
    pub c_index: Option<f64>,
}

/// No training at all: peers only average, which isolates consensus behaviour.
#[derive(Debug, Default, Clone, Copy)]
pub struct AveragingOnly;

impl Learner for AveragingOnly {
    fn train(&mut self, _: usize, _: u64, _: &mut [f32]) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
}

impl Evaluate for AveragingOnly {
    /// Nothing is learnt, so nothing is scored: always NaN (scenario outputs leave accuracy
    /// empty for averaging-only runs).
    fn accuracy(&self, _: usize, _: &[f32]) -> f64 {
        f64::NAN
    }
}

/// Byzantine behaviour on the wire: sees every message a controlled peer broadcasts and decides
/// what goes out instead (altered, duplicated, replayed or withheld). Peers it does not control
/// are never touched.
pub trait Adversary {
    /// Whether peer `peer`'s broadcasts pass through [`Adversary::broadcast`].
    fn controls(&self, peer: usize) -> bool;

    /// Controlled peer `index` (the real protocol state machine, whose payloads the adversary
    /// may read) broadcasts `message` at `now`. Each message pushed to `out` goes out as a
    /// broadcast of that peer (same reach, latencies and loss); pass `message` on to send it.
    fn broadcast(
        &mut self,
        now: Duration,
        index: usize,
        peer: &Peer,
        message: Message,
        out: &mut Outbox,
    ) -> anyhow::Result<()>;
}

/// What an [`Adversary`] sends for one broadcast.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Gossip messages.
    pub messages: Vec<Message>,
    /// Payloads of versions the adversary signed itself, served (by content id) when someone
    /// pulls them from the peer.
    pub payloads: Vec<(ContentId, Bytes)>,
}

/// Broadcasts queued for the inspecting thread at most.
const INSPECT_QUEUE: usize = 65_536;
/// Payloads of adversary-made versions kept to serve (oldest dropped first).
const ADVERSARY_PAYLOADS: usize = 4096;

/// Decodes broadcast gossip and checks its signature on another core while the simulation goes
/// on: what [`Inbound::inspect`] returns depends only on the bytes, so each broadcast is checked
/// once (not once per receiver) and the result is the same whichever thread computes it. A
/// delivery whose check has not finished computes or waits for it ([`OnceLock::get_or_init`]),
/// so runs stay deterministic; with one core there is no worker and deliveries check for
/// themselves. The queue is bounded: when the worker is behind, a broadcast is left for its
/// deliveries to check (the same result, computed on the simulation's thread).
struct Inspector {
    jobs: Option<mpsc::SyncSender<(Bytes, Arc<OnceLock<Inbound>>)>>,
    worker: Option<JoinHandle<()>>,
}

impl Inspector {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if cores < 2 {
            return Self {
                jobs: None,
                worker: None,
            };
        }
        let (jobs, queue) = mpsc::sync_channel::<(Bytes, Arc<OnceLock<Inbound>>)>(INSPECT_QUEUE);
        let worker = std::thread::Builder::new()
            .name("inspect".into())
            .spawn(move || {
                for (bytes, cell) in queue {
                    cell.get_or_init(|| Inbound::inspect(&bytes));
                }
            })
            .ok();
        Self {
            jobs: worker.as_ref().map(|_| jobs),
            worker,
        }
    }

    /// A cell that will hold what `bytes` inspect to.
    fn submit(&self, bytes: &Bytes) -> Arc<OnceLock<Inbound>> {
        let cell = Arc::new(OnceLock::new());
        if let Some(jobs) = &self.jobs {
            // A worker that is gone or behind leaves the check to the delivery.
            let _ = jobs.try_send((bytes.clone(), Arc::clone(&cell)));
        }
        cell
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A delivery due at `at`; `seq` orders deliveries due at the same time (first scheduled, first
/// handled), so the order never depends on the delivery itself.
#[derive(Debug)]
struct Scheduled {
    at: Duration,
    seq: u64,
    delivery: Delivery,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug)]
enum Delivery {
    Gossip {
        to: usize,
        from: usize,
        bytes: Bytes,
        /// The bytes decoded and their signature checked once for every receiver of one
        /// broadcast (a pure function of the bytes, see [`Inspector`]); `None` for injected
        /// bytes, which the receiver decodes itself.
        inbound: Option<Arc<OnceLock<Inbound>>>,
    },
    Payload {
        to: usize,
        from: usize,
        id: ContentId,
        data: Option<Bytes>,
    },
    Trained {
        to: usize,
    },
    Timeout {
        to: usize,
    },
}

/// Counters of a run.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Gossip messages delivered.
    pub gossip_messages: u64,
    /// Gossip bytes delivered.
    pub gossip_bytes: u64,
    /// Gossip messages lost.
    pub gossip_lost: u64,
    /// Payload transfers.
    pub payloads: u64,
    /// Payload bytes transferred.
    pub payload_bytes: u64,
    /// Gossip and payload bytes delivered between peers of different groups (the WAN; zero
    /// without `[network.groups]`).
    pub wan_bytes: u64,
    /// Rejections by reason label.
    pub rejections: BTreeMap<String, u64>,
    /// Rounds that closed on their timeout.
    pub timeouts: u64,
    /// Rounds completed, summed over peers (peer-rounds).
    pub rounds: u64,
    /// Gossip messages and payload pulls dropped by a partition, an offline peer or a lost
    /// payload answer (`network.payload_loss`).
    pub faults: u64,
    /// Of those, payload answers lost on their way (`network.payload_loss`).
    pub payloads_lost: u64,
    /// Rounds whose merge failed: the rule refused the inputs (e.g. a trimmed mean over too few
    /// versions) and the peer kept its own model for them, which the protocol does without
    /// failing the round. Seen from outside as an [`Event::RoundCompleted`] whose
    /// `summary.inputs` is below its number of contributors.
    pub failed_merges: u64,
    /// The first failed merge: (peer, round).
    pub first_failed_merge: Option<(usize, u64)>,
}

/// Everything a simulation starts from.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// One member key per peer.
    pub keys: &'a [Keypair],
    /// The roster chain every peer starts with.
    pub chain: &'a Chain,
    /// The peers' protocol config (the seed is replaced per peer).
    pub config: Config,
    /// Initial parameters per peer.
    pub inits: Vec<Vec<f32>>,
    /// Local training samples per peer.
    pub samples: Vec<u64>,
    /// The network between peers.
    pub network: Network,
    /// Training times.
    pub training: Training,
    /// Seed of the run.
    pub seed: u64,
    /// Fixed neighbours per peer (indices); gossip then travels only along these edges. `None`:
    /// peers sample `config.fanout` of the announcements they hear.
    pub neighbours: Option<Vec<Vec<usize>>>,
    /// Without fixed neighbours: how many random peers hear each announcement (as gossipsub's
    /// bounded mesh delivers it); `None` = every peer (exact, O(n²) messages per round).
    pub gossip_reach: Option<usize>,
}

/// A simulated mesh.
pub struct Sim<L> {
    peers: Vec<Peer>,
    index: BTreeMap<MemberId, usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    now: Duration,
    rng: ChaCha8Rng,
    links: network::Links,
    training: Training,
    learner: L,
    /// Parameters held by the simulated trainer while a peer trains.
    training_params: Vec<Option<(u64, Vec<f32>)>>,
    /// Each peer's latest merged model (what it started its current round from).
    latest: Vec<Vec<f32>>,
    completed: Vec<u64>,
    stats: Stats,
    events: Vec<(usize, Event)>,
    keep_events: bool,
    /// How many peers have completed each round count (for `min_completed` in O(log n)).
    completed_counts: BTreeMap<u64, usize>,
    finished: usize,
    adversary: Option<Box<dyn Adversary>>,
    /// Payloads of adversary-made versions, by content id, and their order for eviction.
    adversary_payloads: BTreeMap<ContentId, Bytes>,
    adversary_order: VecDeque<ContentId>,
    /// Gossip targets, reused between broadcasts.
    targets: Vec<usize>,
    inspector: Inspector,
    /// Each peer's earliest pending timeout delivery.
    wakeups: Vec<Option<Duration>>,
    /// Seed of the run, for the fault generators.
    seed: u64,
    /// Factor on each peer's training time (stragglers).
    slowdown: Vec<f64>,
}

/// Deterministic member keys for simulated peers.
pub fn keys(n: usize, seed: u64) -> Vec<Keypair> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6b65_7973);
    (0..n).map(|_| Keypair::from_seed(rng.random())).collect()
}

/// A genesis roster of `keys` as hospitals (threshold: a majority), signed by all founders.
pub fn genesis(keys: &[Keypair]) -> anyhow::Result<Chain> {
    grouped_genesis(keys, &[])
}

/// [`genesis`] with hospital `i` in roster group `groups[i]` (none where `groups` is shorter).
pub fn grouped_genesis(keys: &[Keypair], groups: &[String]) -> anyhow::Result<Chain> {
    let members = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Member {
            id: k.id(),
            name: format!("Hospital {i}"),
            site: format!("site-{i}"),
            country: "XX".into(),
            group: groups.get(i).cloned().unwrap_or_default(),
            role: Role::Hospital,
            addresses: vec![],
        })
        .collect();
    let threshold = u32::try_from(keys.len() / 2 + 1)?;
    let mut signed = SignedRoster::new(Roster::genesis("simulation", threshold, members)?);
    signed.sign_all(keys);
    Ok(Chain::from_genesis(signed)?)
}

impl<L: Learner> Sim<L> {
    /// Builds the peers of `setup`; each peer's config seed is derived from the setup's seed
    /// and the peer's index.
    pub fn new(setup: Setup<'_>, learner: L) -> anyhow::Result<Self> {
        let Setup {
            keys,
            chain,
            config,
            inits,
            samples,
            network,
            training,
            seed,
            neighbours,
            gossip_reach,
        } = setup;
        anyhow::ensure!(
            keys.len() == inits.len() && keys.len() == samples.len(),
            "one key, initial vector and sample count per peer"
        );
        let mut peers = Vec::with_capacity(keys.len());
        for (i, ((k, init), s)) in keys.iter().zip(inits.iter()).zip(&samples).enumerate() {
            let config = Config {
                seed: seed
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add(i as u64),
                neighbours: neighbours
                    .as_ref()
                    .map(|n| n[i].iter().map(|&j| keys[j].id()).collect()),
                ..config.clone()
            };
            peers.push(Peer::new(
                config,
                k.clone(),
                chain.clone(),
                init.clone(),
                *s,
            )?);
        }
        let index = peers.iter().enumerate().map(|(i, p)| (p.id(), i)).collect();
        let n = peers.len();
        let finished = peers.iter().filter(|p| p.is_finished()).count();
        let links = network::Links::new(network, n, seed, neighbours, gossip_reach)?;
        let mut sim = Self {
            peers,
            index,
            queue: BinaryHeap::new(),
            seq: 0,
            now: Duration::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            links,
            training,
            learner,
            training_params: vec![None; n],
            latest: inits,
            completed: vec![0; n],
            stats: Stats::default(),
            events: Vec::new(),
            keep_events: false,
            completed_counts: BTreeMap::from([(0, n)]),
            finished,
            adversary: None,
            adversary_payloads: BTreeMap::new(),
            adversary_order: VecDeque::new(),
            targets: Vec::new(),
            inspector: Inspector::new(),
            wakeups: vec![None; n],
            seed,
            slowdown: vec![1.0; n],
        };
        for i in 0..n {
            sim.drain(i)?;
        }
        Ok(sim)
    }

    /// The learner.
    pub fn learner(&self) -> &L {
        &self.learner
    }

    /// Lets `adversary` decide what the peers it controls broadcast from now on.
    pub fn set_adversary(&mut self, adversary: Box<dyn Adversary>) {
        self.adversary = Some(adversary);
    }

    /// Makes a seeded subset of peers train `stragglers.slowdown` times slower from now on.
    pub fn set_stragglers(&mut self, stragglers: &Stragglers) -> anyhow::Result<()> {
        stragglers.check()?;
        self.slowdown = stragglers.slowdowns(self.peers.len(), self.seed);
        Ok(())
    }

    /// Peers that train slower (see [`Sim::set_stragglers`]).
    pub fn stragglers(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&i| self.slowdown[i] != 1.0)
            .collect()
    }

    /// Peers that go offline now and then (periodic churn or explicit outages).
    pub fn churned(&self) -> Vec<usize> {
        self.links.churned()
    }

    /// Whether a partition separates peers `a` and `b` now.
    fn cut(&self, a: usize, b: usize) -> bool {
        self.links.cut(a, b, self.now)
    }

    /// Whether every peer reached its last round.
    pub fn all_finished(&self) -> bool {
        self.finished == self.peers.len()
    }

    /// Keeps every event for inspection (tests); off by default to bound memory.
    pub fn keep_events(&mut self, keep: bool) {
        self.keep_events = keep;
    }

    /// The peers.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Virtual time now.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Events kept (see [`Sim::keep_events`]).
    pub fn events(&self) -> &[(usize, Event)] {
        &self.events
    }

    /// Each peer's latest merged model.
    pub fn models(&self) -> &[Vec<f32>] {
        &self.latest
    }

    /// The lowest round every peer has completed.
    pub fn min_completed(&self) -> u64 {
        self.completed_counts
            .first_key_value()
            .map_or(0, |(round, _)| *round)
    }

    /// Injects raw gossip bytes from outside (an attacker) to peer `to` at time `at`.
    pub fn inject(&mut self, at: Duration, to: usize, from: usize, bytes: Bytes) {
        self.push(
            at,
            Delivery::Gossip {
                to,
                from,
                bytes,
                inbound: None,
            },
        );
    }

    fn push(&mut self, at: Duration, delivery: Delivery) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            delivery,
        }));
    }

    /// A one-way latency between peers `a` and `b` drawn from the run's generator.
    fn latency(&mut self, a: usize, b: usize) -> Duration {
        self.links.latency(a, b, &mut self.rng)
    }

    /// Sends gossip `bytes` from peer `i` to its targets: fixed neighbours, a random sample of
    /// `gossip_reach` peers, or everyone; with `group_only`, those of them in `i`'s group.
    fn gossip(&mut self, i: usize, bytes: &Bytes, group_only: bool) {
        let mut targets = std::mem::take(&mut self.targets);
        self.links.targets(i, &mut self.rng, &mut targets);
        if group_only {
            targets.retain(|&to| !self.links.across(i, to));
        }
        let mut inbound = None;
        for &to in &targets {
            if self.links.lost(&mut self.rng) {
                self.stats.gossip_lost += 1;
                continue;
            }
            if self.cut(i, to) {
                self.stats.faults += 1;
                continue;
            }
            let at = self.now + self.latency(i, to);
            let inbound = inbound
                .get_or_insert_with(|| self.inspector.submit(bytes))
                .clone();
            self.push(
                at,
                Delivery::Gossip {
                    to,
                    from: i,
                    bytes: bytes.clone(),
                    inbound: Some(inbound),
                },
            );
        }
        self.targets = targets;
    }

    /// Hands a broadcast of controlled peer `i` to the adversary and sends what it returns.
    fn tamper(&mut self, i: usize, message: Message) -> anyhow::Result<()> {
        let Some(mut adversary) = self.adversary.take() else {
            self.gossip(i, &Bytes::from(message.to_bytes()), false);
            return Ok(());
        };
        let mut out = Outbox::default();
        let result = adversary.broadcast(self.now, i, &self.peers[i], message, &mut out);
        self.adversary = Some(adversary);
        result?;
        for (id, bytes) in out.payloads {
            if self.adversary_payloads.insert(id, bytes).is_none() {
                self.adversary_order.push_back(id);
            }
            while self.adversary_order.len() > ADVERSARY_PAYLOADS {
                if let Some(old) = self.adversary_order.pop_front() {
                    self.adversary_payloads.remove(&old);
                }
            }
        }
        for message in out.messages {
            self.gossip(i, &Bytes::from(message.to_bytes()), false);
        }
        Ok(())
    }

    fn drain(&mut self, i: usize) -> anyhow::Result<()> {
        while let Some(action) = self.peers[i].poll_action() {
            match action {
                Action::Train { round, params } => {
                    self.latest[i].clone_from(&params);
                    let t = self
                        .rng
                        .random_range(self.training.min_ms..=self.training.max_ms)
                        * self.slowdown[i];
                    self.training_params[i] = Some((round, params));
                    let at = self.now + Duration::from_secs_f64(t / 1e3);
                    self.push(at, Delivery::Trained { to: i });
                }
                // What a controlled peer sends goes wherever the adversary likes: the mesh.
                Action::Broadcast(message) | Action::BroadcastGroup(message)
                    if self.adversary.as_ref().is_some_and(|a| a.controls(i)) =>
                {
                    self.tamper(i, message)?;
                }
                Action::Broadcast(message) => {
                    self.gossip(i, &Bytes::from(message.to_bytes()), false);
                }
                Action::BroadcastGroup(message) => {
                    self.gossip(i, &Bytes::from(message.to_bytes()), true);
                }
                Action::Fetch { from, id } => {
                    let source = self.index.get(&from).copied();
                    let reachable = source.is_none_or(|j| {
                        !self.cut(i, j) && self.links.offline_until(j, self.now).is_none()
                    });
                    if !reachable {
                        self.stats.faults += 1;
                    }
                    let data = source.filter(|_| reachable).and_then(|j| {
                        self.peers[j]
                            .payload(&id)
                            .or_else(|| self.adversary_payloads.get(&id).cloned())
                    });
                    let from = source.unwrap_or(i);
                    let transfer =
                        self.links
                            .transfer(from, i, data.as_ref().map_or(0, Bytes::len));
                    let at = self.now + self.latency(i, from) + self.latency(from, i) + transfer;
                    self.push(
                        at,
                        Delivery::Payload {
                            to: i,
                            from,
                            id,
                            data,
                        },
                    );
                }
                Action::Persist(_) => {}
                Action::Event(event) => self.record(i, event),
            }
        }
        // One pending wake-up per peer, at or before its next deadline: a later deadline is
        // re-read when the earlier wake-up fires, so the queue does not fill with duplicates.
        if let Some(t) = self.peers[i].poll_timeout() {
            let t = t.max(self.now);
            if self.wakeups[i].is_none_or(|w| t < w) {
                self.wakeups[i] = Some(t);
                self.push(t, Delivery::Timeout { to: i });
            }
        }
        Ok(())
    }

    /// Moves peer `i`'s completed round count to `round`.
    fn complete(&mut self, i: usize, round: u64) {
        let old = self.completed[i];
        if old == round {
            return;
        }
        if let Some(count) = self.completed_counts.get_mut(&old) {
            *count -= 1;
            if *count == 0 {
                self.completed_counts.remove(&old);
            }
        }
        *self.completed_counts.entry(round).or_default() += 1;
        self.completed[i] = round;
    }

    fn record(&mut self, i: usize, event: Event) {
        match &event {
            Event::Rejected { reason, .. } => {
                *self
                    .stats
                    .rejections
                    .entry(reason.label().to_owned())
                    .or_default() += 1;
            }
            Event::RoundCompleted {
                round,
                timed_out,
                contributors,
                summary,
                ..
            } => {
                // A merged version that the rule's summary does not count was left out: the
                // merge failed and the peer kept its own model (`apply_or_keep` in the protocol).
                if summary.inputs < contributors.len() {
                    self.stats.failed_merges += 1;
                    self.stats.first_failed_merge.get_or_insert((i, *round));
                }
                self.complete(i, *round);
                self.stats.timeouts += u64::from(*timed_out);
                self.stats.rounds += 1;
            }
            Event::Finished { round } => {
                self.complete(i, *round);
                self.finished += 1;
                self.latest[i].clear();
                self.latest[i].extend_from_slice(self.peers[i].params());
            }
            _ => {}
        }
        if self.keep_events {
            self.events.push((i, event));
        }
    }

    /// Handles one delivery; `false` when nothing is left to do.
    pub fn step(&mut self) -> anyhow::Result<bool> {
        let Some(Reverse(Scheduled { at, delivery, .. })) = self.queue.pop() else {
            return Ok(false);
        };
        self.now = at;
        let to = match &delivery {
            Delivery::Gossip { to, .. }
            | Delivery::Payload { to, .. }
            | Delivery::Trained { to }
            | Delivery::Timeout { to } => *to,
        };
        if let Some(back) = self.links.offline_until(to, at) {
            match delivery {
                // Timers and a finished training wait for the peer to come back.
                Delivery::Trained { .. } => self.push(back, delivery),
                Delivery::Timeout { .. } => {
                    if self.wakeups[to] == Some(at) {
                        self.wakeups[to] = Some(back);
                    }
                    self.push(back, delivery);
                }
                Delivery::Gossip { .. } | Delivery::Payload { .. } => self.stats.faults += 1,
            }
            return Ok(true);
        }
        let to = match delivery {
            Delivery::Gossip { from, .. } if self.cut(from, to) => {
                self.stats.faults += 1;
                return Ok(true);
            }
            Delivery::Gossip {
                to,
                from,
                bytes,
                inbound,
            } => {
                self.stats.gossip_messages += 1;
                self.stats.gossip_bytes += bytes.len() as u64;
                if self.links.across(from, to) {
                    self.stats.wan_bytes += bytes.len() as u64;
                }
                let from = self.peers.get(from).map_or(MemberId::default(), Peer::id);
                match inbound {
                    Some(cell) => {
                        let inbound = cell.get_or_init(|| Inbound::inspect(&bytes)).clone();
                        self.peers[to].handle_inbound(at, from, inbound);
                    }
                    None => {
                        self.peers[to].handle_message(at, from, &bytes);
                    }
                }
                to
            }
            Delivery::Payload {
                to,
                from,
                id,
                mut data,
            } => {
                if data.is_some()
                    && (self.cut(from, to) || self.links.offline_until(from, at).is_some())
                {
                    // The answer was lost on the way: the pull fails.
                    data = None;
                    self.stats.faults += 1;
                } else if data.is_some() && self.links.payload_lost() {
                    // Lost on a lossy link: the pull fails, and the peer retries as the protocol
                    // does.
                    data = None;
                    self.stats.faults += 1;
                    self.stats.payloads_lost += 1;
                }
                if let Some(d) = &data {
                    self.stats.payloads += 1;
                    self.stats.payload_bytes += d.len() as u64;
                    if self.links.across(from, to) {
                        self.stats.wan_bytes += d.len() as u64;
                    }
                }
                let from = self.peers[from].id();
                self.peers[to].handle_payload(at, from, id, data);
                to
            }
            Delivery::Trained { to } => {
                if let Some((round, mut params)) = self.training_params[to].take() {
                    let metrics = self.learner.train(to, round, &mut params);
                    self.peers[to].handle_trained(at, params, metrics)?;
                }
                to
            }
            Delivery::Timeout { to } => {
                if self.wakeups[to] == Some(at) {
                    self.wakeups[to] = None;
                }
                if self.peers[to].poll_timeout().is_some_and(|t| t <= at) {
                    self.peers[to].handle_timeout(at);
                }
                to
            }
        };
        self.drain(to)?;
        Ok(true)
    }

    /// Runs until every peer finished, nothing is left, or virtual time passes `limit`.
    pub fn run_until(&mut self, limit: Duration) -> anyhow::Result<()> {
        while self.now <= limit && !self.all_finished() {
            if !self.step()? {
                break;
            }
        }
        Ok(())
    }

    /// Mean L2 distance of the peers' latest models to their average (consensus distance).
    pub fn consensus_distance(&self) -> f64 {
        consensus_distance(&self.latest)
    }
}

impl<L: Learner + Evaluate> Sim<L> {
    /// Accuracy of peer `i`'s latest model on its own test rows.
    pub fn evaluate(&self, i: usize) -> f64 {
        self.learner.accuracy(i, &self.latest[i])
    }

    /// Accuracy, loss and AUC of peer `i`'s latest model on its own test rows.
    pub fn score(&self, i: usize) -> Score {
        self.learner.score(i, &self.latest[i])
    }
}

/// Mean L2 distance of vectors to their average.
pub fn consensus_distance(models: &[Vec<f32>]) -> f64 {
    let models: Vec<&Vec<f32>> = models.iter().filter(|m| !m.is_empty()).collect();
    let Some(first) = models.first() else {
        return 0.0;
    };
    let n = models.len() as f64;
    let mut mean = vec![0.0f64; first.len()];
    for m in &models {
        for (a, x) in mean.iter_mut().zip(m.iter()) {
            *a += f64::from(*x) / n;
        }
    }
    models
        .iter()
        .map(|m| {
            m.iter()
                .zip(&mean)
                .map(|(x, a)| (f64::from(*x) - a).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n
}
