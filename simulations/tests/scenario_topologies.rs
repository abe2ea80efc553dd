//! Consensus studies from scenario files alone: `scenarios/consensus-ring.toml`,
//! `consensus-exponential.toml` and `consensus-el.toml` (256 peers, averaging only, differing only
//! in `[topology]`) agree in the order their mixing matrices' spectral gaps predict — a ring is
//! slowest, the exponential graph much faster, Epidemic-Learning sampling of 7 peers fastest —
//! with accuracy left empty and the consensus distance as the metric.

use std::path::Path;

use medmesh_simulations::scenario::{self, Scenario, Summary, TrainingKind};
use medmesh_simulations::topology::Topology;

const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");

/// Runs a scenario file; its summary and its `rounds.csv`.
fn run(name: &str) -> (Scenario, Summary, String) {
    let scenario = Scenario::load(&Path::new(SCENARIOS).join(name)).expect("scenario loads");
    assert!(scenario.warnings.is_empty(), "{:?}", scenario.warnings);
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = scenario::run(&scenario, dir.path(), |line| eprintln!("{line}")).expect("runs");
    let csv = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("rounds.csv");
    let copied = std::fs::read_to_string(dir.path().join("scenario.toml")).expect("copied");
    assert_eq!(
        scenario.source.as_ref().map(|s| s.text.as_str()),
        Some(copied.as_str()),
        "a scenario without a data schema is copied byte for byte"
    );
    (scenario, summary, csv)
}

/// Final consensus distance relative to the initial one, mean over seeds.
fn reduction(summary: &Summary) -> f64 {
    let ratios: Vec<f64> = summary
        .final_consensus
        .iter()
        .zip(&summary.initial_consensus)
        .map(|(end, start)| end / start)
        .collect();
    ratios.iter().sum::<f64>() / ratios.len() as f64
}

#[test]
fn consensus_from_scenario_files_follows_the_spectral_gaps() {
    let (ring_scenario, ring, ring_csv) = run("consensus-ring.toml");
    let (_, exponential, _) = run("consensus-exponential.toml");
    let (el_scenario, el, _) = run("consensus-el.toml");

    assert_eq!(ring_scenario.topology, Some(Topology::Ring));
    assert_eq!(ring_scenario.training.kind, TrainingKind::AveragingOnly);
    assert_eq!(
        ring_scenario.protocol.rule,
        medmesh_protocol::aggregate::Rule::MetropolisHastings,
        "a fixed graph averages with Metropolis–Hastings weights by default"
    );
    assert_eq!(
        el_scenario.protocol.rule,
        medmesh_protocol::aggregate::Rule::Mean
    );
    for summary in [&ring, &exponential, &el] {
        assert_eq!(summary.peers, 256);
        assert!(
            summary.initial_consensus.iter().all(|c| *c > 0.1),
            "peers start apart: {:?}",
            summary.initial_consensus
        );
        assert!(
            summary.mean_accuracy.is_nan(),
            "no accuracy in averaging-only runs"
        );
        assert_eq!(summary.failed_merges, 0, "{}", summary.name);
    }
    // Accuracy cells are empty; every round of every seed has a row.
    let rows: Vec<&str> = ring_csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2 * 10, "{ring_csv}");
    for row in &rows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!((cells[3], cells[4]), ("", ""), "{row}");
        assert!(cells[5].parse::<f64>().is_ok(), "consensus measured: {row}");
    }

    // The gaps reported are topology.rs's, and ordered ring < exponential < sampling.
    let gap = |s: &Summary| s.spectral_gap.expect("a topology has a gap");
    assert_eq!(
        gap(&ring),
        Topology::Ring.spectral_gap(256, 0).expect("gap"),
        "the ring is the same graph whatever the seed"
    );
    assert!(
        (gap(&el)
            - Topology::EpidemicSampling { s: 7 }
                .spectral_gap(256, 0)
                .expect("gap"))
        .abs()
            < 1e-12
    );
    assert!(
        gap(&ring) < gap(&exponential) && gap(&exponential) < gap(&el),
        "gaps: ring {}, exponential {}, sampling {}",
        gap(&ring),
        gap(&exponential),
        gap(&el)
    );

    eprintln!(
        "spectral gaps: ring {:.3e}, exponential {:.3}, sampling {:.3}",
        gap(&ring),
        gap(&exponential),
        gap(&el)
    );
    // Consensus follows them: the larger the gap, the closer the peers end.
    let (ring, exponential, el) = (reduction(&ring), reduction(&exponential), reduction(&el));
    eprintln!(
        "consensus distance, end / start: ring {ring:.3e}, exponential {exponential:.3e}, sampling {el:.3e}"
    );
    // (Measured: ring 0.31, exponential 4.8e-3, sampling 2.4e-5.)
    assert!(ring > 0.2, "a ring barely mixes in 10 rounds: {ring}");
    assert!(
        exponential < 0.5 * ring,
        "exponential {exponential} vs ring {ring}"
    );
    assert!(
        el < 0.5 * exponential,
        "sampling {el} vs exponential {exponential}"
    );
}
