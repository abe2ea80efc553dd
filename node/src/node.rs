//! The running peer: one `tokio::select!` loop that translates between the libp2p swarm, the
//! sans-IO [`Peer`], the trainer (a thread driving the `medmesh-train` worker process) and the
//! store — and decides nothing itself.
//!
//! Order of duties for every action the peer asks for: persist before announcing (a version is
//! in the store before anyone can fetch it), store the checkpoint with the parameters before a
//! round's training starts (a `kill -9` resumes that round), and answer payload requests from
//! memory or the store. Rejections are logged with their reason and counted.
//!
//! The loop owns the node's [`admin::Status`] and [`admin::Metrics`]: it updates them as events
//! pass and publishes a snapshot once per turn; the admin endpoint (if the config enables it)
//! runs as its own task and only reads those snapshots.
//!
//! It never blocks the runtime on training (that runs in the worker, driven by the trainer
//! thread) and never trusts a byte from the network before the peer has judged it. Evaluation
//! (a validation, the final test) is the exception: it waits for the evaluator's worker, which
//! costs about 0.4 s of libtorch start-up when none is running.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use libp2p::gossipsub::{self, PublishError};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use medmesh_protocol::identity::{ContentId, Digest, MemberId};
use medmesh_protocol::peer::{Action, Checkpoint, Command, Event, Item, Peer};
use medmesh_protocol::roster::{self, Chain, Roster, SignedRoster};
use medmesh_protocol::validation::Certification;
use medmesh_protocol::wire;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::config::NodeConfig;
use crate::data::Dataset;
use crate::network::{self, Response, RosterRequest, RosterResponse};
use crate::store::Store;
use crate::trainer::{Job, Trainer};
use crate::worker::{Evaluator, Setup};
use crate::{admin, keys, metrics, validate};

const CHECKPOINT_KEY: &str = "checkpoint";
const PARAMS_KEY: &str = "params";
/// A gossip publish that found no peer is retried this often.
const RETRY: Duration = Duration::from_millis(250);
/// A node waiting for admission dials the bootstrap members again this often.
const ADMISSION_REDIAL: Duration = Duration::from_secs(2);
/// How often the loop looks for members it lost the connection to (see [`network::Redial`]).
const RECONNECT_CHECK: Duration = Duration::from_millis(500);
/// An evaluation worker unused this long is stopped (another starts on the next validation).
const EVALUATOR_IDLE: Duration = Duration::from_secs(60);
/// Give up republishing a message after this long.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);

/// What a node reports when its rounds are done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// This member.
    pub member: MemberId,
    /// Its site.
    pub site: String,
    /// Last round completed.
    pub rounds: u64,
    /// The final model evaluated on this hospital's own test split.
    pub test: metrics::Binary,
    /// The final parameters.
    pub params: Vec<f32>,
    /// Digest of the final parameters (to compare peers at a glance).
    pub params_digest: Digest,
    /// Rejected messages by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Rounds that closed on their timeout.
    pub timeouts: u64,
    /// Wall time from start to the last round, seconds.
    pub seconds: f64,
    /// This member's final version (the merged model it announced after the last round).
    #[serde(default)]
    pub final_version: Option<ContentId>,
    /// Versions this member validated and reported on.
    #[serde(default)]
    pub validated: Vec<ContentId>,
    /// The certification policy's verdict on every model version with reports, as this member
    /// judged it from the signed reports it holds (updated as reports arrive).
    #[serde(default)]
    pub certifications: Vec<Certification>,
}

/// Reads a signed roster file (JSON).
pub fn read_roster(path: &Path) -> anyhow::Result<SignedRoster> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read roster {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a signed roster", path.display()))
}

/// Writes a signed roster file (JSON), atomically.
pub fn write_roster(path: &Path, roster: &SignedRoster) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(roster)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn params_to_bytes(params: &[f32]) -> Vec<u8> {
    params.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn params_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    let mut out = Vec::new();
    medmesh_protocol::update::decode_f32(bytes, &mut out).ok()?;
    Some(out)
}

struct Pending {
    message: wire::Message,
    since: Instant,
}

/// A validation waiting for its model's payload.
struct Validation {
    model: ContentId,
    /// Other local data to validate on (default: the node's own test split).
    data: Option<crate::config::DataConfig>,
    reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
}

/// What the loop tracks about the network between swarm events.
#[derive(Default)]
struct Tracking {
    /// Payload pulls in flight.
    fetches: HashMap<OutboundRequestId, (MemberId, ContentId)>,
    /// Payload pulls for validations in flight.
    validations: HashMap<OutboundRequestId, Validation>,
    /// Validations whose payload arrived (or could not be had), for the loop to finish.
    arrived: Vec<(Validation, Option<bytes::Bytes>)>,
    /// Peers subscribed to the mesh's topic.
    subscribed: HashSet<PeerId>,
    /// Members the operator blocked (`medmesh block`).
    blocked: HashSet<PeerId>,
    /// When to dial disconnected members again.
    redial: network::Redial,
}

