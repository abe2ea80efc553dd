//! A hospital whose disk takes 2 s for every fsync (a redb storage backend that sleeps in each
//! `sync_data`; a commit makes one or more) keeps its event loop going while its writes are
//! pending: it judges gossip and answers payload requests, and the other members' rounds go
//! on. The slow node runs in this process, on that backend; the three others are `medmesh run`
//! processes; a probe (a roster member with the observer role, speaking the node's own libp2p
//! stack) asks the slow node for its newest payload while an fsync is pending.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{data, options, wait_for};
use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use medmesh_lab::mesh::LocalNode;
use medmesh_node::admin;
use medmesh_node::network::{self, NetworkConfig, Response};
use medmesh_node::node::write_roster;
use medmesh_protocol::roster::{Role, Roster, SignedRoster};
use medmesh_record::store::Store;

/// How long every fsync of the slow disk takes.
const DELAY: Duration = Duration::from_secs(2);

/// A file whose every `sync_data` takes [`DELAY`], and which says when one is under way.
#[derive(Debug)]
struct SlowDisk {
    file: redb::backends::FileBackend,
    /// Set while an fsync is sleeping.
    pending: Arc<AtomicBool>,
    /// Fsyncs finished.
    syncs: Arc<AtomicU64>,
}

impl redb::StorageBackend for SlowDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, std::io::Error> {
        self.file.read(offset, len)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.file.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> Result<(), std::io::Error> {
        self.pending.store(true, Ordering::SeqCst);
        std::thread::sleep(DELAY);
        let result = self.file.sync_data(eventual);
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.pending.store(false, Ordering::SeqCst);
        result
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.file.write(offset, data)
    }
}

/// A counter of the node's `/metrics` page.
fn counter(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

/// Counters of the slow node, sampled while one fsync is pending.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    sync: u64,
    gossip_in: u64,
    served: u64,
    at: Option<Instant>,
}

