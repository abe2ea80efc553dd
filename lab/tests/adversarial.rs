//! Hostile members and strangers against four real `medmesh` processes on loopback. Seven rogue
//! roster members (in-process libp2p peers speaking the real wire protocol) forge signatures,
//! relay messages signed by a non-member, equivocate, flood, forge and misdirect validation
//! reports, serve payloads that do not match their announcements, re-send an old version
//! re-encoded (so that gossipsub's deduplication, which goes by the bytes, would not catch it)
//! and send oversized messages; a stranger writes garbage to a node's TCP port. Every attack is refused and counted by reason, and the honest
//! hospitals train to the same accuracy and the same model as without it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{data, options};
use futures::StreamExt;
use libp2p::gossipsub;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use medmesh_lab::mesh::{self, Children, LocalNode, MeshSpec};
use medmesh_learning::learner::ModelSpec;
use medmesh_node::network::{self, NetworkConfig, Response};
use medmesh_node::node::write_roster;
use medmesh_protocol::identity::{ContentId, Digest, Keypair};
use medmesh_protocol::roster::{Member, Role, Roster, SignedRoster};
use medmesh_protocol::update::{self, Version};
use medmesh_protocol::validation::{Dataset, Metric, Report};
use medmesh_protocol::wire::{self, Message};

const DIM: usize = 14;

/// A rogue member: its key and port, the gossip it publishes (with a pause before each), and
/// whether it answers payload requests with bytes that do not match what it announced.
struct Rogue {
    name: &'static str,
    key: Keypair,
    port: u16,
    script: Vec<(Duration, Vec<u8>)>,
}

impl Rogue {
    fn member(&self) -> Member {
        let peer_id = network::peer_id(&self.key.id()).expect("peer id");
        Member {
            id: self.key.id(),
            name: self.name.into(),
            site: self.name.into(),
            country: "US".into(),
            group: String::new(),
            role: Role::Hospital,
            addresses: vec![format!("/ip4/127.0.0.1/tcp/{}/p2p/{peer_id}", self.port)],
        }
    }
}

/// A member's signed version of `round` with parameters `params`, and its payload bytes.
fn signed_version(
    key: &Keypair,
    model: Digest,
    round: u64,
    params: &[f32],
) -> (medmesh_protocol::identity::Verified<Version>, Vec<u8>) {
    let mut bytes = Vec::new();
    let payload = update::encode_f32(params, &mut bytes);
    let signed = key.sign(Version {
        experiment: "heart-disease".into(),
        model,
        round,
        author: key.id(),
        samples: 100,
        degree: 3,
        parents: vec![],
        metrics: BTreeMap::new(),
        payload,
    });
    (signed, bytes)
}

fn version(key: &Keypair, model: Digest, round: u64, value: f32) -> Vec<u8> {
    let (signed, _) = signed_version(key, model, round, &[value; DIM]);
    Message::Announce(signed.signed().clone()).to_bytes()
}

fn report(key: &Keypair, model: ContentId) -> Vec<u8> {
    let signed = key.sign(Report {
        model,
        validator: key.id(),
        dataset: Dataset {
            name: "made up".into(),
            site: "nowhere".into(),
            country: "US".into(),
            description: "a report nobody should count".into(),
        },
        samples: 1000,
        metrics: BTreeMap::from([(
            "auc".to_owned(),
            Metric {
                value: 0.99,
                low: None,
                high: None,
            },
        )]),
        issued_at_ms: 0,
    });
    Message::Report(signed.signed().clone()).to_bytes()
}

/// The same message with its variant index written the long way (`251, v, 0` instead of `v`):
/// other bytes, so another gossip message id, for the same value.
fn reencode(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![bytes[0], 251, bytes[1], 0];
    out.extend_from_slice(&bytes[2..]);
    assert_eq!(
        Message::from_bytes(&out, wire::MAX_GOSSIP),
        Err(wire::DecodeError::NonCanonical)
    );
    out
}

