//! Evaluation metrics: what a partner measures when it validates a model on its own data.
//!
//! The trainer, the `validate` command and the simulator all score models here, so a number a
//! hospital publishes means the same thing whoever computed it: [`binary`] for a classifier
//! (accuracy, balanced accuracy, AUC-ROC, sensitivity, specificity, log-loss), [`auc`] on its own,
//! [`concordance_index`] for survival risk scores ([`survival`] adds the counts), [`Evaluation`]
//! for whichever of the two a model's task calls for, and [`bootstrap`] (classifiers) or
//! [`bootstrap_survival`] (risk, time, event) for a seeded percentile confidence interval around
//! any of them.
//!
//! Inputs come from a model and a data file, so they are checked rather than trusted: lengths must
//! match, labels must be exactly `0.0` or `1.0`, scores must be finite and probabilities lie in
//! `[0, 1]`. The first offending element is reported by index with a typed [`Error`].
//!
//! This module must never panic on, unwrap, silently skip or repair caller data; never do I/O or
//! touch tch; and never use OS randomness — [`bootstrap`] is driven only by its seed, so the same
//! data and seed give the same interval on every machine.

use std::cmp::Ordering;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Table, Task};

/// Probabilities are clamped to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]` before the logarithm so that a
/// single confident mistake costs a large but finite amount (−ln 1e-7 ≈ 16.1).
const LOG_LOSS_EPS: f64 = 1e-7;

/// What is wrong with the inputs of a metric.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Error {
    /// Two inputs that pair up element by element have different lengths.
    #[error("{what} has {found} elements but the scores have {expected}")]
    LengthMismatch {
        /// Which input is the wrong length (`"labels"`, `"time"`, `"event"`).
        what: &'static str,
        /// The length of the scores (the first argument).
        expected: usize,
        /// The length of `what`.
        found: usize,
    },
    /// There are no samples.
    #[error("no samples to evaluate")]
    Empty,
    /// A label or event indicator is neither `0.0` nor `1.0` (NaN included).
    #[error("label {index} is {value}, not 0 or 1")]
    NotBinary {
        /// Position of the element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A score, probability, risk or time is NaN or infinite. Where a function takes two such
    /// inputs, the first is checked completely before the second.
    #[error("value {index} is not a finite number")]
    NotFinite {
        /// Position of the element.
        index: usize,
    },
    /// A probability lies outside `[0, 1]`.
    #[error("probability {index} is {value}, outside [0, 1]")]
    ProbabilityOutOfRange {
        /// Position of the element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The decision threshold is NaN, infinite or outside `[0, 1]`.
    #[error("the decision threshold must be a finite number in [0, 1]")]
    BadThreshold,
    /// The bootstrapped metric has no (finite) value on the full data, e.g. AUC with one class.
    #[error("the metric is undefined on the full data")]
    Undefined,
    /// Fewer than half of the bootstrap resamples (or none at all) gave a finite metric value.
    #[error(
        "only {usable} of {resamples} bootstrap resamples gave a value; at least half, and at least one, are needed"
    )]
    TooFewResamples {
        /// Resamples on which the metric had a finite value.
        usable: usize,
        /// Resamples drawn.
        resamples: usize,
    },
}

/// Metrics of a binary classifier at a threshold (default 0.5 on probabilities).
///
/// A sample is predicted positive when its probability is strictly greater than the threshold
/// (as scikit-learn's `predict` and torchmetrics do), so a probability of exactly 0.5 is negative
/// at the default threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Binary {
    /// Number of samples evaluated.
    pub samples: usize,
    /// Fraction of samples whose prediction matches the label.
    pub accuracy: f64,
    /// Mean of sensitivity and specificity; when one class is absent, the recall of the class that
    /// is present (scikit-learn's `balanced_accuracy_score` does the same).
    pub balanced_accuracy: f64,
    /// Area under the ROC curve of the probabilities (see [`auc`]); `None` when one class is
    /// absent.
    pub auc: Option<f64>,
    /// True-positive rate, TP / (TP + FN); `None` when there are no positive labels.
    pub sensitivity: Option<f64>,
    /// True-negative rate, TN / (TN + FP); `None` when there are no negative labels.
    pub specificity: Option<f64>,
    /// Mean binary cross-entropy in nats, with probabilities clamped to `[1e-7, 1 - 1e-7]`.
    pub log_loss: f64,
}

/// Scores a binary classifier: `probs` in `[0, 1]` (clamped to `[1e-7, 1 - 1e-7]` for log-loss),
/// `labels` 0/1, and a decision `threshold` in `[0, 1]` (a sample is positive when
/// `prob > threshold`).
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::Empty`], [`Error::BadThreshold`], then the first bad
/// probability ([`Error::NotFinite`], [`Error::ProbabilityOutOfRange`]), then the first bad label
/// ([`Error::NotBinary`]).
pub fn binary(probs: &[f32], labels: &[f32], threshold: f32) -> Result<Binary, Error> {
    check_len(probs.len(), labels.len(), "labels")?;
    if probs.is_empty() {
        return Err(Error::Empty);
    }
    if !threshold.is_finite() || !(0.0..=1.0).contains(&threshold) {
        return Err(Error::BadThreshold);
    }
    check_probabilities(probs)?;
    check_binary(labels)?;

    let (mut tp, mut tn, mut fp, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    let mut loss = 0.0f64;
    for (&p, &y) in probs.iter().zip(labels) {
        let positive = is_one(y);
        match (p > threshold, positive) {
            (true, true) => tp += 1,
            (false, false) => tn += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
        }
        let p = f64::from(p).clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
        // ln_1p keeps precision for the ln(1 - p) of small p.
        loss -= if positive { p.ln() } else { (-p).ln_1p() };
    }

    let samples = probs.len();
    let sensitivity = ratio(tp, tp + fn_);
    let specificity = ratio(tn, tn + fp);
    let balanced_accuracy = match (sensitivity, specificity) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        (Some(a), None) | (None, Some(a)) => a,
        // Unreachable for non-empty input: every sample is a positive or a negative.
        (None, None) => return Err(Error::Empty),
    };
    Ok(Binary {
        samples,
        accuracy: (tp + tn) as f64 / samples as f64,
        balanced_accuracy,
        auc: auc_checked(probs, labels),
        sensitivity,
        specificity,
        log_loss: loss / samples as f64,
    })
}

/// AUC-ROC by the Mann–Whitney U statistic with mid-ranks for ties, in O(n log n); `None` if a
/// class is empty.
///
/// Equals the probability that a random positive scores higher than a random negative, a tied
/// pair counting one half — the same number as scikit-learn's `roc_auc_score`. Scores may be any
/// finite values (probabilities, logits); `-0.0` and `0.0` tie. The rank sum is kept in exact
/// integer arithmetic (doubled mid-ranks) until the final division.
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::Empty`], then the first non-finite score
/// ([`Error::NotFinite`]), then the first bad label ([`Error::NotBinary`]).
pub fn auc(scores: &[f32], labels: &[f32]) -> Result<Option<f64>, Error> {
    check_len(scores.len(), labels.len(), "labels")?;
    if scores.is_empty() {
        return Err(Error::Empty);
    }
    check_finite(scores)?;
    check_binary(labels)?;
    Ok(auc_checked(scores, labels))
}