/// Blocks or unblocks members named by roster name, site or member id (full hex, or the
/// 8-digit short form), each of which must pick out one member; the names of every member
/// blocked afterwards.
fn block_members(
    swarm: &mut Swarm<network::Behaviour>,
    roster: &Roster,
    me: &MemberId,
    tracking: &mut Tracking,
    names: &[String],
    block: bool,
) -> Result<Vec<String>, String> {
    let mut peers = Vec::new();
    for name in names {
        let name = name.trim();
        let found: Vec<_> = roster
            .members
            .iter()
            .filter(|m| {
                m.name == name || m.site == name || m.id.to_string() == name || m.id.short() == name
            })
            .collect();
        let member = match found.as_slice() {
            [member] => *member,
            [] => {
                return Err(format!(
                    "{name:?} is not a member on roster version {}",
                    roster.version
                ));
            }
            _ => {
                return Err(format!(
                    "{name:?} names {} members; give a member id",
                    found.len()
                ));
            }
        };
        if member.id == *me {
            return Err(format!("{name:?} is this node"));
        }
        let peer = network::peer_id(&member.id).map_err(|e| e.to_string())?;
        peers.push((peer, member.name.clone()));
    }
    for (peer, name) in peers {
        network::block(swarm, roster, peer, block);
        if block {
            tracking.blocked.insert(peer);
            tracing::warn!(member = %name, "blocked by the operator: connections closed and refused");
        } else if tracking.blocked.remove(&peer) {
            tracking.redial.reset(&peer);
            tracing::warn!(member = %name, "unblocked by the operator");
        }
    }
    Ok(blocked_names(roster, &tracking.blocked))
}

/// The roster names of the blocked members, sorted.
fn blocked_names(roster: &Roster, blocked: &HashSet<PeerId>) -> Vec<String> {
    let mut names: Vec<String> = roster
        .members
        .iter()
        .filter(|m| network::peer_id(&m.id).is_ok_and(|p| blocked.contains(&p)))
        .map(|m| m.name.clone())
        .collect();
    names.sort();
    names
}

