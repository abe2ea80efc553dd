//! Validating model versions on this node's data, and judging certification from the signed
//! reports the node holds.
//!
//! The verdicts are kept in memory, indexed by model: an accepted report re-judges its own
//! model only, instead of re-reading every stored report (the store is read once, at start).
//! Evaluation itself waits for the evaluator's worker: the one wait the event loop has,
//! about 0.4 s of libtorch start-up when no evaluator is running.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use bytes::Bytes;
use medmesh_learning::data::{Dataset, Table};
use medmesh_learning::metrics;
use medmesh_protocol::identity::{ContentId, Verified};
use medmesh_protocol::roster::Roster;
use medmesh_protocol::update::{self, Version};
use medmesh_protocol::validation::{Certification, Policy, Report};
use tokio::sync::oneshot;

use crate::config::{NodeConfig, ValidationData};
use crate::validate;
use crate::worker::Evaluator;

/// Where an operator's `medmesh validate` gets its answer.
pub(super) type Reply = oneshot::Sender<Result<String, String>>;

/// A validation on its way: asked for, then its version and payload found or pulled.
#[derive(Debug)]
pub(super) struct Validation {
    /// The version to validate.
    pub(super) model: ContentId,
    /// A declared validation dataset to validate on (default: the node's own test split).
    pub(super) data: Option<ValidationData>,
    /// The operator waiting, if one asked.
    pub(super) reply: Option<Reply>,
}

impl Validation {
    /// Answers the operator, if one asked; a failure is logged either way.
    pub(super) fn answer(self, answer: Result<String, String>) {
        if let Err(error) = &answer {
            tracing::warn!(model = %self.model, %error, "validation failed");
        }
        if let Some(reply) = self.reply {
            let _ = reply.send(answer);
        }
    }
}

/// What the store holds for a validation, read off the loop.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) validation: Validation,
    /// The signed version, if stored.
    pub(super) version: Option<Verified<Version>>,
    /// Its payload, if stored.
    pub(super) payload: Option<Bytes>,
}

/// The data a validation runs on.
pub(super) struct Rows {
    /// The dataset's name.
    pub(super) dataset: String,
    /// The site whose test split it is.
    pub(super) site: String,
    /// The rows.
    pub(super) test: Table,
}

/// The test rows a validation runs on: a declared validation dataset if it names one, else
/// `own`. A dataset that does not load is logged with its reason; the answer only names it, so
/// nothing of the file's content reaches the admin endpoint's caller.
pub(super) fn test_rows(
    data: Option<&ValidationData>,
    own: (&str, &str, &Table),
) -> anyhow::Result<Rows> {
    let Some(d) = data else {
        return Ok(Rows {
            dataset: own.0.to_owned(),
            site: own.1.to_owned(),
            test: own.2.clone(),
        });
    };
    let loaded = Dataset::load(&d.schema)
        .map_err(anyhow::Error::from)
        .and_then(|set| {
            let test = set
                .site(&d.site)
                .with_context(|| format!("site {:?} is not in {}", d.site, d.schema.display()))?
                .test
                .clone();
            Ok(Rows {
                dataset: set.name.clone(),
                site: d.site.clone(),
                test,
            })
        });
    loaded.map_err(|e| {
        tracing::warn!(dataset = %d.name, error = %format!("{e:#}"), "validation dataset does not load");
        anyhow::anyhow!(
            "validation dataset {:?} does not load (the node's log says why)",
            d.name
        )
    })
}

/// Decodes the pulled parameters of `version` and evaluates them on `test`.
pub(super) fn evaluate_version(
    evaluator: &mut Evaluator,
    config: &NodeConfig,
    version: &Verified<Version>,
    bytes: Option<Bytes>,
    rows: &Rows,
    member: &medmesh_protocol::roster::Member,
) -> anyhow::Result<validate::Found> {
    let bytes = bytes.context("its author did not serve the payload")?;
    let mut params = Vec::new();
    update::decode_payload(&version.payload, &bytes, &mut params)
        .context("the payload does not match the signed version")?;
    validate::evaluate(
        evaluator,
        config,
        version.id(),
        member,
        (&rows.dataset, &rows.site),
        &params,
        &rows.test,
    )
}

/// The model `params` on `test`, run by `evaluator`'s worker, scored for the model's task.
pub(super) fn evaluate(
    evaluator: &mut Evaluator,
    config: &NodeConfig,
    params: &[f32],
    test: &Table,
) -> anyhow::Result<metrics::Evaluation> {
    let predictions = evaluator.predict(
        &config.model,
        &config.training,
        config.init_seed,
        params,
        test,
    )?;
    Ok(metrics::Evaluation::of(
        config.model.task(),
        &predictions,
        test,
    )?)
}

/// The signed reports this node holds, by model, and the certification verdict on each.
#[derive(Debug, Default)]
pub(super) struct Certifier {
    reports: HashMap<ContentId, Vec<Verified<Report>>>,
    verdicts: BTreeMap<ContentId, Certification>,
}

impl Certifier {
    /// Indexes the reports read from the store at start.
    pub(super) fn new(reports: Vec<Verified<Report>>) -> Self {
        let mut certifier = Certifier::default();
        for report in reports {
            certifier.insert(report);
        }
        certifier
    }

    /// Adds a report (a copy of one held is ignored); the model it is about.
    pub(super) fn insert(&mut self, report: Verified<Report>) -> ContentId {
        let model = report.model;
        let held = self.reports.entry(model).or_default();
        if !held.iter().any(|r| r.id() == report.id()) {
            held.push(report);
        }
        model
    }

    /// Judges `models` under `policy`; whether a verdict changed.
    pub(super) fn judge<'a>(
        &mut self,
        roster: &Roster,
        policy: &Policy,
        models: impl IntoIterator<Item = &'a ContentId>,
    ) -> bool {
        let mut changed = false;
        for model in models {
            let Some(reports) = self.reports.get(model) else {
                continue;
            };
            let verdict = policy.judge(roster, model, reports);
            if self.verdicts.get(model) == Some(&verdict) {
                continue;
            }
            if verdict.certified {
                tracing::info!(
                    model = %model,
                    validators = verdict.validators.len(),
                    countries = ?verdict.countries,
                    "model version certified"
                );
            }
            self.verdicts.insert(*model, verdict);
            changed = true;
        }
        changed
    }

    /// Judges every model with reports; whether a verdict changed.
    pub(super) fn judge_all(&mut self, roster: &Roster, policy: &Policy) -> bool {
        let models: Vec<ContentId> = self.reports.keys().copied().collect();
        self.judge(roster, policy, &models)
    }

    /// Every verdict, by model id.
    pub(super) fn verdicts(&self) -> Vec<Certification> {
        self.verdicts.values().cloned().collect()
    }

    /// The certified versions.
    pub(super) fn certified(&self) -> Vec<ContentId> {
        self.verdicts
            .values()
            .filter(|c| c.certified)
            .map(|c| c.model)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_validation_dataset_names_its_own_site_not_the_nodes() {
        let schema =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
        let own = Table::default();
        let declared = ValidationData {
            name: "partner-swiss".into(),
            schema,
            site: "switzerland".into(),
        };
        let rows = test_rows(Some(&declared), ("heart-disease", "cleveland", &own))
            .expect("the shipped data loads");
        assert_eq!(rows.site, "switzerland");
        assert!(!rows.test.is_empty());
        let rows = test_rows(None, ("heart-disease", "cleveland", &own)).expect("own");
        assert_eq!(
            (rows.dataset.as_str(), rows.site.as_str()),
            ("heart-disease", "cleveland")
        );
    }
}
