//! The node's libtorch trainer inside the simulator: one `TchLearner` per peer, any model the node
//! trains (logistic, MLP, linear Cox, a TorchScript module), so a scenario can study the very
//! model a mesh will train, scored as the node scores it: accuracy, log-loss and AUC for a binary
//! task, Harrell's C-index for survival. Each peer costs a libtorch model and optimizer (tens of
//! peers; the native learner is the one for thousands).
//!
//! With DP-SGD the simulator always sets [`DpConfig::seeded_noise`]: a simulation has no patients
//! to protect, and its runs must repeat from their seed. (A node refuses that setting.)

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use medmesh_learning::data::{Table, Task};
use medmesh_learning::learner::{Learner as _, ModelSpec, Optimizer, TrainConfig};
use medmesh_learning::metrics::Evaluation;
use medmesh_learning::privacy::DpConfig;
use medmesh_trainer::learner::TchLearner;

use crate::{Evaluate, Learner, Score};

/// One libtorch learner per peer, with the peer's test rows.
pub struct Torch {
    /// What the model's outputs mean, and so how it is scored.
    task: Task,
    peers: Vec<(RefCell<TchLearner>, Arc<Table>)>,
    init: Vec<f32>,
    local_steps: usize,
    /// The first error libtorch reported during the run (a run with one fails).
    failure: Option<String>,
}

impl std::fmt::Debug for Torch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Torch")
            .field("peers", &self.peers.len())
            .field("dim", &self.init.len())
            .finish()
    }
}

impl Torch {
    /// A learner of `spec` per peer on its `(train, test)` rows, trained as `training` says
    /// (plain SGD with its `lr`, `batch_size` and `local_steps` per round, its `init`, DP-SGD
    /// with its `dp`), batch order (and DP noise, always seeded here) seeded by `seed` and the
    /// peer's index. Every peer starts from the same parameters (`init` from `seed`).
    pub fn new(
        spec: &ModelSpec,
        data: Vec<(Table, Arc<Table>)>,
        training: &TrainConfig,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let mut peers = Vec::with_capacity(data.len());
        for (i, (train, test)) in data.into_iter().enumerate() {
            let config = TrainConfig {
                optimizer: Optimizer::Sgd { momentum: 0.0 },
                seed: seed.wrapping_add(i as u64),
                threads: 1,
                dp: training.dp.map(|dp| DpConfig {
                    seeded_noise: true,
                    ..dp
                }),
                ..training.clone()
            };
            let learner = TchLearner::new(spec.clone(), config, seed, &train)
                .map_err(|e| anyhow::anyhow!("peer {i}: {e}"))?;
            peers.push((RefCell::new(learner), test));
        }
        let init = peers
            .first()
            .map(|(l, _)| l.borrow().params())
            .unwrap_or_default();
        Ok(Self {
            task: spec.task(),
            peers,
            init,
            local_steps: training.local_steps,
            failure: None,
        })
    }

    /// Parameter count of the model.
    pub fn dim(&self) -> usize {
        self.init.len()
    }

    /// The shared initial parameters.
    pub fn init(&self) -> &[f32] {
        &self.init
    }

    /// The first error of the run, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

impl Learner for Torch {
    fn train(&mut self, peer: usize, round: u64, params: &mut [f32]) -> BTreeMap<String, f64> {
        let steps = self.local_steps;
        let Some((learner, _)) = self.peers.get(peer) else {
            return BTreeMap::new();
        };
        let mut learner = learner.borrow_mut();
        let trained = learner.load(params).and_then(|()| learner.train(steps));
        match trained {
            Ok(metrics) => {
                params.copy_from_slice(&learner.params());
                metrics
            }
            Err(e) => {
                // Left untrained; the run reports it when it ends.
                self.failure
                    .get_or_insert_with(|| format!("peer {peer}, round {round}: {e}"));
                BTreeMap::new()
            }
        }
    }
}

impl Evaluate for Torch {
    /// Accuracy of a binary model (0 if evaluation fails); NaN for a survival model, which has
    /// none.
    fn accuracy(&self, peer: usize, params: &[f32]) -> f64 {
        self.score(peer, params).accuracy
    }

    /// The node's own evaluation (`medmesh_learning::metrics::Evaluation` of the model's
    /// outputs): accuracy, `log_loss` and AUC of a binary model (0 / `None` when evaluation
    /// fails), the C-index of a survival model (accuracy NaN, and no C-index when evaluation
    /// fails).
    fn score(&self, peer: usize, params: &[f32]) -> Score {
        let failed = Score {
            accuracy: match self.task {
                Task::Binary => 0.0,
                Task::Survival => f64::NAN,
            },
            loss: None,
            auc: None,
            c_index: None,
        };
        let Some((learner, test)) = self.peers.get(peer) else {
            return failed;
        };
        let mut learner = learner.borrow_mut();
        learner
            .load(params)
            .and_then(|()| learner.evaluate(test))
            .map_or(failed, |m| match m {
                Evaluation::Binary(b) => Score {
                    accuracy: b.accuracy,
                    loss: Some(b.log_loss),
                    auc: b.auc,
                    c_index: None,
                },
                Evaluation::Survival(s) => Score {
                    c_index: s.c_index,
                    ..failed
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two peers of 60 rows, two noisy classes on three features.
    fn data() -> Vec<(Table, Arc<Table>)> {
        let table = |offset: usize| {
            let rows = 60;
            let mut x = Vec::with_capacity(rows * 3);
            let mut y = Vec::with_capacity(rows);
            for i in 0..rows {
                let label = ((i + offset) % 2) as f32;
                let sign = 2.0 * label - 1.0;
                let wobble = ((i * 7919 + offset) % 17) as f32 / 17.0 - 0.5;
                x.extend([sign + wobble, 0.5 * sign - wobble, wobble]);
                y.push(label);
            }
            Table {
                x,
                rows,
                cols: 3,
                y,
                time: vec![],
                event: vec![],
            }
        };
        (0..2)
            .map(|peer| (table(peer), Arc::new(table(peer + 7))))
            .collect()
    }

    /// Two rounds of every peer; the parameters and metrics of each.
    fn run(seed: u64) -> Vec<(Vec<f32>, BTreeMap<String, f64>)> {
        let spec = ModelSpec::Logistic { inputs: 3 };
        let mut torch = Torch::new(
            &spec,
            data(),
            &TrainConfig {
                lr: 0.1,
                batch_size: 6,
                local_steps: 5,
                dp: Some(DpConfig::default()),
                ..TrainConfig::default()
            },
            seed,
        )
        .expect("builds");
        let mut out = Vec::new();
        for peer in 0..2 {
            let mut params = torch.init().to_vec();
            for round in 1..=2 {
                let metrics = torch.train(peer, round, &mut params);
                out.push((params.clone(), metrics));
            }
        }
        assert_eq!(torch.failure(), None);
        out
    }

    #[test]
    fn dp_in_the_simulator_repeats_from_the_seed() {
        let first = run(42);
        assert_eq!(first, run(42), "same seed, same noise");
        assert_ne!(first, run(43), "another seed, other noise");
        let (_, metrics) = &first[1];
        assert_eq!(metrics.keys().collect::<Vec<_>>(), ["epsilon"]);
        assert!(metrics["epsilon"] > first[0].1["epsilon"], "ε grows");
    }
}