/// [`auc`] on inputs already validated (equal lengths, finite scores, 0/1 labels).
fn auc_checked(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = scores.len();
    let positives = labels.iter().filter(|&&y| is_one(y)).count();
    let negatives = n - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| cmp_finite(scores[a], scores[b]));

    // A tie group at sorted positions start..end holds 1-based ranks start+1 ..= end; its mid-rank
    // doubled, start + 1 + end, is an integer, so the rank sum is exact.
    let mut rank_sum_2: u128 = 0;
    let mut start = 0;
    while start < n {
        let score = scores[order[start]];
        let mut end = start + 1;
        while end < n && scores[order[end]] == score {
            end += 1;
        }
        let group_positives = order[start..end]
            .iter()
            .filter(|&&i| is_one(labels[i]))
            .count();
        rank_sum_2 += group_positives as u128 * (start + 1 + end) as u128;
        start = end;
    }
    let (p, q) = (positives as u128, negatives as u128);
    // 2U = 2R₁ − n₁(n₁ + 1); never negative since R₁ ≥ 1 + 2 + … + n₁.
    let u_2 = rank_sum_2 - p * (p + 1);
    Some(u_2 as f64 / (2 * p * q) as f64)
}

/// Harrell's concordance index of survival risk scores (higher = earlier event), observed `time`s
/// and `event` indicators (1 = event observed, 0 = censored); `None` if no pair is comparable.
///
/// A pair (i, j) is comparable when i had an event and either `time_i < time_j`, or
/// `time_i == time_j` and j was censored (j is known to be event-free at least until i's event).
/// Two events at the same time are not comparable, nor is an event after a censoring. This is the
/// convention of lifelines' `concordance_index` and scikit-survival's `concordance_index_censored`
/// (Harrell et al. 1996), which agree on it. A comparable pair counts 1 when `risk_i > risk_j`,
/// 0.5 when the risks are exactly equal (scikit-survival's default `tied_tol = 1e-8` would also
/// tie risks closer than that; lifelines, like this function, uses exact equality), and 0
/// otherwise. The index is the count divided by the number of comparable pairs.
///
/// Runs in O(n log n) (a Fenwick tree over risk ranks, sweeping time downwards) with exact
/// integer pair counts, so there is no sample-size limit beyond memory.
///
/// # Errors
/// [`Error::LengthMismatch`] (`time` or `event` against `risk`), [`Error::Empty`], then the first
/// non-finite risk, then the first non-finite time ([`Error::NotFinite`]), then the first bad event
/// indicator ([`Error::NotBinary`]).
pub fn concordance_index(risk: &[f32], time: &[f32], event: &[f32]) -> Result<Option<f64>, Error> {
    check_survival(risk, time, event)?;
    Ok(concordance_checked(risk, time, event))
}

/// Checks survival inputs in the order [`concordance_index`] documents: lengths, emptiness, finite
/// risks, finite times, binary events.
fn check_survival(risk: &[f32], time: &[f32], event: &[f32]) -> Result<(), Error> {
    check_len(risk.len(), time.len(), "time")?;
    check_len(risk.len(), event.len(), "event")?;
    if risk.is_empty() {
        return Err(Error::Empty);
    }
    check_finite(risk)?;
    check_finite(time)?;
    check_binary(event)
}

/// [`concordance_index`] on inputs already validated.
fn concordance_checked(risk: &[f32], time: &[f32], event: &[f32]) -> Option<f64> {
    let n = risk.len();
    let rank = dense_ranks(risk);
    let mut by_time: Vec<usize> = (0..n).collect();
    by_time.sort_unstable_by(|&a, &b| cmp_finite(time[a], time[b]));

    // Sweep tie groups of time from the latest down. When an event of group t is scored, the tree
    // holds everyone with a later time plus the censored of group t — exactly its comparable
    // partners — and the events of group t are added only afterwards.
    let mut later = Fenwick::new(n);
    let mut inserted: u64 = 0;
    let (mut concordant, mut tied, mut comparable) = (0u64, 0u64, 0u64);
    let mut end = n;
    while end > 0 {
        let t = time[by_time[end - 1]];
        let mut start = end - 1;
        while start > 0 && time[by_time[start - 1]] == t {
            start -= 1;
        }
        let group = &by_time[start..end];
        for &i in group.iter().filter(|&&i| !is_one(event[i])) {
            later.add(rank[i]);
            inserted += 1;
        }
        for &i in group.iter().filter(|&&i| is_one(event[i])) {
            let below = later.below(rank[i]);
            concordant += below;
            tied += later.below(rank[i] + 1) - below;
            comparable += inserted;
        }
        for &i in group.iter().filter(|&&i| is_one(event[i])) {
            later.add(rank[i]);
            inserted += 1;
        }
        end = start;
    }
    (comparable > 0).then(|| (2 * concordant + tied) as f64 / (2 * comparable) as f64)
}

/// Metrics of a survival model's risk scores (higher = earlier event).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Survival {
    /// Number of samples evaluated.
    pub samples: usize,
    /// Samples whose event was observed (the others are censored).
    pub events: usize,
    /// Harrell's C-index ([`concordance_index`]); `None` when no pair is comparable (no event,
    /// or every event tied with or after everyone else's time), as on some small test splits.
    pub c_index: Option<f64>,
}

/// Scores survival risk scores against observed `time`s and `event` indicators: the counts and
/// Harrell's C-index.
///
/// # Errors
/// As [`concordance_index`].
pub fn survival(risk: &[f32], time: &[f32], event: &[f32]) -> Result<Survival, Error> {
    let c_index = concordance_index(risk, time, event)?;
    Ok(Survival {
        samples: risk.len(),
        events: event.iter().filter(|&&e| is_one(e)).count(),
        c_index,
    })
}

/// What a model scores on a test split, for the task it solves: [`Binary`] metrics of a
/// classifier's probabilities, or [`Survival`] metrics of a risk model's scores.
///
/// Serialized with the task as a `task` field beside the metrics (`{"task": "binary",
/// "samples": 60, "accuracy": 0.75, …}`), so a reader of a binary evaluation finds `accuracy`
/// and `auc` where they always were.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Evaluation {
    /// A binary classifier's metrics at threshold 0.5.
    Binary(Binary),
    /// A survival model's metrics.
    Survival(Survival),
}

impl Evaluation {
    /// Scores `predictions` for `table`'s rows as `task` calls for: probabilities against the
    /// labels at threshold 0.5 ([`binary`]), or log-risk scores against the times and events
    /// ([`survival`]).
    ///
    /// # Errors
    /// Those of [`binary`] or [`survival`]; a table without the task's targets is a
    /// [`Error::LengthMismatch`].
    pub fn of(task: Task, predictions: &[f32], table: &Table) -> Result<Evaluation, Error> {
        match task {
            Task::Binary => binary(predictions, &table.y, 0.5).map(Evaluation::Binary),
            Task::Survival => {
                survival(predictions, &table.time, &table.event).map(Evaluation::Survival)
            }
        }
    }

