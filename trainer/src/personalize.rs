//! The personalization search (see `medmesh_learning::personal`): fine-tune the shared model on
//! a hospital's own training rows for the step count that cross-validation on those rows picks.

use medmesh_learning::data::{Table, Task};
use medmesh_learning::learner::{Error, Learner as _, ModelSpec, TrainConfig};
use medmesh_learning::metrics::Evaluation;
use medmesh_learning::personal::{Personalized, Search};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::learner::TchLearner;

/// Salt of the fold assignment's seed (so it differs from the batch order's).
const FOLD_SALT: u64 = 0x7065_7273_6f6e_616c;
/// Multiplier that gives each repeat of the cross-validation its own fold assignment.
const REPEAT_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// Fine-tunes `shared` (a model of `spec`) on `train` for the step count that `search`'s
/// cross-validation picks. Trains without DP: the personalized model is never published.
pub fn personalize(
    spec: &ModelSpec,
    training: &TrainConfig,
    init_seed: u64,
    train: &Table,
    shared: &[f32],
    search: Search,
) -> Result<Personalized, Error> {
    let task = spec.task();
    let criterion = match task {
        Task::Binary => "log_loss",
        Task::Survival => "partial_likelihood",
    };
    if search.every == 0 {
        return Err(Error::Config(
            "personalization: every must be at least 1".into(),
        ));
    }
    let config = TrainConfig {
        dp: None,
        ..training.clone()
    };
    let checkpoints = search.max_steps / search.every;
    // Each fold's held-out score and weight (its rows) per checkpoint, over every repeat.
    let mut held_scores: Vec<Vec<(f64, f64)>> = vec![Vec::new(); checkpoints + 1];
    // The first checkpoint at which some fold's fine-tuning diverged (non-finite predictions).
    let mut diverged_from = checkpoints + 1;
    let mut used_folds = 0;
    for repeat in 0..search.repeats.max(1) as u64 {
        let folds = folds(
            task,
            train,
            search.folds,
            training.seed ^ FOLD_SALT ^ repeat.wrapping_mul(REPEAT_SALT),
        );
        used_folds = folds.len();
        for (k, held) in folds.iter().enumerate() {
            let fit: Vec<usize> = folds
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .flat_map(|(_, f)| f.iter().copied())
                .collect();
            let (fit, held) = (train.select(&fit), train.select(held));
            if fit.is_empty() || held.is_empty() {
                continue;
            }
            let mut learner = TchLearner::new(
                spec.clone(),
                TrainConfig {
                    seed: config.seed.wrapping_add(1 + k as u64 + 100 * repeat),
                    ..config.clone()
                },
                init_seed,
                &fit,
            )?;
            learner.load(shared)?;
            for (c, scores) in held_scores.iter_mut().enumerate() {
                if c > 0 {
                    learner.train(search.every)?;
                }
                let predictions = learner.predict(&held)?;
                if predictions.iter().any(|p| !p.is_finite()) {
                    // Fine-tuning diverged on this fold: no step count from here on is a
                    // candidate.
                    diverged_from = diverged_from.min(c);
                    break;
                }
                if let Some(score) = held_out(task, &predictions, &held)? {
                    scores.push(score);
                }
            }
        }
    }
    let summaries: Vec<(usize, Summary)> = held_scores
        .iter()
        .take(diverged_from)
        .enumerate()
        .filter_map(|(c, folds)| Summary::of(folds).map(|s| (c * search.every, s)))
        .filter(|(_, s)| s.mean.is_finite() && s.standard_error.is_finite())
        .collect();
    let steps = one_standard_error(&summaries);
    let scores = summaries.iter().map(|(k, s)| (*k, s.mean)).collect();
    let mut learner = TchLearner::new(spec.clone(), config, init_seed, train)?;
    learner.load(shared)?;
    if steps > 0 {
        learner.train(steps)?;
    }
    Ok(Personalized {
        params: learner.params(),
        steps,
        criterion: criterion.to_owned(),
        scores,
        folds: used_folds,
    })
}

/// The held-out scores of one step count over the cross-validation's folds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    /// Mean score, each fold weighted by its rows.
    mean: f64,
    /// Standard error of the mean: the folds' standard deviation over the square root of
    /// their number, every repeat's folds counted (as caret's `oneSE` counts the resamples of a
    /// repeated cross-validation; the repeats share rows, so this understates the error a
    /// little and the rule is that much less conservative).
    standard_error: f64,
}

