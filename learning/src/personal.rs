//! Personalization: each hospital derives a model for its own patients from the shared one,
//! by fine-tuning it on its own training rows for a number of steps it picks by
//! cross-validation on those rows. The shared model stays the signed, certified artifact; the
//! personalized model never leaves the hospital (it is not announced, and needs no DP: nothing
//! of it is published), and it records the shared version it came from.
//!
//! The choice: the training rows are dealt into `folds` parts (stratified by label, or by event
//! for survival, in an order seeded by the training seed; `repeats` times, each with its own
//! assignment). For each part, a learner trains on
//! the other parts from the shared parameters, and its held-out score is taken at 0, `every`,
//! 2·`every`, … up to `max_steps` steps. The one-standard-error rule picks the step count: the
//! fewest steps whose mean held-out score is within one standard error (over the folds) of the
//! best mean, so 0 — the shared model unchanged — wins when fine-tuning does not clearly
//! help; on the flat curves a few dozen rows give, the plain minimum overfits the hospital's
//! training rows (on Fed-Heart-Disease it took Hungary from 0.753 to 0.742 and left VA at 0.733
//! against 0.756 alone; the rule: 0.791 and 0.751, see README's Learning quality). The model is
//! then fine-tuned that many steps on all training rows. The held-out
//! score is the log loss for a classifier (smoother than accuracy on a handful of rows) and the
//! negative Breslow log partial likelihood for a survival model (smoother than the C-index on
//! folds with a few events).

use serde::{Deserialize, Serialize};

use crate::learner::Error;

/// How a hospital personalizes (`[personalization]` in the node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Personalization {
    /// Whether a hospital derives its personalized model when its rounds are done.
    pub enabled: bool,
    /// Cross-validation parts of the training rows (2 to 20; fewer when a site has fewer rows).
    pub folds: usize,
    /// Times the cross-validation is repeated, each with its own fold assignment (1 to 10):
    /// on a few dozen rows one assignment's luck would otherwise pick the step count.
    pub repeats: usize,
    /// The most fine-tuning steps tried; `None`: the shared training's whole budget
    /// (`local_steps` × `max_rounds`, what a hospital training alone would get), at most 20
    /// rounds' worth.
    pub max_steps: Option<usize>,
    /// Step counts tried are multiples of this; `None`: `local_steps` (one round's worth).
    pub every: Option<usize>,
}

impl Default for Personalization {
    fn default() -> Self {
        Self {
            enabled: true,
            folds: 5,
            repeats: 3,
            max_steps: None,
            every: None,
        }
    }
}

impl Personalization {
    /// Checks the ranges.
    pub fn check(&self) -> Result<(), Error> {
        if !(2..=20).contains(&self.folds) {
            return Err(Error::Config(format!(
                "personalization.folds must be between 2 and 20, not {}",
                self.folds
            )));
        }
        if !(1..=10).contains(&self.repeats) {
            return Err(Error::Config(format!(
                "personalization.repeats must be between 1 and 10, not {}",
                self.repeats
            )));
        }
        if self.every == Some(0) {
            return Err(Error::Config(
                "personalization.every must be at least 1".into(),
            ));
        }
        if let (Some(max), Some(every)) = (self.max_steps, self.every)
            && max > 0
            && max / every > 1000
        {
            return Err(Error::Config(format!(
                "personalization tries {} step counts (max_steps {max} / every {every}); at most \
                 1000",
                max / every
            )));
        }
        Ok(())
    }
}

/// The search a learner runs: resolved settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Search {
    /// Cross-validation parts.
    pub folds: usize,
    /// Repeats of the cross-validation, each with its own fold assignment.
    pub repeats: usize,
    /// The most steps tried.
    pub max_steps: usize,
    /// Step counts tried are multiples of this.
    pub every: usize,
}

/// A personalized model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Personalized {
    /// Its parameters (the shared model's layout).
    pub params: Vec<f32>,
    /// Fine-tuning steps from the shared model (0: the shared model is kept as it is).
    pub steps: usize,
    /// What the held-out score is: `log_loss` or `partial_likelihood` (lower is better).
    pub criterion: String,
    /// Mean held-out score per step count tried, in order.
    pub scores: Vec<(usize, f64)>,
    /// Cross-validation parts used.
    pub folds: usize,
}
