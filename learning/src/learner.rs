//! What every member of an experiment agrees on about local training: the model
//! ([`ModelSpec`]), how it is trained ([`TrainConfig`]) and the boundary between the protocol and
//! a learner ([`Learner`]).
//!
//! The protocol's `Peer` never sees tensors: it hands out and takes back one flat `Vec<f32>` of
//! parameters plus a sample count and metrics. The learner for these specs is libtorch's, through
//! `tch`, in the `medmesh-trainer` crate; the node reaches it through the `medmesh-train` worker
//! process (its frames are [`crate::frame`]), so the long-running peer never loads libtorch itself.
//!
//! **Parameter order.** A model's parameters flatten in the order of their variable names sorted
//! as byte strings (for built-in models `layer0.bias`, `layer0.weight`, `layer1.bias`, …; for
//! TorchScript modules the module's own parameter names with `.` replaced by `_`), each tensor
//! row-major. Loading the same vector into a fresh model of the same spec restores it
//! bit-exactly; the spec's digest ([`ModelSpec::digest`]) is what peers compare before averaging.

use std::collections::BTreeMap;
use std::path::PathBuf;

use medmesh_protocol::identity::Digest;
use serde::{Deserialize, Serialize};

use crate::data::Task;
use crate::metrics;
use crate::privacy::{self, DpConfig};

/// What can go wrong when building, training or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libtorch refused an operation.
    #[error("libtorch: {0}")]
    Torch(String),
    /// The training worker process failed, or could not be started.
    #[error("training worker: {0}")]
    Worker(String),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data does not fit the model.
    #[error("data does not fit the model: {0}")]
    Data(String),
    /// A parameter vector of the wrong length.
    #[error("parameter vector has {found} values, the model has {expected}")]
    Shape {
        /// Model size.
        expected: usize,
        /// Given size.
        found: usize,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Metrics could not be computed (e.g. a diverged model).
    #[error("metrics: {0}")]
    Metrics(#[from] metrics::Error),
    /// Differential privacy refused: the hospital's budget is spent ([`privacy::Error::Budget`]),
    /// or a stored accountant state does not check.
    #[error("{0}")]
    Privacy(#[from] privacy::Error),
    /// The operating system's random source, which DP-SGD's noise is drawn from, failed.
    #[error("the operating system's random source failed: {0}")]
    Entropy(String),
}

/// The model every member of an experiment trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Logistic regression: one linear layer to a logit.
    Logistic {
        /// Number of input features.
        inputs: i64,
    },
    /// Multi-layer perceptron with ReLU activations, ending in one logit.
    Mlp {
        /// Number of input features.
        inputs: i64,
        /// Hidden layer widths.
        hidden: Vec<i64>,
    },
    /// Linear Cox proportional-hazards model (no intercept), trained on the Breslow partial
    /// likelihood; its output is a log-risk score.
    Cox {
        /// Number of input features.
        inputs: i64,
    },
    /// A TorchScript module (`torch.jit.script(model).save(path)`) mapping a `[batch, inputs]`
    /// float tensor to `[batch]` or `[batch, 1]` outputs: logits for a binary task, log-risk
    /// scores for survival.
    TorchScript {
        /// The `.pt` file, relative to the working directory.
        path: PathBuf,
        /// What the outputs mean.
        task: TaskKind,
    },
}

/// The task a TorchScript module solves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Binary classification (outputs are logits).
    Binary,
    /// Survival (outputs are log-risk scores).
    Survival,
}

impl ModelSpec {
    /// The built-in model a dataset of `task` trains by default: logistic regression for a
    /// binary task, the linear Cox model for survival (FLamby's `Linear(39, 1)` for
    /// Fed-TCGA-BRCA, without its bias, which the Cox partial likelihood cannot see).
    pub fn for_task(task: Task, inputs: i64) -> ModelSpec {
        match task {
            Task::Binary => ModelSpec::Logistic { inputs },
            Task::Survival => ModelSpec::Cox { inputs },
        }
    }

    /// The task the model solves.
    pub fn task(&self) -> Task {
        match self {
            ModelSpec::Logistic { .. } | ModelSpec::Mlp { .. } => Task::Binary,
            ModelSpec::Cox { .. } => Task::Survival,
            ModelSpec::TorchScript { task, .. } => match task {
                TaskKind::Binary => Task::Binary,
                TaskKind::Survival => Task::Survival,
            },
        }
    }

    /// Digest identifying the architecture and parameter order: peers only average vectors of
    /// the same spec. For TorchScript it covers the module file's bytes.
    pub fn digest(&self) -> Result<Digest, Error> {
        let mut bytes = serde_json::to_vec(self).map_err(|e| Error::Config(e.to_string()))?;
        if let ModelSpec::TorchScript { path, .. } = self {
            let module = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            bytes.extend_from_slice(Digest::of("medmesh torchscript file", &module).as_bytes());
        }
        Ok(Digest::of("medmesh 2026-11 model spec v1", &bytes))
    }

