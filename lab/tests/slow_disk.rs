//! A hospital whose disk takes 2 s for every fsync (a redb storage backend that sleeps in each
//! `sync_data`; a commit makes one or more) keeps its event loop going while its writes are
//! pending: it judges gossip and serves payloads, and the other members' rounds go on. The
//! slow node runs in this process, on that backend; the three others are `medmesh run`
//! processes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{data, options, wait_for};
use medmesh_lab::mesh::LocalNode;
use medmesh_node::admin;
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
    let genesis = common::genesis(dir, &all);
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

    // Sample the slow node's counters during its pending fsyncs: two samples inside the same
    // fsync that differ show the loop handling input while the disk was busy.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut gossip_during, mut served_during, mut windows, mut pending_seconds) = (0, 0, 0, 0.0);
    let mut first: Option<Sample> = None;
    let started = Instant::now();
    while !node.is_finished() && started.elapsed() < Duration::from_secs(400) {
        std::thread::sleep(Duration::from_millis(100));
        if !pending.load(Ordering::SeqCst) {
            first = None;
            continue;
        }
        let sync = syncs.load(Ordering::SeqCst);
        let Ok(body) = runtime.block_on(admin::get(slow.admin, "/metrics")) else {
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
         while an fsync was pending; slow node {} rounds, accuracy {:.3}; others {:?}",
        syncs.load(Ordering::SeqCst),
        outcome.rounds,
        outcome.test.accuracy,
        others
            .iter()
            .map(|o| (o.rounds, o.test.accuracy))
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
        served_during > 0,
        "no payload request served while an fsync was pending"
    );
    for other in &others {
        assert_eq!(other.rounds, rounds, "another member's rounds stopped");
        assert!(other.test.accuracy >= 0.6, "{other:?}");
    }
    assert_eq!(outcome.rounds, rounds, "the slow node finished its rounds");
    let store = Store::open(&slow.store()).expect("reopens");
    let audit = store.verify_all().expect("audit");
    assert!(audit.is_clean(), "{:?}", audit.faults);
}