/// An announcement-looking message of `len` bytes (the version byte, the variant, junk).
fn oversized(len: usize) -> Vec<u8> {
    let mut out = version(&Keypair::from_seed([6; 32]), Digest::default(), 1, 0.0);
    out.resize(len, 0x42);
    out
}

fn flip_last(mut bytes: Vec<u8>) -> Vec<u8> {
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // inside the signature
    bytes
}

/// Runs a rogue until its script is published and `linger` has passed, answering every payload
/// request with junk. Returns how many messages it published.
async fn run_rogue(
    rogue: Rogue,
    roster: Roster,
    bootstrap: Vec<libp2p::Multiaddr>,
    honest: usize,
    linger: Duration,
) -> usize {
    let config = NetworkConfig {
        listen: vec![
            format!("/ip4/127.0.0.1/tcp/{}", rogue.port)
                .parse()
                .expect("addr"),
        ],
        bootstrap,
        mdns: false,
        ..NetworkConfig::default()
    };
    let mut swarm = network::build_swarm(&rogue.key, &config, &roster).expect("rogue swarm");
    let topic = network::topic(&roster.mesh);
    let mut subscribed = 0;
    let mut script = rogue.script.into_iter();
    let mut next = script.next();
    let mut due: Option<tokio::time::Instant> = None;
    let mut published = 0;
    let mut end: Option<tokio::time::Instant> = None;
    loop {
        if subscribed >= honest && due.is_none() {
            if let Some((pause, _)) = &next {
                due = Some(tokio::time::Instant::now() + *pause);
            } else if end.is_none() {
                end = Some(tokio::time::Instant::now() + linger);
            }
        }
        let wake = due
            .or(end)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Subscribed { .. })) => {
                    subscribed += 1;
                }
                SwarmEvent::Behaviour(network::Event::Payload(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                })) => {
                    let junk = Response::Payload(Bytes::from(vec![0x55; DIM * 4]));
                    let _ = swarm.behaviour_mut().payload.send_response(channel, junk);
                }
                _ => {}
            },
            () = tokio::time::sleep_until(wake) => {
                if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
                    return published;
                }
                if let Some((_, bytes)) = next.take() {
                    if swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes.clone()).is_ok() {
                        published += 1;
                        next = script.next();
                    } else {
                        next = Some((Duration::from_millis(100), bytes));
                    }
                    due = None;
                }
            }
        }
    }
}

/// The four honest hospitals' outcomes, once they all finished.
fn honest_outcomes(
    everyone: &[&LocalNode],
    children: &mut Children,
) -> Vec<medmesh_node::node::Outcome> {
    mesh::wait_for_outcomes(
        everyone,
        children,
        &[0, 1, 2, 3],
        Instant::now() + Duration::from_secs(400),
        |line| eprintln!("{line}"),
    )
    .expect("the honest hospitals finish")
}

fn free_port() -> u16 {
    medmesh_lab::mesh::free_port().expect("a free port")
}

