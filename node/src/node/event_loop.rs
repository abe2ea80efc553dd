//! The node's event loop: a struct that owns the swarm, the [`Peer`], the trainer, the
//! storage handle and what the node tracks between events, and one method per kind of input —
//! a swarm event ([`EventLoop::handle_swarm_event`] and the methods it dispatches to), an
//! action of the peer ([`EventLoop::handle_action`]), an event of the peer
//! ([`EventLoop::handle_peer_event`]), an operator's command ([`EventLoop::handle_command`]),
//! a trainer result ([`EventLoop::handle_trained`]), a store read or write that finished
//! ([`EventLoop::handle_read`], [`EventLoop::handle_durable`]) and a timer
//! ([`EventLoop::handle_timeout`]). It decides nothing itself: the peer does.
//!
//! Order of duties: a message that announces a signed item leaves the node only once the
//! writes queued before it are durable (a version is in the store before anyone can fetch it
//! or this node can forget it announced that round); the checkpoint and the parameters a
//! round starts from are queued as one write; payload requests are answered from the peer's
//! memory, or from the store on the blocking pool, each member within its allowance
//! (`limiter`); old payloads are pruned by the writer on the `retention` schedule, the
//! lineages they pin walked on the blocking pool. The loop never blocks on the disk and
//! never trusts a byte from the network before the peer has judged it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use libp2p::gossipsub::{self, PublishError};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, autonat, identify, relay};
use medmesh_learning::data::Table;
use medmesh_learning::metrics;
use medmesh_learning::privacy::AccountantState;
use medmesh_protocol::identity::{ContentId, MemberId, Verified};
use medmesh_protocol::peer::{Action, Command, Event, Item, Peer, Reason};
use medmesh_protocol::update::Version;
use medmesh_protocol::validation::Policy;
use medmesh_protocol::wire;
use medmesh_record::lineage;
use medmesh_record::store::Selection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use super::limiter::Limiter;
use super::outcome::{Outcome, Personalized, params_digest, write_outcome};
use super::personal::{self, Personal};
use super::retention::Retention;
use super::validation::{self, Certifier, Prepared, Validation};
use super::{admission, members};
use crate::config::NodeConfig;
use crate::nat::Nat;
use crate::network::{self, Response, RosterResponse};
use crate::storage::{Progress, Storage};
use crate::trainer::{Done, Job, Trainer};
use crate::worker::Evaluator;
use crate::{admin, validate};

/// A gossip publish that found no peer is retried this often.
const RETRY: Duration = Duration::from_millis(250);
/// How often the loop looks for members it lost the connection to (see [`network::Redial`]).
const RECONNECT_CHECK: Duration = Duration::from_millis(500);
/// An evaluation worker unused this long is stopped (another starts on the next validation).
const EVALUATOR_IDLE: Duration = Duration::from_secs(60);
/// Give up republishing a message after this long.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);
/// Store reads in flight at most; a payload request beyond them is answered "not found" (the
/// requester pulls from another member or retries).
const MAX_READS: usize = 16;

/// A gossip message waiting to be published.
struct Pending {
    message: wire::Message,
    /// Only to this member's group (two-level averaging), not to the mesh.
    group: bool,
    since: Instant,
    /// The store writes queued before it; it leaves once they are durable.
    after: u64,
}

/// A store read that finished on the blocking pool.
pub(super) enum Read {
    /// A payload a member asked for.
    Payload {
        channel: ResponseChannel<Response>,
        from: PeerId,
        data: Option<Bytes>,
    },
    /// What a validation needs.
    Validation(Box<Prepared>),
    /// The versions a retention pass pins (the lineages of the final and certified versions).
    Pinned(Result<Vec<ContentId>, String>),
}

/// The data this node trains and tests on.
pub(super) struct Local {
    /// The dataset's name.
    pub(super) dataset: String,
    /// This node's training rows (for its personalized model).
    pub(super) train: Table,
    /// This site's test rows.
    pub(super) test: Table,
}

/// Everything the loop starts from ([`super::run`] builds it).
pub(super) struct Parts {
    pub(super) config: NodeConfig,
    pub(super) swarm: Swarm<network::Behaviour>,
    pub(super) peer: Peer,
    pub(super) storage: Storage,
    pub(super) trainer: Option<Trainer>,
    pub(super) local: Local,
    pub(super) status: admin::Status,
    pub(super) reporter: admin::Reporter,
    pub(super) commands: mpsc::Receiver<admin::Command>,
    pub(super) subscribed: HashSet<PeerId>,
    pub(super) blocked: HashSet<PeerId>,
    pub(super) redial: network::Redial,
    pub(super) certifier: Certifier,
    /// Round of every version the store held at start, by id.
    pub(super) rounds: HashMap<ContentId, u64>,
    pub(super) started: Instant,
}

/// The running node.
pub(super) struct EventLoop {
    config: NodeConfig,
    swarm: Swarm<network::Behaviour>,
    peer: Peer,
    storage: Storage,
    trainer: Option<Trainer>,
    evaluator: Evaluator,
    local: Local,
    me: MemberId,
    trains: bool,
    validator: bool,
    /// Members that train, other than this one.
    others: usize,
    topic: gossipsub::IdentTopic,
    /// The topic of this member's roster group, under two-level averaging.
    group_topic: Option<gossipsub::IdentTopic>,
    policy: Option<Policy>,
    final_round: Option<u64>,

    status: admin::Status,
    reporter: admin::Reporter,
    telemetry: std::sync::Arc<admin::Metrics>,
    commands: mpsc::Receiver<admin::Command>,