impl Summary {
    /// The summary of `(score, weight)` per fold; `None` without a fold or without weight.
    fn of(folds: &[(f64, f64)]) -> Option<Self> {
        let weight: f64 = folds.iter().map(|(_, w)| w).sum();
        if folds.is_empty() || weight <= 0.0 {
            return None;
        }
        let mean = folds.iter().map(|(s, w)| s * w).sum::<f64>() / weight;
        let n = folds.len() as f64;
        let unweighted = folds.iter().map(|(s, _)| s).sum::<f64>() / n;
        let variance = if folds.len() > 1 {
            folds
                .iter()
                .map(|(s, _)| (s - unweighted).powi(2))
                .sum::<f64>()
                / (n - 1.0)
        } else {
            0.0
        };
        Some(Self {
            mean,
            standard_error: (variance / n).sqrt(),
        })
    }
}

/// The one-standard-error rule (Breiman et al., *Classification and Regression Trees*, 1984;
/// Hastie, Tibshirani and Friedman, *The Elements of Statistical Learning*, §7.10): the fewest
/// steps whose mean held-out score is within one standard error of the best mean. Fewer steps
/// keep more of the shared model, which many hospitals' rows back, so on a flat curve the rule
/// prefers it to the minimum that a few dozen rows happen to favour. 0 without a score.
fn one_standard_error(summaries: &[(usize, Summary)]) -> usize {
    let Some((_, best)) = summaries
        .iter()
        .min_by(|(_, a), (_, b)| a.mean.total_cmp(&b.mean))
    else {
        return 0;
    };
    let bound = best.mean + best.standard_error + 1e-9;
    summaries
        .iter()
        .find(|(_, s)| s.mean <= bound)
        .map_or(0, |(steps, _)| *steps)
}

/// A held-out score (lower is better) and its weight (the rows): the log loss of a classifier's
/// probabilities, or the mean negative Breslow log partial likelihood of a survival model's
/// log-risk scores (smoother than the C-index on folds with a handful of events); `None` for a
/// survival fold without an event.
fn held_out(task: Task, predictions: &[f32], held: &Table) -> Result<Option<(f64, f64)>, Error> {
    Ok(match Evaluation::of(task, predictions, held)? {
        Evaluation::Binary(b) => Some((b.log_loss, b.samples as f64)),
        Evaluation::Survival(_) => partial_likelihood(predictions, &held.time, &held.event)
            .map(|loss| (loss, held.rows as f64)),
    })
}

/// Mean over rows of the negative Breslow log partial likelihood of log-risk scores `risk`:
/// `−Σ_{events i} (rᵢ − log Σ_{j: tⱼ ≥ tᵢ} exp rⱼ) / n`; `None` without an event.
fn partial_likelihood(risk: &[f32], time: &[f32], event: &[f32]) -> Option<f64> {
    let n = risk.len();
    let mut total = 0.0;
    let mut events = 0;
    for i in 0..n {
        if event[i] <= 0.5 {
            continue;
        }
        events += 1;
        // log-sum-exp over the risk set, shifted by its largest score.
        let at_risk = (0..n).filter(|&j| time[j] >= time[i]);
        let top = at_risk
            .clone()
            .map(|j| f64::from(risk[j]))
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = at_risk.map(|j| (f64::from(risk[j]) - top).exp()).sum();
        total -= f64::from(risk[i]) - (top + sum.ln());
    }
    (events > 0 && total.is_finite()).then(|| total / n as f64)
}