#[test]
fn attacks_by_members_and_strangers_are_refused_counted_and_harmless() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let options = options(dir, 15);
    let honest = ["cleveland", "hungarian", "switzerland", "va"]
        .map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let model = ModelSpec::Logistic { inputs: 13 }.digest().expect("digest");
    let outsider = Keypair::from_seed([200; 32]);
    let key = |n: u8| Keypair::from_seed([n; 32]);
    let ms = Duration::from_millis;

    let forger = key(1);
    let payload_liar = key(2);
    let flooder = key(3);
    let equivocator = key(4);
    let reporter = key(5);
    let replayer = key(6);
    let oversizer = key(7);
    let replayed = version(&replayer, model, 1, 0.5);
    let rogues = vec![
        Rogue {
            name: "replayer",
            script: vec![
                (ms(500), replayed.clone()),
                (ms(300), version(&replayer, model, 3, 0.5)),
                (ms(300), reencode(&replayed)),
            ],
            key: replayer,
            port: free_port(),
        },
        Rogue {
            name: "oversizer",
            // Within gossipsub's frame limit (which leaves room for framing), over the wire
            // limit: refused by the peer as too large. (Anything bigger is dropped by gossipsub
            // itself: neither the rogue's nor a node's will frame it.)
            script: vec![(ms(500), oversized(wire::MAX_GOSSIP + 200))],
            key: oversizer,
            port: free_port(),
        },
        Rogue {
            name: "forger",
            script: vec![
                (ms(500), flip_last(version(&forger, model, 1, 0.5))),
                (ms(300), version(&outsider, model, 1, 0.5)),
            ],
            key: forger,
            port: free_port(),
        },
        Rogue {
            name: "payload-liar",
            // Announces like a member every round; serves junk when asked.
            script: (1..=15)
                .map(|r| (ms(700), version(&payload_liar, model, r, 0.5)))
                .collect(),
            key: payload_liar,
            port: free_port(),
        },
        Rogue {
            name: "flooder",
            script: (100..300)
                .map(|r| (ms(2), version(&flooder, model, r, 0.5)))
                .collect(),
            key: flooder,
            port: free_port(),
        },
        Rogue {
            name: "equivocator",
            script: vec![
                (ms(500), version(&equivocator, model, 2, 0.5)),
                (ms(200), version(&equivocator, model, 2, -0.5)),
            ],
            key: equivocator,
            port: free_port(),
        },
        Rogue {
            name: "reporter",
            script: vec![
                (ms(500), report(&reporter, ContentId([9; 32]))),
                (ms(200), flip_last(report(&reporter, ContentId([8; 32])))),
                (ms(200), report(&outsider, ContentId([7; 32]))),
            ],
            key: reporter,
            port: free_port(),
        },
    ];

    // Everyone on the genesis roster, signed by all (the rogues were admitted in good faith).
    let mut members: Vec<Member> = honest
        .iter()
        .map(|n| n.member("US", Role::Hospital).expect("member"))
        .collect();
    members.extend(rogues.iter().map(Rogue::member));
    let mut genesis =
        SignedRoster::new(Roster::genesis("heart-disease-mesh", 5, members).expect("genesis"));
    for n in &honest {
        genesis.sign(&n.key);
    }
    for r in &rogues {
        genesis.sign(&r.key);
    }
    let roster = genesis.roster().clone();
    let genesis_path = dir.join("roster.json");
    write_roster(&genesis_path, &genesis).expect("write genesis");

    let spec = MeshSpec {
        options: &options,
        model: ModelSpec::Logistic { inputs: 13 },
        budget: options.budget(medmesh_learning::data::Task::Binary),
        experiment: "heart-disease",
        genesis: &genesis_path,
    };
    let everyone: Vec<&LocalNode> = honest.iter().collect();
    let mut children = Children::default();
    for (i, node) in honest.iter().enumerate() {
        let mut config = node.config(&spec, i, 3, &everyone).expect("config");
        // Start when the honest hospitals are there; the rogues join when they like.
        config.min_peers = Some(3);
        node.write_config(&config).expect("write config");
        children.set(i, node.spawn(common::exe()).expect("spawn"));
    }

    // The rogues run in this process.
    let bootstrap: Vec<libp2p::Multiaddr> = honest
        .iter()
        .map(|n| n.address().expect("address").parse().expect("multiaddr"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let attacks: Vec<_> = rogues
        .into_iter()
        .map(|rogue| {
            runtime.spawn(run_rogue(
                rogue,
                roster.clone(),
                bootstrap.clone(),
                honest.len(),
                Duration::from_secs(8),
            ))
        })
        .collect();

    // A stranger writes garbage to a node's libp2p port.
    common::wait_for(
        "cleveland's node to listen",
        Duration::from_secs(60),
        || honest[0].status().map(|_| ()),
    );
    {
        use std::io::Write;
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", honest[0].port)).expect("connect");
        let _ = stream.write_all(&[0xde; 4096]);
        let _ = stream.flush();
    }

    let outcomes = honest_outcomes(&everyone, &mut children);
    let published: Vec<usize> = attacks
        .into_iter()
        .map(|a| runtime.block_on(a).expect("rogue task"))
        .collect();
    assert!(published.iter().all(|p| *p > 0), "{published:?}");

    // The honest mesh trained as if nothing happened.
    for o in &outcomes {
        assert_eq!(Some(o.rounds), options.rounds, "{}", o.site);
        eprintln!("{}: rejected {:?}", o.site, o.rejections);
    }
    let mean = outcomes.iter().map(accuracy).sum::<f64>() / 4.0;
    assert!(mean >= 0.70, "mean accuracy under attack {mean}");
    let distance = mesh::max_relative_distance(&outcomes);
    assert!(
        distance <= 1e-3,
        "hospitals disagree under attack: {distance}"
    );

    // Every kind of attack was refused and counted by reason.
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outcomes {
        for (reason, count) in &o.rejections {
            *total.entry(reason.clone()).or_default() += count;
        }
    }
    for reason in [
        "bad_signature",
        "not_member",
        "equivocation",
        "rate_limited",
        "unknown_model",
        "payload_mismatch",
        "non_canonical",
        "too_large",
    ] {
        assert!(
            total.get(reason).is_some_and(|c| *c > 0),
            "no {reason} in {total:?}"
        );
    }
    // Nothing of the rogues' was merged: each hospital's lineage holds honest authors only is
    // checked by the equal final models above; the stranger's garbage was refused at the door.
    // The metrics must be readable: a failed read fails the test rather than skipping this.
    let text = honest[0]
        .metrics()
        .expect("the hospital's /metrics while it lingers");
    let refused = text
        .lines()
        .find_map(|l| l.strip_prefix("medmesh_connections_refused_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused >= 1, "garbage connection not refused:\n{text}");
}

/// The poisoned model a rogue member announces every round: the shared start minus ten times
/// the update an honest round of training makes from it (Cleveland's data, the mesh's own
/// training settings), computed by the real training worker.
fn poisoned_model(config: &medmesh_node::config::NodeConfig) -> Vec<f32> {
    use medmesh_learning::data::Dataset;
    use medmesh_learning::frame::Setup;
    use medmesh_node::worker::Worker;

    let dataset = Dataset::load(&config.data.schema).expect("dataset");
    let site = dataset.site("cleveland").expect("cleveland");
    let mut worker = Worker::start_program(&common::exe().with_file_name("medmesh-train"))
        .expect("the training worker");
    let built = worker
        .build(&Setup {
            spec: config.model.clone(),
            training: config.training.clone(),
            init_seed: config.init_seed,
            data: site.train.clone(),
        })
        .expect("build");
    let (trained, _) = worker
        .train(&built.init, config.training.local_steps)
        .expect("train");
    built
        .init
        .iter()
        .zip(&trained)
        .map(|(start, after)| start - 10.0 * (after - start))
        .collect()
}

/// A member that follows the honest mesh round by round and announces `poison` as its model
/// for every round in `rounds` (a well-formed, correctly signed version, served on request),
/// until `stop`. Returns how many versions it announced and how many payload requests it
/// answered.
async fn run_poisoner(
    key: Keypair,
    port: u16,
    roster: Roster,
    bootstrap: Vec<libp2p::Multiaddr>,
    poison: Vec<f32>,
    rounds: std::ops::RangeInclusive<u64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    let config = NetworkConfig {
        listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr")],
        bootstrap,
        mdns: false,
        ..NetworkConfig::default()
    };
    let mut swarm = network::build_swarm(&key, &config, &roster).expect("poisoner swarm");
    let topic = network::topic(&roster.mesh);
    let model = ModelSpec::Logistic { inputs: 13 }.digest().expect("digest");
    let mut payloads: BTreeMap<ContentId, Bytes> = BTreeMap::new();
    let mut announced = std::collections::BTreeSet::new();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut served = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Message { message, .. })) => {
                    let Ok(Message::Announce(signed)) = Message::from_bytes(&message.data, wire::MAX_GOSSIP) else {
                        continue;
                    };
                    let Ok(version) = signed.verify() else { continue };
                    // Its own version for that round and, ahead of the honest members, for
                    // the next: there when they start gathering, like theirs.
                    for round in [version.round, version.round + 1] {
                        if !rounds.contains(&round) || !announced.insert(round) {
                            continue;
                        }
                        let (signed, bytes) = signed_version(&key, model, round, &poison);
                        payloads.insert(signed.id(), Bytes::from(bytes));
                        pending.push(Message::Announce(signed.signed().clone()).to_bytes());
                    }
                }
                SwarmEvent::Behaviour(network::Event::Payload(request_response::Event::Message {
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                })) => {
                    let answer = match payloads.get(&request) {
                        Some(bytes) => {
                            served += 1;
                            Response::Payload(bytes.clone())
                        }
                        None => Response::NotFound,
                    };
                    let _ = swarm.behaviour_mut().payload.send_response(channel, answer);
                }
                _ => {}
            },
            _ = tick.tick() => {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return (announced.len(), served);
                }
                pending.retain(|bytes| {
                    swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes.clone()).is_err()
                });
            }
        }
    }
}