    pending: VecDeque<Pending>,
    jobs: VecDeque<Job>,
    reads: JoinSet<Read>,
    fetches: HashMap<OutboundRequestId, (MemberId, ContentId)>,
    validations: HashMap<OutboundRequestId, (Validation, Verified<Version>)>,
    /// Validations waiting for the writes queued before them (their version among them) to be
    /// durable, so the store read finds what the peer already accepted.
    waiting: Vec<(u64, Validation)>,
    /// Validations whose payload arrived (or could not be had), to finish this turn.
    arrived: Vec<(Validation, Verified<Version>, Option<Bytes>)>,
    subscribed: HashSet<PeerId>,
    blocked: HashSet<PeerId>,
    /// The last round-trip time measured to each connected peer.
    rtt: HashMap<PeerId, Duration>,
    /// Each roster member's peer id (decoding the key costs more than a status turn should).
    peer_ids: HashMap<MemberId, PeerId>,
    redial: network::Redial,
    /// Relays, reservations, direct and relayed connections.
    nat: Nat,
    certifier: Certifier,
    /// Round of every version known, by id (for `latest` and the validator's final check).
    rounds: HashMap<ContentId, u64>,
    /// Payload requests each member may still make.
    limiter: Limiter<PeerId>,
    /// When old payloads are pruned.
    retention: Retention,

    started: Instant,
    ready: bool,
    min_peers: usize,
    start_deadline: Instant,
    training_since: Option<Instant>,
    /// The privacy ledger after the last round trained, stored with each checkpoint.
    privacy: Option<AccountantState>,
    finished_at: Option<Instant>,
    last_round: u64,
    final_version: Option<ContentId>,
    validated: Vec<ContentId>,
    validated_authors: HashSet<MemberId>,
    last_validation: Option<metrics::Evaluation>,
    outcome: Option<Outcome>,
    /// The personalized model being derived (at most one task).
    personalizing: JoinSet<anyhow::Result<Personal>>,
    /// Whether personalization has ended (derived, failed or off).
    personalized: bool,
    /// The personalized model's summary, for the outcome.
    personal: Option<Personalized>,
}

impl EventLoop {
    pub(super) fn new(parts: Parts) -> Self {
        let Parts {
            config,
            swarm,
            peer,
            storage,
            trainer,
            local,
            status,
            reporter,
            commands,
            subscribed,
            blocked,
            redial,
            certifier,
            rounds,
            started,
        } = parts;
        let me = peer.id();
        let roster = peer.chain().current();
        let trains = roster.member(&me).is_some_and(|m| m.role.may_train());
        let others = roster
            .members
            .iter()
            .filter(|m| m.id != me && m.role.may_train())
            .count();
        let min_peers = config.min_peers.unwrap_or(others);
        let telemetry = reporter.shared_metrics();
        let mut swarm = swarm;
        let nat = Nat::new(*swarm.local_peer_id(), roster);
        nat.seed(&mut swarm, roster);
        EventLoop {
            nat,
            validator: !trains && config.validate_final,
            final_round: config.experiment.max_rounds.map(|m| m + 1),
            policy: config.experiment.certification.clone(),
            topic: network::topic(&roster.mesh),
            group_topic: None,
            start_deadline: started + Duration::from_millis(config.start_timeout_ms),
            ready: min_peers == 0,
            evaluator: Evaluator::default(),
            limiter: Limiter::new(
                config.network.payload_request_burst,
                config.network.payload_requests_per_second,
            ),
            retention: Retention::new(
                config.retention_rounds,
                rounds.values().copied().max().unwrap_or(0),
            ),
            me,
            trains,
            others,
            min_peers,
            config,
            swarm,
            peer,
            storage,
            trainer,
            local,
            status,
            reporter,
            telemetry,
            commands,
            pending: VecDeque::new(),
            jobs: VecDeque::new(),
            reads: JoinSet::new(),
            fetches: HashMap::new(),
            validations: HashMap::new(),
            waiting: Vec::new(),
            arrived: Vec::new(),
            subscribed,
            blocked,
            rtt: HashMap::new(),
            peer_ids: HashMap::new(),
            redial,
            certifier,
            rounds,
            started,
            training_since: None,
            privacy: None,
            finished_at: None,
            last_round: 0,
            final_version: None,
            validated: Vec::new(),
            validated_authors: HashSet::new(),
            last_validation: None,
            outcome: None,
            personalizing: JoinSet::new(),
            personalized: false,
            personal: None,
        }
    }

