//! Faults of the simulated network on 16 real protocol peers: a partition into two halves that
//! heals, churning peers that come back with their state, and slow trainers — and that a run
//! with all of them still replays byte for byte from its seed.

use std::path::Path;
use std::time::Duration;

use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::peer::{Config, Peer};
use medmesh_simulations::scenario::{self, Scenario};
use medmesh_simulations::{
    AveragingOnly, Churn, Network, Partition, Setup, Sim, Training, genesis, keys,
};

const N: usize = 16;
const FAULTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/faults.toml");

/// Averaging-only peers whose two halves start at +1 and -1 (so the global average is 0).
fn averaging(network: Network, rounds: u64) -> Sim<AveragingOnly> {
    let k = keys(N, 7);
    let chain = genesis(&k).expect("roster");
    let inits = (0..N)
        .map(|i| vec![if i < N / 2 { 1.0 } else { -1.0 }; 4])
        .collect();
    let config = Config {
        experiment: "faults".into(),
        rule: Rule::Mean,
        fanout: 3,
        max_rounds: Some(rounds),
        round_timeout: Duration::from_secs(5),
        fetch_timeout: Duration::from_secs(2),
        // Plain averaging: consensus is what is measured.
        outer: None,
        ..Config::default()
    };
    Sim::new(
        Setup {
            keys: &k,
            chain: &chain,
            config,
            inits,
            samples: vec![100; N],
            network,
            training: Training::default(),
            seed: 11,
            neighbours: None,
            gossip_reach: None,
        },
        AveragingOnly,
    )
    .expect("simulation")
}

#[test]
fn partition_keeps_each_half_training_and_the_heal_restores_consensus() {
    let heal = 4.0;
    let mut sim = averaging(
        Network {
            partition: vec![Partition {
                at: 0.0,
                heal,
                groups: 2,
            }],
            ..Network::default()
        },
        30,
    );
    sim.run_until(Duration::from_secs_f64(heal)).expect("runs");
    let rounds_at_heal = sim.min_completed();
    let at_heal = sim.consensus_distance();
    assert!(
        rounds_at_heal >= 3,
        "both halves keep training: {rounds_at_heal} rounds"
    );
    // Each half agreed on its own side: every model is still about 2 away from the average.
    assert!(at_heal > 1.5, "halves apart at the heal: {at_heal}");
    assert!(sim.stats().faults > 0, "messages were cut");
    sim.run_until(Duration::from_secs(3600)).expect("runs");
    assert!(sim.peers().iter().all(Peer::is_finished));
    let after = sim.consensus_distance();
    assert!(
        after < at_heal / 10.0,
        "consensus after the heal {after} vs at the heal {at_heal}"
    );
}

#[test]
fn churned_peers_are_offline_then_finish_with_everyone() {
    let mut sim = averaging(
        Network {
            churn: Some(Churn {
                fraction: 0.125,
                down: 1.0,
                every: 3.0,
                ..Churn::default()
            }),
            ..Network::default()
        },
        20,
    );
    assert_eq!(sim.churned().len(), 2);
    sim.run_until(Duration::from_secs(3600)).expect("runs");
    assert!(sim.stats().faults > 0, "offline peers missed messages");
    assert!(sim.peers().iter().all(Peer::is_finished), "all finish");
    assert!(
        sim.consensus_distance() < 0.1,
        "{}",
        sim.consensus_distance()
    );
}

/// The faults scenario with its features switched on as `edit` says, run into a fresh folder:
/// the last `rounds.csv` row as (round, virtual seconds, mean accuracy, min accuracy).
fn run_faults(edit: impl FnOnce(&mut Scenario)) -> (u64, f64, f64, f64) {
    let mut s = Scenario::load(Path::new(FAULTS)).expect("loads");
    s.timing.stragglers = None;
    s.network.partition.clear();
    s.network.churn = None;
    edit(&mut s);
    let dir = tempfile::tempdir().expect("tempdir");
    scenario::run(&s, dir.path(), |_| {}).expect("runs");
    let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("csv");
    let last: Vec<&str> = csv.lines().last().expect("a row").split(',').collect();
    let num = |i: usize| last[i].parse::<f64>().expect("number");
    (num(1) as u64, num(2), num(3), num(4))
}

