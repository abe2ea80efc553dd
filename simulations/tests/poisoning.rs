//! Poisoning attacks added to the heart-disease sign-flip scenario (`scenarios/sign-flip.toml`:
//! 20 peers on IID heart-disease rows, fan-out 12): inner-product manipulation (IPM) and label
//! flipping. For each, the plain mean loses accuracy and the robust rules hold within a few
//! points of the attack-free run. Accuracies are means over seeds 42, 43 and 44, so one lucky
//! seed cannot carry a claim; every run is fixed by its seeds.

use std::path::Path;

use medmesh_protocol::aggregate::Rule;
use medmesh_simulations::scenario::{self, AttackKind, Scenario};

fn base(rounds: u64) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/sign-flip.toml");
    let mut s = Scenario::load(&path).expect("scenario loads");
    s.seeds = vec![42, 43, 44];
    s.rounds = rounds;
    s
}

/// Mean over seeds of the final mean honest accuracy of `base` with `rule` and the attack set
/// by `attack`.
fn accuracy(base: &Scenario, rule: Rule, attack: impl FnOnce(&mut Scenario)) -> f64 {
    let mut s = base.clone();
    s.protocol.rule = rule;
    attack(&mut s);
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = scenario::run(&s, dir.path(), |_| {}).expect("runs");
    let expected = (s.attack.fraction * 20.0).floor() as usize;
    assert_eq!(summary.attackers, expected, "{:?}", s.attack);
    summary.mean_accuracy
}

fn clean(base: &Scenario) -> f64 {
    accuracy(base, Rule::Mean, |s| s.attack.fraction = 0.0)
}

#[test]
fn ipm_breaks_the_mean_where_trimmed_mean_and_median_hold() {
    let base = base(15);
    let clean = clean(&base);
    let ipm = |rule: Rule, epsilon: f32| {
        accuracy(&base, rule, |s| {
            s.attack.kind = AttackKind::Ipm;
            s.attack.fraction = 0.2;
            s.attack.epsilon = epsilon;
        })
    };
    // With a fifth of the weight, −ε × the honest mean turns the merged update around once
    // ε > (1 − 0.2) / 0.2 = 4.
    let mean = ipm(Rule::Mean, 5.0);
    let trimmed = ipm(Rule::TrimmedMean { trim: 4 }, 5.0);
    let median = ipm(Rule::Median, 5.0);
    eprintln!(
        "IPM ε = 5: clean {clean:.3}, mean {mean:.3}, trimmed {trimmed:.3}, median {median:.3}"
    );
    assert!(clean > 0.72, "the task is learnt: {clean}");
    assert!(mean < clean - 0.2, "the mean collapses: {mean} vs {clean}");
    assert!(
        trimmed > clean - 0.02,
        "trimmed mean holds: {trimmed} vs {clean}"
    );
    assert!(median > clean - 0.02, "median holds: {median} vs {clean}");
    // The default ε = 0.5 only shrinks the mean's step (0.8 − 0.2 × 0.5 of it): no collapse.
    let gentle = ipm(Rule::Mean, 0.5);
    assert!(gentle > clean - 0.02, "ε = 0.5: {gentle} vs {clean}");
    assert!(gentle > mean + 0.2, "ε = 0.5 {gentle} vs ε = 5 {mean}");
}

#[test]
fn label_flipping_costs_the_mean_more_than_the_robust_rules() {
    let base = base(30);
    let clean = clean(&base);
    let flip = |rule: Rule| {
        accuracy(&base, rule, |s| {
            s.attack.kind = AttackKind::LabelFlip;
            s.attack.fraction = 0.3;
        })
    };
    let mean = flip(Rule::Mean);
    let trimmed = flip(Rule::TrimmedMean { trim: 4 });
    let median = flip(Rule::Median);
    eprintln!(
        "label flip 30 %: clean {clean:.3}, mean {mean:.3}, trimmed {trimmed:.3}, median {median:.3}"
    );
    assert!(mean < clean - 0.03, "the mean loses: {mean} vs {clean}");
    assert!(
        trimmed > clean - 0.03,
        "trimmed mean holds: {trimmed} vs {clean}"
    );
    assert!(median > clean - 0.03, "median holds: {median} vs {clean}");
    assert!(trimmed > mean + 0.01, "trimmed {trimmed} vs mean {mean}");
}