    /// Runs until the rounds are done (and the linger after them) or `shutdown`.
    pub(super) async fn run(
        mut self,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> anyhow::Result<Option<Outcome>> {
        let mut reconnect = tokio::time::interval(RECONNECT_CHECK);
        reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.follow_group();
        loop {
            self.turn().await?;
            // The linger counts from the last round; a personalized model still being derived
            // (and the outcome that waits for it) is waited for.
            if self
                .finished_at
                .is_some_and(|t| t.elapsed() >= self.config.linger())
                && self.personalizing.is_empty()
            {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                done = next_trained(&mut self.trainer) => {
                    let done = done.context("the training thread stopped")?;
                    self.handle_trained(done).await?;
                }
                Some(command) = self.commands.recv() => self.handle_command(command),
                Some(read) = self.reads.join_next() => {
                    self.handle_read(read.context("a store read panicked")?);
                }
                Some(done) = self.personalizing.join_next() => self.handle_personalized(done),
                progress = self.storage.changed() => self.handle_durable(progress)?,
                _ = reconnect.tick() => self.handle_reconnect(),
                () = sleep_until(wake.into()) => self.handle_timeout(),
                () = shutdown.as_mut() => {
                    tracing::info!("shutting down");
                    break;
                }
            }
        }
        // Whatever is queued is written before the node exits.
        self.storage.close();
        Ok(self.outcome)
    }

    /// Everything that follows from the last input: the peer's actions, training to start,
    /// gossip to publish, validations to finish, the outcome once done, the status.
    async fn turn(&mut self) -> anyhow::Result<()> {
        while let Some(action) = self.peer.poll_action() {
            self.handle_action(action).await?;
        }
        if !self.ready {
            let trainers = self.trainers_subscribed();
            let connected = self.swarm.connected_peers().count();
            if trainers >= self.min_peers {
                self.ready = true;
                tracing::info!(trainers, connected, "mesh formed; starting rounds");
            } else if Instant::now() >= self.start_deadline {
                self.ready = true;
                tracing::warn!(
                    trainers,
                    wanted = self.min_peers,
                    connected,
                    "start_timeout_ms passed before min_peers training members joined; starting \
                     rounds with those there are (rounds close on their timeout until others join)"
                );
            }
        }
        if self.ready
            && let Some(trainer) = &self.trainer
            && let Some(job) = self.jobs.pop_front()
        {
            trainer.submit(job).await?;
            self.training_since = Some(Instant::now());
        }
        self.publish_pending();
        self.prune_if_due();
        self.finish_validations();
        self.finish_if_done()?;
        self.publish_status();
        Ok(())
    }

    /// Under two-level averaging, follows the topic of this member's roster group (at start,
    /// and again when a roster update moves it to another group).
    pub(super) fn follow_group(&mut self) {
        let roster = self.peer.chain().current();
        let wanted = self.config.experiment.two_level.and_then(|_| {
            roster
                .member(&self.me)
                .map(|m| network::group_topic(&roster.mesh, &m.group))
        });
        let old = self.group_topic.take();
        self.group_topic =
            network::follow_group(&mut self.swarm.behaviour_mut().gossipsub, old, wanted);
        if let Some(topic) = &self.group_topic {
            tracing::info!(topic = %topic, "two-level averaging: following the group's topic");
        }
    }

    /// Subscribed peers that train (a relay, observer or validator does not count towards
    /// `min_peers`).
    fn trainers_subscribed(&self) -> usize {
        let roster = self.peer.chain().current();
        self.subscribed
            .iter()
            .filter_map(network::member_id)
            .filter(|id| roster.member(id).is_some_and(|m| m.role.may_train()))
            .count()
    }

    /// When the loop must wake up if nothing else happens.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if let Some(t) = self.peer.poll_timeout() {
            wake = wake.min(self.started + t);
        }
        if !self.pending.is_empty() {
            wake = wake.min(now + RETRY);
        }
        if let Some(t) = self.finished_at {
            wake = wake.min(t + self.config.linger());
        }
        if !self.ready {
            wake = wake.min(self.start_deadline);
        }
        wake
    }

    /// Carries out one action of the peer.
    async fn handle_action(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Train { round, params } => {
                self.storage
                    .checkpoint(self.peer.checkpoint(), params.clone(), self.privacy.clone())
                    .await
                    .context("cannot queue the checkpoint; stopping")?;
                self.jobs.push_back(Job {
                    round,
                    params,
                    steps: self.config.training.local_steps,
                });
            }
            Action::Broadcast(message) => self.pending.push_back(Pending {
                message,
                group: false,
                since: Instant::now(),
                after: self.storage.queued(),
            }),
            Action::BroadcastGroup(message) => self.pending.push_back(Pending {
                message,
                group: self.group_topic.is_some(),
                since: Instant::now(),
                after: self.storage.queued(),
            }),
            Action::Fetch { from, id } => match network::peer_id(&from) {
                Ok(peer_id) => {
                    let request = self
                        .swarm
                        .behaviour_mut()
                        .payload
                        .send_request(&peer_id, id);
                    self.fetches.insert(request, (from, id));
                }
                Err(_) => self
                    .peer
                    .handle_payload(self.started.elapsed(), from, id, None),
            },
            Action::Persist(item) => self.persist(item).await?,
            Action::Event(event) => self.handle_peer_event(event),
        }
        Ok(())
    }

    /// Queues an item for the store and keeps the in-memory indexes current.
    async fn persist(&mut self, item: Item) -> anyhow::Result<()> {
        match &item {
            Item::Version(signed) => {
                // The peer verified it already; this decodes it for the index.
                if let Ok(version) = signed.clone().verify() {
                    self.rounds.insert(version.id(), version.round);
                    self.retention.handle_version(version.round);
                }
            }
            Item::Report(signed) => {
                if let Some(policy) = &self.policy
                    && let Ok(report) = signed.clone().verify()
                {
                    let model = self.certifier.insert(report);
                    let roster = self.peer.chain().current();
                    if self.certifier.judge(roster, policy, [&model]) {
                        self.certifications_changed()?;
                    }
                }
            }
            Item::Payload { .. } | Item::Roster(_) => {}
        }
        self.storage
            .put(vec![item])
            .await
            .context("cannot persist; stopping")?;
        Ok(())
    }

    fn certifications_changed(&mut self) -> anyhow::Result<()> {
        self.status.certified = self.certifier.certified();
        self.status.verdicts = self.certifier.verdicts();
        if let Some(outcome) = &mut self.outcome {
            outcome.certifications = self.certifier.verdicts();
            write_outcome(&self.config, outcome)?;
        }
        Ok(())
    }

    /// Logs, counts and reacts to one event of the peer.
    fn handle_peer_event(&mut self, event: Event) {
        match &event {
            Event::Rejected { from, reason } => {
                self.count_rejection(reason.label());
                tracing::warn!(from = %from.short(), reason = %reason, "rejected");
            }
            Event::Flagged { author, reason } => {
                tracing::warn!(author = %author.short(), reason = %reason, "member flagged");
            }
            Event::RoundCompleted {
                round,
                contributors,
                timed_out,
                spread,
                ..
            } => {
                let trained = self
                    .status
                    .training
                    .as_ref()
                    .filter(|t| t.round == *round)
                    .map(|t| &t.metrics);
                let history = &mut self.status.history;
                if history.len() >= admin::HISTORY {
                    history.remove(0);
                }
                history.push(admin::RoundPoint {
                    round: *round,
                    loss: trained.and_then(|m| m.get("loss").copied()),
                    epsilon: trained.and_then(|m| m.get("epsilon").copied()),
                    merged: contributors.len(),
                    spread: *spread,
                    timed_out: *timed_out,
                    rejections: self.status.rejections.values().sum(),
                    at_seconds: self.started.elapsed().as_secs_f64(),
                });
                self.status.rounds_timed_out += u64::from(*timed_out);
                self.telemetry.rounds_completed.inc();
                if *timed_out {
                    self.telemetry.rounds_timed_out.inc();
                }
                self.status.last_round = Some(admin::RoundSummary {
                    round: *round,
                    contributors: contributors.clone(),
                    timed_out: *timed_out,
                });
                tracing::info!(
                    round,
                    merged = contributors.len(),
                    timed_out,
                    "round completed"
                );
            }
            Event::RosterChanged { version } => {
                tracing::info!(version, "roster changed");
                let roster = self.peer.chain().current();
                network::allow_members(&mut self.swarm, roster, &self.blocked);
                self.nat.update_roster(roster);
                self.nat.seed(&mut self.swarm, roster);
                self.status.blocked = members::names_of(roster, &self.blocked);
                self.follow_group();
            }
            Event::Finished { round } => {
                self.last_round = *round;
                tracing::info!(round, "all rounds done");
                self.finished_at = Some(Instant::now());
            }
            Event::Announced { id, round } => {
                self.status.own_version = Some(*id);
                if Some(*round) == self.final_round {
                    tracing::info!(id = %id, "final version announced");
                    self.final_version = Some(*id);
                }
                tracing::debug!(?event);
            }
            Event::Accepted {
                kind: "announce",
                signer,
                id,
            } if self.validator && !self.validated_authors.contains(signer) => {
                let is_final = self
                    .rounds
                    .get(id)
                    .is_some_and(|r| Some(*r) == self.final_round);
                if is_final {
                    self.validated_authors.insert(*signer);
                    self.start_validation(*id, None, None);
                }
            }
            Event::Accepted { .. } => tracing::debug!(?event),
        }
    }

    /// Counts a refusal under its reason's label, on `/status` and `/metrics`.
    fn count_rejection(&mut self, label: &'static str) {
        *self.status.rejections.entry(label.to_owned()).or_default() += 1;
        self.telemetry.reject(label);
    }

    /// Starts a retention pass when one is due and the writes before it are durable: the
    /// lineages of the final and certified versions are walked off the loop, then the pass is
    /// queued to the writer ([`EventLoop::handle_pinned`]).
    fn prune_if_due(&mut self) {
        let (queued, durable) = (self.storage.queued(), self.storage.progress().durable);
        if !self.retention.poll_walk(queued, durable) {
            return;
        }
        let mut roots = self.certifier.certified();
        roots.extend(self.final_version);
        if roots.is_empty() {
            self.handle_pinned(Ok(Vec::new()));
            return;
        }
        let store = self.storage.store().clone();
        self.reads.spawn_blocking(move || {
            Read::Pinned(lineage::reachable(&store, &roots).map_err(|e| e.to_string()))
        });
    }

    /// The lineages a retention pass pins were walked: the pass goes to the writer.
    fn handle_pinned(&mut self, pinned: Result<Vec<ContentId>, String>) {
        self.retention.handle_walked();
        let pinned = match pinned {
            Ok(pinned) => pinned,
            Err(error) => {
                tracing::warn!(%error, "cannot walk the lineages retention pins; not pruning now");
                return;
            }
        };
        let keep_rounds = self.retention.keep_rounds();
        match self.storage.prune(keep_rounds, pinned) {
            Ok(Some(_)) => tracing::debug!(keep_rounds, "retention pass queued"),
            Ok(None) => tracing::debug!("store queue full; retention pass skipped"),
            // The writer stopped; `handle_durable` stops the node on its error.
            Err(e) => tracing::debug!(error = %e, "retention pass not queued"),
        }
    }

    /// Publishes the gossip whose records are durable; a mesh with nobody subscribed yet is
    /// retried.
    fn publish_pending(&mut self) {
        let durable = self.storage.progress().durable;
        while let Some(p) = self.pending.front() {
            if p.after > durable {
                break;
            }
            let bytes = p.message.to_bytes();
            let len = bytes.len() as u64;
            let topic = match (&self.group_topic, p.group) {
                (Some(group), true) => group.clone(),
                _ => self.topic.clone(),
            };
            match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                Ok(_) => {
                    self.telemetry.gossip_messages_out.inc();
                    self.telemetry.gossip_bytes_out.inc_by(len);
                    self.pending.pop_front();
                }
                Err(PublishError::Duplicate) => {
                    self.pending.pop_front();
                }
                Err(PublishError::NoPeersSubscribedToTopic | PublishError::AllQueuesFull(_))
                    if p.since.elapsed() < PUBLISH_PATIENCE =>
                {
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = p.message.kind(), "gossip publish failed; dropped");
                    self.pending.pop_front();
                }
            }
        }
    }

    /// The writer got further: gossip that waited for it may leave (next turn); a failed write
    /// stops the node.
    fn handle_durable(&mut self, progress: Progress) -> anyhow::Result<()> {
        if let Some(error) = progress.failed {
            anyhow::bail!("cannot persist; stopping: {error}");
        }
        self.read_validations();
        Ok(())
    }

    /// One result of the trainer. A failed round stops the node (a spent privacy budget among
    /// the reasons). The privacy ledger the round returns is queued before the peer sees the
    /// round, so the announcement of its version waits until what it spent is durable.
    async fn handle_trained(&mut self, done: Done) -> anyhow::Result<()> {
        let trained = match done.result {
            Ok(trained) => trained,
            Err(e) => {
                tracing::error!(round = done.round, error = %e, "training failed; stopping");
                return Err(e).with_context(|| format!("training round {} failed", done.round));
            }
        };
        if let Some(ledger) = &trained.privacy
            && self.privacy.as_ref() != Some(ledger)
        {
            self.storage
                .privacy(ledger.clone())
                .await
                .context("cannot queue the privacy ledger; stopping")?;
            self.privacy = Some(ledger.clone());
        }
        let (params, metrics) = (trained.params, trained.metrics);
        let seconds = self
            .training_since
            .take()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.telemetry.train_seconds.observe(seconds);
        if let Some(loss) = metrics.get("loss") {
            self.telemetry.last_train_loss.set(*loss);
        }
        self.status.training = Some(admin::Training {
            round: done.round,
            seconds,
            metrics: metrics.clone(),
        });
        self.peer
            .handle_trained(self.started.elapsed(), params, metrics)?;
        Ok(())
    }

    /// One operator command from the admin endpoint.
    fn handle_command(&mut self, command: admin::Command) {
        match command {
            admin::Command::Validate {
                model,
                dataset,
                reply,
            } => {
                let data = match dataset {
                    None => None,
                    Some(name) => match self.config.validation_data(&name) {
                        Some(data) => Some(data.clone()),
                        None => {
                            let known: Vec<&str> = self
                                .config
                                .validation
                                .iter()
                                .map(|v| v.name.as_str())
                                .collect();
                            let _ = reply.send(Err(format!(
                                "this node declares no validation dataset {name:?} (its \
                                 [[validation]] names: {known:?})"
                            )));
                            return;
                        }
                    },
                };
                match self.resolve(model) {
                    Some(id) => self.start_validation(id, data, Some(reply)),
                    None => {
                        let _ = reply.send(Err("this node holds no model version yet".into()));
                    }
                }
            }
            admin::Command::Roster { update, reply } => {
                let answer = self
                    .peer
                    .handle_command(self.started.elapsed(), Command::Roster(update))
                    .map(|()| self.peer.chain().current().version)
                    .map_err(|e| e.to_string());
                if let Err(reason) = &answer {
                    tracing::warn!(%reason, "operator's roster update refused");
                }
                let _ = reply.send(answer);
            }
            admin::Command::Block {
                members,
                block,
                reply,
            } => {
                let answer = members::block(
                    &mut self.swarm,
                    self.peer.chain().current(),
                    &self.me,
                    &mut self.blocked,
                    &mut self.redial,
                    &members,
                    block,
                );
                if let Ok(names) = &answer {
                    self.status.blocked.clone_from(names);
                }
                let _ = reply.send(answer);
            }
        }
    }

    /// The version a selection names: an id as given, `latest` the highest round known (ties:
    /// the lowest id, so every node picks the same).
    fn resolve(&self, selection: Selection) -> Option<ContentId> {
        match selection {
            Selection::Id(id) => Some(id),
            Selection::Latest => self
                .rounds
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(id, _)| *id),
        }
    }

    fn handle_reconnect(&mut self) {
        self.evaluator.release_idle(EVALUATOR_IDLE);
        self.nat.tick(&mut self.swarm);
        if !self.nat.settled() {
            return;
        }
        network::redial_members(
            &mut self.swarm,
            self.peer.chain().current(),
            &self.blocked,
            &mut self.redial,
            Instant::now(),
        );
    }

    fn handle_timeout(&mut self) {
        self.peer.handle_timeout(self.started.elapsed());
    }

    /// Starts validating `model`: once the writes queued so far are durable, its version and
    /// payload are read off the loop, then evaluated, or the payload is pulled from its author.
    fn start_validation(
        &mut self,
        model: ContentId,
        data: Option<crate::config::ValidationData>,
        reply: Option<validation::Reply>,
    ) {
        let validation = Validation { model, data, reply };
        self.waiting.push((self.storage.queued(), validation));
        self.read_validations();
    }

    /// Starts the store reads of the validations whose writes are durable.
    fn read_validations(&mut self) {
        let durable = self.storage.progress().durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(after, _)| *after <= durable);
        self.waiting = waiting;
        for (_, validation) in ready {
            self.read_validation(validation);
        }
    }

    fn read_validation(&mut self, validation: Validation) {
        let model = validation.model;
        let in_memory = self.peer.payload(&model);
        self.reads.spawn_blocking({
            let store = self.storage.store().clone();
            move || {
                let version = store.version(&model).ok().flatten();
                let payload = in_memory.or_else(|| store.payload(&model).ok().flatten());
                Read::Validation(Box::new(Prepared {
                    validation,
                    version,
                    payload,
                }))
            }
        });
    }

    /// A store read that finished.
    fn handle_read(&mut self, read: Read) {
        match read {
            Read::Payload {
                channel,
                from,
                data,
            } => self.respond_payload(channel, from, data),
            Read::Pinned(pinned) => self.handle_pinned(pinned),
            Read::Validation(prepared) => {
                let Prepared {
                    validation,
                    version,
                    payload,
                } = *prepared;
                let Some(version) = version else {
                    let model = validation.model;
                    validation.answer(Err(format!(
                        "no model version {model} is known to this node"
                    )));
                    return;
                };
                if payload.is_some() {
                    self.arrived.push((validation, version, payload));
                    return;
                }
                match network::peer_id(&version.author) {
                    Ok(author) => {
                        let model = validation.model;
                        let request = self
                            .swarm
                            .behaviour_mut()
                            .payload
                            .send_request(&author, model);
                        self.validations.insert(request, (validation, version));
                    }
                    Err(_) => self.arrived.push((validation, version, None)),
                }
            }
        }
    }

    /// Validations whose payload arrived: evaluate, sign and publish the report.
    fn finish_validations(&mut self) {
        for (validation, version, bytes) in std::mem::take(&mut self.arrived) {
            let model = validation.model;
            let result = self.validate(&validation, &version, bytes);
            let answer = match result {
                Ok(found) => {
                    let line = validate::describe(&found.report, self.me);
                    tracing::info!("{line}");
                    self.validated.push(model);
                    self.validated_authors.insert(version.author);
                    self.last_validation = Some(found.evaluation);
                    Ok(line)
                }
                Err(e) => Err(format!("{e:#}")),
            };
            validation.answer(answer);
        }
    }

    /// Evaluates a pulled version on the validation's data and publishes the signed report.
    fn validate(
        &mut self,
        validation: &Validation,
        version: &Verified<Version>,
        bytes: Option<Bytes>,
    ) -> anyhow::Result<validate::Found> {
        let rows = validation::test_rows(
            validation.data.as_ref(),
            (
                &self.local.dataset,
                &self.config.data.site,
                &self.local.test,
            ),
        )?;
        let member = self
            .peer
            .chain()
            .current()
            .member(&self.me)
            .cloned()
            .context("this node is not on the roster")?;
        let found = validation::evaluate_version(
            &mut self.evaluator,
            &self.config,
            version,
            bytes,
            &rows,
            &member,
        )?;
        self.peer.handle_command(
            self.started.elapsed(),
            Command::PublishReport(found.report.clone()),
        )?;
        Ok(found)
    }

    /// Once the rounds are done (or, for a validator, every final version validated): the
    /// final test, the outcome file, and the workers let go.
    fn finish_if_done(&mut self) -> anyhow::Result<()> {
        let validated_all = self.validator
            && self.others > 0
            && self.validated.len() >= self.others
            && self.validations.is_empty();
        if !(self.peer.is_finished() || validated_all) || self.outcome.is_some() {
            return Ok(());
        }
        if self.peer.is_finished() && !self.personalized {
            if !(self.trains && self.config.personalization.enabled) {
                self.personalized = true;
            } else {
                // The outcome waits for the personalized model (seconds, in a worker).
                if self.personalizing.is_empty() {
                    tracing::info!("deriving this hospital's personalized model");
                    self.personalizing.spawn_blocking({
                        let job = personal::Job {
                            config: self.config.clone(),
                            member: self.me,
                            base: self.final_version,
                            shared: self.peer.params().to_vec(),
                            train: self.local.train.clone(),
                            test: self.local.test.clone(),
                        };
                        move || personal::derive(job)
                    });
                }
                return Ok(());
            }
        }
        let test = match (&self.last_validation, self.trains) {
            (Some(evaluation), false) => *evaluation,
            _ => validation::evaluate(
                &mut self.evaluator,
                &self.config,
                self.peer.params(),
                &self.local.test,
            )?,
        };
        if validated_all {
            tracing::info!(
                validated = self.validated.len(),
                "validated every final version"
            );
            self.finished_at = Some(Instant::now());
        }
        let result = Outcome {
            member: self.me,
            site: self.config.data.site.clone(),
            rounds: self.last_round,
            test,
            params: self.peer.params().to_vec(),
            params_digest: params_digest(self.peer.params()),
            rejections: self.status.rejections.clone(),
            flagged: self.peer.flagged().collect(),
            timeouts: self.status.rounds_timed_out,
            seconds: self.started.elapsed().as_secs_f64(),
            final_version: self.final_version,
            validated: self.validated.clone(),
            personalized: self.personal.take(),
            certifications: self.certifier.verdicts(),
        };
        match &result.test {
            metrics::Evaluation::Binary(b) => tracing::info!(
                accuracy = b.accuracy,
                auc = ?b.auc,
                "final model on the local test split"
            ),
            metrics::Evaluation::Survival(s) => tracing::info!(
                c_index = ?s.c_index,
                events = s.events,
                "final model on the local test split"
            ),
        }
        let test = admin::Test::from(&result.test);
        self.telemetry.record_test(&test);
        self.status.test = Some(test);
        write_outcome(&self.config, &result)?;
        self.outcome = Some(result);
        // Let the workers (and libtorch's memory) go: no more rounds once finished, and a later
        // validation starts an evaluator again.
        if self.peer.is_finished() {
            self.trainer = None;
        }
        self.evaluator.release_idle(Duration::ZERO);
        Ok(())
    }

    /// The personalized model derived (or why not): into the status, and into the outcome
    /// written next.
    fn handle_personalized(
        &mut self,
        done: Result<anyhow::Result<Personal>, tokio::task::JoinError>,
    ) {
        self.personalized = true;
        match done {
            Ok(Ok(personal)) => {
                tracing::info!(
                    steps = personal.steps,
                    accuracy = personal.test.accuracy().unwrap_or(f64::NAN),
                    c_index = personal.test.c_index().unwrap_or(f64::NAN),
                    file = %personal::path(&self.config).display(),
                    "personalized model on the local test split"
                );
                self.status.personalized = Some(admin::Personalized {
                    steps: personal.steps,
                    test: admin::Test::from(&personal.test),
                });
                self.personal = Some(Personalized {
                    base: personal.base,
                    steps: personal.steps,
                    test: personal.test,
                });
            }
            Ok(Err(error)) => tracing::warn!(
                error = format!("{error:#}"),
                "no personalized model; the shared model stands"
            ),
            Err(error) => tracing::warn!(%error, "the personalization task failed"),
        }
    }

    fn publish_status(&mut self) {
        let status = &mut self.status;
        status.round = self.peer.round();
        status.roster_version = self.peer.chain().current().version;
        status.group = self
            .peer
            .chain()
            .current()
            .member(&self.me)
            .map(|m| m.group.clone())
            .unwrap_or_default();
        status.finished = self.peer.is_finished();
        status.phase = if status.finished {
            admin::Phase::Finished
        } else if !self.ready {
            admin::Phase::Starting
        } else if self.training_since.is_some() || !self.jobs.is_empty() {
            admin::Phase::Training
        } else {
            admin::Phase::Gathering
        };
        status.peers = admin::Peers {
            connected: self.swarm.network_info().num_peers(),
            subscribed: self.subscribed.len(),
            pulls: self.fetches.len() + self.validations.len(),
        };
        let reachability = self.nat.reachability();
        let t = &self.telemetry;
        t.connections_direct.set(admin::gauge(reachability.direct));
        t.connections_relayed
            .set(admin::gauge(reachability.relayed));
        t.relay_reservations
            .set(admin::gauge(reachability.reservations.len()));
        t.hole_punch_attempts
            .set(admin::gauge(reachability.hole_punch_attempts));
        t.hole_punch_successes
            .set(admin::gauge(reachability.hole_punch_successes));
        status.reachability = reachability;
        let roster = self.peer.chain().current();
        let peer_ids = &mut self.peer_ids;
        status.members = roster
            .members
            .iter()
            .map(|m| {
                let peer = match peer_ids.get(&m.id) {
                    Some(p) => Some(*p),
                    None => network::peer_id(&m.id).ok().inspect(|p| {
                        peer_ids.insert(m.id, *p);
                    }),
                };
                admin::MemberView {
                    id: m.id,
                    name: m.name.clone(),
                    site: m.site.clone(),
                    country: m.country.clone(),
                    role: format!("{:?}", m.role).to_lowercase(),
                    group: m.group.clone(),
                    this: m.id == self.me,
                    connection: peer
                        .and_then(|p| self.nat.connection_kind(&p))
                        .map(str::to_owned),
                    rtt_ms: peer
                        .and_then(|p| self.rtt.get(&p))
                        .map(|d| d.as_secs_f64() * 1e3),
                    blocked: peer.is_some_and(|p| self.blocked.contains(&p)),
                }
            })
            .collect();
        self.reporter.publish(status);
    }

    /// One event of the swarm.
    fn handle_swarm_event(&mut self, event: SwarmEvent<network::Event>) {
        match event {
            SwarmEvent::Behaviour(network::Event::Gossip(event)) => self.handle_gossip(event),
            SwarmEvent::Behaviour(network::Event::Payload(event)) => self.handle_payload(event),
            SwarmEvent::Behaviour(network::Event::Roster(event)) => self.handle_roster_sync(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                tracing::debug!(?addresses, ?reason, "listener closed");
                self.nat.listener_closed(listener_id);
            }
            SwarmEvent::Behaviour(network::Event::Identify(event)) => {
                if let identify::Event::Received { peer_id, info, .. } = *event {
                    self.nat.identified(&mut self.swarm, peer_id, &info);
                }
            }
            SwarmEvent::Behaviour(network::Event::RelayClient(event)) => {
                tracing::debug!(?event, "relay client");
                if let relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } = event {
                    self.nat.reserved(relay_peer_id);
                }
            }
            SwarmEvent::Behaviour(network::Event::RelayServer(event)) => {
                tracing::debug!(?event, "relay server");
            }
            SwarmEvent::Behaviour(network::Event::Dcutr(event)) => self.nat.hole_punched(&event),
            SwarmEvent::Behaviour(network::Event::Ping(libp2p::ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.rtt.insert(peer, rtt);
            }
            SwarmEvent::Behaviour(network::Event::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.nat.nat_status(new),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(%peer_id, relayed = endpoint.is_relayed(), "connected");
                self.nat
                    .connection_established(peer_id, connection_id, &endpoint);
                self.redial.connected(peer_id, Instant::now());
                // A member that was offline while a roster update spread learns it here.
                if num_established.get() == 1 {
                    admission::request_roster(
                        &mut self.swarm,
                        peer_id,
                        self.peer.chain().current(),
                    );
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                connection_id,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "disconnected");
                self.nat
                    .connection_closed(peer_id, connection_id, num_established);
                if num_established == 0 {
                    self.redial.disconnected(peer_id, Instant::now());
                    self.rtt.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError { error, peer_id, .. } => {
                tracing::debug!(?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError { error, peer_id, .. } => {
                self.telemetry.connections_refused.inc();
                tracing::debug!(?peer_id, %error, "incoming connection refused");
            }
            _ => {}
        }
    }

    /// Gossip: a message for the peer to judge (its verdict is gossipsub's validation result),
    /// or a member joining or leaving the topic.
    fn handle_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let from = network::member_id(&propagation_source).unwrap_or_default();
                self.telemetry.gossip_messages_in.inc();
                self.telemetry
                    .gossip_bytes_in
                    .inc_by(message.data.len() as u64);
                let verdict = self
                    .peer
                    .handle_message(self.started.elapsed(), from, &message.data);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        network::acceptance(&verdict),
                    );
            }
            // Members of the mesh are those on its topic (a group topic is followed besides).
            gossipsub::Event::Subscribed { peer_id, topic } if topic == self.topic.hash() => {
                self.subscribed.insert(peer_id);
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } if topic == self.topic.hash() => {
                self.subscribed.remove(&peer_id);
            }
            _ => {}
        }
    }

    /// Payload transfer: a member asks for one, or a pull of ours is answered or failed.
    fn handle_payload(&mut self, event: request_response::Event<ContentId, Response>) {
        let now = self.started.elapsed();
        match event {
            request_response::Event::Message {
                peer: from,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.serve_payload(from, request, channel),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let data = match response {
                    Response::Payload(bytes) => Some(bytes),
                    Response::NotFound => None,
                };
                if let Some((validation, version)) = self.validations.remove(&request_id) {
                    self.arrived.push((validation, version, data));
                } else if let Some((member, id)) = self.fetches.remove(&request_id) {
                    if let Some(bytes) = &data {
                        self.telemetry.payload_bytes_in.inc_by(bytes.len() as u64);
                    }
                    self.peer.handle_payload(now, member, id, data);
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((validation, version)) = self.validations.remove(&request_id) {
                    tracing::warn!(model = %validation.model, %error, "cannot pull the model to validate");
                    self.arrived.push((validation, version, None));
                } else if let Some((member, id)) = self.fetches.remove(&request_id) {
                    tracing::debug!(member = %member.short(), %error, "payload pull failed");
                    self.peer.handle_payload(now, member, id, None);
                }
            }
            _ => {}
        }
    }

    /// Answers a payload request from the peer's memory, else from the store off the loop; a
    /// member past its allowance gets "not found" without either.
    fn serve_payload(&mut self, from: PeerId, id: ContentId, channel: ResponseChannel<Response>) {
        if !self.limiter.admit(from, Instant::now()) {
            let member = network::member_id(&from).unwrap_or_default();
            self.count_rejection(Reason::RateLimited(member).label());
            tracing::debug!(peer = %from, %id, "payload request over the member's allowance; answered not found");
            self.respond_payload(channel, from, None);
        } else if let Some(data) = self.peer.payload(&id) {
            self.respond_payload(channel, from, Some(data));
        } else if self.reads.len() >= MAX_READS {
            tracing::debug!(peer = %from, "store reads busy; payload request answered not found");
            self.respond_payload(channel, from, None);
        } else {
            self.reads.spawn_blocking({
                let store = self.storage.store().clone();
                move || Read::Payload {
                    channel,
                    from,
                    data: store.payload(&id).ok().flatten(),
                }
            });
        }
    }

    fn respond_payload(
        &mut self,
        channel: ResponseChannel<Response>,
        from: PeerId,
        data: Option<Bytes>,
    ) {
        let served = data.as_ref().map(|d| d.len() as u64);
        let response = data.map_or(Response::NotFound, Response::Payload);
        if self
            .swarm
            .behaviour_mut()
            .payload
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!(peer = %from, "payload response not delivered (requester gone)");
        } else if let Some(len) = served {
            self.telemetry.payload_requests_served.inc();
            self.telemetry.payload_bytes_out.inc_by(len);
        }
    }

    /// Roster sync: a member asks for the versions after its own, or answers our asking.
    fn handle_roster_sync(
        &mut self,
        event: request_response::Event<network::RosterRequest, RosterResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer: from,
                message,
                ..
            } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    admission::answer_roster(&mut self.swarm, self.peer.chain(), &request, channel)
                }
                request_response::Message::Response { response, .. } => {
                    let member = network::member_id(&from).unwrap_or_default();
                    let before = self.peer.chain().current().version;
                    let full = response.updates.len() >= network::ROSTER_BATCH;
                    for update in response.updates {
                        // Through the peer, as if gossiped: verified, stored, counted if refused.
                        let bytes = wire::Message::Roster(update).to_bytes();
                        self.peer
                            .handle_message(self.started.elapsed(), member, &bytes);
                    }
                    if full && self.peer.chain().current().version > before {
                        admission::request_roster(
                            &mut self.swarm,
                            from,
                            self.peer.chain().current(),
                        );
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "roster sync failed");
            }
            _ => {}
        }
    }
}

/// The trainer's next result; never, for a member that does not train.
async fn next_trained(trainer: &mut Option<Trainer>) -> Option<Done> {
    match trainer {
        Some(t) => t.next().await,
        None => std::future::pending().await,
    }
}
