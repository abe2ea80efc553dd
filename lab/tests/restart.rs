//! `kill -9` of one hospital's process mid-run, once while it trains and once while it is
//! pulling a multi-megabyte payload: the others keep training; every signed item the killed node had
//! stored is still in its store and verifies (a payload cut off mid-transfer is never stored);
//! restarted on the same config, it resumes from its checkpoint (never signing a second version
//! for a round it announced), rejoins, and the mesh ends together.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{data, options, wait_for};
use medmesh_lab::mesh::{self, LocalNode};
use medmesh_learning::learner::ModelSpec;
use medmesh_node::admin;
use medmesh_protocol::identity::ContentId;
use medmesh_record::store::Store;

/// The ids of every version, payload and roster version in a store, after checking that every
/// record verifies.
fn audit(node: &LocalNode) -> (BTreeSet<ContentId>, BTreeSet<ContentId>, usize) {
    let store = Store::open(&node.store()).expect("the store opens after the kill");
    let audit = store.verify_all().expect("readable");
    assert!(audit.is_clean(), "{}: {:?}", node.name, audit.faults);
    let versions: BTreeSet<ContentId> = store
        .versions()
        .expect("versions")
        .iter()
        .map(|v| v.id())
        .collect();
    let payloads = versions
        .iter()
        .filter(|id| store.payload(id).expect("payload").is_some())
        .copied()
        .collect();
    (versions, payloads, audit.rosters)
}

#[test]
fn a_node_killed_mid_run_keeps_its_store_resumes_and_rejoins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // 2,000 local steps a round at a 20× smaller rate, not 100: training must be most of a
    // round for the kill to land inside it (with the store off the event loop, a 100-step round
    // takes ~50 ms, most of it not training, and a poll every 200 ms can miss every training
    // phase of the run); the same rate × steps keeps the hospitals' drift per round the same.
    let mut options = options(dir, 15);
    options.steps = Some(2000);
    options.lr = options.lr.map(|lr| lr / 20.0);
    let nodes = ["cleveland", "hungarian", "switzerland", "va"]
        .map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let all: Vec<&LocalNode> = nodes.iter().collect();
    let genesis = common::genesis(dir, &all);
    let spec = common::spec(&options, &genesis);
    // Retention off: what is checked is that nothing stored before the kill is lost.
    let mut children = common::start(&nodes, &spec, 3, |_, config| config.retention_rounds = 0);

    // Kill Hungary's process with SIGKILL while it trains, a few rounds in.
    let victim = 1;
    let killed_at = wait_for(
        "hungarian training in its fourth round or later",
        Duration::from_secs(180),
        || {
            nodes[victim]
                .status()
                .filter(|s| s.round >= 4 && s.phase == admin::Phase::Training)
                .map(|s| s.round)
        },
    );
    children.kill(victim);
    let (versions, payloads, rosters) = audit(&nodes[victim]);
    assert!(
        versions.len() >= 3,
        "only {} versions stored by round {killed_at}",
        versions.len()
    );
    assert_eq!(rosters, 1);

    // The others go on without it (their rounds close on the timeout).
    let others_round = |nodes: &[LocalNode]| {
        [0, 2, 3]
            .iter()
            .map(|&i| nodes[i].status().map_or(0, |s| s.round))
            .min()
            .unwrap_or(0)
    };
    wait_for(
        "the others to move on two rounds",
        Duration::from_secs(120),
        || (others_round(&nodes) >= killed_at + 2).then_some(()),
    );

    // Restarted on the same config and store, it resumes and rejoins.
    children.set(victim, nodes[victim].spawn(common::exe()).expect("restart"));
    let indices = [0, 1, 2, 3];
    let outcomes = mesh::wait_for_outcomes(
        &all,
        &mut children,
        &indices,
        Instant::now() + Duration::from_secs(400),
        |line| eprintln!("{line}"),
    )
    .expect("every node finishes");
    for outcome in &outcomes {
        assert_eq!(Some(outcome.rounds), options.rounds, "{}", outcome.site);
        assert!(
            !outcome.rejections.contains_key("equivocation"),
            "{}: {:?}",
            outcome.site,
            outcome.rejections
        );
    }
    let mean = outcomes
        .iter()
        .map(|o| o.test.accuracy().expect("a binary outcome"))
        .sum::<f64>()
        / 4.0;
    assert!(mean >= 0.70, "mean accuracy {mean}");
    let distance = mesh::max_relative_distance(&outcomes);
    assert!(
        distance <= 1e-3,
        "hospitals disagree after the restart: {distance}"
    );
    let log = common::log(&nodes[victim].log());
    assert!(log.contains("resuming from the stored checkpoint"), "{log}");

    // Let the processes exit (linger) or kill them; then every item stored before the kill is
    // still there and verifies, and nothing the others hold is broken either.
    drop(children);
    let (after_versions, after_payloads, after_rosters) = audit(&nodes[victim]);
    assert!(
        versions.is_subset(&after_versions),
        "versions lost after the restart: {:?}",
        versions.difference(&after_versions).collect::<Vec<_>>()
    );
    assert!(payloads.is_subset(&after_payloads), "payloads lost");
    assert_eq!(after_rosters, 1);
    for (i, node) in nodes.iter().enumerate() {
        if i != victim {
            let _ = audit(node);
        }
    }
}