/// Runs a node until its rounds are done (plus the linger time) or `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<Outcome>> {
    let started = Instant::now();
    let key = keys::load(&config.key)?;
    let store = Store::open(&config.store)?;

    let history = store.roster_history()?;
    let mut chain = if history.is_empty() {
        let genesis = read_roster(&config.genesis)?;
        let chain = Chain::from_genesis(genesis).context("the genesis roster is not valid")?;
        store.put(&Item::Roster(chain.current_signed().clone()))?;
        chain
    } else {
        Chain::from_history(history).context("the stored roster chain does not verify")?
    };
    let me = key.id();
    let mut swarm = network::build_swarm(&key, &config.network, chain.current())?;
    tracing::info!(member = %me.short(), peer_id = %swarm.local_peer_id(), site = %config.data.site, "node started");

    let mut status = admin::Status {
        member: me,
        peer_id: swarm.local_peer_id().to_string(),
        site: config.data.site.clone(),
        mesh: chain.current().mesh.clone(),
        roster_version: chain.current().version,
        round: 0,
        ..admin::Status::default()
    };
    let (reporter, mut commands) = admin::Reporter::new(status.clone(), started);
    let telemetry = reporter.metrics();
    let admin_server = match config.admin {
        Some(addr) => Some(reporter.serve(addr).await?),
        None => None,
    };
    tokio::pin!(shutdown);

    let mut tracking = Tracking::default();
    if !chain.current().contains(&me) {
        status.phase = admin::Phase::Admission;
        reporter.publish(&status);
        let admitted = await_admission(
            Admission {
                swarm: &mut swarm,
                chain: &mut chain,
                store: &store,
                config: &config,
                commands: &mut commands,
                tracking: &mut tracking,
                me,
            },
            shutdown.as_mut(),
        )
        .await?;
        if !admitted {
            if let Some(server) = admin_server {
                server.stop().await;
            }
            return Ok(None);
        }
    }

    status.blocked = blocked_names(chain.current(), &tracking.blocked);

    let dataset = Dataset::load(&config.data.schema)?;
    let site = dataset
        .site(&config.data.site)
        .with_context(|| {
            format!(
                "site {:?} is not in {}",
                config.data.site,
                config.data.schema.display()
            )
        })?
        .clone();
    let spec = config.model.clone();
    let mut experiment = config.experiment.clone();
    experiment.model = spec.digest()?;
    let training = config.training.clone();
    let init_seed = config.init_seed;
    let trains = chain
        .current()
        .member(&me)
        .is_some_and(|m| m.role.may_train());
    let mut trainer = if trains {
        let train_rows = match config.data.shard {
            Some(shard) => site.train.every(shard.index, shard.count),
            None => site.train.clone(),
        };
        anyhow::ensure!(
            !train_rows.is_empty(),
            "site {:?} has no training rows{}",
            config.data.site,
            if config.data.shard.is_some() {
                " in this shard"
            } else {
                ""
            }
        );
        Some(Trainer::spawn(
            &config.data.site,
            &crate::worker::program(),
            Setup {
                spec,
                training,
                init_seed,
                data: train_rows,
            },
        )?)
    } else {
        tracing::info!("this member does not train (its roster role); validating only");
        None
    };

    // Resume where a previous run stopped, or start from the shared initialization.
    let (mut checkpoint, mut params, samples) = match &trainer {
        Some(t) => {
            let checkpoint = store
                .state(CHECKPOINT_KEY)?
                .and_then(|b| wire::decode::<Checkpoint>(&b).ok());
            let stored_params = store.state(PARAMS_KEY)?.and_then(|b| params_from_bytes(&b));
            match (checkpoint, stored_params) {
                (Some(c), Some(p)) if p.len() == t.dim => {
                    tracing::info!(round = c.round, "resuming from the stored checkpoint");
                    (c, p, t.samples as u64)
                }
                _ => (Checkpoint::default(), t.init.clone(), t.samples as u64),
            }
        }
        None => (Checkpoint::default(), Vec::new(), 0),
    };
    // Never sign a second, different version for a round this key already announced (that
    // is equivocation, and the others would exclude us): a node killed after announcing a
    // round but before its next checkpoint continues after that round, from what it announced.
    if let Some(t) = &trainer
        && let Some((own, own_params)) = last_own_version(&store, &me, t.dim)?
        && own.round >= checkpoint.round
    {
        tracing::info!(
            round = own.round,
            "this node already announced that round before it stopped; continuing after it"
        );
        checkpoint = Checkpoint {
            round: own.round + 1,
            parents: vec![own.id()],
        };
        params = own_params;
    }
    let final_round = experiment.max_rounds.map(|m| m + 1);
    let policy = experiment.certification.clone();
    let mut peer = Peer::resume(experiment, key.clone(), chain, params, samples, checkpoint)?;
    let topic = network::topic(&peer.chain().current().mesh);
    status.roster_version = peer.chain().current().version;
    status.round = peer.round();
    status.phase = admin::Phase::Starting;

    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut training_since: Option<Instant> = None;
    let mut finished_at: Option<Instant> = None;
    let mut outcome: Option<Outcome> = None;
    let mut jobs: VecDeque<Job> = VecDeque::new();
    let mut last_round = 0u64;
    let mut final_version: Option<ContentId> = None;
    let mut validated: Vec<ContentId> = Vec::new();
    let mut validated_authors: HashSet<MemberId> = HashSet::new();
    let mut certifications: BTreeMap<ContentId, Certification> = BTreeMap::new();
    let mut last_validation: Option<metrics::Binary> = None;
    let validator = !trains && config.validate_final;
    let mut evaluator = Evaluator::default();
    // Start barrier: the first round waits until the other members listen on the topic, or
    // its timeout, so the first announcements are not published into an empty mesh.
    let others = peer
        .chain()
        .current()
        .members
        .iter()
        .filter(|m| m.id != me && m.role.may_train())
        .count();
    let min_peers = config.min_peers.unwrap_or(others);
    let start_deadline = started + Duration::from_millis(config.start_timeout_ms);
    let mut ready = min_peers == 0;
    let mut reconnect = tokio::time::interval(RECONNECT_CHECK);
    reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // Carry out everything the peer asked for.
        while let Some(action) = peer.poll_action() {
            match action {
                Action::Train { round, params } => {
                    store.set_state(CHECKPOINT_KEY, &wire::encode(&peer.checkpoint()))?;
                    store.set_state(PARAMS_KEY, &params_to_bytes(&params))?;
                    jobs.push_back(Job {
                        round,
                        params,
                        steps: config.training.local_steps,
                    });
                }
                Action::Broadcast(message) => pending.push_back(Pending {
                    message,
                    since: Instant::now(),
                }),
                Action::Fetch { from, id } => match network::peer_id(&from) {
                    Ok(peer_id) => {
                        let request = swarm.behaviour_mut().payload.send_request(&peer_id, id);
                        tracking.fetches.insert(request, (from, id));
                    }
                    Err(_) => peer.handle_payload(started.elapsed(), from, id, None),
                },
                Action::Persist(item) => store.put(&item).context("cannot persist; stopping")?,
                Action::Event(event) => match &event {
                    Event::Rejected { from, reason } => {
                        *status
                            .rejections
                            .entry(reason.label().to_owned())
                            .or_default() += 1;
                        telemetry.reject(reason.label());
                        tracing::warn!(from = %from.short(), reason = %reason, "rejected");
                    }
                    Event::Flagged { author, reason } => {
                        tracing::warn!(author = %author.short(), reason = %reason, "member flagged");
                    }
                    Event::RoundCompleted {
                        round,
                        contributors,
                        timed_out,
                        ..
                    } => {
                        status.rounds_timed_out += u64::from(*timed_out);
                        telemetry.rounds_completed.inc();
                        if *timed_out {
                            telemetry.rounds_timed_out.inc();
                        }
                        status.last_round = Some(admin::RoundSummary {
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
                        network::allow_members(
                            &mut swarm,
                            peer.chain().current(),
                            &tracking.blocked,
                        );
                        status.blocked = blocked_names(peer.chain().current(), &tracking.blocked);
                    }
                    Event::Finished { round } => {
                        last_round = *round;
                        tracing::info!(round, "all rounds done");
                        finished_at = Some(Instant::now());
                    }
                    Event::Announced { id, round } => {
                        status.own_version = Some(*id);
                        if Some(*round) == final_round {
                            tracing::info!(id = %id, "final version announced");
                            final_version = Some(*id);
                        }
                        tracing::debug!(?event);
                    }
                    Event::Accepted {
                        kind: "announce",
                        signer,
                        id,
                    } if validator && !validated_authors.contains(signer) => {
                        let is_final = store
                            .version(id)?
                            .is_some_and(|v| Some(v.round) == final_round);
                        if is_final {
                            validated_authors.insert(*signer);
                            start_validation(
                                *id,
                                None,
                                None,
                                &store,
                                &peer,
                                &mut swarm,
                                &mut tracking,
                            )?;
                        }
                    }
                    Event::Accepted { kind: "report", .. } => {
                        tracing::debug!(?event);
                        if let Some(policy) = &policy {
                            let changed =
                                judge(&store, peer.chain().current(), policy, &mut certifications)?;
                            if changed && let Some(outcome) = &mut outcome {
                                outcome.certifications = certifications.values().cloned().collect();
                                write_outcome(&config, outcome)?;
                            }
                            status.certified = certifications
                                .values()
                                .filter(|c| c.certified)
                                .map(|c| c.model)
                                .collect();
                        }
                    }
                    Event::Accepted { .. } => {
                        tracing::debug!(?event);
                    }
                },
            }
        }
        if !ready && (tracking.subscribed.len() >= min_peers || Instant::now() >= start_deadline) {
            ready = true;
            tracing::info!(
                peers = tracking.subscribed.len(),
                "mesh formed; starting rounds"
            );
        }
        if ready
            && let Some(trainer) = &trainer
            && let Some(job) = jobs.pop_front()
        {
            trainer.submit(job).await?;
            training_since = Some(Instant::now());
        }
        // Publish what is waiting; a mesh with nobody subscribed yet is retried.
        while let Some(p) = pending.front() {
            let bytes = p.message.to_bytes();
            let len = bytes.len() as u64;
            match swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), bytes)
            {
                Ok(_) => {
                    telemetry.gossip_messages_out.inc();
                    telemetry.gossip_bytes_out.inc_by(len);
                    pending.pop_front();
                }
                Err(PublishError::Duplicate) => {
                    pending.pop_front();
                }
                Err(PublishError::NoPeersSubscribedToTopic | PublishError::AllQueuesFull(_))
                    if p.since.elapsed() < PUBLISH_PATIENCE =>
                {
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = p.message.kind(), "gossip publish failed; dropped");
                    pending.pop_front();
                }
            }
        }
        // Validations whose payload arrived: evaluate, sign and publish the report.
        for (validation, bytes) in std::mem::take(&mut tracking.arrived) {
            let Validation { model, data, reply } = validation;
            let other = data
                .as_ref()
                .map(|d| -> anyhow::Result<(String, crate::data::Table)> {
                    let set = Dataset::load(&d.schema)?;
                    let test = set
                        .site(&d.site)
                        .with_context(|| {
                            format!("site {:?} is not in {}", d.site, d.schema.display())
                        })?
                        .test
                        .clone();
                    Ok((set.name.clone(), test))
                })
                .transpose();
            let result = other.and_then(|other| {
                let (name, test) = match &other {
                    Some((name, test)) => (name.as_str(), test),
                    None => (dataset.name.as_str(), &site.test),
                };
                finish_validation(
                    &mut evaluator,
                    &config,
                    &store,
                    &mut peer,
                    test,
                    name,
                    model,
                    bytes,
                    started,
                )
            });
            let answer = match result {
                Ok((found, author)) => {
                    let line = validate::describe(&found.report, me);
                    tracing::info!("{line}");
                    validated.push(model);
                    validated_authors.insert(author);
                    last_validation = Some(found.binary);
                    Ok(line)
                }
                Err(e) => {
                    tracing::warn!(model = %model, error = %format!("{e:#}"), "validation failed");
                    Err(format!("{e:#}"))
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
        }
        let validated_all =
            validator && others > 0 && validated.len() >= others && tracking.validations.is_empty();
        if (peer.is_finished() || validated_all) && outcome.is_none() {
            let test = match (&last_validation, trains) {
                (Some(binary), false) => *binary,
                _ => evaluate(&mut evaluator, &config, peer.params(), &site.test)?,
            };
            if validated_all {
                tracing::info!(validated = validated.len(), "validated every final version");
                finished_at = Some(Instant::now());
            }
            let result = Outcome {
                member: me,
                site: config.data.site.clone(),
                rounds: last_round,
                test,
                params: peer.params().to_vec(),
                params_digest: Digest::of("medmesh params", &params_to_bytes(peer.params())),
                rejections: status.rejections.clone(),
                timeouts: status.rounds_timed_out,
                seconds: started.elapsed().as_secs_f64(),
                final_version,
                validated: validated.clone(),
                certifications: certifications.values().cloned().collect(),
            };
            tracing::info!(accuracy = result.test.accuracy, auc = ?result.test.auc, "final model on the local test split");
            status.test = Some(admin::Test {
                samples: result.test.samples,
                accuracy: result.test.accuracy,
                auc: result.test.auc,
            });
            telemetry.local_test_accuracy.set(result.test.accuracy);
            write_outcome(&config, &result)?;
            outcome = Some(result);
            // Let the workers (and libtorch's memory) go: no more rounds once finished, and a
            // later validation starts an evaluator again.
            if peer.is_finished() {
                trainer = None;
            }
            evaluator.release_idle(Duration::ZERO);
        }
        status.round = peer.round();
        status.roster_version = peer.chain().current().version;
        status.finished = peer.is_finished();
        status.phase = if status.finished {
            admin::Phase::Finished
        } else if !ready {
            admin::Phase::Starting
        } else if training_since.is_some() || !jobs.is_empty() {
            admin::Phase::Training
        } else {
            admin::Phase::Gathering
        };
        status.peers = admin::Peers {
            connected: swarm.network_info().num_peers(),
            subscribed: tracking.subscribed.len(),
            pulls: tracking.fetches.len() + tracking.validations.len(),
        };
        reporter.publish(&status);
        if finished_at.is_some_and(|t| t.elapsed() >= config.linger()) {
            break;
        }

        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if let Some(t) = peer.poll_timeout() {
            wake = wake.min(started + t);
        }
        if !pending.is_empty() {
            wake = wake.min(now + RETRY);
        }
        if let Some(t) = finished_at {
            wake = wake.min(t + config.linger());
        }
        if !ready {
            wake = wake.min(start_deadline);
        }
        tokio::select! {
            event = swarm.select_next_some() => {
                handle_swarm_event(event, &mut swarm, &mut peer, &store, &mut tracking, telemetry, started);
            }
            done = next_trained(&mut trainer) => {
                let Some(done) = done else { anyhow::bail!("the training thread stopped") };
                let (params, metrics) = done.result.with_context(|| format!("training round {} failed", done.round))?;
                let seconds = training_since.take().map_or(0.0, |t| t.elapsed().as_secs_f64());
                telemetry.train_seconds.observe(seconds);
                if let Some(loss) = metrics.get("loss") {
                    telemetry.last_train_loss.set(*loss);
                }
                status.training = Some(admin::Training { round: done.round, seconds, metrics: metrics.clone() });
                peer.handle_trained(started.elapsed(), params, metrics)?;
            }
            Some(command) = commands.recv() => match command {
                admin::Command::Validate { model, data, reply } => {
                    match resolve(&store, model)? {
                        Some(id) => start_validation(id, data, Some(reply), &store, &peer, &mut swarm, &mut tracking)?,
                        None => {
                            let _ = reply.send(Err("this node holds no model version yet".into()));
                        }
                    }
                }
                admin::Command::Roster { update, reply } => {
                    let answer = peer
                        .handle_command(started.elapsed(), Command::Roster(update))
                        .map(|()| peer.chain().current().version)
                        .map_err(|e| e.to_string());
                    if let Err(reason) = &answer {
                        tracing::warn!(%reason, "operator's roster update refused");
                    }
                    let _ = reply.send(answer);
                }
                admin::Command::Block { members, block, reply } => {
                    let answer = block_members(&mut swarm, peer.chain().current(), &me, &mut tracking, &members, block);
                    if let Ok(names) = &answer {
                        status.blocked.clone_from(names);
                    }
                    let _ = reply.send(answer);
                }
            },
            _ = reconnect.tick() => {
                evaluator.release_idle(EVALUATOR_IDLE);
                network::redial_members(&mut swarm, peer.chain().current(), &tracking.blocked, &mut tracking.redial, Instant::now());
            }
            () = sleep_until(wake.into()) => {
                peer.handle_timeout(started.elapsed());
            }
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
        }
    }
    if let Some(server) = admin_server {
        server.stop().await;
    }
    Ok(outcome)
}