/// The rows dealt into at most `k` folds (fewer for a tiny site, at least one row each),
/// stratified by label (binary) or event (survival), in an order seeded by `seed`.
fn folds(task: Task, train: &Table, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let k = k.clamp(2, train.rows.max(2)).min(train.rows.max(1));
    let class = |i: usize| -> bool {
        match task {
            Task::Binary => train.y.get(i).is_some_and(|&y| y > 0.5),
            Task::Survival => train.event.get(i).is_some_and(|&e| e > 0.5),
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..train.rows).collect();
    order.shuffle(&mut rng);
    // Positives first, then negatives, dealt round-robin: each fold gets its share of both.
    order.sort_by_key(|&i| !class(i));
    let mut out = vec![Vec::new(); k];
    for (n, i) in order.into_iter().enumerate() {
        out[n % k].push(i);
    }
    out.retain(|f| !f.is_empty());
    out
}

/// Scores `params` on `table` for `spec`'s task, with the learner `learner`.
pub fn evaluate(
    learner: &mut TchLearner,
    params: &[f32],
    table: &Table,
) -> Result<Evaluation, Error> {
    learner.load(params)?;
    learner.evaluate(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use medmesh_learning::learner::{Init, Optimizer};

    /// Rows whose label follows feature 0 at one site and its opposite sign on feature 1 too,
    /// so a model shared with another population fits this one worse.
    fn site(rows: usize, seed: u64, flip: bool) -> Table {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..rows {
            let a: f32 = rng.random_range(-1.0..1.0);
            let b: f32 = rng.random_range(-1.0..1.0);
            let z = if flip {
                2.0 * a - 3.0 * b + 1.0
            } else {
                2.0 * a + 3.0 * b
            };
            let p = 1.0 / (1.0 + (-3.0 * z).exp());
            x.extend([a, b]);
            y.push(f32::from(rng.random::<f32>() < p));
        }
        Table {
            x,
            rows,
            cols: 2,
            y,
            ..Table::default()
        }
    }

    /// A quick search: 3 folds, once, up to 100 steps in two checkpoints.
    const SMALL: Search = Search {
        folds: 3,
        repeats: 1,
        max_steps: 100,
        every: 50,
    };

    fn config() -> TrainConfig {
        TrainConfig {
            init: Init::Zeros,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            lr: 0.05,
            batch_size: 8,
            local_steps: 50,
            seed: 3,
            ..TrainConfig::default()
        }
    }

    fn accuracy(spec: &ModelSpec, params: &[f32], table: &Table) -> f64 {
        let mut learner = TchLearner::new(spec.clone(), config(), 1, table).expect("builds");
        evaluate(&mut learner, params, table)
            .expect("evaluates")
            .accuracy()
            .expect("binary")
    }

    #[test]
    fn fine_tuning_a_foreign_model_on_own_rows_beats_it_and_keeps_a_fitting_one() {
        let spec = ModelSpec::Logistic { inputs: 2 };
        // The "shared" model: trained on the other population only.
        let other = site(400, 1, false);
        let mut learner = TchLearner::new(spec.clone(), config(), 1, &other).expect("builds");
        learner.train(2000).expect("trains");
        let shared = learner.params();

        let (train, test) = (site(200, 2, true), site(400, 3, true));
        let search = Search {
            folds: 5,
            repeats: 2,
            max_steps: 1000,
            every: 50,
        };
        let personal =
            personalize(&spec, &config(), 1, &train, &shared, search).expect("personalizes");
        let before = accuracy(&spec, &shared, &test);
        let after = accuracy(&spec, &personal.params, &test);
        assert!(personal.steps > 0, "{personal:?}");
        assert_eq!(personal.scores.len(), 21);
        assert!(
            after > before + 0.1,
            "personalized {after} against shared {before}"
        );

        // On the population the shared model was trained for, the search keeps it (or nearly).
        let same = site(200, 4, false);
        let kept = personalize(&spec, &config(), 1, &same, &shared, search).expect("runs");
        let test_same = site(400, 5, false);
        let shared_acc = accuracy(&spec, &shared, &test_same);
        let kept_acc = accuracy(&spec, &kept.params, &test_same);
        assert!(
            kept_acc >= shared_acc - 0.02,
            "{kept_acc} against {shared_acc}"
        );
    }

    #[test]
    fn the_one_standard_error_rule_takes_the_fewest_steps_near_the_best() {
        // Folds' scores per step count: the mean falls from 1.0 to a minimum of 0.5 at 300 steps;
        // the spread over folds gives a standard error of 0.1 there.
        let folds = |mean: f64| {
            [
                (mean - 0.1 * 3f64.sqrt(), 1.0),
                (mean, 1.0),
                (mean + 0.1 * 3f64.sqrt(), 1.0),
            ]
        };
        let curve: Vec<(usize, Summary)> = [1.0, 0.7, 0.58, 0.5, 0.55]
            .iter()
            .enumerate()
            .map(|(c, &m)| (c * 100, Summary::of(&folds(m)).expect("folds")))
            .collect();
        assert!((curve[3].1.standard_error - 0.1).abs() < 1e-9, "{curve:?}");
        assert!((curve[3].1.mean - 0.5).abs() < 1e-9);
        // 0.58 is within 0.5 + 0.1; 0.7 is not.
        assert_eq!(one_standard_error(&curve), 200);
        // Without spread the rule is the plain minimum.
        let exact: Vec<(usize, Summary)> = [1.0, 0.7, 0.58, 0.5, 0.55]
            .iter()
            .enumerate()
            .map(|(c, &m)| (c * 100, Summary::of(&[(m, 2.0), (m, 1.0)]).expect("folds")))
            .collect();
        assert_eq!(one_standard_error(&exact), 300);
        // Weights weigh the mean, not the spread.
        let weighted = Summary::of(&[(1.0, 3.0), (0.0, 1.0)]).expect("folds");
        assert!((weighted.mean - 0.75).abs() < 1e-12);
        assert!((weighted.standard_error - 0.5).abs() < 1e-12);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(one_standard_error(&[]), 0);
    }

    #[test]
    fn non_finite_predictions_are_no_candidate_and_no_error() {
        use rand::Rng;
        // A survival site and a Cox model whose log-risk scores overflow on its rows (weights
        // near the float's limit, features of 2 to 3): every fold's held-out predictions are
        // infinite from the start, so no step count is a candidate and the shared model stays.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let rows = 30;
        let x: Vec<f32> = (0..rows * 2).map(|_| rng.random_range(2.0..3.0)).collect();
        let time: Vec<f32> = (0..rows).map(|_| rng.random_range(1.0..100.0)).collect();
        let event: Vec<f32> = (0..rows).map(|i| f32::from(i % 3 != 0)).collect();
        let train = Table {
            x,
            rows,
            cols: 2,
            time,
            event,
            ..Table::default()
        };
        let spec = ModelSpec::Cox { inputs: 2 };
        let shared = vec![1e38, 1e38];
        let p = personalize(&spec, &config(), 1, &train, &shared, SMALL)
            .expect("overflowing candidates are dropped, not an error");
        assert_eq!(p.steps, 0, "{p:?}");
        assert_eq!(p.params, shared);
        assert!(p.scores.is_empty(), "{p:?}");
    }

    #[test]
    fn the_partial_likelihood_matches_a_hand_computation() {
        // Times 1, 2, 3; events at 1 and 3; scores 0, ln 2, 0. Risk sets: {all} for t = 1
        // (sum 1 + 2 + 1 = 4), {row 3} for t = 3 (sum 1). Loss = −[(0 − ln 4) + (0 − 0)] / 3.
        let loss = partial_likelihood(&[0.0, 2f32.ln(), 0.0], &[1.0, 2.0, 3.0], &[1.0, 0.0, 1.0])
            .expect("events");
        assert!((loss - 4f64.ln() / 3.0).abs() < 1e-6, "{loss}");
        assert_eq!(
            partial_likelihood(&[0.0, 1.0], &[1.0, 2.0], &[0.0, 0.0]),
            None
        );
    }

    #[test]
    fn folds_are_stratified_and_cover_every_row_once() {
        let table = site(30, 9, false);
        let folds = folds(Task::Binary, &table, 5, 1);
        assert_eq!(folds.len(), 5);
        let mut all: Vec<usize> = folds.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..30).collect::<Vec<_>>());
        let positives = table.positives();
        for f in &folds {
            let p = f.iter().filter(|&&i| table.y[i] > 0.5).count();
            assert!(
                p * 5 >= positives.saturating_sub(5) && p * 5 <= positives + 5,
                "{p} of {positives}"
            );
        }
        // A site with three rows gets three folds of one.
        assert_eq!(folds_len(3), 3);
    }

    fn folds_len(rows: usize) -> usize {
        folds(Task::Binary, &site(rows, 1, false), 5, 1).len()
    }

    #[test]
    fn an_mlp_or_any_spec_personalizes_without_dp() {
        let spec = ModelSpec::Mlp {
            inputs: 2,
            hidden: vec![4],
        };
        let train = site(60, 2, true);
        let mut c = config();
        c.init = Init::Auto;
        c.dp = Some(medmesh_learning::privacy::DpConfig {
            noise_multiplier: 1.0,
            max_grad_norm: 1.0,
            delta: 1e-5,
            max_epsilon: Some(0.001),
            seeded_noise: true,
        });
        let learner = TchLearner::new(
            spec.clone(),
            TrainConfig {
                dp: None,
                ..c.clone()
            },
            1,
            &train,
        )
        .expect("builds");
        let shared = learner.params();
        // DP with an ε budget of 0.001 would refuse any step; personalization trains anyway,
        // since the personalized model is never published.
        let p = personalize(&spec, &c, 1, &train, &shared, SMALL).expect("personalizes");
        assert_eq!(p.params.len(), shared.len());
    }
}