#[test]
fn a_node_killed_while_pulling_a_payload_stores_no_part_of_it_and_recovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut options = options(dir, 12);
    options.steps = Some(10);
    let sites = ["cleveland", "hungarian", "switzerland"];
    let nodes = sites.map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let all: Vec<&LocalNode> = nodes.iter().collect();
    let genesis = common::genesis(dir, &all);
    let spec = common::spec(&options, &genesis);
    // A 13-2048-1024-1 network: 2.1M parameters, an 8.5 MB payload per version, so each pull
    // takes long enough to be caught in flight.
    let model = ModelSpec::Mlp {
        inputs: 13,
        hidden: vec![2048, 1024],
    };
    // Retention off, as above.
    let mut children = common::start(&nodes, &spec, 2, |_, config| {
        config.model = model.clone();
        config.retention_rounds = 0;
    });

    // Kill Cleveland's process the moment its /metrics show a payload arriving and less than
    // half of it there (a finished transfer no longer counts): the rest, over 4 MB, takes
    // milliseconds more to cross, while the kill follows the read within a fraction of one. Two
    // pulls of tens of milliseconds each per round: polled every few milliseconds, one is caught
    // within a round or two.
    let payload_bytes: usize = 4 * model
        .layout()
        .expect("layout")
        .iter()
        .map(|(_, shape)| shape.iter().product::<i64>() as usize)
        .sum::<usize>();
    let victim = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    let (killed_at, arriving) = loop {
        let round = nodes[victim].status().map_or(0, |s| s.round);
        let arriving = if round >= 2 {
            nodes[victim]
                .metrics()
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("medmesh_payload_bytes_receiving "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0)
        } else {
            0
        };
        if arriving > 0 && arriving < payload_bytes / 2 {
            children.kill(victim);
            break (round, arriving);
        }
        assert!(
            Instant::now() < deadline && nodes[victim].outcome().is_none(),
            "cleveland was never caught receiving a payload"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let (versions, payloads, _) = audit(&nodes[victim]);
    assert!(!versions.is_empty(), "nothing stored by round {killed_at}");
    // The pull that was cut off left nothing behind: every stored payload is whole (the audit
    // checked each against its signed digest); a version whose pull never finished is stored
    // without one.
    eprintln!(
        "killed in round {killed_at} with {arriving} of a {payload_bytes}-byte payload \
         arrived: {} versions stored, {} without their payload",
        versions.len(),
        versions.len() - payloads.len()
    );

    children.set(victim, nodes[victim].spawn(common::exe()).expect("restart"));
    let outcomes = mesh::wait_for_outcomes(
        &all,
        &mut children,
        &[0, 1, 2],
        Instant::now() + Duration::from_secs(400),
        |line| eprintln!("{line}"),
    )
    .expect("every node finishes");
    for outcome in &outcomes {
        assert_eq!(Some(outcome.rounds), options.rounds, "{}", outcome.site);
        assert!(
            !outcome.rejections.contains_key("equivocation"),
            "{}: {:?}",
            outcome.site,
            outcome.rejections
        );
    }
    let distance = mesh::max_relative_distance(&outcomes);
    assert!(
        distance <= 1e-3,
        "hospitals disagree after the restart: {distance}"
    );
    let log = common::log(&nodes[victim].log());
    assert!(log.contains("resuming from the stored checkpoint"), "{log}");

    drop(children);
    let (after_versions, after_payloads, _) = audit(&nodes[victim]);
    assert!(versions.is_subset(&after_versions), "versions lost");
    assert!(payloads.is_subset(&after_payloads), "payloads lost");
    for node in &nodes[1..] {
        let _ = audit(node);
    }
}

/// A node restarted after its last round has nothing to run: it exits at once, successfully,
/// and leaves its results file as the finished run wrote it.
#[test]
fn a_finished_node_restarted_exits_and_keeps_its_results() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let options = options(dir, 3);
    let nodes = ["cleveland", "hungarian"]
        .map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let all: Vec<&LocalNode> = nodes.iter().collect();
    let genesis = common::genesis(dir, &all);
    let spec = common::spec(&options, &genesis);
    let mut children = common::start(&nodes, &spec, 1, |_, _| {});
    let outcomes = mesh::wait_for_outcomes(
        &all,
        &mut children,
        &[0, 1],
        Instant::now() + Duration::from_secs(300),
        |line| eprintln!("{line}"),
    )
    .expect("both finish");
    assert!(outcomes.iter().all(|o| o.rounds == 3));
    drop(children);
    let results = std::fs::read(nodes[0].result()).expect("results");

    let mut restarted = std::process::Command::new(common::exe())
        .arg("run")
        .arg("--config")
        .arg(nodes[0].config_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("restart");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = restarted.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = restarted.kill();
            panic!("the finished node is still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    if let Some(mut stderr) = restarted.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut log);
    }
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("nothing left to run"), "{log}");
    assert_eq!(
        std::fs::read(nodes[0].result()).expect("results"),
        results,
        "the results file was rewritten"
    );
}