    /// Names and shapes of a built-in model's tensors, in the order its parameters flatten
    /// (the trainer's layers are `layer0`, `layer1`, …, each a `weight` of `[out, in]` and a
    /// `bias` of `[out]`, ordered by name), computed without building the model; `None` for a
    /// TorchScript module, whose tensors only loading it tells. Export and offline
    /// verification rely on it, so a bundle checks on a machine without libtorch.
    pub fn layout(&self) -> Option<Layout> {
        let layers: Vec<(i64, i64, bool)> = match self {
            ModelSpec::Logistic { inputs } => vec![(*inputs, 1, true)],
            ModelSpec::Cox { inputs } => vec![(*inputs, 1, false)],
            ModelSpec::Mlp { inputs, hidden } => {
                let mut widths = vec![*inputs];
                widths.extend(hidden);
                widths.push(1);
                widths.windows(2).map(|w| (w[0], w[1], true)).collect()
            }
            ModelSpec::TorchScript { .. } => return None,
        };
        let mut layout = Vec::with_capacity(2 * layers.len());
        for (i, (inputs, outputs, bias)) in layers.into_iter().enumerate() {
            if bias {
                layout.push((format!("layer{i}.bias"), vec![outputs]));
            }
            layout.push((format!("layer{i}.weight"), vec![outputs, inputs]));
        }
        layout.sort_by(|a, b| a.0.cmp(&b.0));
        Some(layout)
    }

    /// Checks sizes: every width between 1 and 2^24.
    pub fn check(&self) -> Result<(), Error> {
        let positive = |n: i64, what: &str| {
            if (1..=1 << 24).contains(&n) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{what} must be between 1 and 2^24, not {n}"
                )))
            }
        };
        match self {
            ModelSpec::Logistic { inputs } | ModelSpec::Cox { inputs } => {
                positive(*inputs, "inputs")
            }
            ModelSpec::Mlp { inputs, hidden } => {
                positive(*inputs, "inputs")?;
                hidden.iter().try_for_each(|h| positive(*h, "hidden width"))
            }
            ModelSpec::TorchScript { .. } => Ok(()),
        }
    }
}

/// Names and shapes of a model's tensors, in the order its parameters flatten.
pub type Layout = Vec<(String, Vec<i64>)>;

/// A federated training budget: rounds, and each member's local plain-SGD steps per round, batch
/// size and learning rate; with the outer optimizer that suits it. [`Budget::for_task`] gives the
/// one the shipped dataset of a task is benchmarked with, which local meshes and config
/// templates start from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Rounds of decentralized training.
    pub rounds: u64,
    /// Optimizer steps per round.
    pub local_steps: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// SGD learning rate.
    pub lr: f64,
    /// The outer optimizer on each round's merge (`None`: plain averaging), the winner of the
    /// simulator's sweep for the task (`simulations/scenarios/compare-outer-node.toml`,
    /// `compare-outer-tcga.toml`).
    pub outer: Option<medmesh_protocol::peer::Outer>,
}

impl Budget {
    /// The budget of `task`'s shipped dataset:
    ///
    /// - **binary** (Fed-Heart-Disease): FLamby's 15 rounds × 100 steps of batch 4 (its
    ///   `get_nb_max_rounds(100)`), with lr 0.01, the mesh's since its first release;
    /// - **survival** (Fed-TCGA-BRCA): FLamby's FedAvg, 5 rounds × 100 steps of batch 8 with SGD
    ///   lr 0.1. Source: FLamby (github.com/owkin/FLamby, commit
    ///   `edacf54d5211520583b0133d55ac39b6fda8324b`), `flamby/datasets/fed_tcga_brca/common.py`
    ///   (`BATCH_SIZE = 8`, `NUM_EPOCHS_POOLED = 30`, `get_nb_max_rounds(num_updates)` =
    ///   (866 // 6 // 8) × 30 // 100 = 5), `flamby/benchmarks/fed_benchmark.py`
    ///   (`num_updates = 100`) and `flamby/config_tcga_brca.json` (`FedAvg`: `torch.optim.SGD`,
    ///   `learning_rate` 0.1).
    ///
    /// The outer optimizers: decentralized FedAdam at outer lr 0.025 for binary (the protocol's
    /// default, `Outer::RECOMMENDED`; mean accuracy 0.747 against 0.725 plain over seeds
    /// 42–46), FedAdam at outer lr 0.4 for survival (`Outer::SURVIVAL`; mean C-index 0.833
    /// against 0.729 plain; at 0.025 it moves a Cox model too little in 5 rounds).
    pub fn for_task(task: Task) -> Budget {
        match task {
            Task::Binary => Budget {
                rounds: 15,
                local_steps: 100,
                batch_size: 4,
                lr: 0.01,
                outer: Some(medmesh_protocol::peer::Outer::RECOMMENDED),
            },
            Task::Survival => Budget {
                rounds: 5,
                local_steps: 100,
                batch_size: 8,
                lr: 0.1,
                outer: Some(medmesh_protocol::peer::Outer::SURVIVAL),
            },
        }
    }
}

