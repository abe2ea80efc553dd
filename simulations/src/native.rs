//! A fast native logistic-regression learner for simulations with thousands of peers, where one
//! libtorch model per peer would cost too much memory and start-up time.
//!
//! Parameters use the same flat layout as the node's `TchLearner` for `ModelSpec::Logistic`
//! (`[bias, w_0 … w_{d-1}]`: variables sorted by name, `layer0.bias` before `layer0.weight`), so
//! vectors move between the two. Training is mini-batch SGD on binary cross-entropy with
//! shuffled epochs, deterministic from a seed. Pure Rust, no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use medmesh_learning::data::Table;
use medmesh_learning::metrics;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{Evaluate, Learner, Score};

/// One peer's local data and training state.
#[derive(Debug, Clone)]
pub struct Local {
    /// Training rows.
    pub train: Table,
    /// Test rows (often one table shared by many peers).
    pub test: Arc<Table>,
    order: Vec<usize>,
    cursor: usize,
    rng: ChaCha8Rng,
}

impl Local {
    /// A peer's data, with its batch order seeded by `seed`.
    pub fn new(train: Table, test: impl Into<Arc<Table>>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..train.rows).collect();
        order.shuffle(&mut rng);
        Self {
            train,
            test: test.into(),
            order,
            cursor: 0,
            rng,
        }
    }
}

/// Logistic regression for every peer of a simulation.
#[derive(Debug, Clone)]
pub struct Logistic {
    /// Per-peer data.
    pub peers: Vec<Local>,
    /// Learning rate.
    pub lr: f32,
    /// Batch size.
    pub batch_size: usize,
    /// SGD steps per round.
    pub local_steps: usize,
    grad: Vec<f32>,
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// The logit of one row.
pub fn logit(params: &[f32], row: &[f32]) -> f32 {
    params[0] + params[1..].iter().zip(row).map(|(w, x)| w * x).sum::<f32>()
}

/// Accuracy at threshold 0.5 of `params` on `table` (0 for an empty table).
pub fn accuracy(params: &[f32], table: &Table) -> f64 {
    if table.rows == 0 {
        return 0.0;
    }
    let correct = (0..table.rows)
        .filter(|&i| {
            let predicted = logit(params, table.row(i)) > 0.0;
            predicted == (table.y[i] > 0.5)
        })
        .count();
    correct as f64 / table.rows as f64
}

impl Logistic {
    /// A learner over `peers` with SGD settings.
    pub fn new(peers: Vec<Local>, lr: f32, batch_size: usize, local_steps: usize) -> Self {
        let dim = peers.first().map_or(1, |p| p.train.cols + 1);
        Self {
            peers,
            lr,
            batch_size: batch_size.max(1),
            local_steps,
            grad: vec![0.0; dim],
        }
    }

    /// Parameter count (features + bias).
    pub fn dim(&self) -> usize {
        self.grad.len()
    }