/// Four hospitals (trimmed mean trimming one value a side, outlier exclusion on) train `rounds`
/// rounds in `dir`, with `poisoners` (key, rounds it poisons) on the roster beside them; their
/// outcomes, and per poisoner the versions it announced and the payload requests it answered.
fn poisoned_run(
    dir: &std::path::Path,
    rounds: u64,
    poisoners: &[(Keypair, std::ops::RangeInclusive<u64>)],
) -> (Vec<medmesh_node::node::Outcome>, Vec<(usize, usize)>) {
    use medmesh_protocol::aggregate::Rule;
    use medmesh_protocol::peer::Outliers;

    let options = options(dir, rounds);
    let honest = ["cleveland", "hungarian", "switzerland", "va"]
        .map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let ports: Vec<u16> = poisoners.iter().map(|_| free_port()).collect();
    let mut members: Vec<Member> = honest
        .iter()
        .map(|n| n.member("US", Role::Hospital).expect("member"))
        .collect();
    for ((key, _), port) in poisoners.iter().zip(&ports) {
        let rogue = Rogue {
            name: if members.len() == 4 {
                "poisoner-1"
            } else {
                "poisoner-2"
            },
            key: key.clone(),
            port: *port,
            script: vec![],
        };
        members.push(rogue.member());
    }
    let mut genesis =
        SignedRoster::new(Roster::genesis("heart-disease-mesh", 3, members).expect("genesis"));
    for n in &honest {
        genesis.sign(&n.key);
    }
    for (key, _) in poisoners {
        genesis.sign(key);
    }
    let roster = genesis.roster().clone();
    let genesis_path = dir.join("roster.json");
    write_roster(&genesis_path, &genesis).expect("write genesis");
    let spec = common::spec(&options, &genesis_path);
    let everyone: Vec<&LocalNode> = honest.iter().collect();
    let mut first = None;
    let mut children = common::start(&honest, &spec, 3, |_, config| {
        config.experiment.rule = Rule::TrimmedMean { trim: 1 };
        config.experiment.outliers = Some(Outliers::default());
        config.min_peers = Some(3);
        config.retention_rounds = 0;
    });
    if !poisoners.is_empty() {
        first = Some(honest[0].config(&spec, 0, 3, &everyone).expect("config"));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bootstrap: Vec<libp2p::Multiaddr> = honest
        .iter()
        .map(|n| n.address().expect("address").parse().expect("multiaddr"))
        .collect();
    let poison = first.as_ref().map(poisoned_model).unwrap_or_default();
    let attacks: Vec<_> = poisoners
        .iter()
        .zip(&ports)
        .map(|((key, rounds), port)| {
            runtime.spawn(run_poisoner(
                key.clone(),
                *port,
                roster.clone(),
                bootstrap.clone(),
                poison.clone(),
                rounds.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let outcomes = honest_outcomes(&everyone, &mut children);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let activity = attacks
        .into_iter()
        .map(|a| runtime.block_on(a).expect("poisoner task"))
        .collect();
    (outcomes, activity)
}

fn mean_accuracy(outcomes: &[medmesh_node::node::Outcome]) -> f64 {
    outcomes.iter().map(accuracy).sum::<f64>() / outcomes.len() as f64
}

/// A binary outcome's test accuracy.
fn accuracy(outcome: &medmesh_node::node::Outcome) -> f64 {
    outcome.test.accuracy().expect("a binary outcome")
}

/// Two rogue roster members announce well-formed, correctly signed poisoned models (the start
/// minus ten times an honest update) in every round, one after the other (the first for rounds
/// 1 to 10, the second from round 11 on: a trimmed mean that trims one value a side tolerates one
/// bad input per merge, and outlier exclusion removes each poisoner after three rounds). The
/// honest hospitals end within 2 points of the same mesh's accuracy without any attack, run
/// first in this test, and still agree on one model.
#[test]
fn poisoned_models_from_members_leave_accuracy_within_two_points_of_an_attack_free_control() {
    let rounds = 25;
    let control_dir = tempfile::tempdir().expect("tempdir");
    let (control, _) = poisoned_run(control_dir.path(), rounds, &[]);
    let control_accuracy = mean_accuracy(&control);

    let attacked_dir = tempfile::tempdir().expect("tempdir");
    let poisoners = [
        (Keypair::from_seed([31; 32]), 1..=10),
        (Keypair::from_seed([32; 32]), 11..=rounds),
    ];
    let (attacked, activity) = poisoned_run(attacked_dir.path(), rounds, &poisoners);
    let attacked_accuracy = mean_accuracy(&attacked);
    eprintln!(
        "control {control_accuracy:.3}, under poisoning {attacked_accuracy:.3}; poisoners \
         (announced, served) {activity:?}"
    );
    // The attack reached the merge: each poisoner announced and had its model pulled.
    for (announced, served) in &activity {
        assert!(*announced >= 3 && *served >= 1, "{activity:?}");
    }
    for o in &attacked {
        eprintln!(
            "{}: accuracy {:.3}, rejected {:?}",
            o.site,
            accuracy(o),
            o.rejections
        );
        assert_eq!(o.rounds, rounds, "{}", o.site);
    }
    for o in &control {
        eprintln!("control {}: accuracy {:.3}", o.site, accuracy(o));
    }
    // Each poisoner was excluded as a persistent outlier (by every hospital that pulled it in
    // three rounds; which rounds a hospital pulls it in is up to timing), and nobody honest was.
    let poisoner_ids: Vec<_> = poisoners.iter().map(|(k, _)| k.id()).collect();
    for o in &attacked {
        assert!(
            o.flagged.iter().all(|f| poisoner_ids.contains(f)),
            "{} flagged an honest member: {:?}",
            o.site,
            o.flagged
        );
    }
    for id in &poisoner_ids {
        assert!(
            attacked.iter().any(|o| o.flagged.contains(id)),
            "poisoner {id:?} was never flagged"
        );
    }
    for o in &control {
        assert!(
            o.flagged.is_empty(),
            "{} flagged {:?} without an attack",
            o.site,
            o.flagged
        );
    }
    assert!(
        attacked_accuracy >= control_accuracy - 0.02,
        "poisoning cost more than 2 points: {attacked_accuracy:.3} vs {control_accuracy:.3}"
    );
    let distance = mesh::max_relative_distance(&attacked);
    assert!(
        distance <= 1e-3,
        "hospitals disagree under poisoning: {distance}"
    );
    assert!(mesh::max_relative_distance(&control) <= 1e-3);
}
