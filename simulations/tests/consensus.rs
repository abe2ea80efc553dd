//! Averaging-only consensus of 1,024 real protocol peers: how fast they agree depends on the
//! topology as the mixing matrices' spectral gaps predict — a ring is slowest, the exponential
//! graph much faster, and Epidemic-Learning sampling of 7 fresh peers per round fastest.

use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::peer::{Config, Peer};
use medmesh_simulations::topology::Topology;
use medmesh_simulations::{AveragingOnly, Network, Setup, Sim, Training, genesis, keys};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 1024;
const ROUNDS: u64 = 8;

fn consensus_after(topology: &Topology) -> f64 {
    let k = keys(N, 1);
    let chain = genesis(&k).expect("roster");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let inits: Vec<Vec<f32>> = (0..N)
        .map(|_| (0..4).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let neighbours = topology.neighbours(N, 3).expect("graph");
    let (rule, fanout) = match topology {
        Topology::EpidemicSampling { s } => (Rule::Mean, *s),
        _ => (Rule::MetropolisHastings, 1),
    };
    let config = Config {
        experiment: "consensus".into(),
        rule,
        fanout,
        max_rounds: Some(ROUNDS),
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
            samples: vec![100; N],
            network: Network::default(),
            training: Training {
                min_ms: 10.0,
                max_ms: 50.0,
            },
            seed: 4,
            neighbours,
            gossip_reach: Some(2 * fanout),
        },
        AveragingOnly,
    )
    .expect("simulation");
    let start = sim.consensus_distance();
    sim.run_until(std::time::Duration::from_secs(3600))
        .expect("runs");
    assert!(
        sim.peers().iter().all(Peer::is_finished),
        "{topology:?}: every peer finishes"
    );
    sim.consensus_distance() / start
}

#[test]
fn convergence_follows_the_spectral_gap_ring_exponential_epidemic() {
    let ring = consensus_after(&Topology::Ring);
    let exponential = consensus_after(&Topology::Exponential);
    let epidemic = consensus_after(&Topology::EpidemicSampling { s: 7 });
    assert!(ring > 0.3, "a ring barely mixes in {ROUNDS} rounds: {ring}");
    assert!(
        exponential < 0.5 * ring,
        "exponential {exponential} vs ring {ring}"
    );
    assert!(
        epidemic < 0.5 * exponential,
        "epidemic {epidemic} vs exponential {exponential}"
    );
}
