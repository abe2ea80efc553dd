//! The built-in demo: a mesh of hospitals averaging their models with no coordinator while an
//! outsider tries to inject forged updates. It shows the protocol at work in a few seconds:
//! consensus distance falling round by round, and every hostile message refused with its reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::identity::{Digest, Keypair};
use medmesh_protocol::peer::{Config, Peer};
use medmesh_protocol::update::{self, Version};
use medmesh_protocol::wire::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{AveragingOnly, Network, Setup, Sim, Training, genesis, keys};

/// Demo settings (the `medmesh-sim demo` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Number of hospitals.
    #[arg(long, default_value_t = 16)]
    pub peers: usize,
    /// Versions pulled per round (Epidemic-Learning sampling).
    #[arg(long, default_value_t = 3)]
    pub fanout: usize,
    /// Rounds to run.
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Parameters per model.
    #[arg(long, default_value_t = 10_000)]
    pub dim: usize,
    /// Seed of everything random in the run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Runs the demo and prints a table to `out`.
pub fn run(options: &Options, out: &mut impl Write) -> anyhow::Result<Summary> {
    anyhow::ensure!(options.peers >= 2, "a mesh needs at least 2 peers");
    anyhow::ensure!(options.dim >= 1, "models need at least one parameter");
    let started = Instant::now();
    let k = keys(options.peers, options.seed);
    let chain = genesis(&k)?;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let inits: Vec<Vec<f32>> = (0..options.peers)
        .map(|_| {
            (0..options.dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        })
        .collect();
    let samples: Vec<u64> = (0..options.peers)
        .map(|_| rng.random_range(50..500))
        .collect();
    let config = Config {
        experiment: "demo".into(),
        rule: Rule::Mean,
        fanout: options.fanout,
        max_rounds: Some(options.rounds),
        round_timeout: Duration::from_secs(10),
        fetch_timeout: Duration::from_secs(5),
        // Plain averaging: consensus is what is measured.
        outer: None,
        ..Config::default()
    };
    let mut sim = Sim::new(
        Setup {
            keys: &k,
            chain: &chain,
            config,
            inits,
            samples,
            network: Network::default(),
            training: Training::default(),
            seed: options.seed,
            neighbours: None,
            gossip_reach: None,
        },
        AveragingOnly,
    )?;
    inject_forgeries(&mut sim, options, &mut rng);

    writeln!(
        out,
        "medmesh demo: {} hospitals, Epidemic-Learning sampling of {} per round, {} parameters, seed {}",
        options.peers, options.fanout, options.dim, options.seed
    )?;
    writeln!(
        out,
        "{:>5} {:>12} {:>18} {:>10} {:>12} {:>9}",
        "round", "virtual s", "consensus dist.", "gossip", "payload MB", "rejected"
    )?;
    let start_distance = sim.consensus_distance();
    writeln!(
        out,
        "{:>5} {:>12.2} {:>18.6e} {:>10} {:>12.1} {:>9}",
        0, 0.0, start_distance, 0, 0.0, 0
    )?;
    let mut shown = 0;
    let limit = Duration::from_secs(24 * 3600);
    while !sim.peers().iter().all(Peer::is_finished) && sim.step()? && sim.now() <= limit {
        let done = sim.min_completed();
        if done > shown {
            shown = done;
            let s = sim.stats();
            writeln!(
                out,
                "{:>5} {:>12.2} {:>18.6e} {:>10} {:>12.1} {:>9}",
                done,
                sim.now().as_secs_f64(),
                sim.consensus_distance(),
                s.gossip_messages,
                s.payload_bytes as f64 / 1e6,
                s.rejections.values().sum::<u64>()
            )?;
        }
    }
    let stats = sim.stats().clone();
    let final_distance = sim.consensus_distance();
    writeln!(out, "rejected by reason: {:?}", stats.rejections)?;
    writeln!(
        out,
        "consensus distance {start_distance:.4e} -> {final_distance:.4e} in {} rounds ({:.2} s virtual, {:.2} s wall)",
        shown,
        sim.now().as_secs_f64(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(Summary {
        rounds: shown,
        start_distance,
        final_distance,
        rejections: stats.rejections.values().sum(),
        models_digest: digest_models(sim.models()),
    })
}

/// What a demo run ends with (for tests and reproducibility checks).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Rounds every peer completed.
    pub rounds: u64,
    /// Consensus distance at the start.
    pub start_distance: f64,
    /// Consensus distance at the end.
    pub final_distance: f64,
    /// Hostile messages rejected.
    pub rejections: u64,
    /// BLAKE3 over every peer's final parameters, to compare runs.
    pub models_digest: Digest,
}

fn digest_models(models: &[Vec<f32>]) -> Digest {
    let mut bytes = Vec::new();
    for m in models {
        bytes.extend(m.iter().flat_map(|v| v.to_le_bytes()));
    }
    Digest::of("medmesh demo models", &bytes)
}

/// An outsider (not on the roster) announces huge "updates" each round, and replays a forged
/// copy of them claiming to come from hospital 0.
fn inject_forgeries<L: crate::Learner>(sim: &mut Sim<L>, options: &Options, rng: &mut ChaCha8Rng) {
    let outsider = Keypair::from_seed(rng.random());
    let victim = sim.peers()[0].id();
    let mut bytes = Vec::new();
    for round in 1..=options.rounds.min(10) {
        let payload = update::encode_f32(&vec![1e6; options.dim], &mut bytes);
        let version = Version {
            experiment: "demo".into(),
            model: Digest::default(),
            round,
            author: outsider.id(),
            samples: 1_000_000,
            degree: 1,
            parents: vec![],
            metrics: BTreeMap::new(),
            payload,
        };
        let own = outsider.sign(version.clone());
        let forged = outsider.sign(Version {
            author: victim,
            ..version
        });
        let at = Duration::from_millis(300 * round);
        let to = rng.random_range(0..options.peers);
        let from = rng.random_range(0..options.peers);
        sim.inject(
            at,
            to,
            from,
            Bytes::from(Message::Announce(own.signed().clone()).to_bytes()),
        );
        sim.inject(
            at,
            to,
            from,
            Bytes::from(Message::Announce(forged.signed().clone()).to_bytes()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Options {
        Options {
            peers: 8,
            fanout: 3,
            rounds: 12,
            dim: 64,
            seed: 7,
        }
    }

    #[test]
    fn demo_converges_and_rejects_the_outsider() {
        let mut out = Vec::new();
        let summary = run(&small(), &mut out).expect("demo runs");
        assert_eq!(summary.rounds, 12);
        assert!(
            summary.final_distance < 1e-3 * summary.start_distance,
            "{} -> {}",
            summary.start_distance,
            summary.final_distance
        );
        assert_eq!(
            summary.rejections,
            2 * 10,
            "two forgeries per round for 10 rounds"
        );
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("not_member"), "{text}");
    }

    #[test]
    fn same_seed_same_run() {
        let a = run(&small(), &mut Vec::new()).expect("runs");
        let b = run(&small(), &mut Vec::new()).expect("runs");
        assert_eq!(a, b);
        let c = run(&Options { seed: 8, ..small() }, &mut Vec::new()).expect("runs");
        assert_ne!(a.models_digest, c.models_digest);
    }
}