/// This member's newest stored version and its parameters, if its payload is stored and fits
/// the model.
fn last_own_version(
    store: &Store,
    me: &MemberId,
    dim: usize,
) -> anyhow::Result<
    Option<(
        medmesh_protocol::identity::Verified<medmesh_protocol::update::Version>,
        Vec<f32>,
    )>,
> {
    let Some(own) = store
        .versions()?
        .into_iter()
        .filter(|v| v.signer() == *me)
        .max_by_key(|v| v.round)
    else {
        return Ok(None);
    };
    let Some(bytes) = store.payload(&own.id())? else {
        return Ok(None);
    };
    let mut params = Vec::new();
    if medmesh_protocol::update::decode_payload(&own.payload, &bytes, &mut params).is_err()
        || params.len() != dim
    {
        return Ok(None);
    }
    Ok(Some((own, params)))
}

/// The trainer's next result; never, for a member that does not train.
async fn next_trained(trainer: &mut Option<Trainer>) -> Option<crate::trainer::Done> {
    match trainer {
        Some(t) => t.next().await,
        None => std::future::pending().await,
    }
}

/// Writes the outcome to the config's results file, if it names one.
fn write_outcome(config: &NodeConfig, outcome: &Outcome) -> anyhow::Result<()> {
    if let Some(path) = &config.results {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(
            &mut tmp,
            (serde_json::to_string_pretty(outcome)? + "\n").as_bytes(),
        )?;
        tmp.persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Re-judges every model with stored reports; whether a verdict changed.
fn judge(
    store: &Store,
    roster: &Roster,
    policy: &medmesh_protocol::validation::Policy,
    verdicts: &mut BTreeMap<ContentId, Certification>,
) -> anyhow::Result<bool> {
    let reports = store.reports(None)?;
    let models: std::collections::BTreeSet<ContentId> = reports.iter().map(|r| r.model).collect();
    let mut changed = false;
    for model in models {
        let verdict = policy.judge(roster, &model, &reports);
        if verdicts.get(&model) != Some(&verdict) {
            if verdict.certified {
                tracing::info!(
                    model = %model,
                    validators = verdict.validators.len(),
                    countries = ?verdict.countries,
                    "model version certified"
                );
            }
            verdicts.insert(model, verdict);
            changed = true;
        }
    }
    Ok(changed)
}

/// The version a selection names: an id as given, `latest` the highest round held (ties: the
/// lowest id, so every node picks the same).
fn resolve(store: &Store, selection: admin::Selection) -> anyhow::Result<Option<ContentId>> {
    Ok(match selection {
        admin::Selection::Id(id) => Some(id),
        admin::Selection::Latest => store
            .versions()?
            .iter()
            .max_by(|a, b| a.round.cmp(&b.round).then(b.id().cmp(&a.id())))
            .map(|v| v.id()),
    })
}

/// Starts validating `model`: from the payload at hand, or by pulling it from its author.
fn start_validation(
    model: ContentId,
    data: Option<crate::config::DataConfig>,
    reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
    store: &Store,
    peer: &Peer,
    swarm: &mut Swarm<network::Behaviour>,
    tracking: &mut Tracking,
) -> anyhow::Result<()> {
    let validation = Validation { model, data, reply };
    let Some(version) = store.version(&model)? else {
        if let Some(reply) = validation.reply {
            let _ = reply.send(Err(format!(
                "no model version {model} is known to this node"
            )));
        }
        return Ok(());
    };
    if let Some(bytes) = peer.payload(&model).or(store.payload(&model)?) {
        tracking.arrived.push((validation, Some(bytes)));
        return Ok(());
    }
    match network::peer_id(&version.author) {
        Ok(author) => {
            let request = swarm.behaviour_mut().payload.send_request(&author, model);
            tracking.validations.insert(request, validation);
        }
        Err(_) => tracking.arrived.push((validation, None)),
    }
    Ok(())
}

/// Evaluates a pulled model on the local test split and publishes the signed report; the
/// report and the model's author.
#[allow(clippy::too_many_arguments)]
fn finish_validation(
    evaluator: &mut Evaluator,
    config: &NodeConfig,
    store: &Store,
    peer: &mut Peer,
    test: &crate::data::Table,
    dataset: &str,
    model: ContentId,
    bytes: Option<bytes::Bytes>,
    started: Instant,
) -> anyhow::Result<(validate::Found, MemberId)> {
    let version = store
        .version(&model)?
        .with_context(|| format!("model version {model} is not stored"))?;
    let bytes = bytes.context("its author did not serve the payload")?;
    let mut params = Vec::new();
    medmesh_protocol::update::decode_payload(&version.payload, &bytes, &mut params)
        .context("the payload does not match the signed version")?;
    let me = peer.id();
    let member = peer
        .chain()
        .current()
        .member(&me)
        .cloned()
        .context("this node is not on the roster")?;
    let found = validate::evaluate(evaluator, config, model, &member, dataset, &params, test)?;
    peer.handle_command(
        started.elapsed(),
        Command::PublishReport(found.report.clone()),
    )?;
    Ok((found, version.author))
}

/// What [`await_admission`] works with.
struct Admission<'a> {
    swarm: &'a mut Swarm<network::Behaviour>,
    chain: &'a mut Chain,
    store: &'a Store,
    config: &'a NodeConfig,
    commands: &'a mut mpsc::Receiver<admin::Command>,
    tracking: &'a mut Tracking,
    me: MemberId,
}

/// A key that is not on the roster it knows: keeps dialing the bootstrap members (who refuse it
/// until they follow a roster that admits it), asks each member it reaches for the roster
/// versions after its own, and takes updates its operator posts to the admin endpoint. Every
/// update is verified against the chain and stored. Returns `true` once a version admits this
/// key, `false` on shutdown.
async fn await_admission(
    a: Admission<'_>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<bool> {
    let Admission {
        swarm,
        chain,
        store,
        config,
        commands,
        tracking,
        me,
    } = a;
    tracing::warn!(
        member = %me,
        version = chain.current().version,
        mesh = %chain.current().mesh,
        "this key is not on the roster; waiting to be admitted: a member proposes it \
         (`medmesh roster propose --add`), a threshold of members sign, and \
         `medmesh roster publish` hands the update to a running member"
    );
    let local = *swarm.local_peer_id();
    let mut redial = tokio::time::interval(ADMISSION_REDIAL);
    redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if chain.current().contains(&me) {
            tracing::info!(
                version = chain.current().version,
                "admitted: this key is on the roster"
            );
            return Ok(true);
        }
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                    if num_established.get() == 1 =>
                {
                    request_roster(swarm, peer_id, chain.current());
                }
                SwarmEvent::Behaviour(network::Event::Roster(request_response::Event::Message {
                    peer: from,
                    message,
                    ..
                })) => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let answer = RosterResponse::answer(
                            &chain.current().mesh,
                            chain.history(),
                            &request,
                        );
                        let _ = swarm.behaviour_mut().roster.send_response(channel, answer);
                    }
                    request_response::Message::Response { response, .. } => {
                        let mut advanced = false;
                        for update in response.updates {
                            match adopt(chain, store, update)? {
                                Ok(changed) => advanced |= changed,
                                Err(error) => {
                                    tracing::warn!(peer = %from, %error, "roster update refused");
                                    break;
                                }
                            }
                        }
                        if advanced {
                            network::allow_members(swarm, chain.current(), &tracking.blocked);
                            request_roster(swarm, from, chain.current());
                        }
                    }
                },
                SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Subscribed {
                    peer_id,
                    ..
                })) => {
                    tracking.subscribed.insert(peer_id);
                }
                SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Unsubscribed {
                    peer_id,
                    ..
                })) => {
                    tracking.subscribed.remove(&peer_id);
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!(?peer_id, %error, "member not reachable (or not admitting us yet)");
                }
                _ => {}
            },
            _ = redial.tick() => {
                for address in &config.network.bootstrap {
                    if let Some(Protocol::P2p(peer)) = address.iter().last()
                        && peer != local
                        && !swarm.is_connected(&peer)
                    {
                        let _ = swarm.dial(address.clone());
                    }
                }
            }
            Some(command) = commands.recv() => match command {
                admin::Command::Validate { reply, .. } => {
                    let _ = reply.send(Err("this node is not admitted to the roster yet".into()));
                }
                admin::Command::Block { members, block, reply } => {
                    let answer = block_members(swarm, chain.current(), &me, tracking, &members, block);
                    let _ = reply.send(answer);
                }
                admin::Command::Roster { update, reply } => {
                    let answer = match adopt(chain, store, update)? {
                        Ok(_) => {
                            network::allow_members(swarm, chain.current(), &tracking.blocked);
                            Ok(chain.current().version)
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = reply.send(answer);
                }
            },
            () = shutdown.as_mut() => {
                tracing::info!("shutting down before admission");
                return Ok(false);
            }
        }
    }
}

