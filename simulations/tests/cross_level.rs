//! Two-level averaging on the national pilot's shape (`scenarios/cross-level.toml`): 16
//! hospitals in 4 medical centres on the heart-disease data, fast links inside a centre and the
//! WAN between centres. Against the same mesh with flat gossip (`cross-level-flat.toml`, same
//! seeds) it sends at most a third of the bytes between centres at the same accuracy, and a
//! Byzantine hospital inside one centre is flagged by its centre and kept out of the models.
//! Every run is fixed by its seeds.

use std::path::Path;

use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::peer::Outliers;
use medmesh_simulations::attack::{AttackKind, Placement};
use medmesh_simulations::scenario::{self, Scenario, Summary};

fn load(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    Scenario::load(&path).expect("scenario loads")
}

fn run(scenario: &Scenario) -> Summary {
    let dir = tempfile::tempdir().expect("tempdir");
    scenario::run(scenario, dir.path(), |line| eprintln!("{line}")).expect("runs")
}

#[test]
fn two_level_sends_a_third_of_flat_wan_bytes_at_flat_accuracy() {
    let two_level = run(&load("cross-level.toml"));
    let flat = run(&load("cross-level-flat.toml"));
    assert_eq!(two_level.seeds, flat.seeds, "the same seeds");
    assert_eq!(two_level.peers, 16);
    eprintln!(
        "WAN bytes per run: two-level {:.0}, flat {:.0} ({:.2}x); mean accuracy two-level {:.4}, \
         flat {:.4}",
        two_level.wan_bytes,
        flat.wan_bytes,
        flat.wan_bytes / two_level.wan_bytes,
        two_level.mean_accuracy,
        flat.mean_accuracy
    );
    assert!(
        two_level.wan_bytes > 0.0 && two_level.wan_bytes * 3.0 <= flat.wan_bytes,
        "two-level WAN bytes {} not at most a third of flat's {}",
        two_level.wan_bytes,
        flat.wan_bytes
    );
    assert!(
        (two_level.mean_accuracy - flat.mean_accuracy).abs() <= 0.005,
        "mean accuracy two-level {} against flat {}: more than half a point apart",
        two_level.mean_accuracy,
        flat.mean_accuracy
    );
    // Both learn: FLamby's FedAvg reaches 0.685 on these sites.
    assert!(two_level.mean_accuracy > 0.70 && flat.mean_accuracy > 0.70);
}

#[test]
fn a_byzantine_hospital_inside_a_centre_is_flagged_by_its_centre() {
    let mut clean = load("cross-level.toml");
    clean.seeds.truncate(3);
    clean.protocol.rule = Rule::TrimmedMean { trim: 1 };
    clean.protocol.outliers = Some(Outliers::default());
    let mut attacked = clean.clone();
    // One hospital of 16 (the first: inside the first centre) sends sign-flipped models.
    attacked.attack.kind = AttackKind::SignFlip;
    attacked.attack.fraction = 1.0 / 16.0;
    attacked.attack.placement = Placement::First;
    let clean = run(&clean);
    let attacked = run(&attacked);
    assert_eq!(attacked.attackers, 1);
    let seeds = attacked.seeds.len() as u64;
    // Its three centre mates merge it every round: each flags it, in every seed.
    assert!(
        attacked.flagged_attackers >= 3 * seeds,
        "the attacker flagged by {} (peer, seed) pairs, fewer than its centre's 3 per seed",
        attacked.flagged_attackers
    );
    assert_eq!(attacked.flagged_honest, 0, "no honest hospital is flagged");
    // The honest hospitals learn as in the clean run (the same hospitals compared).
    let honest = |summary: &Summary| {
        let (mut sum, mut n) = (0.0, 0.0);
        for (seed, peers) in attacked.peer_accuracy.iter().enumerate() {
            for (peer, accuracy) in peers.iter().enumerate() {
                if accuracy.is_some() {
                    sum += summary.peer_accuracy[seed][peer].expect("an honest peer");
                    n += 1.0;
                }
            }
        }
        sum / n
    };
    let (with, without) = (honest(&attacked), honest(&clean));
    eprintln!("honest accuracy {with:.4} under attack, {without:.4} without");
    assert!(
        with >= without - 0.02,
        "honest accuracy {with} under attack, {without} without: more than 2 points lost"
    );
}
