//! The hospital's personalized model (`medmesh_learning::personal`): derived from the shared
//! final model once the rounds are done, in a training worker off the event loop, tested on the
//! local test split, and kept next to the store (`<store>.personal.json`, written atomically)
//! for `medmesh export --personalized`. It is never announced; the shared version it came from
//! is recorded with it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use medmesh_learning::data::Table;
use medmesh_learning::metrics::Evaluation;
use medmesh_learning::personal::Search;
use medmesh_protocol::identity::{ContentId, MemberId};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::worker::{Setup, Worker};

/// A personalized model and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Personal {
    /// The shared version it was fine-tuned from (this member's final version).
    pub base: Option<ContentId>,
    /// The member whose model it is.
    pub member: MemberId,
    /// Its site.
    pub site: String,
    /// Fine-tuning steps from the shared model (0: the shared model as it is).
    pub steps: usize,
    /// Cross-validation parts of the training rows.
    pub folds: usize,
    /// The held-out score (`log_loss` or `partial_likelihood`; lower is better).
    pub criterion: String,
    /// Mean held-out score per step count tried.
    pub scores: Vec<(usize, f64)>,
    /// The personalized model on the local test split.
    pub test: Evaluation,
    /// Its parameters (the shared model's layout).
    pub params: Vec<f32>,
}

/// Where a node keeps its personalized model: next to its store.
pub fn path(config: &NodeConfig) -> PathBuf {
    let mut name = config
        .store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "store".into());
    name.push(".personal.json");
    config.store.with_file_name(name)
}

/// What [`derive`] needs, owned, to run on a blocking thread.
pub(super) struct Job {
    pub(super) config: NodeConfig,
    pub(super) member: MemberId,
    pub(super) base: Option<ContentId>,
    pub(super) shared: Vec<f32>,
    pub(super) train: Table,
    pub(super) test: Table,
}

/// Derives, tests and stores the personalized model (blocking: a worker process trains it).
pub(super) fn derive(job: Job) -> anyhow::Result<Personal> {
    let Job {
        config,
        member,
        base,
        shared,
        train,
        test,
    } = job;
    let search: Search = config.personal_search();
    let mut worker = Worker::start()?;
    worker.build(&Setup {
        spec: config.model.clone(),
        training: config.training.clone(),
        init_seed: config.init_seed,
        data: train,
    })?;
    let found = worker
        .personalize(&shared, search)
        .context("deriving the personalized model")?;
    let predictions = worker.predict(&found.params, &test)?;
    let evaluation = Evaluation::of(config.model.task(), &predictions, &test)
        .context("testing the personalized model")?;
    let personal = Personal {
        base,
        member,
        site: config.data.site.clone(),
        steps: found.steps,
        folds: found.folds,
        criterion: found.criterion,
        scores: found.scores,
        test: evaluation,
        params: found.params,
    };
    write(&path(&config), &personal)?;
    Ok(personal)
}

/// Writes `personal` to `path` atomically (a temporary file, synced, renamed over it), so a
/// `kill -9` leaves either the old file or the new one.
fn write(path: &Path, personal: &Personal) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    std::io::Write::write_all(
        &mut tmp,
        (serde_json::to_string_pretty(personal)? + "\n").as_bytes(),
    )?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads the personalized model a node stored; a clear error when there is none or the file is
/// damaged.
pub fn read(config: &NodeConfig) -> anyhow::Result<Personal> {
    let path = path(config);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no personalized model at {} (a hospital derives it when its rounds are done, with \
             `[personalization] enabled`)",
            path.display()
        )
    })?;
    let personal: Personal = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a personalized model", path.display()))?;
    anyhow::ensure!(
        personal.params.iter().all(|p| p.is_finite()),
        "{}: the personalized model has non-finite parameters",
        path.display()
    );
    Ok(personal)
}