#[test]
fn a_slow_disk_does_not_stall_the_event_loop() {
    // Builds `medmesh` and the worker the in-process node starts, if needed.
    common::exe();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let rounds = 8;
    let options = options(dir, rounds);
    let nodes = ["cleveland", "hungarian", "switzerland", "va"]
        .map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let all: Vec<&LocalNode> = nodes.iter().collect();
    let probe = LocalNode::new(dir, "probe", data("cleveland", None)).expect("probe");
    let mut members: Vec<_> = all
        .iter()
        .map(|n| n.member("US", Role::Hospital).expect("member"))
        .collect();
    members.push(probe.member("US", Role::Observer).expect("member"));
    let mut roster =
        SignedRoster::new(Roster::genesis("slow-disk-mesh", 3, members).expect("genesis"));
    for key in all.iter().map(|n| &n.key).chain([&probe.key]) {
        roster.sign(key);
    }
    let genesis = dir.join("roster.json");
    write_roster(&genesis, &roster).expect("writes the roster");
    let spec = common::spec(&options, &genesis);

    // Cleveland runs here, on the slow disk.
    let slow = &nodes[0];
    let config = slow.config(&spec, 0, 3, &all).expect("config");
    let pending = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU64::new(0));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(slow.store())
        .expect("store file");
    let backend = SlowDisk {
        file: redb::backends::FileBackend::new(file).expect("backend"),
        pending: pending.clone(),
        syncs: syncs.clone(),
    };
    let store = Store::open_with_backend(&slow.store(), backend).expect("opens on the slow disk");
    let node = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(medmesh_node::node::run_with_store(
                config,
                store,
                std::future::pending(),
            ))
    });
    let children = common::start(&nodes[1..], &spec, 3, |_, _| {});
    let done = Arc::new(AtomicBool::new(false));
    let prober = std::thread::spawn({
        let (probe, slow) = (probe.clone(), slow.clone());
        let (roster, pending, syncs, done) = (
            roster.roster().clone(),
            pending.clone(),
            syncs.clone(),
            done.clone(),
        );
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(probe_payloads(
                    &probe, &slow, &roster, &pending, &syncs, &done,
                ))
        }
    });

    // Sample the slow node's counters during its pending fsyncs: two samples inside the same
    // fsync that differ show the loop handling input while the disk was busy.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut gossip_during, mut served_during, mut windows, mut pending_seconds) =
        (0u64, 0u64, 0u64, 0.0);
    let endpoint = slow.endpoint().expect("endpoint");
    let mut first: Option<Sample> = None;
    let started = Instant::now();
    while !node.is_finished() && started.elapsed() < Duration::from_secs(400) {
        std::thread::sleep(Duration::from_millis(100));
        if !pending.load(Ordering::SeqCst) {
            first = None;
            continue;
        }
        let sync = syncs.load(Ordering::SeqCst);
        let Ok(body) = runtime.block_on(admin::get(&endpoint, "/metrics")) else {
            continue;
        };
        let page = String::from_utf8_lossy(&body);
        let now = Sample {
            sync,
            gossip_in: counter(&page, "medmesh_gossip_messages_in_total"),
            served: counter(&page, "medmesh_payload_requests_served_total"),
            at: Some(Instant::now()),
        };
        // Still inside the same fsync after the request was answered.
        if !pending.load(Ordering::SeqCst) || syncs.load(Ordering::SeqCst) != sync {
            first = None;
            continue;
        }
        match first {
            Some(f) if f.sync == sync => {
                gossip_during += now.gossip_in - f.gossip_in;
                served_during += now.served - f.served;
                pending_seconds +=
                    (now.at.expect("sampled") - f.at.expect("sampled")).as_secs_f64();
                first = Some(now);
            }
            _ => {
                windows += 1;
                first = Some(now);
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let probed = prober.join().expect("the probe");
    let outcome = node
        .join()
        .expect("the in-process node")
        .expect("the slow node runs to the end")
        .expect("an outcome");
    let others: Vec<_> = nodes[1..]
        .iter()
        .map(|n| {
            wait_for("the others' outcomes", Duration::from_secs(120), || {
                n.outcome()
            })
        })
        .collect();
    drop(children);
    eprintln!(
        "slow disk: {} fsyncs of {DELAY:?}; sampled {windows} pending fsyncs over {pending_seconds:.1} s: \
         {gossip_during} gossip messages judged and {served_during} payload requests served \
         while an fsync was pending; the probe's payload requests: {probed:?}; slow node {} \
         rounds, accuracy {:.3}; others {:?}",
        syncs.load(Ordering::SeqCst),
        outcome.rounds,
        outcome.test.accuracy().unwrap_or(f64::NAN),
        others
            .iter()
            .map(|o| (o.rounds, o.test.accuracy()))
            .collect::<Vec<_>>()
    );
    assert!(
        syncs.load(Ordering::SeqCst) >= 10,
        "the slow disk was hardly used"
    );
    assert!(
        gossip_during > 0,
        "no gossip judged while an fsync was pending (the loop waited on the disk)"
    );
    assert!(
        probed.answered_within >= 3,
        "payload requests were not answered while an fsync was pending: {probed:?}"
    );
    for other in &others {
        assert_eq!(other.rounds, rounds, "another member's rounds stopped");
        assert!(other.test.accuracy().is_some_and(|a| a >= 0.6), "{other:?}");
    }
    assert_eq!(outcome.rounds, rounds, "the slow node finished its rounds");
    let store = Store::open(&slow.store()).expect("reopens");
    let audit = store.verify_all().expect("audit");
    assert!(audit.is_clean(), "{:?}", audit.faults);
}

/// What the probe saw.
#[derive(Debug, Default)]
struct Probed {
    /// Requests sent while an fsync was pending.
    sent: u64,
    /// Answered with the payload before that same fsync ended.
    answered_within: u64,
    /// Answered with the payload after it ended.
    answered_after: u64,
    /// Answered "not found" or failed.
    missed: u64,
}

/// Connects to `slow` as `probe` and, whenever one of its fsyncs is pending, asks it for the
/// payload of its newest own version; until `done`.
async fn probe_payloads(
    probe: &LocalNode,
    slow: &LocalNode,
    roster: &Roster,
    pending: &AtomicBool,
    syncs: &AtomicU64,
    done: &AtomicBool,
) -> Probed {
    let config = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("address")],
        bootstrap: vec![slow.address().expect("address").parse().expect("address")],
        mdns: false,
        ..NetworkConfig::default()
    };
    let mut swarm = network::build_swarm(&probe.key, &config, roster).expect("the probe's swarm");
    let target = network::peer_id(&slow.key.id()).expect("peer id");
    let endpoint = slow.endpoint().expect("endpoint");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut probed = Probed::default();
    let mut in_flight: Option<(request_response::OutboundRequestId, u64)> = None;
    let mut newest = None;
    let mut asked_status = Instant::now() - Duration::from_secs(1);
    while !done.load(Ordering::SeqCst) {
        tokio::select! {
            event = swarm.select_next_some() => {
                let SwarmEvent::Behaviour(network::Event::Payload(event)) = event else {
                    continue;
                };
                let (id, found) = match event {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } => (request_id, matches!(response, Response::Payload(_))),
                    request_response::Event::OutboundFailure { request_id, .. } => (request_id, false),
                    _ => continue,
                };
                let Some((_, sync)) = in_flight.take_if(|(r, _)| *r == id) else {
                    continue;
                };
                let same = pending.load(Ordering::SeqCst) && syncs.load(Ordering::SeqCst) == sync;
                match (found, same) {
                    (true, true) => probed.answered_within += 1,
                    (true, false) => probed.answered_after += 1,
                    (false, _) => probed.missed += 1,
                }
            }
            _ = tick.tick() => {
                if asked_status.elapsed() >= Duration::from_millis(500) {
                    asked_status = Instant::now();
                    if let Ok((status, _)) = admin::fetch_status(&endpoint).await {
                        newest = status.own_version.or(newest);
                    }
                }
                let sync = syncs.load(Ordering::SeqCst);
                if in_flight.is_none()
                    && pending.load(Ordering::SeqCst)
                    && swarm.is_connected(&target)
                    && let Some(id) = newest
                {
                    let request = swarm.behaviour_mut().payload.send_request(&target, id);
                    in_flight = Some((request, sync));
                    probed.sent += 1;
                }
            }
        }
    }
    probed
}