/// Offers a roster update to the chain and stores it if it advanced the chain: `Ok(Ok(true))`
/// advanced, `Ok(Ok(false))` a duplicate, `Ok(Err(_))` refused; `Err` only when the store fails.
fn adopt(
    chain: &mut Chain,
    store: &Store,
    update: SignedRoster,
) -> anyhow::Result<Result<bool, roster::Error>> {
    match chain.apply(update) {
        Ok(roster::Outcome::Advanced { version }) => {
            store
                .put(&Item::Roster(chain.current_signed().clone()))
                .context("cannot store the roster update")?;
            tracing::info!(version, "roster update accepted");
            Ok(Ok(true))
        }
        Ok(roster::Outcome::Duplicate) => Ok(Ok(false)),
        Err(e) => Ok(Err(e)),
    }
}

/// Asks `peer` for the roster versions after `roster`'s.
fn request_roster(swarm: &mut Swarm<network::Behaviour>, peer: PeerId, roster: &Roster) {
    swarm.behaviour_mut().roster.send_request(
        &peer,
        RosterRequest {
            mesh: roster.mesh.clone(),
            after: roster.version,
        },
    );
}

/// The model `params` on `test`, run by `evaluator`'s worker.
fn evaluate(
    evaluator: &mut Evaluator,
    config: &NodeConfig,
    params: &[f32],
    test: &crate::data::Table,
) -> anyhow::Result<metrics::Binary> {
    let probs = evaluator.predict(
        &config.model,
        &config.training,
        config.init_seed,
        params,
        test,
    )?;
    Ok(metrics::binary(&probs, &test.y, 0.5)?)
}

