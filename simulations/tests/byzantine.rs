//! Byzantine members among 64 real protocol peers on the synthetic heart-disease-like task
//! (`scenarios/byzantine-64.toml`): robust merge rules keep honest accuracy where the plain mean
//! collapses, and attackers on the wire (forged signatures, stale replays, equivocation) are
//! refused by the honest peers' own checks and do no harm. Every run is fixed by its seed.

use std::path::Path;

use medmesh_protocol::aggregate::{Rule, Tau};
use medmesh_simulations::scenario::{self, AttackKind, Scenario, Split, Summary};

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/byzantine-64.toml");

fn base() -> Scenario {
    let s = Scenario::load(Path::new(SCENARIO)).expect("scenario loads");
    match &s.data.split {
        Split::Synthetic(spec) => assert_eq!(spec.peers, 64),
        other => panic!("byzantine-64 is synthetic, not {other:?}"),
    }
    assert_eq!(s.attack.kind, AttackKind::SignFlip);
    assert_eq!(s.attack.fraction, 0.2);
    s
}

fn run(base: &Scenario, rule: Rule, kind: AttackKind) -> Summary {
    let mut s = base.clone();
    s.protocol.rule = rule;
    s.attack.kind = kind;
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = scenario::run(&s, dir.path(), |_| {}).expect("runs");
    let expected = if kind == AttackKind::None { 0 } else { 12 };
    assert_eq!(summary.attackers, expected, "{kind:?}");
    summary
}

fn adaptive(byzantine_fraction: f32) -> Rule {
    Rule::ClippedGossip {
        tau: Tau::Adaptive { byzantine_fraction },
    }
}

#[test]
fn robust_rules_keep_honest_accuracy_where_the_mean_collapses() {
    let base = base();
    let clean = run(&base, Rule::Mean, AttackKind::None).mean_accuracy;
    let mean = run(&base, Rule::Mean, AttackKind::SignFlip).mean_accuracy;
    let trimmed = run(&base, Rule::TrimmedMean { trim: 6 }, AttackKind::SignFlip).mean_accuracy;
    // Each peer merges 16 of 63 others, 12 of them attackers: it samples more than 4 attackers
    // often enough that a radius chosen for a fraction of 0.3 (4 clipped) lets them through;
    // 0.5 (8 clipped) holds.
    let clipped = run(&base, adaptive(0.5), AttackKind::SignFlip).mean_accuracy;
    assert!(clean > 0.75, "the task is learnt: {clean}");
    assert!(
        mean < clean - 0.10,
        "plain mean collapses: {mean} vs {clean}"
    );
    assert!(
        trimmed > clean - 0.02,
        "trimmed mean holds: {trimmed} vs {clean}"
    );
    assert!(
        clipped > clean - 0.02,
        "ClippedGossip holds: {clipped} vs {clean}"
    );
}

#[test]
fn attackers_on_the_wire_are_refused_and_do_no_harm() {
    // The task is learnt within a round or two; fewer rounds keep the test quick.
    let base = Scenario {
        rounds: 8,
        ..base()
    };
    let rule = base.protocol.rule.clone();
    let clean = run(&base, rule.clone(), AttackKind::None);
    assert!(clean.rejections.is_empty(), "{:?}", clean.rejections);

    let forged = run(&base, rule.clone(), AttackKind::ForgedSignature);
    let refused = forged.rejections.get("bad_signature").copied().unwrap_or(0);
    // Every attacker forges an announcement with each of its own (one per round); each forgery
    // reaches 24 peers, and every one of them refuses it.
    let reach = base.protocol.gossip_reach.expect("a bounded reach") as u64;
    assert!(
        refused >= reach * 12 * base.rounds && refused.is_multiple_of(reach),
        "forgeries refused: {:?}",
        forged.rejections
    );
    assert_eq!(forged.rejections.len(), 1, "{:?}", forged.rejections);

    let replay = run(&base, rule.clone(), AttackKind::StaleReplay);
    assert!(
        replay.rejections.get("replay").copied().unwrap_or(0) > 0,
        "replays refused: {:?}",
        replay.rejections
    );

    let equivocation = run(&base, rule, AttackKind::Equivocation);
    assert!(
        equivocation
            .rejections
            .get("equivocation")
            .copied()
            .unwrap_or(0)
            > 0,
        "{:?}",
        equivocation.rejections
    );
    assert!(
        equivocation.flagged_attackers > 0,
        "honest peers flag the equivocating authors"
    );

    for (name, attacked) in [
        ("forged", &forged),
        ("replay", &replay),
        ("equivocation", &equivocation),
    ] {
        assert_eq!(
            attacked.flagged_honest, 0,
            "{name}: no honest author flagged"
        );
        assert!(
            attacked.mean_accuracy > clean.mean_accuracy - 0.02,
            "{name}: {} vs {}",
            attacked.mean_accuracy,
            clean.mean_accuracy
        );
    }
}