    /// The task evaluated.
    pub fn task(&self) -> Task {
        match self {
            Evaluation::Binary(_) => Task::Binary,
            Evaluation::Survival(_) => Task::Survival,
        }
    }

    /// Number of samples evaluated.
    pub fn samples(&self) -> usize {
        match self {
            Evaluation::Binary(b) => b.samples,
            Evaluation::Survival(s) => s.samples,
        }
    }

    /// Accuracy at threshold 0.5; `None` for a survival model.
    pub fn accuracy(&self) -> Option<f64> {
        match self {
            Evaluation::Binary(b) => Some(b.accuracy),
            Evaluation::Survival(_) => None,
        }
    }

    /// AUC-ROC; `None` for a survival model, or when one class is absent.
    pub fn auc(&self) -> Option<f64> {
        match self {
            Evaluation::Binary(b) => b.auc,
            Evaluation::Survival(_) => None,
        }
    }

    /// Harrell's C-index; `None` for a classifier, or when no pair is comparable.
    pub fn c_index(&self) -> Option<f64> {
        match self {
            Evaluation::Binary(_) => None,
            Evaluation::Survival(s) => s.c_index,
        }
    }

    /// The task's headline metric, by the name validation reports and certification policies
    /// use for it: `("accuracy", …)` for a classifier, `("c_index", …)` for a survival model.
    pub fn headline(&self) -> (&'static str, Option<f64>) {
        match self {
            Evaluation::Binary(b) => ("accuracy", Some(b.accuracy)),
            Evaluation::Survival(s) => ("c_index", s.c_index),
        }
    }
}

/// A metric value with a percentile bootstrap 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// The metric on the full data.
    pub value: f64,
    /// 2.5th percentile of the metric over the bootstrap resamples.
    pub low: f64,
    /// 97.5th percentile of the metric over the bootstrap resamples.
    pub high: f64,
}