#[test]
fn churned_peers_end_at_the_final_round_as_accurate_as_the_others() {
    let (round, _, mean, min) = run_faults(|s| {
        s.network.churn = Some(Churn {
            fraction: 0.125,
            down: 1.0,
            every: 3.0,
            ..Churn::default()
        });
    });
    assert_eq!(round, 20, "every peer reaches the last round");
    assert!(min > mean - 0.03, "lowest {min} vs mean {mean}");
}

#[test]
fn stragglers_cost_virtual_time_not_accuracy() {
    let (_, base_seconds, base_accuracy, _) = run_faults(|_| {});
    let (round, seconds, accuracy, _) = run_faults(|s| {
        s.timing.stragglers = Some(medmesh_simulations::Stragglers {
            fraction: 0.25,
            slowdown: 4.0,
        });
    });
    assert_eq!(round, 20);
    assert!(
        seconds > 1.2 * base_seconds,
        "virtual time {seconds} vs {base_seconds}"
    );
    assert!(
        (accuracy - base_accuracy).abs() < 0.02,
        "accuracy {accuracy} vs {base_accuracy}"
    );
}

#[test]
fn faults_replay_byte_for_byte_from_the_seed() {
    let s = Scenario::load(Path::new(FAULTS)).expect("loads");
    assert!(s.timing.stragglers.is_some() && s.network.churn.is_some());
    assert_eq!(s.network.partition.len(), 1);
    let outputs: Vec<(String, String)> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().expect("tempdir");
            scenario::run(&s, dir.path(), |_| {}).expect("runs");
            let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("output");
            // Wall time is the one thing a run measures outside the simulation.
            let summary = read("summary.json")
                .lines()
                .filter(|l| !l.contains("wall_seconds") && !l.contains("per_second"))
                .collect::<Vec<_>>()
                .join("\n");
            (read("rounds.csv"), summary)
        })
        .collect();
    assert_eq!(outputs[0], outputs[1]);
    let last = outputs[0].0.lines().last().unwrap_or_default();
    assert!(last.starts_with("42,20,"), "ends at round 20: {last}");
}

#[test]
fn runs_finish_when_a_fifth_of_payload_answers_are_lost() {
    let (_, base_seconds, base_accuracy, _) = run_faults(|_| {});
    let mut s = Scenario::load(Path::new(FAULTS)).expect("loads");
    s.timing.stragglers = None;
    s.network.partition.clear();
    s.network.churn = None;
    s.network.payload_loss = 0.2;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lines = Vec::new();
    let summary = scenario::run(&s, dir.path(), |l| lines.push(l.to_owned())).expect("runs");
    let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("csv");
    assert!(
        !csv.contains("not reached"),
        "every peer reaches the last round: {csv}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("ended with every peer past round")),
        "{lines:?}"
    );
    let last: Vec<&str> = csv.lines().last().expect("a row").split(',').collect();
    assert_eq!(last[1], "20", "{csv}");
    // Lost answers are counted as faults, and retried pulls still get most versions.
    assert!(summary.payloads_lost > 0, "{summary:?}");
    assert_eq!(
        summary.faults, summary.payloads_lost,
        "no other fault is on"
    );
    let seconds: f64 = last[2].parse().expect("seconds");
    let accuracy = summary.mean_accuracy;
    eprintln!(
        "payload loss 0.2: {} answers lost, {seconds:.1} s (clean {base_seconds:.1} s), accuracy \
         {accuracy:.3} (clean {base_accuracy:.3})",
        summary.payloads_lost
    );
    assert!(
        (accuracy - base_accuracy).abs() < 0.03,
        "accuracy {accuracy} vs {base_accuracy}"
    );
}
