//! A synthetic "heart-disease-like" binary task, for runs with more peers than any real dataset
//! has hospitals.
//!
//! Like Fed-Heart-Disease it has 13 standardized features (by default), some of them ±1
//! indicators (as sex or fasting blood sugar are), roughly balanced classes and an accuracy
//! ceiling near 0.8. Labels come from a ground-truth logistic model drawn from the seed:
//! `P(y = 1 | x) = σ(w·x + b)`, with the weights scaled so that the logit has standard deviation
//! [`Spec::signal`] over the population, and then a fraction [`Spec::label_noise`] of labels is
//! flipped at random. Peers can differ in two ways:
//! - **label skew**: with [`Spec::alpha`], each peer's share of positives is drawn from
//!   Dirichlet(α, α) (small α: very unbalanced peers), as the `dirichlet` split does for real
//!   data;
//! - **feature shift**: with [`Spec::shift`] > 0, each peer's features are offset by its own
//!   Gaussian mean (covariate shift; the ground truth stays the same).
//!
//! One held-out test set, drawn from the whole population (each row from a random peer's feature
//! distribution, with the population's label balance), is shared by every peer, so accuracy is
//! comparable across peers and memory does not grow with their number.
//!
//! Everything is a function of the spec and the seed; nothing here reads a file or a clock.

use medmesh_learning::data::Table;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, StandardNormal};
use serde::{Deserialize, Serialize};

/// Tries per row to draw a row of a peer's wanted class under label skew before taking whatever
/// came (only reached when one class is vanishingly rare).
const MAX_TRIES: usize = 1000;

/// Shape of a synthetic task, as written in a scenario's `[data]` section:
/// `split = { kind = "synthetic", peers = 64, samples = 60, alpha = 0.5 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spec {
    /// Number of peers.
    pub peers: usize,
    /// Training rows per peer.
    pub samples: usize,
    /// Rows of the shared held-out test set.
    pub test_samples: usize,
    /// Features per row.
    pub features: usize,
    /// Standard deviation of the ground-truth logit over the population: how separable the
    /// classes are (2.5 gives a Bayes accuracy near 0.83 before label noise).
    pub signal: f64,
    /// Probability that a label is flipped, in train and test rows alike.
    pub label_noise: f64,
    /// Label skew: each peer's share of positives drawn from Dirichlet(`alpha`, `alpha`);
    /// `None` = every peer has the population's balance.
    pub alpha: Option<f64>,
    /// Feature shift: standard deviation of each peer's offset of every feature mean (0 = none).
    pub shift: f64,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            peers: 64,
            samples: 60,
            test_samples: 1000,
            features: 13,
            signal: 2.5,
            label_noise: 0.05,
            alpha: None,
            shift: 0.0,
        }
    }
}

/// Why a spec cannot be generated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A field is out of range.
    #[error("invalid synthetic task: {0}")]
    Invalid(&'static str),
}

/// A generated task: one training table per peer and the shared test table.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    /// Training rows of each peer.
    pub train: Vec<Table>,
    /// The held-out test rows, shared by all peers.
    pub test: Table,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// The ground truth and how one peer's rows are drawn.
struct Truth {
    weights: Vec<f64>,
    bias: f64,
    noise: f64,
}

impl Truth {
    /// One row with features offset by `shift` (may be empty): features appended to `x`, label
    /// returned.
    fn draw(&self, rng: &mut ChaCha8Rng, shift: &[f64], x: &mut Vec<f32>) -> f32 {
        let mut logit = self.bias;
        for (j, w) in self.weights.iter().enumerate() {
            let z = normal(rng);
            // Every third feature is a ±1 indicator (standardized: mean 0, variance 1).
            let mut v = if j % 3 == 2 { z.signum() } else { z };
            if let Some(s) = shift.get(j) {
                v += s;
            }
            logit += w * v;
            x.push(v as f32);
        }
        let p = 1.0 / (1.0 + (-logit).exp());
        let mut y = rng.random_bool(p.clamp(0.0, 1.0));
        if self.noise > 0.0 && rng.random_bool(self.noise) {
            y = !y;
        }
        if y { 1.0 } else { 0.0 }
    }
}

impl Spec {
    /// Checks ranges.
    pub fn check(&self) -> Result<(), Error> {
        if self.peers < 2 {
            return Err(Error::Invalid("at least 2 peers"));
        }
        if self.samples == 0 || self.test_samples == 0 || self.features == 0 {
            return Err(Error::Invalid(
                "samples, test_samples and features must be positive",
            ));
        }
        if !(self.signal.is_finite() && self.signal > 0.0) {
            return Err(Error::Invalid("signal must be positive"));
        }
        if !(0.0..0.5).contains(&self.label_noise) {
            return Err(Error::Invalid("label_noise must be in [0, 0.5)"));
        }
        if self.alpha.is_some_and(|a| !(a.is_finite() && a > 0.0)) {
            return Err(Error::Invalid("alpha must be positive"));
        }
        if !(self.shift.is_finite() && self.shift >= 0.0) {
            return Err(Error::Invalid("shift must be finite and not negative"));
        }
        Ok(())
    }