/// Percentile bootstrap 95 % confidence interval of `metric` on (`probs`, `labels`).
///
/// Draws `resamples` resamples of the rows with replacement from
/// `ChaCha8Rng::seed_from_u64(seed)` (each resample has as many rows as the data, drawn in order),
/// computes `metric` on each, and skips resamples where it returns `None` or a non-finite value
/// (e.g. AUC of a resample with one class). Returns the metric on the full data and the 2.5th and
/// 97.5th percentiles of the usable values, interpolated linearly between order statistics (numpy's
/// default). The result depends only on the data, `resamples`, `seed` and `metric`.
///
/// `probs` must be finite but need not lie in `[0, 1]`, so logits and risk scores work too;
/// `labels` must be 0/1. Note that a percentile interval need not contain `value` when the
/// metric's sampling distribution is very skewed.
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::Empty`], [`Error::NotFinite`], [`Error::NotBinary`];
/// [`Error::Undefined`] if the metric has no finite value on the full data;
/// [`Error::TooFewResamples`] if fewer than half of the resamples, or none, are usable.
pub fn bootstrap(
    probs: &[f32],
    labels: &[f32],
    resamples: usize,
    seed: u64,
    metric: impl Fn(&[f32], &[f32]) -> Option<f64>,
) -> Result<Interval, Error> {
    check_len(probs.len(), labels.len(), "labels")?;
    if probs.is_empty() {
        return Err(Error::Empty);
    }
    check_finite(probs)?;
    check_binary(labels)?;
    let value = metric(probs, labels)
        .filter(|v| v.is_finite())
        .ok_or(Error::Undefined)?;
    let mut resampled_probs = Vec::with_capacity(probs.len());
    let mut resampled_labels = Vec::with_capacity(probs.len());
    percentile_interval(value, probs.len(), resamples, seed, |rows| {
        resampled_probs.clear();
        resampled_labels.clear();
        resampled_probs.extend(rows.iter().map(|&r| probs[r]));
        resampled_labels.extend(rows.iter().map(|&r| labels[r]));
        metric(&resampled_probs, &resampled_labels)
    })
}

/// Percentile bootstrap 95 % confidence interval of a survival `metric` (e.g. the C-index) on
/// (`risk`, `time`, `event`): [`bootstrap`]'s resampling, over rows that keep their risk, time and
/// event together.
///
/// Draws `resamples` resamples of the rows with replacement from
/// `ChaCha8Rng::seed_from_u64(seed)`, computes `metric` on each and skips resamples where it
/// returns `None` or a non-finite value (a resample without an event, or without a comparable
/// pair). The result depends only on the data, `resamples`, `seed` and `metric`.
///
/// # Errors
/// [`Error::LengthMismatch`] (`time` or `event` against `risk`), [`Error::Empty`], the first
/// non-finite risk, then time ([`Error::NotFinite`]), the first bad event indicator
/// ([`Error::NotBinary`]); [`Error::Undefined`] if the metric has no finite value on the full
/// data (no comparable pair); [`Error::TooFewResamples`] if fewer than half of the resamples, or
/// none, are usable.
pub fn bootstrap_survival(
    risk: &[f32],
    time: &[f32],
    event: &[f32],
    resamples: usize,
    seed: u64,
    metric: impl Fn(&[f32], &[f32], &[f32]) -> Option<f64>,
) -> Result<Interval, Error> {
    check_survival(risk, time, event)?;
    let value = metric(risk, time, event)
        .filter(|v| v.is_finite())
        .ok_or(Error::Undefined)?;
    let n = risk.len();
    let (mut r, mut t, mut e) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    percentile_interval(value, n, resamples, seed, |rows| {
        r.clear();
        t.clear();
        e.clear();
        for &row in rows {
            r.push(risk[row]);
            t.push(time[row]);
            e.push(event[row]);
        }
        metric(&r, &t, &e)
    })
}

/// The bootstrap both [`bootstrap`] and [`bootstrap_survival`] run: `resamples` resamples of `n`
/// row indices drawn with replacement, in order, from `ChaCha8Rng::seed_from_u64(seed)`;
/// `metric` scores the rows of each; `value` is the metric on the full data.
fn percentile_interval(
    value: f64,
    n: usize,
    resamples: usize,
    seed: u64,
    mut metric: impl FnMut(&[usize]) -> Option<f64>,
) -> Result<Interval, Error> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        rows.clear();
        rows.extend((0..n).map(|_| rng.random_range(0..n)));
        if let Some(v) = metric(&rows).filter(|v| v.is_finite()) {
            values.push(v);
        }
    }
    let usable = values.len();
    if usable == 0 || usable * 2 < resamples {
        return Err(Error::TooFewResamples { usable, resamples });
    }
    values.sort_unstable_by(f64::total_cmp);
    Ok(Interval {
        value,
        low: percentile(&values, 0.025),
        high: percentile(&values, 0.975),
    })
}

/// The `q` quantile of ascending, non-empty `sorted`, interpolated linearly between order
/// statistics (numpy's `linear` method); NaN if `sorted` is empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let position = q * last as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    match (sorted.get(below), sorted.get(above)) {
        (Some(&a), Some(&b)) => a + (b - a) * (position - below as f64),
        _ => f64::NAN,
    }
}

fn check_len(expected: usize, found: usize, what: &'static str) -> Result<(), Error> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            what,
            expected,
            found,
        })
    }
}

fn check_finite(values: &[f32]) -> Result<(), Error> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NotFinite { index }),
        None => Ok(()),
    }
}

fn check_probabilities(probs: &[f32]) -> Result<(), Error> {
    for (index, &value) in probs.iter().enumerate() {
        if !value.is_finite() {
            return Err(Error::NotFinite { index });
        }
        if !(0.0..=1.0).contains(&value) {
            return Err(Error::ProbabilityOutOfRange { index, value });
        }
    }
    Ok(())
}

fn check_binary(labels: &[f32]) -> Result<(), Error> {
    match labels.iter().position(|&y| y != 0.0 && y != 1.0) {
        Some(index) => Err(Error::NotBinary {
            index,
            value: labels[index],
        }),
        None => Ok(()),
    }
}

/// Whether a validated 0/1 label is the positive class.
fn is_one(label: f32) -> bool {
    label == 1.0
}

fn ratio(numerator: usize, denominator: usize) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Orders finite floats; `-0.0` and `0.0` compare equal, matching `==` (which `total_cmp` would
/// not). Only called after the values were checked finite, where `partial_cmp` is total.
fn cmp_finite(a: f32, b: f32) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

/// Dense ranks of finite values: equal values share a rank, ranks are 0..distinct values.
fn dense_ranks(values: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_unstable_by(|&a, &b| cmp_finite(values[a], values[b]));
    let mut ranks = vec![0; values.len()];
    let mut rank = 0;
    for (k, &i) in order.iter().enumerate() {
        if k > 0 && values[order[k - 1]] != values[i] {
            rank += 1;
        }
        ranks[i] = rank;
    }
    ranks
}

/// Counts of inserted ranks with O(log n) insertion and "how many below" queries.
struct Fenwick {
    /// 1-based implicit tree: `tree[i]` covers ranks `i - lowbit(i) .. i` (0-based, half-open).
    tree: Vec<u64>,
}

impl Fenwick {
    fn new(ranks: usize) -> Self {
        Self {
            tree: vec![0; ranks + 1],
        }
    }

    fn add(&mut self, rank: usize) {
        let mut i = rank + 1;
        while i < self.tree.len() {
            self.tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// Number of inserted ranks strictly below `rank`.
    fn below(&self, rank: usize) -> u64 {
        let mut i = rank.min(self.tree.len() - 1);
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i];
            i &= i - 1;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// P(positive outscores negative) with ties counting ½, by looking at every pair.
    fn brute_auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
        let (mut twice_wins, mut pairs) = (0u64, 0u64);
        for (&si, _) in scores.iter().zip(labels).filter(|(_, y)| **y == 1.0) {
            for (&sj, _) in scores.iter().zip(labels).filter(|(_, y)| **y == 0.0) {
                pairs += 1;
                twice_wins += match si.partial_cmp(&sj) {
                    Some(Ordering::Greater) => 2,
                    Some(Ordering::Equal) => 1,
                    _ => 0,
                };
            }
        }
        (pairs > 0).then(|| twice_wins as f64 / (2 * pairs) as f64)
    }

    /// Harrell's C by looking at every ordered pair, with the documented comparability rule.
    fn brute_concordance(risk: &[f32], time: &[f32], event: &[f32]) -> Option<f64> {
        let (mut twice_score, mut pairs) = (0u64, 0u64);
        for i in 0..risk.len() {
            if event[i] != 1.0 {
                continue;
            }
            for j in 0..risk.len() {
                let comparable = time[i] < time[j] || (time[i] == time[j] && event[j] == 0.0);
                if i == j || !comparable {
                    continue;
                }
                pairs += 1;
                twice_score += match risk[i].partial_cmp(&risk[j]) {
                    Some(Ordering::Greater) => 2,
                    Some(Ordering::Equal) => 1,
                    _ => 0,
                };
            }
        }
        (pairs > 0).then(|| twice_score as f64 / (2 * pairs) as f64)
    }

    /// Seeded labelled data whose probabilities carry some signal.
    fn noisy_classifier(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let labels: Vec<f32> = (0..n)
            .map(|_| if rng.random_bool(0.4) { 1.0 } else { 0.0 })
            .collect();
        let probs = labels
            .iter()
            .map(|&y| (0.3 * y + 0.7 * rng.random::<f32>()).clamp(0.0, 1.0))
            .collect();
        (probs, labels)
    }

    fn auc_metric(p: &[f32], y: &[f32]) -> Option<f64> {
        auc(p, y).ok().flatten()
    }

    fn accuracy_metric(p: &[f32], y: &[f32]) -> Option<f64> {
        binary(p, y, 0.5).ok().map(|b| b.accuracy)
    }

    // ---- auc ----

    #[test]
    fn auc_by_hand_without_ties() {
        // Positives {0.35, 0.8}, negatives {0.1, 0.4}. Pairs: 0.35>0.1 ✓, 0.35<0.4 ✗,
        // 0.8>0.1 ✓, 0.8>0.4 ✓ → 3/4. Ranks: 0.1→1, 0.35→2, 0.4→3, 0.8→4; R₁ = 2 + 4 = 6,
        // U = 6 − 2·3/2 = 3, AUC = 3 / (2·2) = 0.75.
        let got = auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(got, Ok(Some(0.75)));
    }

    #[test]
    fn auc_by_hand_with_tied_scores() {
        // Positives {0.5, 0.9}, negatives {0.2, 0.5}. Pairs: 0.5>0.2 → 1, 0.5=0.5 → ½,
        // 0.9>0.2 → 1, 0.9>0.5 → 1; total 3.5 / 4 = 0.875. Mid-ranks: 0.2→1, both 0.5→2.5,
        // 0.9→4; R₁ = 2.5 + 4 = 6.5, U = 6.5 − 3 = 3.5.
        let got = auc(&[0.2, 0.5, 0.5, 0.9], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(got, Ok(Some(0.875)));

        // Every score tied: each of the 2·3 pairs counts ½ → 0.5.
        let got = auc(&[0.3; 5], &[1.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(got, Ok(Some(0.5)));

        // -0.0 and 0.0 are the same score: one pair, tied → ½.
        assert_eq!(auc(&[-0.0, 0.0], &[1.0, 0.0]), Ok(Some(0.5)));
    }

    #[test]
    fn auc_perfect_inverted_and_logits() {
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(auc(&[0.1, 0.2, 0.7, 0.8, 0.9], &labels), Ok(Some(1.0)));
        assert_eq!(auc(&[0.9, 0.8, 0.3, 0.2, 0.1], &labels), Ok(Some(0.0)));
        // Scores need not be probabilities.
        assert_eq!(auc(&[-3.0, -1.0, 2.0, 5.0, 40.0], &labels), Ok(Some(1.0)));
    }

    #[test]
    fn auc_single_class_is_none() {
        assert_eq!(auc(&[0.1, 0.9], &[1.0, 1.0]), Ok(None));
        assert_eq!(auc(&[0.1, 0.9], &[0.0, 0.0]), Ok(None));
        assert_eq!(auc(&[0.4], &[1.0]), Ok(None));
    }

    #[test]
    fn auc_matches_brute_force_pair_count() {
        for seed in 0..8 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let n = rng.random_range(200..400);
            // 20 distinct score levels over n points: many ties, within and across classes.
            let scores: Vec<f32> = (0..n)
                .map(|_| rng.random_range(0..20u8) as f32 / 20.0)
                .collect();
            let labels: Vec<f32> = (0..n)
                .map(|_| if rng.random_bool(0.3) { 1.0 } else { 0.0 })
                .collect();
            let fast = auc(&scores, &labels).expect("valid input");
            // Both are the same integer count over the same denominator: exactly equal.
            assert_eq!(fast, brute_auc(&scores, &labels), "seed {seed}");
            assert!(fast.is_some());
        }
    }

    #[test]
    fn auc_errors() {
        assert_eq!(
            auc(&[0.1, 0.2], &[1.0]),
            Err(Error::LengthMismatch {
                what: "labels",
                expected: 2,
                found: 1
            })
        );
        assert_eq!(auc(&[], &[]), Err(Error::Empty));
        assert_eq!(
            auc(&[0.1, f32::NAN], &[0.0, 1.0]),
            Err(Error::NotFinite { index: 1 })
        );
        assert_eq!(
            auc(&[0.1, f32::INFINITY], &[0.0, 1.0]),
            Err(Error::NotFinite { index: 1 })
        );
        assert_eq!(
            auc(&[0.1, 0.2, 0.3], &[0.0, 1.0, 2.0]),
            Err(Error::NotBinary {
                index: 2,
                value: 2.0
            })
        );
    }

    // ---- binary ----

    #[test]
    fn binary_by_hand() {
        // probs  [0.9, 0.2, 0.6, 0.4], labels [1, 0, 0, 1], threshold 0.5
        // preds  [1,   0,   1,   0  ] → TP = 1 (#0), TN = 1 (#1), FP = 1 (#2), FN = 1 (#3)
        // accuracy 2/4, sensitivity 1/2, specificity 1/2, balanced (½ + ½)/2 = ½.
        // AUC: positives {0.9, 0.4}, negatives {0.2, 0.6}: 0.9>0.2, 0.9>0.6, 0.4>0.2, 0.4<0.6 → ¾.
        // log-loss = −(ln 0.9 + ln 0.8 + ln 0.4 + ln 0.4) / 4
        //          = (0.1053605157 + 0.2231435513 + 0.9162907319 · 2) / 4 = 0.5402713827.
        let b = binary(&[0.9, 0.2, 0.6, 0.4], &[1.0, 0.0, 0.0, 1.0], 0.5).expect("valid");
        assert_eq!(b.samples, 4);
        assert!(close(b.accuracy, 0.5));
        assert!(close(b.balanced_accuracy, 0.5));
        assert_eq!(b.sensitivity, Some(0.5));
        assert_eq!(b.specificity, Some(0.5));
        assert_eq!(b.auc, Some(0.75));
        // f32 inputs (0.9f32 = 0.89999998) move the logs by ~1e-8.
        assert!(
            (b.log_loss - 0.540_271_382_7).abs() < 1e-6,
            "{}",
            b.log_loss
        );
    }

    #[test]
    fn binary_balanced_accuracy_on_imbalanced_set() {
        // 2 positives, 8 negatives.
        let labels = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        // preds [1, 0, 1, 1, 0, 0, 0, 0, 0, 0]: TP 1, FN 1, FP 2, TN 6.
        // accuracy (1 + 6)/10 = 0.7; sensitivity 1/2; specificity 6/8 = 0.75;
        // balanced (0.5 + 0.75)/2 = 0.625.
        let probs = [0.8, 0.3, 0.7, 0.6, 0.1, 0.2, 0.1, 0.3, 0.2, 0.4];
        let b = binary(&probs, &labels, 0.5).expect("valid");
        assert!(close(b.accuracy, 0.7));
        assert_eq!(b.sensitivity, Some(0.5));
        assert_eq!(b.specificity, Some(0.75));
        assert!(close(b.balanced_accuracy, 0.625));

        // "Always negative": accuracy 8/10 looks good, balanced (0 + 1)/2 = 0.5 does not.
        let b = binary(&[0.1; 10], &labels, 0.5).expect("valid");
        assert!(close(b.accuracy, 0.8));
        assert_eq!(b.sensitivity, Some(0.0));
        assert_eq!(b.specificity, Some(1.0));
        assert!(close(b.balanced_accuracy, 0.5));
        assert_eq!(b.auc, Some(0.5)); // all scores tied
    }

    #[test]
    fn binary_threshold_is_strict() {
        // 0.5 is not > 0.5, so it is predicted negative: preds [0, 1] vs labels [1, 1].
        let b = binary(&[0.5, 0.51], &[1.0, 1.0], 0.5).expect("valid");
        assert_eq!(b.sensitivity, Some(0.5));
        // At threshold 0.3 both are positive.
        let b = binary(&[0.5, 0.51], &[1.0, 1.0], 0.3).expect("valid");
        assert_eq!(b.sensitivity, Some(1.0));
        // Thresholds 0 and 1 are allowed: at 1 nothing is positive.
        let b = binary(&[1.0, 0.0], &[1.0, 0.0], 1.0).expect("valid");
        assert_eq!((b.sensitivity, b.specificity), (Some(0.0), Some(1.0)));
        assert!(binary(&[1.0, 0.0], &[1.0, 0.0], 0.0).is_ok());
    }

    #[test]
    fn binary_single_class() {
        // Only positives: specificity and AUC undefined, balanced accuracy = sensitivity = 2/3.
        let b = binary(&[0.9, 0.8, 0.2], &[1.0, 1.0, 1.0], 0.5).expect("valid");
        assert_eq!(b.auc, None);
        assert_eq!(b.specificity, None);
        assert!(close(b.sensitivity.expect("positives present"), 2.0 / 3.0));
        assert!(close(b.balanced_accuracy, 2.0 / 3.0));
        // Only negatives: sensitivity undefined, balanced = specificity = 1/2.
        let b = binary(&[0.9, 0.2], &[0.0, 0.0], 0.5).expect("valid");
        assert_eq!(
            (b.auc, b.sensitivity, b.specificity),
            (None, None, Some(0.5))
        );
        assert!(close(b.balanced_accuracy, 0.5));
    }

    #[test]
    fn binary_log_loss_is_clamped() {
        // A certain mistake costs −ln(1e-7) = 16.11809565, not infinity.
        let b = binary(&[0.0], &[1.0], 0.5).expect("valid");
        assert!((b.log_loss - 16.118_095_65).abs() < 1e-6, "{}", b.log_loss);
        let b = binary(&[1.0], &[0.0], 0.5).expect("valid");
        assert!((b.log_loss - 16.118_095_65).abs() < 1e-6, "{}", b.log_loss);
        // A certain hit costs −ln(1 − 1e-7) ≈ 1.00000005e-7, not exactly 0.
        let b = binary(&[1.0, 0.0], &[1.0, 0.0], 0.5).expect("valid");
        assert!(
            (b.log_loss - 1.000_000_05e-7).abs() < 1e-12,
            "{}",
            b.log_loss
        );
    }

    #[test]
    fn binary_errors() {
        assert_eq!(
            binary(&[0.1], &[0.0, 1.0], 0.5),
            Err(Error::LengthMismatch {
                what: "labels",
                expected: 1,
                found: 2
            })
        );
        assert_eq!(binary(&[], &[], 0.5), Err(Error::Empty));
        for bad in [f32::NAN, f32::INFINITY, -0.1, 1.1] {
            assert_eq!(
                binary(&[0.1], &[0.0], bad),
                Err(Error::BadThreshold),
                "{bad}"
            );
        }
        assert_eq!(
            binary(&[0.1, f32::NAN], &[0.0, 1.0], 0.5),
            Err(Error::NotFinite { index: 1 })
        );
        assert_eq!(
            binary(&[0.1, 1.5], &[0.0, 1.0], 0.5),
            Err(Error::ProbabilityOutOfRange {
                index: 1,
                value: 1.5
            })
        );
        assert_eq!(
            binary(&[-0.5, 0.5], &[0.0, 1.0], 0.5),
            Err(Error::ProbabilityOutOfRange {
                index: 0,
                value: -0.5
            })
        );
        assert_eq!(
            binary(&[0.1, 0.5], &[0.0, 0.5], 0.5),
            Err(Error::NotBinary {
                index: 1,
                value: 0.5
            })
        );
        // A NaN label is not binary either.
        assert!(matches!(
            binary(&[0.1], &[f32::NAN], 0.5),
            Err(Error::NotBinary { index: 0, .. })
        ));
    }

    #[test]
    fn serde_round_trip() {
        let b = binary(&[0.9, 0.2], &[1.0, 1.0], 0.5).expect("valid");
        let json = serde_json::to_string(&b).expect("serialize");
        assert_eq!(serde_json::from_str::<Binary>(&json).expect("parse"), b);
        let i = Interval {
            value: 0.8,
            low: 0.7,
            high: 0.9,
        };
        let json = serde_json::to_string(&i).expect("serialize");
        assert_eq!(serde_json::from_str::<Interval>(&json).expect("parse"), i);
    }

    // ---- concordance_index ----

    #[test]
    fn concordance_by_hand_with_censoring_and_ties() {
        //  #  time  event  risk
        //  0   1     1     0.9
        //  1   2     0     0.5   censored at 2
        //  2   2     1     0.7   event at 2 (time tie with #1 and #5)
        //  3   3     1     0.7   risk tie with #2
        //  4   4     0     0.1   censored
        //  5   2     1     0.2   event at 2, like #2
        let risk = [0.9, 0.5, 0.7, 0.7, 0.1, 0.2];
        let time = [1.0, 2.0, 2.0, 3.0, 4.0, 2.0];
        let event = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        // Comparable pairs (i had an event; j later, or j censored at the same time):
        //  i=0: j=1,2,3,4,5 all later, all lower risk            → 5 pairs, 5
        //  i=2: j=3 (0.7 = 0.7) ½, j=4 (0.1) 1, j=1 censored at 2
        //       (0.5) 1; j=5 is an event at the same time: skip   → 3 pairs, 2.5
        //  i=5: j=3 (0.7 > 0.2) 0, j=4 (0.1) 1, j=1 (0.5 > 0.2) 0 → 3 pairs, 1
        //  i=3: j=4 (0.1) 1                                      → 1 pair,  1
        //  #1 and #4 are censored and anchor no pair.
        // C = (5 + 2.5 + 1 + 1) / (5 + 3 + 3 + 1) = 9.5 / 12.
        let got = concordance_index(&risk, &time, &event).expect("valid");
        assert!(close(got.expect("comparable pairs"), 9.5 / 12.0));
        assert_eq!(got, brute_concordance(&risk, &time, &event));
    }

    #[test]
    fn concordance_tied_times() {
        // Same time, one event, one censored: comparable; the event should carry the higher risk.
        assert_eq!(
            concordance_index(&[0.9, 0.1], &[2.0, 2.0], &[1.0, 0.0]),
            Ok(Some(1.0))
        );
        assert_eq!(
            concordance_index(&[0.1, 0.9], &[2.0, 2.0], &[1.0, 0.0]),
            Ok(Some(0.0))
        );
        // Two events at the same time: not comparable.
        assert_eq!(
            concordance_index(&[0.9, 0.1], &[2.0, 2.0], &[1.0, 1.0]),
            Ok(None)
        );
        // An event after a censoring is not comparable either.
        assert_eq!(
            concordance_index(&[0.9, 0.1], &[3.0, 2.0], &[1.0, 0.0]),
            Ok(None)
        );
    }

    #[test]
    fn concordance_perfect_inverted_and_undefined() {
        let time = [1.0, 2.0, 3.0, 4.0];
        let event = [1.0, 1.0, 0.0, 1.0];
        // 5 comparable pairs: (0,1) (0,2) (0,3) (1,2) (1,3).
        assert_eq!(
            concordance_index(&[4.0, 3.0, 2.0, 1.0], &time, &event),
            Ok(Some(1.0))
        );
        assert_eq!(
            concordance_index(&[1.0, 2.0, 3.0, 4.0], &time, &event),
            Ok(Some(0.0))
        );
        // Constant risk: every comparable pair tied → ½.
        assert_eq!(concordance_index(&[0.3; 4], &time, &event), Ok(Some(0.5)));
        // All censored, or a single sample: nothing to compare.
        assert_eq!(
            concordance_index(&[1.0, 2.0], &[1.0, 2.0], &[0.0, 0.0]),
            Ok(None)
        );
        assert_eq!(concordance_index(&[1.0], &[1.0], &[1.0]), Ok(None));
    }

    #[test]
    fn concordance_matches_brute_force() {
        for seed in 0..8 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let n = rng.random_range(150..300);
            // Few levels so times and risks tie often; ~35 % censored.
            let risk: Vec<f32> = (0..n).map(|_| rng.random_range(0..15u8) as f32).collect();
            let time: Vec<f32> = (0..n).map(|_| rng.random_range(0..25u8) as f32).collect();
            let event: Vec<f32> = (0..n)
                .map(|_| if rng.random_bool(0.65) { 1.0 } else { 0.0 })
                .collect();
            let fast = concordance_index(&risk, &time, &event).expect("valid");
            assert_eq!(fast, brute_concordance(&risk, &time, &event), "seed {seed}");
            assert!(fast.is_some());
        }
    }

    #[test]
    fn concordance_errors() {
        assert_eq!(
            concordance_index(&[0.1, 0.2], &[1.0], &[1.0, 0.0]),
            Err(Error::LengthMismatch {
                what: "time",
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            concordance_index(&[0.1, 0.2], &[1.0, 2.0], &[1.0]),
            Err(Error::LengthMismatch {
                what: "event",
                expected: 2,
                found: 1
            })
        );
        assert_eq!(concordance_index(&[], &[], &[]), Err(Error::Empty));
        assert_eq!(
            concordance_index(&[f32::NAN, 0.2], &[1.0, 2.0], &[1.0, 0.0]),
            Err(Error::NotFinite { index: 0 })
        );
        assert_eq!(
            concordance_index(&[0.1, 0.2], &[1.0, f32::INFINITY], &[1.0, 0.0]),
            Err(Error::NotFinite { index: 1 })
        );
        assert_eq!(
            concordance_index(&[0.1, 0.2], &[1.0, 2.0], &[1.0, 3.0]),
            Err(Error::NotBinary {
                index: 1,
                value: 3.0
            })
        );
    }

    // ---- bootstrap ----

    #[test]
    fn bootstrap_is_deterministic_for_a_seed() {
        let (probs, labels) = noisy_classifier(200, 1);
        let a = bootstrap(&probs, &labels, 300, 42, auc_metric).expect("usable");
        let b = bootstrap(&probs, &labels, 300, 42, auc_metric).expect("usable");
        assert_eq!(a, b);
        let c = bootstrap(&probs, &labels, 300, 43, auc_metric).expect("usable");
        assert_eq!(a.value, c.value);
        assert_ne!((a.low, a.high), (c.low, c.high));
    }

    #[test]
    fn bootstrap_interval_contains_value() {
        let (probs, labels) = noisy_classifier(300, 2);
        for metric in [auc_metric, accuracy_metric] {
            let i = bootstrap(&probs, &labels, 500, 7, metric).expect("usable");
            assert!(i.low < i.value && i.value < i.high, "{i:?}");
        }
        // The point estimate is the metric on the full data.
        let i = bootstrap(&probs, &labels, 100, 7, auc_metric).expect("usable");
        assert_eq!(Some(i.value), auc(&probs, &labels).expect("valid"));
    }

    #[test]
    fn bootstrap_is_narrower_with_more_data() {
        // Width shrinks like 1/√n: 20× the data should give roughly a 4.5× narrower interval.
        let (small_p, small_y) = noisy_classifier(100, 3);
        let (large_p, large_y) = noisy_classifier(2000, 3);
        for metric in [auc_metric, accuracy_metric] {
            let small = bootstrap(&small_p, &small_y, 400, 9, metric).expect("usable");
            let large = bootstrap(&large_p, &large_y, 400, 9, metric).expect("usable");
            let (ws, wl) = (small.high - small.low, large.high - large.low);
            assert!(wl < ws / 2.0, "small {small:?} large {large:?}");
        }
    }

    #[test]
    fn bootstrap_of_a_constant_metric_is_a_point() {
        let i = bootstrap(&[0.2, 0.7], &[0.0, 1.0], 50, 0, |_, _| Some(0.25)).expect("usable");
        assert_eq!(
            i,
            Interval {
                value: 0.25,
                low: 0.25,
                high: 0.25
            }
        );
    }

    #[test]
    fn percentile_interpolates_linearly() {
        // 11 values 0..=10: the q quantile sits at position 10q, so 2.5 % → 0.25, 97.5 % → 9.75.
        let sorted: Vec<f64> = (0..=10).map(f64::from).collect();
        assert!(close(percentile(&sorted, 0.025), 0.25));
        assert!(close(percentile(&sorted, 0.975), 9.75));
        assert_eq!(percentile(&[3.0], 0.975), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn bootstrap_errors() {
        assert_eq!(
            bootstrap(&[0.1], &[], 10, 0, auc_metric),
            Err(Error::LengthMismatch {
                what: "labels",
                expected: 1,
                found: 0
            })
        );
        assert_eq!(bootstrap(&[], &[], 10, 0, auc_metric), Err(Error::Empty));
        assert_eq!(
            bootstrap(&[f32::NAN], &[1.0], 10, 0, auc_metric),
            Err(Error::NotFinite { index: 0 })
        );
        assert_eq!(
            bootstrap(&[0.1], &[-1.0], 10, 0, auc_metric),
            Err(Error::NotBinary {
                index: 0,
                value: -1.0
            })
        );
        // AUC of a single class has no point estimate.
        assert_eq!(
            bootstrap(&[0.1, 0.9], &[1.0, 1.0], 10, 0, auc_metric),
            Err(Error::Undefined)
        );
        assert_eq!(
            bootstrap(&[0.1, 0.9], &[0.0, 1.0], 10, 0, |_, _| Some(f64::NAN)),
            Err(Error::Undefined)
        );
        // Defined only when no row repeats: true on the data, but a resample of 20 rows is
        // repeat-free with probability 20!/20²⁰ ≈ 2e-8, so no resample is usable.
        let probs: Vec<f32> = (0..20u8).map(|k| f32::from(k) / 20.0).collect();
        let labels = [0.0; 20];
        let distinct = |p: &[f32], _: &[f32]| {
            let mut seen = p.to_vec();
            seen.sort_by(f32::total_cmp);
            seen.dedup();
            (seen.len() == p.len()).then_some(1.0)
        };
        assert_eq!(
            bootstrap(&probs, &labels, 10, 0, distinct),
            Err(Error::TooFewResamples {
                usable: 0,
                resamples: 10
            })
        );
        // Zero resamples give no interval.
        assert_eq!(
            bootstrap(&[0.2, 0.7], &[0.0, 1.0], 0, 0, auc_metric),
            Err(Error::TooFewResamples {
                usable: 0,
                resamples: 0
            })
        );
    }

    #[test]
    fn bootstrap_needs_half_the_resamples() {
        use std::cell::Cell;
        // Call 0 is the point estimate; calls 1..=10 are the resamples.
        let calls = Cell::new(0u32);
        let every_other = |_: &[f32], _: &[f32]| {
            let k = calls.replace(calls.get() + 1);
            k.is_multiple_of(2).then_some(0.5)
        };
        // Calls 2, 4, 6, 8, 10 are usable: 5 of 10 is exactly half, which is enough.
        assert!(bootstrap(&[0.2, 0.7], &[0.0, 1.0], 10, 0, every_other).is_ok());

        let calls = Cell::new(0u32);
        let every_third = |_: &[f32], _: &[f32]| {
            let k = calls.replace(calls.get() + 1);
            k.is_multiple_of(3).then_some(0.5)
        };
        // Calls 3, 6, 9 are usable: 3 of 10 is not.
        assert_eq!(
            bootstrap(&[0.2, 0.7], &[0.0, 1.0], 10, 0, every_third),
            Err(Error::TooFewResamples {
                usable: 3,
                resamples: 10
            })
        );
    }

    // ---- survival, Evaluation and bootstrap_survival ----

    /// `n` patients with one feature x ~ N(0, 1) and log-hazard `beta · x`: event times
    /// exponential with rate exp(beta · x), censored at an independent exponential time of rate
    /// `censoring` (so roughly 1 / (1 + censoring) of the events are observed). Returns the true
    /// risk x, the observed times and the event indicators.
    fn exponential_survival(
        n: usize,
        beta: f64,
        censoring: f64,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut risk, mut time, mut event) = (vec![], vec![], vec![]);
        for _ in 0..n {
            // Box–Muller from two uniforms in (0, 1].
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            let x = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let t = -(1.0 - rng.random::<f64>()).ln() / (beta * x).exp();
            let c = -(1.0 - rng.random::<f64>()).ln() / censoring;
            risk.push(x as f32);
            time.push(t.min(c) as f32);
            event.push(if t <= c { 1.0 } else { 0.0 });
        }
        (risk, time, event)
    }

    #[test]
    fn survival_counts_events_and_scores_the_true_risk() {
        let (risk, time, event) = exponential_survival(400, 1.0, 0.5, 11);
        let s = survival(&risk, &time, &event).expect("valid");
        assert_eq!(s.samples, 400);
        assert_eq!(s.events, event.iter().filter(|&&e| e == 1.0).count());
        // About two thirds observed with censoring rate 0.5 against rate ~1.
        assert!((200..340).contains(&s.events), "{s:?}");
        let c = s.c_index.expect("comparable pairs");
        assert_eq!(
            Some(c),
            concordance_index(&risk, &time, &event).expect("valid")
        );
        // A log-hazard ratio of 1 per standard deviation ranks about 73 % of pairs right.
        assert!((0.68..0.78).contains(&c), "C-index of the true risk {c}");
        // The opposite score ranks them wrong as often.
        let inverted: Vec<f32> = risk.iter().map(|r| -r).collect();
        let wrong = survival(&inverted, &time, &event).expect("valid").c_index;
        assert!(close(wrong.expect("pairs"), 1.0 - c));
        // No event: nothing to compare, but still counted.
        let s = survival(&[0.1, 0.2], &[1.0, 2.0], &[0.0, 0.0]).expect("valid");
        assert_eq!((s.samples, s.events, s.c_index), (2, 0, None));
    }

    #[test]
    fn evaluation_follows_the_task_and_keeps_the_binary_json_shape() {
        let table = Table {
            x: vec![0.0; 4],
            rows: 4,
            cols: 1,
            y: vec![1.0, 0.0, 1.0, 0.0],
            time: vec![1.0, 2.0, 3.0, 4.0],
            event: vec![1.0, 1.0, 0.0, 1.0],
        };
        let binary = Evaluation::of(Task::Binary, &[0.9, 0.2, 0.4, 0.1], &table).expect("valid");
        assert_eq!(binary.task(), Task::Binary);
        assert_eq!(
            (binary.samples(), binary.accuracy(), binary.c_index()),
            (4, Some(0.75), None)
        );
        assert_eq!(binary.auc(), Some(1.0));
        assert_eq!(binary.headline(), ("accuracy", Some(0.75)));
        let json: serde_json::Value = serde_json::to_value(binary).expect("serialize");
        assert_eq!(json["task"], "binary");
        assert_eq!(json["accuracy"], 0.75);
        assert_eq!(json["auc"], 1.0);
        assert_eq!(
            serde_json::from_value::<Evaluation>(json).expect("parse"),
            binary
        );

        // Risks decreasing with time: every comparable pair concordant.
        let survival = Evaluation::of(Task::Survival, &[4.0, 3.0, 2.0, 1.0], &table).expect("ok");
        assert_eq!(survival.task(), Task::Survival);
        assert_eq!(
            (survival.samples(), survival.accuracy(), survival.auc()),
            (4, None, None)
        );
        assert_eq!(survival.c_index(), Some(1.0));
        assert_eq!(survival.headline(), ("c_index", Some(1.0)));
        let json: serde_json::Value = serde_json::to_value(survival).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"task": "survival", "samples": 4, "events": 3, "c_index": 1.0})
        );
        assert_eq!(
            serde_json::from_value::<Evaluation>(json).expect("parse"),
            survival
        );

        // A table without the task's targets is refused, not scored.
        let unlabelled = Table {
            y: vec![],
            ..table.clone()
        };
        assert!(matches!(
            Evaluation::of(Task::Binary, &[0.5; 4], &unlabelled),
            Err(Error::LengthMismatch { what: "labels", .. })
        ));
    }

    fn c_index_metric(r: &[f32], t: &[f32], e: &[f32]) -> Option<f64> {
        concordance_index(r, t, e).ok().flatten()
    }

    #[test]
    fn bootstrap_survival_is_seeded_and_contains_the_c_index() {
        let (risk, time, event) = exponential_survival(300, 1.0, 0.5, 12);
        let a = bootstrap_survival(&risk, &time, &event, 400, 42, c_index_metric).expect("ok");
        assert_eq!(
            a,
            bootstrap_survival(&risk, &time, &event, 400, 42, c_index_metric).expect("ok")
        );
        let b = bootstrap_survival(&risk, &time, &event, 400, 43, c_index_metric).expect("ok");
        assert_eq!(a.value, b.value);
        assert_ne!((a.low, a.high), (b.low, b.high));
        assert_eq!(
            Some(a.value),
            concordance_index(&risk, &time, &event).expect("valid")
        );
        assert!(a.low < a.value && a.value < a.high, "{a:?}");
        // About ±0.035 at n = 300; shrinks like 1/√n.
        assert!((0.03..0.12).contains(&(a.high - a.low)), "{a:?}");
        let (risk, time, event) = exponential_survival(3000, 1.0, 0.5, 12);
        let large = bootstrap_survival(&risk, &time, &event, 400, 42, c_index_metric).expect("ok");
        assert!(large.high - large.low < (a.high - a.low) / 2.0, "{large:?}");
    }

    #[test]
    fn bootstrap_survival_errors() {
        assert_eq!(
            bootstrap_survival(&[0.1], &[1.0, 2.0], &[1.0], 10, 0, c_index_metric),
            Err(Error::LengthMismatch {
                what: "time",
                expected: 1,
                found: 2
            })
        );
        assert_eq!(
            bootstrap_survival(&[0.1], &[1.0], &[], 10, 0, c_index_metric),
            Err(Error::LengthMismatch {
                what: "event",
                expected: 1,
                found: 0
            })
        );
        assert_eq!(
            bootstrap_survival(&[], &[], &[], 10, 0, c_index_metric),
            Err(Error::Empty)
        );
        assert_eq!(
            bootstrap_survival(&[0.1], &[f32::NAN], &[1.0], 10, 0, c_index_metric),
            Err(Error::NotFinite { index: 0 })
        );
        assert_eq!(
            bootstrap_survival(&[0.1], &[1.0], &[2.0], 10, 0, c_index_metric),
            Err(Error::NotBinary {
                index: 0,
                value: 2.0
            })
        );
        // Everyone censored: no comparable pair, no C-index to put an interval around.
        assert_eq!(
            bootstrap_survival(&[0.1, 0.2], &[1.0, 2.0], &[0.0, 0.0], 10, 0, c_index_metric),
            Err(Error::Undefined)
        );
        // One event among 40, at the last time: no one is known to live longer.
        let risk: Vec<f32> = (0..40u8).map(f32::from).collect();
        let time: Vec<f32> = (0..40u8).map(f32::from).collect();
        let mut event = vec![0.0; 40];
        event[39] = 1.0;
        let last_has_no_partner = bootstrap_survival(&risk, &time, &event, 50, 0, c_index_metric);
        assert_eq!(last_has_no_partner, Err(Error::Undefined));
        // At the second-to-last time, its one partner is the last row: a resample holds both
        // with probability (1 − (39/40)⁴⁰)² ≈ 0.41, less than half.
        event[39] = 0.0;
        event[38] = 1.0;
        assert!(matches!(
            bootstrap_survival(&risk, &time, &event, 50, 0, c_index_metric),
            Err(Error::TooFewResamples { resamples: 50, .. })
        ));
    }
}
