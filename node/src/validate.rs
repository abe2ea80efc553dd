//! Validation of a model version on a partner's own records: the model's predictions on the
//! local test split, scored with the trainer's metrics for the model's task and
//! percentile-bootstrap 95 % confidence intervals, as the [`Report`] the partner signs and
//! gossips: `auc`, `accuracy` and `balanced_accuracy` for a classifier, `c_index` (Harrell's) for
//! a survival model. Nothing leaves the site but the metrics and the sample count.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use medmesh_protocol::identity::{ContentId, MemberId};
use medmesh_protocol::roster::Member;
use medmesh_protocol::validation::{Dataset, Metric, Report};

use crate::config::NodeConfig;
use crate::worker::Evaluator;
use medmesh_learning::data::Table;
use medmesh_learning::metrics;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 1000;

/// What a validation found, before it is signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The report to sign.
    pub report: Report,
    /// The metrics without intervals, for logs and the node's outcome.
    pub evaluation: metrics::Evaluation,
}

/// Evaluates `params` (the model of `config`) on `test`, the validator's local split, and
/// drafts the report `validator` signs. `data` names the dataset and the site whose test split
/// `test` is (the description says so); the report's site and country are the roster's entry
/// for the validator. The bootstrap is seeded from the model id, so validating
/// the same model on the same data always gives the same report (but for its time stamp).
/// The model runs in `evaluator`'s worker process.
pub fn evaluate(
    evaluator: &mut Evaluator,
    config: &NodeConfig,
    model: ContentId,
    validator: &Member,
    data: (&str, &str),
    params: &[f32],
    test: &Table,
) -> anyhow::Result<Found> {
    let (dataset, data_site) = data;
    anyhow::ensure!(!test.is_empty(), "no local test rows to validate on");
    let predictions = evaluator
        .predict(
            &config.model,
            &config.training,
            config.init_seed,
            params,
            test,
        )
        .context("evaluating the version with this node's model spec")?;
    let evaluation = metrics::Evaluation::of(config.model.task(), &predictions, test)?;
    let seed = u64::from_le_bytes(model.0[..8].try_into().unwrap_or_default());
    let mut scores = BTreeMap::new();
    let description = match evaluation {
        metrics::Evaluation::Binary(binary) => {
            let interval = |metric: fn(&[f32], &[f32]) -> Option<f64>| {
                metrics::bootstrap(&predictions, &test.y, RESAMPLES, seed, metric)
            };
            if binary.auc.is_some() {
                let ci = interval(|p, y| metrics::auc(p, y).ok().flatten())?;
                scores.insert("auc".to_owned(), metric(ci));
            }
            let ci = interval(|p, y| metrics::binary(p, y, 0.5).ok().map(|b| b.accuracy))?;
            scores.insert("accuracy".to_owned(), metric(ci));
            let ci = interval(|p, y| metrics::binary(p, y, 0.5).ok().map(|b| b.balanced_accuracy))?;
            scores.insert("balanced_accuracy".to_owned(), metric(ci));
            format!("{} positive", test.positives())
        }
        metrics::Evaluation::Survival(survival) => {
            // The risk scores are the model's outputs; the rows keep their time and event.
            let ci = metrics::bootstrap_survival(
                &predictions,
                &test.time,
                &test.event,
                RESAMPLES,
                seed,
                |r, t, e| metrics::concordance_index(r, t, e).ok().flatten(),
            )
            .with_context(|| {
                format!(
                    "no C-index with a confidence interval on {} rows with {} events",
                    survival.samples, survival.events
                )
            })?;
            scores.insert("c_index".to_owned(), metric(ci));
            format!("{} events", survival.events)
        }
    };
    let issued_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let report = Report {
        model,
        validator: validator.id,
        dataset: Dataset {
            name: dataset.chars().take(64).collect(),
            site: validator.site.chars().take(64).collect(),
            country: validator.country.clone(),
            description: format!(
                "test split of site {:?}: {} rows, {description}",
                data_site, test.rows
            ),
        },
        samples: test.rows as u64,
        metrics: scores,
        issued_at_ms,
    };
    report
        .check(validator.id)
        .context("the drafted report breaks a rule")?;
    Ok(Found { report, evaluation })
}

fn metric(ci: metrics::Interval) -> Metric {
    // The percentile interval of a skewed statistic can exclude the point estimate by a hair;
    // widen it to contain the estimate, as the report's rules require.
    Metric {
        value: ci.value,
        low: Some(ci.low.min(ci.value)),
        high: Some(ci.high.max(ci.value)),
    }
}

/// A readable line for a report.
pub fn describe(report: &Report, validator: MemberId) -> String {
    let metrics: Vec<String> = report
        .metrics
        .iter()
        .map(|(name, m)| match (m.low, m.high) {
            (Some(l), Some(h)) => format!("{name} {:.3} [{l:.3}, {h:.3}]", m.value),
            _ => format!("{name} {:.3}", m.value),
        })
        .collect();
    format!(
        "model {} validated by {} ({}, {}) on {} samples: {}",
        report.model.short(),
        validator.short(),
        report.dataset.site,
        report.dataset.country,
        report.samples,
        metrics.join(", ")
    )
}