fn handle_swarm_event(
    event: SwarmEvent<network::Event>,
    swarm: &mut libp2p::Swarm<network::Behaviour>,
    peer: &mut Peer,
    store: &Store,
    tracking: &mut Tracking,
    telemetry: &admin::Metrics,
    started: Instant,
) {
    let now = started.elapsed();
    match event {
        SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        })) => {
            let from = network::member_id(&propagation_source).unwrap_or_default();
            telemetry.gossip_messages_in.inc();
            telemetry.gossip_bytes_in.inc_by(message.data.len() as u64);
            let verdict = peer.handle_message(now, from, &message.data);
            swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    network::acceptance(&verdict),
                );
        }
        SwarmEvent::Behaviour(network::Event::Payload(request_response::Event::Message {
            peer: from,
            message,
            ..
        })) => match message {
            request_response::Message::Request {
                request, channel, ..
            } => {
                let data = peer
                    .payload(&request)
                    .or_else(|| store.payload(&request).ok().flatten());
                let served = data.as_ref().map(|d| d.len() as u64);
                let response = data.map_or(Response::NotFound, Response::Payload);
                if swarm
                    .behaviour_mut()
                    .payload
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!(peer = %from, "payload response not delivered (requester gone)");
                } else if let Some(len) = served {
                    telemetry.payload_requests_served.inc();
                    telemetry.payload_bytes_out.inc_by(len);
                }
            }
            request_response::Message::Response {
                request_id,
                response,
            } => {
                if let Some(validation) = tracking.validations.remove(&request_id) {
                    let bytes = match response {
                        Response::Payload(bytes) => Some(bytes),
                        Response::NotFound => None,
                    };
                    tracking.arrived.push((validation, bytes));
                } else if let Some((member, id)) = tracking.fetches.remove(&request_id) {
                    let data = match response {
                        Response::Payload(bytes) => {
                            telemetry.payload_bytes_in.inc_by(bytes.len() as u64);
                            Some(bytes)
                        }
                        Response::NotFound => None,
                    };
                    peer.handle_payload(now, member, id, data);
                }
            }
        },
        SwarmEvent::Behaviour(network::Event::Payload(
            request_response::Event::OutboundFailure {
                request_id, error, ..
            },
        )) => {
            if let Some(validation) = tracking.validations.remove(&request_id) {
                tracing::warn!(model = %validation.model, %error, "cannot pull the model to validate");
                tracking.arrived.push((validation, None));
            } else if let Some((member, id)) = tracking.fetches.remove(&request_id) {
                tracing::debug!(member = %member.short(), %error, "payload pull failed");
                peer.handle_payload(now, member, id, None);
            }
        }
        SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Subscribed {
            peer_id,
            ..
        })) => {
            tracking.subscribed.insert(peer_id);
        }
        SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Unsubscribed {
            peer_id,
            ..
        })) => {
            tracking.subscribed.remove(&peer_id);
        }
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!(%address, "listening");
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            num_established,
            ..
        } => {
            tracing::debug!(%peer_id, "connected");
            tracking.redial.connected(peer_id, Instant::now());
            // A member that was offline while a roster update spread learns it here.
            if num_established.get() == 1 {
                request_roster(swarm, peer_id, peer.chain().current());
            }
        }
        SwarmEvent::Behaviour(network::Event::Roster(request_response::Event::Message {
            peer: from,
            message,
            ..
        })) => match message {
            request_response::Message::Request {
                request, channel, ..
            } => {
                let chain = peer.chain();
                let answer =
                    RosterResponse::answer(&chain.current().mesh, chain.history(), &request);
                let _ = swarm.behaviour_mut().roster.send_response(channel, answer);
            }
            request_response::Message::Response { response, .. } => {
                let member = network::member_id(&from).unwrap_or_default();
                let before = peer.chain().current().version;
                let full = response.updates.len() >= network::ROSTER_BATCH;
                for update in response.updates {
                    // Through the peer, as if gossiped: verified, stored, counted if refused.
                    let bytes = wire::Message::Roster(update).to_bytes();
                    peer.handle_message(now, member, &bytes);
                }
                if full && peer.chain().current().version > before {
                    request_roster(swarm, from, peer.chain().current());
                }
            }
        },
        SwarmEvent::Behaviour(network::Event::Roster(
            request_response::Event::OutboundFailure { peer, error, .. },
        )) => {
            tracing::debug!(%peer, %error, "roster sync failed");
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            cause,
            num_established,
            ..
        } => {
            tracing::debug!(%peer_id, ?cause, "disconnected");
            if num_established == 0 {
                tracking.redial.disconnected(peer_id, Instant::now());
            }
        }
        SwarmEvent::IncomingConnectionError { error, peer_id, .. } => {
            telemetry.connections_refused.inc();
            tracing::debug!(?peer_id, %error, "incoming connection refused");
        }
        _ => {}
    }
}

/// The libp2p peer id of a member, for logs and bootstrap addresses.
pub fn peer_id_of(member: &MemberId) -> anyhow::Result<PeerId> {
    Ok(network::peer_id(member)?)
}