    /// Generates the task for `seed`.
    pub fn generate(&self, seed: u64) -> Result<Data, Error> {
        self.check()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e7_7e71c);
        let raw: Vec<f64> = (0..self.features).map(|_| normal(&mut rng)).collect();
        // Features have unit variance and are independent, so the logit's standard deviation is
        // the weights' norm.
        let norm = raw.iter().map(|w| w * w).sum::<f64>().sqrt().max(1e-12);
        let truth = Truth {
            weights: raw.iter().map(|w| w * self.signal / norm).collect(),
            bias: 0.25 * normal(&mut rng),
            noise: self.label_noise,
        };
        let shifts: Vec<Vec<f64>> = (0..self.peers)
            .map(|_| {
                if self.shift > 0.0 {
                    (0..self.features)
                        .map(|_| self.shift * normal(&mut rng))
                        .collect()
                } else {
                    Vec::new()
                }
            })
            .collect();
        let shares: Vec<Option<f64>> = match self.alpha {
            Some(alpha) => {
                let gamma =
                    Gamma::new(alpha, 1.0).map_err(|_| Error::Invalid("alpha must be positive"))?;
                (0..self.peers)
                    .map(|_| {
                        let a: f64 = gamma.sample(&mut rng);
                        let b: f64 = gamma.sample(&mut rng);
                        Some(if a + b > 0.0 { a / (a + b) } else { 0.5 })
                    })
                    .collect()
            }
            None => vec![None; self.peers],
        };
        let train = (0..self.peers)
            .map(|p| {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (p as u64 + 1),
                );
                let mut table = Table {
                    x: Vec::with_capacity(self.samples * self.features),
                    y: Vec::with_capacity(self.samples),
                    rows: self.samples,
                    cols: self.features,
                    ..Table::default()
                };
                for _ in 0..self.samples {
                    let want = shares[p].map(|s| rng.random_bool(s.clamp(0.0, 1.0)));
                    let start = table.x.len();
                    let mut y = truth.draw(&mut rng, &shifts[p], &mut table.x);
                    for _ in 1..MAX_TRIES {
                        if want.is_none_or(|w| w == (y > 0.5)) {
                            break;
                        }
                        table.x.truncate(start);
                        y = truth.draw(&mut rng, &shifts[p], &mut table.x);
                    }
                    table.y.push(y);
                }
                table
            })
            .collect();
        let mut test = Table {
            x: Vec::with_capacity(self.test_samples * self.features),
            y: Vec::with_capacity(self.test_samples),
            rows: self.test_samples,
            cols: self.features,
            ..Table::default()
        };
        for _ in 0..self.test_samples {
            let p = rng.random_range(0..self.peers);
            let y = truth.draw(&mut rng, &shifts[p], &mut test.x);
            test.y.push(y);
        }
        Ok(Data { train, test })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positives(t: &Table) -> f64 {
        t.y.iter().map(|&y| f64::from(y)).sum::<f64>() / t.rows as f64
    }

    #[test]
    fn deterministic_shapes_and_balance() {
        let spec = Spec {
            peers: 8,
            samples: 50,
            test_samples: 400,
            ..Spec::default()
        };
        let a = spec.generate(1).expect("generates");
        assert_eq!(a, spec.generate(1).expect("generates"), "same seed");
        assert_ne!(a, spec.generate(2).expect("generates"), "other seed");
        assert_eq!(a.train.len(), 8);
        for t in &a.train {
            assert_eq!((t.rows, t.cols, t.x.len(), t.y.len()), (50, 13, 650, 50));
        }
        assert_eq!(a.test.x.len(), 400 * 13);
        let p = positives(&a.test);
        assert!((0.3..0.7).contains(&p), "roughly balanced: {p}");
        // Indicator features take only ±1.
        assert!(
            a.test
                .x
                .chunks(13)
                .all(|row| row.iter().skip(2).step_by(3).all(|v| v.abs() == 1.0))
        );
    }

    #[test]
    fn label_skew_unbalances_peers() {
        let spec = Spec {
            peers: 20,
            samples: 100,
            alpha: Some(0.1),
            ..Spec::default()
        };
        let data = spec.generate(3).expect("generates");
        let extreme = data
            .train
            .iter()
            .filter(|t| !(0.1..=0.9).contains(&positives(t)))
            .count();
        assert!(
            extreme >= 10,
            "Dirichlet(0.1) makes most peers one-sided: {extreme}"
        );
        let balanced = Spec {
            alpha: None,
            ..spec
        }
        .generate(3)
        .expect("generates");
        assert!(
            balanced
                .train
                .iter()
                .all(|t| (0.2..=0.8).contains(&positives(t)))
        );
    }

    #[test]
    fn feature_shift_moves_peer_means() {
        let spec = Spec {
            peers: 4,
            samples: 400,
            shift: 2.0,
            ..Spec::default()
        };
        let data = spec.generate(5).expect("generates");
        let mean0 = |t: &Table| t.x.iter().step_by(t.cols).sum::<f32>() / t.rows as f32;
        let means: Vec<f32> = data.train.iter().map(mean0).collect();
        let spread = means.iter().copied().fold(f32::MIN, f32::max)
            - means.iter().copied().fold(f32::MAX, f32::min);
        assert!(spread > 0.5, "peer means of feature 0 differ: {means:?}");
    }

    #[test]
    fn refuses_bad_specs() {
        for bad in [
            Spec {
                peers: 1,
                ..Spec::default()
            },
            Spec {
                label_noise: 0.5,
                ..Spec::default()
            },
            Spec {
                alpha: Some(0.0),
                ..Spec::default()
            },
        ] {
            assert!(bad.generate(0).is_err(), "{bad:?}");
        }
    }
}