/// Optimizer of local training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Stochastic gradient descent.
    Sgd {
        /// Momentum (0 for plain SGD).
        #[serde(default)]
        momentum: f64,
    },
    /// Adam with PyTorch's default betas (0.9, 0.999) and eps 1e-8.
    Adam,
}

/// Where a model's parameters start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Zeros for a linear model (logistic regression, linear Cox), libtorch's initialization
    /// otherwise.
    #[default]
    Auto,
    /// libtorch's default initialization (Kaiming-uniform weights, uniform biases), drawn from
    /// the experiment's `init_seed`.
    Libtorch,
    /// Every parameter zero: the usual start of a convex linear model. Refused for an MLP (its
    /// hidden units would never differ) and for TorchScript modules (they bring their own).
    /// A model that starts at zero is only as far from the origin as training takes it, which
    /// regularizes it when the budget is short; on Fed-Heart-Disease, with the outer optimizer,
    /// that is worth about three points of accuracy over libtorch's start
    /// (simulations/scenarios/compare-init.toml).
    Zeros,
}

impl Init {
    /// Whether the model of `spec` starts from zeros.
    pub fn zeros_for(self, spec: &ModelSpec) -> bool {
        let linear = matches!(spec, ModelSpec::Logistic { .. } | ModelSpec::Cox { .. });
        match self {
            Init::Auto => linear,
            Init::Libtorch => false,
            Init::Zeros => true,
        }
    }

    /// Checks that `spec` can start this way.
    pub fn check(self, spec: &ModelSpec) -> Result<(), Error> {
        if self == Init::Zeros
            && !matches!(spec, ModelSpec::Logistic { .. } | ModelSpec::Cox { .. })
        {
            return Err(Error::Config(
                "init = \"zeros\" needs a linear model (logistic or cox): an MLP's hidden units \
                 would stay identical, a TorchScript module brings its own"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// How a hospital trains locally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Where the parameters start (with `init_seed`, the shared initialization).
    pub init: Init,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// Learning rate.
    pub lr: f64,
    /// Batch size (expected batch size under DP-SGD's Poisson sampling).
    pub batch_size: usize,
    /// Optimizer steps per round.
    pub local_steps: usize,
    /// Seed of batch order (and of DP-SGD's sampling and noise only with
    /// [`DpConfig::seeded_noise`], for simulations and tests: by default those come from the
    /// operating system).
    pub seed: u64,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Differentially private SGD, if set.
    pub dp: Option<DpConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        // FLamby's Fed-Heart-Disease settings.
        Self {
            init: Init::Auto,
            optimizer: Optimizer::Adam,
            lr: 0.001,
            batch_size: 4,
            local_steps: 100,
            seed: 42,
            threads: 1,
            dp: None,
        }
    }
}

/// The largest local learning rate a [`TrainConfig`] accepts (far above any that trains).
pub const MAX_LR: f64 = 1000.0;

impl TrainConfig {
    /// Checks the rules spanning fields.
    pub fn check(&self) -> Result<(), Error> {
        // libtorch's optimizers compute in floats: Adam's first step divides the rate by
        // 1 − β₁, and a rate near the float's limit makes the step fail inside libtorch.
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= MAX_LR) {
            return Err(Error::Config(format!(
                "lr must be positive and at most {MAX_LR}, not {}",
                self.lr
            )));
        }
        if self.batch_size == 0 || self.local_steps == 0 {
            return Err(Error::Config(
                "batch_size and local_steps must be positive".into(),
            ));
        }
        if !(1..=256).contains(&self.threads) {
            return Err(Error::Config("threads must be between 1 and 256".into()));
        }
        if let Optimizer::Sgd { momentum } = self.optimizer
            && !(0.0..1.0).contains(&momentum)
        {
            return Err(Error::Config("momentum must be in [0, 1)".into()));
        }
        if let Some(dp) = &self.dp {
            dp.check().map_err(|e| Error::Config(e.to_string()))?;
        }
        Ok(())
    }
}

/// The boundary between the protocol and local training.
pub trait Learner {
    /// Number of parameters.
    fn dim(&self) -> usize;
    /// Number of local training samples (the averaging weight).
    fn samples(&self) -> usize;
    /// The current parameters, flattened in the documented order.
    fn params(&self) -> Vec<f32>;
    /// Replaces the parameters.
    fn load(&mut self, params: &[f32]) -> Result<(), Error>;
    /// Trains `steps` optimizer steps from the current parameters; returns training metrics
    /// (the published ones: under DP-SGD no figure computed from the private batches but ε).
    fn train(&mut self, steps: usize) -> Result<BTreeMap<String, f64>, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learning_rate_libtorch_cannot_take_is_refused() {
        let with = |lr| TrainConfig {
            lr,
            ..TrainConfig::default()
        };
        assert!(with(0.01).check().is_ok());
        assert!(with(MAX_LR).check().is_ok());
        for lr in [
            0.0,
            -0.1,
            f64::NAN,
            f64::INFINITY,
            1e300,
            f64::from(f32::MAX),
        ] {
            let err = with(lr).check().expect_err("refused").to_string();
            assert!(
                err.contains("lr must be positive and at most"),
                "{lr}: {err}"
            );
        }
    }
}
