//! What a node reports when its rounds are done: its [`Outcome`], written to the config's
//! results file for the lab and scripts to read. It holds aggregate figures and the final
//! parameters, never patient data.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use medmesh_learning::metrics;
use medmesh_protocol::identity::{ContentId, Digest, MemberId};
use medmesh_protocol::validation::Certification;
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;

/// What a node reports when its rounds are done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// This member.
    pub member: MemberId,
    /// Its site.
    pub site: String,
    /// Last round completed.
    pub rounds: u64,
    /// The final model evaluated on this hospital's own test split, for the model's task
    /// (`test.task` says which: `binary` with `accuracy`, `auc`, …; `survival` with `c_index`).
    pub test: metrics::Evaluation,
    /// The final parameters.
    pub params: Vec<f32>,
    /// Digest of the final parameters (to compare peers at a glance).
    pub params_digest: Digest,
    /// Rejected messages by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Members this node excluded (equivocation, persistent outliers), in id order.
    #[serde(default)]
    pub flagged: Vec<MemberId>,
    /// Rounds that closed on their timeout.
    pub timeouts: u64,
    /// Wall time from start to the last round, seconds.
    pub seconds: f64,
    /// This member's final version (the merged model it announced after the last round).
    #[serde(default)]
    pub final_version: Option<ContentId>,
    /// Versions this member validated and reported on.
    #[serde(default)]
    pub validated: Vec<ContentId>,
    /// This hospital's personalized model (fine-tuned locally from `final_version`), once
    /// derived; its parameters are in `<store>.personal.json`.
    #[serde(default)]
    pub personalized: Option<Personalized>,
    /// The certification policy's verdict on every model version with reports, as this member
    /// judged it from the signed reports it holds (updated as reports arrive).
    #[serde(default)]
    pub certifications: Vec<Certification>,
}

/// A personalized model, as the outcome reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Personalized {
    /// The shared version it was fine-tuned from.
    pub base: Option<ContentId>,
    /// Fine-tuning steps (0: the shared model as it is).
    pub steps: usize,
    /// On this hospital's own test split.
    pub test: metrics::Evaluation,
}

/// Writes the outcome to the config's results file, if it names one.
pub(super) fn write_outcome(config: &NodeConfig, outcome: &Outcome) -> anyhow::Result<()> {
    if let Some(path) = &config.results {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(
            &mut tmp,
            (serde_json::to_string_pretty(outcome)? + "\n").as_bytes(),
        )?;
        tmp.persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Digest of parameters, to compare peers' final models at a glance.
pub(super) fn params_digest(params: &[f32]) -> Digest {
    let bytes: Vec<u8> = params.iter().flat_map(|p| p.to_le_bytes()).collect();
    Digest::of("medmesh params", &bytes)
}
