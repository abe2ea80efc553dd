//! One local mesh per seed (`medmesh-lab mesh --seeds 42,43,44,45,46`): each hospital's shared,
//! alone and personalized figures as mean ± standard deviation over the seeds, next to the
//! per-seed reports. What README's learning-quality table quotes.

use std::path::Path;

use serde::Serialize;

use crate::mesh::{self, Options, Report};

/// Mean and sample standard deviation (0 for a single value) of the defined values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// How many values (seeds) it is over.
    pub n: usize,
}

impl Stat {
    /// Over the defined values; `None` if there are none.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Stat> {
        let values: Vec<f64> = values.into_iter().flatten().collect();
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stat { mean, std, n })
    }

    fn cell(stat: Option<Stat>) -> String {
        stat.map_or("-".to_owned(), |s| format!("{:.3} ± {:.3}", s.mean, s.std))
    }
}

/// A hospital over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct HospitalStats {
    /// Site name.
    pub site: String,
    /// Test rows of its split.
    pub test_rows: Option<usize>,
    /// The shared model on its split (accuracy, or C-index for survival).
    pub shared: Option<Stat>,
    /// Trained alone with the same budget, on its split.
    pub alone: Option<Stat>,
    /// Its personalized model on its split.
    pub personalized: Option<Stat>,
    /// The alone model's mean over every hospital's split.
    pub alone_everywhere: Option<Stat>,
}

/// The runs and their summary.
#[derive(Debug, Clone, Serialize)]
pub struct Repeated {
    /// The metric: `accuracy` or `c_index`.
    pub metric: String,
    /// The seeds, in run order.
    pub seeds: Vec<u64>,
    /// Per hospital.
    pub hospitals: Vec<HospitalStats>,
    /// The shared model's mean over hospitals, over the seeds.
    pub shared: Option<Stat>,
    /// Alone, mean over hospitals of each one's own split.
    pub alone: Option<Stat>,
    /// Personalized, mean over hospitals.
    pub personalized: Option<Stat>,
    /// Each run's report, in seed order.
    pub runs: Vec<Report>,
}

/// Runs the mesh of `options` once per seed of `seeds`, each in its own folder under
/// `options.dir` (`seed-42`, ...).
pub fn run(
    options: &Options,
    seeds: &[u64],
    exe: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Repeated> {
    anyhow::ensure!(!seeds.is_empty(), "no seeds to run");
    let mut runs = Vec::with_capacity(seeds.len());
    for (i, &seed) in seeds.iter().enumerate() {
        progress(&format!("seed {seed} ({} of {})", i + 1, seeds.len()));
        let one = Options {
            seed,
            dir: options.dir.join(format!("seed-{seed}")),
            json: None,
            seeds: Vec::new(),
            ..options.clone()
        };
        runs.push(mesh::run(&one, exe, &mut progress)?);
    }
    Ok(summarize(seeds, runs))
}

/// The summary of `runs` (one per seed of `seeds`).
pub fn summarize(seeds: &[u64], runs: Vec<Report>) -> Repeated {
    let sites: Vec<String> = runs
        .first()
        .map(|r| r.hospitals.iter().map(|h| h.site.clone()).collect())
        .unwrap_or_default();
    let per_site = |site: &str, pick: &dyn Fn(&mesh::Hospital) -> Option<f64>| {
        Stat::of(
            runs.iter()
                .map(|r| r.hospitals.iter().find(|h| h.site == site).and_then(pick)),
        )
    };
    let hospitals = sites
        .iter()
        .map(|site| HospitalStats {
            site: site.clone(),
            test_rows: runs
                .first()
                .and_then(|r| r.hospitals.iter().find(|h| &h.site == site))
                .and_then(|h| h.test_rows),
            shared: per_site(site, &|h| h.scores.pair().0),
            alone: per_site(site, &|h| h.scores.pair().1),
            personalized: per_site(site, &|h| h.scores.personalized()),
            alone_everywhere: per_site(site, &|h| h.local_generalization),
        })
        .collect();
    let mean_over_hospitals = |pick: &dyn Fn(&mesh::Hospital) -> Option<f64>| {
        Stat::of(runs.iter().map(|r| {
            let values: Vec<f64> = r.hospitals.iter().filter_map(pick).collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        }))
    };
    Repeated {
        metric: runs.first().map_or("accuracy", |r| r.metric()).to_owned(),
        seeds: seeds.to_vec(),
        hospitals,
        shared: mean_over_hospitals(&|h| h.scores.pair().0),
        alone: mean_over_hospitals(&|h| h.scores.pair().1),
        personalized: mean_over_hospitals(&|h| h.scores.personalized()),
        runs,
    }
}

impl Repeated {
    /// The table as text.
    pub fn to_text(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut out = format!(
            "{} per hospital on its own test split, mean ± std over seeds {}:\n",
            self.metric,
            seeds.join(", ")
        );
        out.push_str(&format!(
            "{:<14} {:>5} {:>15} {:>15} {:>15} {:>15}\n",
            "hospital", "rows", "shared", "alone (own)", "personalized", "alone (all)"
        ));
        for h in &self.hospitals {
            out.push_str(&format!(
                "{:<14} {:>5} {:>15} {:>15} {:>15} {:>15}\n",
                h.site,
                h.test_rows.map_or("-".to_owned(), |n| n.to_string()),
                Stat::cell(h.shared),
                Stat::cell(h.alone),
                Stat::cell(h.personalized),
                Stat::cell(h.alone_everywhere),
            ));
        }
        out.push_str(&format!(
            "{:<14} {:>5} {:>15} {:>15} {:>15}\n",
            "mean",
            "",
            Stat::cell(self.shared),
            Stat::cell(self.alone),
            Stat::cell(self.personalized),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_mean_and_sample_std_of_the_defined_values() {
        let s = Stat::of([Some(0.7), None, Some(0.8), Some(0.9)]).expect("values");
        assert_eq!(s.n, 3);
        assert!((s.mean - 0.8).abs() < 1e-12);
        assert!((s.std - 0.1).abs() < 1e-12);
        assert_eq!(Stat::of([None, None]), None);
        assert_eq!(Stat::of([Some(0.5)]).map(|s| s.std), Some(0.0));
    }
}