    fn step(&mut self, peer: usize, params: &mut [f32]) -> f32 {
        let local = &mut self.peers[peer];
        if local.train.rows == 0 {
            return 0.0;
        }
        if local.cursor >= local.train.rows {
            local.order.shuffle(&mut local.rng);
            local.cursor = 0;
        }
        let end = (local.cursor + self.batch_size).min(local.train.rows);
        self.grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        for &i in &local.order[local.cursor..end] {
            let row = local.train.row(i);
            let p = sigmoid(logit(params, row));
            let y = local.train.y[i];
            loss -= if y > 0.5 {
                p.max(1e-7).ln()
            } else {
                (1.0 - p).max(1e-7).ln()
            };
            let e = p - y;
            self.grad[0] += e;
            for (g, x) in self.grad[1..].iter_mut().zip(row) {
                *g += e * x;
            }
        }
        let n = (end - local.cursor) as f32;
        local.cursor = end;
        for (w, g) in params.iter_mut().zip(&self.grad) {
            *w -= self.lr * g / n;
        }
        loss / n
    }
}

impl Learner for Logistic {
    fn train(&mut self, peer: usize, _round: u64, params: &mut [f32]) -> BTreeMap<String, f64> {
        let mut total = 0.0;
        for _ in 0..self.local_steps {
            total += f64::from(self.step(peer, params));
        }
        let mut metrics = BTreeMap::new();
        let loss = total / self.local_steps.max(1) as f64;
        if loss.is_finite() {
            metrics.insert("loss".to_owned(), loss);
        }
        metrics
    }
}

/// Accuracy (as [`accuracy`]), loss and AUC of `params` on `table`: the loss and AUC are
/// `medmesh_learning::metrics::binary`'s `log_loss` and `auc` of the predicted probabilities,
/// as the node's libtorch learner reports them (`None` when the model's outputs are not finite,
/// and the AUC when the table holds one class only).
pub fn score(params: &[f32], table: &Table) -> Score {
    if table.rows == 0 {
        return Score {
            accuracy: 0.0,
            loss: None,
            auc: None,
            c_index: None,
        };
    }
    let logits: Vec<f32> = (0..table.rows)
        .map(|i| logit(params, table.row(i)))
        .collect();
    // Exactly [`accuracy`]'s count, from the same logits.
    let correct = logits
        .iter()
        .zip(&table.y)
        .filter(|(z, y)| (**z > 0.0) == (**y > 0.5))
        .count();
    let accuracy = correct as f64 / table.rows as f64;
    let probs: Vec<f32> = logits.into_iter().map(sigmoid).collect();
    let scored = metrics::binary(&probs, &table.y, 0.5).ok();
    Score {
        accuracy,
        loss: scored.map(|b| b.log_loss),
        auc: scored.and_then(|b| b.auc),
        c_index: None,
    }
}

impl Evaluate for Logistic {
    fn accuracy(&self, peer: usize, params: &[f32]) -> f64 {
        self.peers
            .get(peer)
            .map_or(0.0, |local| accuracy(params, &local.test))
    }

    fn score(&self, peer: usize, params: &[f32]) -> Score {
        self.peers.get(peer).map_or(
            Score {
                accuracy: 0.0,
                loss: None,
                auc: None,
                c_index: None,
            },
            |local| score(params, &local.test),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize) -> Table {
        // y = 1 when x0 + x1 > 0.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..rows {
            let a = ((i * 37) % 101) as f32 / 50.0 - 1.0;
            let b = ((i * 61) % 97) as f32 / 48.0 - 1.0;
            x.extend([a, b]);
            y.push(if a + b > 0.0 { 1.0 } else { 0.0 });
        }
        Table {
            x,
            rows,
            cols: 2,
            y,
            time: vec![],
            event: vec![],
        }
    }

    #[test]
    fn learns_a_linear_boundary_deterministically() {
        let run = || {
            let local = Local::new(table(400), table(200), 3);
            let mut learner = Logistic::new(vec![local], 0.5, 16, 200);
            let mut params = vec![0.0; learner.dim()];
            learner.train(0, 1, &mut params);
            (accuracy(&params, &learner.peers[0].test), params)
        };
        let (acc, params) = run();
        assert!(acc > 0.95, "accuracy {acc}");
        assert_eq!(run().1, params, "same seed, same model");
        assert!(params[1] > 0.0 && params[2] > 0.0);
    }

    #[test]
    fn the_score_agrees_with_accuracy_and_ranks_a_learnt_model_above_chance() {
        let test = table(200);
        let local = Local::new(table(400), test.clone(), 3);
        let mut learner = Logistic::new(vec![local], 0.5, 16, 200);
        let untrained = learner.score(0, &[0.0, 0.0, 0.0]);
        // All probabilities 0.5: loss ln 2, every score tied (AUC 0.5).
        assert!((untrained.loss.expect("loss") - 2f64.ln()).abs() < 1e-6);
        assert_eq!(untrained.auc, Some(0.5));
        let mut params = vec![0.0; learner.dim()];
        learner.train(0, 1, &mut params);
        let trained = learner.score(0, &params);
        assert_eq!(trained.accuracy, accuracy(&params, &test));
        assert!(trained.loss.expect("loss") < 2f64.ln(), "{trained:?}");
        assert!(trained.auc.expect("auc") > 0.95, "{trained:?}");
        // A model whose outputs are not finite has no loss or AUC, and no panic.
        let broken = score(&[f32::NAN, 1.0, 1.0], &test);
        assert_eq!((broken.loss, broken.auc), (None, None));
        // One class only: no AUC, a loss still.
        let mut ones = test.clone();
        ones.y.iter_mut().for_each(|y| *y = 1.0);
        let one_class = score(&params, &ones);
        assert!(one_class.loss.is_some() && one_class.auc.is_none());
    }
}
