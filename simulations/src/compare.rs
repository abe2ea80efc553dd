//! Grids of scenario variants, run side by side: `medmesh-sim compare GRID.toml --out DIR`.
//!
//! A grid file names a base scenario and axes of TOML values, each set at a dotted path of the
//! scenario; every combination of one value per axis is run, first axis slowest:
//!
//! ```toml
//! base = "sign-flip.toml"                 # relative to the grid file
//!
//! [[axis]]
//! path = "protocol.rule"
//! values = [{ rule = "mean" }, { rule = "median" }]
//! labels = ["mean", "median"]             # optional: how values appear in tables and legends
//!
//! [[axis]]
//! path = "attack.fraction"
//! name = "attackers"                      # optional column name (default: last path segment)
//! values = [0.0, 0.2]
//!
//! [[axis]]                                # one value: the same override in every combination
//! path = "rounds"
//! values = [10]
//! ```
//!
//! An override replaces the value at its path in the parsed base file (missing tables are
//! created) before the result is read as a [`Scenario`], so every scenario field can be varied
//! without code here, and a path the scenario does not know or a value of the wrong type is
//! reported before anything runs. Relative paths inside the base file stay relative to the base
//! file; relative paths given as grid values are relative to the grid file.
//!
//! Writes `DIR/compare.csv` and `DIR/compare.md` (one row per combination, rewritten after each,
//! so an interrupted grid keeps what finished: the final and the last-5 mean honest accuracy as
//! mean ± standard deviation over seeds, the worst seed, the worst honest peer, consensus,
//! rejections and wall time, columns named in [`METRIC_COLUMNS`]), `DIR/compare.png` (mean honest
//! accuracy per round, one line per combination), and per combination `DIR/runs/NN-LABEL/` with the exact
//! `scenario.toml` that ran (replayable with `medmesh-sim run`) and that run's usual outputs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::plot::{self, AccuracyAxis, Chart, Font, Series};
use crate::scenario::{self, Scenario};

/// Errors in a grid file, found before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid TOML, or the grid file not a grid.
    #[error("{path} is not a valid {what}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// "grid" or "scenario".
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// An axis is malformed (empty path or values, labels not matching values, repeated path).
    #[error("axis `{path}`: {reason}")]
    Axis {
        /// The axis's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An axis's path runs through a value that is not a table.
    #[error("axis `{path}`: `{prefix}` is not a table in the scenario")]
    NotATable {
        /// The axis's path.
        path: String,
        /// The part of the path that holds a non-table value.
        prefix: String,
    },
    /// An axis's path names no field of the scenario.
    #[error("axis `{path}`: the scenario has no such field ({reason})")]
    UnknownPath {
        /// The axis's path.
        path: String,
        /// What the scenario reader said.
        reason: String,
    },
    /// An axis's value does not fit the field at its path.
    #[error("axis `{path}`: value {value} does not fit: {reason}")]
    BadValue {
        /// The axis's path.
        path: String,
        /// The value, as TOML.
        value: String,
        /// What the scenario reader said.
        reason: String,
    },
}

/// A grid file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// The base scenario file (after [`Grid::load`], resolved against the grid file's folder).
    pub base: PathBuf,
    /// The axes, first varying slowest.
    #[serde(default, rename = "axis")]
    pub axes: Vec<Axis>,
    /// Folder that relative paths in grid values are relative to.
    #[serde(skip)]
    dir: PathBuf,
}

/// One axis of a grid: values set, one per combination, at a dotted path of the scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    /// Dotted path of the scenario field, e.g. `protocol.rule` or `attack.fraction`.
    pub path: String,
    /// Column and legend name; defaults to the path's last segment (the whole path if two axes
    /// would share it).
    #[serde(default)]
    pub name: Option<String>,
    /// The values, as TOML.
    pub values: Vec<Value>,
    /// Display labels, one per value; default: the values, compactly.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// One point of a grid: the base scenario with one value of every axis set.
#[derive(Debug, Clone, PartialEq)]
pub struct Combination {
    /// Position in the grid, from 0.
    pub index: usize,
    /// `(axis name, value label)` of every axis with more than one value.
    pub choices: Vec<(String, String)>,
    /// The scenario as TOML, with its data schema path made absolute.
    pub scenario: Table,
}

impl Combination {
    /// `name=label` of its varying axes, or `base` on a grid without any.
    pub fn label(&self) -> String {
        if self.choices.is_empty() {
            return "base".into();
        }
        self.choices
            .iter()
            .map(|(name, label)| format!("{name}={label}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A folder name: the 1-based index, then the label reduced to file-name-safe characters.
    pub fn slug(&self) -> String {
        let mut slug = format!("{:02}-", self.index + 1);
        for c in self.label().chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '=' | '_') {
                slug.push(c);
            } else if !slug.ends_with('-') {
                slug.push('-');
            }
        }
        slug.truncate(64);
        slug.trim_end_matches('-').to_owned()
    }
}

impl Grid {
    /// Reads a grid file; its base path becomes relative to the grid file's folder.
    pub fn load(path: &Path) -> Result<Self, GridError> {
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut grid: Grid = toml::from_str(&text).map_err(|e| GridError::Parse {
            path: path.to_owned(),
            what: "grid",
            message: e.to_string(),
        })?;
        grid.base = dir.join(&grid.base);
        grid.dir = dir.to_owned();
        Ok(grid)
    }

    /// Every combination, first axis varying slowest, each checked to read as a [`Scenario`].
    pub fn expand(&self) -> Result<Vec<Combination>, GridError> {
        let names = self.axis_names()?;
        let base = self.read_base()?;
        let counts: Vec<usize> = self.axes.iter().map(|a| a.values.len()).collect();
        let total: usize = counts.iter().product();
        let mut combinations = Vec::with_capacity(total);
        for index in 0..total {
            // Mixed-radix digits of the index, last axis fastest.
            let mut rest = index;
            let mut picks = vec![0; counts.len()];
            for (pick, count) in picks.iter_mut().zip(&counts).rev() {
                *pick = rest % count;
                rest /= count;
            }
            let mut scenario = base.clone();
            let mut choices = Vec::new();
            for (axis, (&pick, name)) in self.axes.iter().zip(picks.iter().zip(&names)) {
                let value = self.resolve_paths(&axis.path, axis.values[pick].clone());
                set(&mut scenario, &axis.path, value)?;
                if axis.values.len() > 1 {
                    choices.push((name.clone(), axis.label(pick)));
                }
            }
            if let Err(reason) = check(&scenario, &self.axes) {
                return Err(self.blame(&base, &picks, reason));
            }
            combinations.push(Combination {
                index,
                choices,
                scenario,
            });
        }
        Ok(combinations)
    }

    /// Column names of the axes; checks the axes' shapes.
    fn axis_names(&self) -> Result<Vec<String>, GridError> {
        let last = |a: &Axis| a.path.rsplit('.').next().unwrap_or_default().to_owned();
        let mut names = Vec::new();
        for (i, axis) in self.axes.iter().enumerate() {
            let bad = |reason: &str| GridError::Axis {
                path: axis.path.clone(),
                reason: reason.into(),
            };
            if axis.path.split('.').any(str::is_empty) {
                return Err(bad(
                    "a path is dot-separated field names, e.g. protocol.rule",
                ));
            }
            if axis.values.is_empty() {
                return Err(bad("no values"));
            }
            if !axis.labels.is_empty() && axis.labels.len() != axis.values.len() {
                return Err(bad(&format!(
                    "{} labels for {} values",
                    axis.labels.len(),
                    axis.values.len()
                )));
            }
            if self.axes[..i].iter().any(|a| a.path == axis.path) {
                return Err(bad("appears twice"));
            }
            let shared = self
                .axes
                .iter()
                .filter(|a| a.name.is_none() && last(a) == last(axis))
                .count();
            names.push(match &axis.name {
                Some(name) => name.clone(),
                None if shared > 1 => axis.path.clone(),
                None => last(axis),
            });
        }
        Ok(names)
    }

    /// The base scenario as TOML, its data schema path made absolute.
    fn read_base(&self) -> Result<Table, GridError> {
        let text = std::fs::read_to_string(&self.base).map_err(|source| GridError::Read {
            path: self.base.clone(),
            source,
        })?;
        let mut base: Table = toml::from_str(&text).map_err(|e| GridError::Parse {
            path: self.base.clone(),
            what: "scenario",
            message: e.to_string(),
        })?;
        let base_dir = self.base.parent().unwrap_or(Path::new("."));
        if let Some(Value::Table(data)) = base.get_mut("data")
            && let Some(Value::String(schema)) = data.get_mut("schema")
        {
            *schema = absolute(&base_dir.join(&*schema));
        }
        Ok(base)
    }

    /// A grid value for `data.schema` (or a `data` table holding one) made absolute against the
    /// grid file's folder.
    fn resolve_paths(&self, path: &str, mut value: Value) -> Value {
        let schema = match (path, &mut value) {
            ("data.schema", v) => Some(v),
            ("data", Value::Table(t)) => t.get_mut("schema"),
            _ => None,
        };
        if let Some(Value::String(s)) = schema {
            *s = absolute(&self.dir.join(&*s));
        }
        value
    }

    /// The error of a combination that does not read as a scenario, pinned on the first axis
    /// whose override makes it fail (axes apply in order, so a later one may rely on an earlier).
    fn blame(&self, base: &Table, picks: &[usize], reason: String) -> GridError {
        let mut scenario = base.clone();
        for (k, (axis, &pick)) in self.axes.iter().zip(picks).enumerate() {
            let value = self.resolve_paths(&axis.path, axis.values[pick].clone());
            if let Err(e) = set(&mut scenario, &axis.path, value.clone()) {
                return e;
            }
            if let Err(reason) = check(&scenario, &self.axes[..=k]) {
                return classify(&axis.path, &value, reason);
            }
        }
        // The base itself does not read (no axis can be blamed).
        GridError::Parse {
            path: self.base.clone(),
            what: "scenario",
            message: reason,
        }
    }
}

impl Axis {
    fn label(&self, pick: usize) -> String {
        self.labels
            .get(pick)
            .cloned()
            .unwrap_or_else(|| compact(&self.values[pick]))
    }
}

/// Path of a file as an absolute string (relative to the current folder if it cannot tell).
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .to_string_lossy()
        .into_owned()
}

/// Sets `value` at dotted `path` in `root`, creating missing tables on the way.
fn set(root: &mut Table, path: &str, value: Value) -> Result<(), GridError> {
    let keys: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = keys.split_last() else {
        return Ok(());
    };
    let mut table = root;
    for (depth, key) in parents.iter().enumerate() {
        let entry = table
            .entry(key.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(GridError::NotATable {
                    path: path.into(),
                    prefix: keys[..=depth].join("."),
                });
            }
        };
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// Whether `scenario` reads as a [`Scenario`] that keeps every axis's field (a field the reader
/// ignores would silently change nothing).
fn check(scenario: &Table, axes: &[Axis]) -> Result<(), String> {
    let parsed: Scenario = scenario.clone().try_into().map_err(|e| e.to_string())?;
    let written = Table::try_from(&parsed).map_err(|e| e.to_string())?;
    for axis in axes {
        let mut at = Some(&written);
        let keys: Vec<&str> = axis.path.split('.').collect();
        for (i, key) in keys.iter().enumerate() {
            // Deprecated names are read under their new ones.
            let key = match *key {
                "bandwidth_mbps" => "bandwidth_mb_s",
                key => key,
            };
            let found = at.and_then(|t| t.get(key));
            at = match found {
                Some(Value::Table(t)) => Some(t),
                Some(_) if i + 1 == keys.len() => None,
                _ => return Err(format!("unknown field `{key}` in `{}`", axis.path)),
            };
        }
    }
    Ok(())
}

fn classify(path: &str, value: &Value, reason: String) -> GridError {
    if reason.contains("unknown field") {
        GridError::UnknownPath {
            path: path.into(),
            reason: one_line(&reason),
        }
    } else {
        GridError::BadValue {
            path: path.into(),
            value: value.to_string(),
            reason: one_line(&reason),
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A short display form of a value: strings bare, tables as their string fields then
/// `key=value` for the rest (`{ rule = "trimmed_mean", trim = 4 }` is `trimmed_mean trim=4`).
fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(compact).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(table) => {
            let tags = table.values().filter_map(Value::as_str).map(str::to_owned);
            let rest = table.iter().filter_map(|(k, v)| match v {
                Value::String(_) => None,
                Value::Table(_) => Some(format!("{k}=({})", compact(v))),
                _ => Some(format!("{k}={}", compact(v))),
            });
            tags.chain(rest).collect::<Vec<_>>().join(" ")
        }
        other => other.to_string(),
    }
}

/// The final figures of one combination's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The combination's label.
    pub label: String,
    /// `(axis name, value label)` of the varying axes.
    pub choices: Vec<(String, String)>,
    /// Folder of its run, relative to the compare output folder.
    pub run: String,
    /// Final mean honest accuracy, mean over seeds.
    pub mean_accuracy: f64,
    /// Sample standard deviation over seeds of the final mean honest accuracy; `None` with one
    /// seed.
    pub std_accuracy: Option<f64>,
    /// Mean honest accuracy averaged over each seed's last 5 measured rounds, mean over seeds
    /// (`summary.json`'s `last5_mean_accuracy`).
    pub last5_accuracy: f64,
    /// Sample standard deviation over seeds of that last-5 mean; `None` with one seed.
    pub std_last5_accuracy: Option<f64>,
    /// Lowest over seeds of the final mean honest accuracy: the worst seed.
    pub worst_seed_accuracy: f64,
    /// Lowest final accuracy of any honest peer in any seed: the worst-served hospital.
    pub worst_peer_accuracy: f64,
    /// Final consensus distance, mean over seeds.
    pub consensus_distance: f64,
    /// Rejected messages per run, mean over seeds.
    pub rejections: f64,
    /// Wall time of all its seeds, seconds.
    pub wall_seconds: f64,
    /// Mean honest accuracy per round, mean over seeds.
    pub curve: Vec<(f64, f64)>,
    /// For a survival model: the final mean C-index over honest peers, mean over seeds
    /// (`summary.json`'s `mean_c_index`); `None` for a classifier.
    pub mean_c_index: Option<f64>,
    /// Its sample standard deviation over seeds.
    pub std_c_index: Option<f64>,
}

/// Sample standard deviation (n − 1) of `values`; `None` for fewer than two.
fn sample_std(values: &[f64]) -> Option<f64> {
    (values.len() >= 2).then(|| {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    })
}

/// Runs every combination of `grid` into `out`; `progress` gets a line per combination (and
/// warnings). Every combination is checked by [`Scenario::load`] before the first runs. Plots'
/// accuracy axes are as each scenario's `[output] accuracy_axis` says (`compare.png`: the first
/// combination's); see [`run_with`] to override them.
pub fn run(
    grid: &Grid,
    out: &Path,
    font: Option<&Font>,
    progress: impl FnMut(&str),
) -> anyhow::Result<Vec<Outcome>> {
    run_with(grid, out, font, None, progress)
}

/// [`run`], with every plot's accuracy axis set to `axis` when given (`--accuracy-axis`).
pub fn run_with(
    grid: &Grid,
    out: &Path,
    font: Option<&Font>,
    axis: Option<AccuracyAxis>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<Outcome>> {
    let combinations = grid.expand()?;
    let runs = out.join("runs");
    let mut planned = Vec::with_capacity(combinations.len());
    for c in &combinations {
        let dir = runs.join(c.slug());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let file = dir.join("scenario.toml");
        let text = toml::to_string(&c.scenario).with_context(|| {
            format!(
                "combination {} ({}): cannot write its scenario",
                c.index + 1,
                c.label()
            )
        })?;
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        let scenario = Scenario::load(&file)
            .with_context(|| format!("combination {} ({})", c.index + 1, c.label()))?;
        planned.push((c, dir, scenario));
    }
    // The base file's warnings (deprecated keys…) once, not once per combination.
    let mut warned = std::collections::BTreeSet::new();
    for (_, _, scenario) in &planned {
        for warning in &scenario.warnings {
            let message = warning
                .split_once(": ")
                .map_or(warning.as_str(), |(_, m)| m);
            if warned.insert(message.to_owned()) {
                progress(&format!("warning: {}: {message}", grid.base.display()));
            }
        }
    }
    let base_name = planned
        .first()
        .map(|(_, _, s)| s.name.clone())
        .unwrap_or_default();
    let chart_axis = axis.unwrap_or_else(|| {
        planned
            .first()
            .map(|(_, _, s)| s.output.accuracy_axis)
            .unwrap_or_default()
    });
    let names: Vec<String> = grid
        .axis_names()?
        .into_iter()
        .zip(&grid.axes)
        .filter(|(_, a)| a.values.len() > 1)
        .map(|(n, _)| n)
        .collect();
    let fixed: Vec<String> = grid
        .axes
        .iter()
        .filter(|a| a.values.len() == 1)
        .map(|a| format!("{} = {}", a.path, a.label(0)))
        .collect();
    let mut outcomes = Vec::with_capacity(planned.len());
    let total = planned.len();
    for (c, dir, scenario) in planned {
        let mut warnings = Vec::new();
        let summary = scenario::run(&scenario, &dir, |line| {
            // The scenario's own warnings were shown once above; failed merges and unreached
            // rounds are this combination's.
            if line.starts_with("warning: ")
                && !scenario.warnings.iter().any(|w| line.ends_with(w.as_str()))
            {
                warnings.push(format!("[{}/{total}] {line}", c.index + 1));
            }
        })
        .with_context(|| format!("combination {} ({})", c.index + 1, c.label()))?;
        for warning in &warnings {
            progress(warning);
        }
        let rounds = plot::read_rounds(&dir.join("rounds.csv"))?;
        plot::write_run_plots(
            &dir,
            &format!("{} ({})", summary.name, c.label()),
            font,
            axis.unwrap_or(scenario.output.accuracy_axis),
        )?;
        let outcome = outcome(c, &dir, &summary, &rounds, out);
        if let Some(c_index) = outcome.mean_c_index {
            progress(&format!(
                "[{}/{total}] {}: final mean C-index {}, consensus distance {:.2e}, {:.0} \
                 rejections, {:.1} s",
                c.index + 1,
                outcome.label,
                plus_minus(c_index, outcome.std_c_index),
                outcome.consensus_distance,
                outcome.rejections,
                outcome.wall_seconds
            ));
            outcomes.push(outcome);
            write_tables(out, &base_name, grid, &names, &fixed, &outcomes)?;
            continue;
        }
        progress(&format!(
            "[{}/{total}] {}: final mean accuracy {}, last-5 {}, worst peer {:.3}, consensus \
             distance {:.2e}, {:.0} rejections, {:.1} s",
            c.index + 1,
            outcome.label,
            plus_minus(outcome.mean_accuracy, outcome.std_accuracy),
            plus_minus(outcome.last5_accuracy, outcome.std_last5_accuracy),
            outcome.worst_peer_accuracy,
            outcome.consensus_distance,
            outcome.rejections,
            outcome.wall_seconds
        ));
        outcomes.push(outcome);
        write_tables(out, &base_name, grid, &names, &fixed, &outcomes)?;
    }
    let mut chart = Chart::new(
        format!("{base_name}: mean honest accuracy per combination"),
        "round",
        "mean honest accuracy",
    );
    chart.series = outcomes
        .iter()
        .map(|o| Series {
            name: o.label.clone(),
            points: o.curve.clone(),
        })
        .collect();
    chart.y_range = plot::accuracy_range(chart_axis, &chart.series);
    chart.draw(&out.join("compare.png"), font)?;
    Ok(outcomes)
}

fn outcome(
    c: &Combination,
    dir: &Path,
    summary: &scenario::Summary,
    rounds: &[plot::Round],
    out: &Path,
) -> Outcome {
    // The last row of each seed holds its final figures.
    let mut finals: Vec<&plot::Round> = Vec::new();
    for r in rounds {
        match finals.iter_mut().find(|f| f.seed == r.seed) {
            Some(f) if r.round >= f.round => *f = r,
            Some(_) => {}
            None => finals.push(r),
        }
    }
    let n = finals.len().max(1) as f64;
    Outcome {
        label: c.label(),
        choices: c.choices.clone(),
        run: dir
            .strip_prefix(out)
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned(),
        mean_accuracy: summary.mean_accuracy,
        std_accuracy: summary.std_accuracy,
        last5_accuracy: summary.last5_mean_accuracy,
        std_last5_accuracy: sample_std(&summary.seed_last5_accuracy),
        worst_seed_accuracy: summary
            .final_accuracy
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min),
        worst_peer_accuracy: finals
            .iter()
            .map(|r| r.min_accuracy)
            .fold(f64::INFINITY, f64::min),
        consensus_distance: finals.iter().map(|r| r.consensus_distance).sum::<f64>() / n,
        rejections: finals.iter().map(|r| r.rejections as f64).sum::<f64>() / n,
        wall_seconds: summary.wall_seconds,
        curve: plot::mean_over_seeds(rounds, |r| r.mean_accuracy),
        mean_c_index: summary.mean_c_index,
        std_c_index: sample_std(
            &summary
                .final_c_index
                .iter()
                .copied()
                .flatten()
                .collect::<Vec<_>>(),
        ),
    }
}

/// `mean ± std` to 3 decimals; the mean alone without a std (one seed).
fn plus_minus(mean: f64, std: Option<f64>) -> String {
    match std {
        Some(std) => format!("{mean:.3} ± {std:.3}"),
        None => format!("{mean:.3}"),
    }
}

/// The `compare.csv` columns after the axes, each named for what it holds (see
/// [`COLUMN_MEANINGS`]).
pub const METRIC_COLUMNS: [&str; 11] = [
    "final_accuracy_mean",
    "final_accuracy_std",
    "last5_accuracy_mean",
    "last5_accuracy_std",
    "final_accuracy_worst_seed",
    "final_accuracy_worst_peer",
    "consensus_distance",
    "rejections",
    "wall_seconds",
    "final_c_index_mean",
    "final_c_index_std",
];

/// What each column of `compare.md` holds, written under its table.
const COLUMN_MEANINGS: &str = "\
- **final accuracy**: the final round's mean accuracy over honest peers (each on its own test \
rows), mean ± sample standard deviation over seeds (`final_accuracy_mean`, `final_accuracy_std` \
in compare.csv; no ± with one seed).
- **last-5 accuracy**: that mean honest accuracy averaged over each seed's last 5 measured \
rounds, mean ± standard deviation over seeds (`last5_accuracy_mean`, `last5_accuracy_std`).
- **worst seed**: the lowest over seeds of the final mean honest accuracy \
(`final_accuracy_worst_seed`).
- **worst peer**: the lowest final accuracy of any single honest peer in any seed \
(`final_accuracy_worst_peer`).
- **consensus distance**: the final mean distance of honest models to their average, mean over \
seeds; **rejections**: messages refused per run, mean over seeds; **wall time**: all seeds.
- **C-index** (survival models only): the final round's mean Harrell's C-index over honest \
peers, mean ± standard deviation over seeds (`final_c_index_mean`, `final_c_index_std`; empty \
for a classifier, whose accuracy columns a survival run leaves empty).
";

/// (Re)writes `compare.csv` and `compare.md` with the outcomes so far.
fn write_tables(
    out: &Path,
    base_name: &str,
    grid: &Grid,
    names: &[String],
    fixed: &[String],
    outcomes: &[Outcome],
) -> anyhow::Result<()> {
    let path = out.join("compare.csv");
    let mut csv = csv::Writer::from_path(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let header = ["combination"]
        .into_iter()
        .chain(names.iter().map(String::as_str))
        .chain(METRIC_COLUMNS)
        .chain(["run"]);
    csv.write_record(header)?;
    let optional = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    for (i, o) in outcomes.iter().enumerate() {
        let mut record = vec![(i + 1).to_string()];
        record.extend(o.choices.iter().map(|(_, label)| label.clone()));
        record.extend([
            o.mean_accuracy.to_string(),
            optional(o.std_accuracy),
            o.last5_accuracy.to_string(),
            optional(o.std_last5_accuracy),
            o.worst_seed_accuracy.to_string(),
            o.worst_peer_accuracy.to_string(),
            o.consensus_distance.to_string(),
            o.rejections.to_string(),
            format!("{:.3}", o.wall_seconds),
            optional(o.mean_c_index),
            optional(o.std_c_index),
            o.run.clone(),
        ]);
        csv.write_record(&record)?;
    }
    csv.flush()?;

    let cell = |s: &str| s.replace('|', "\\|");
    let mut md = String::new();
    let base_file = grid.base.file_name().map(|f| f.to_string_lossy());
    writeln!(
        md,
        "## {}: {}\n",
        cell(base_name),
        if names.is_empty() {
            "base scenario".to_owned()
        } else {
            names.join(" × ")
        }
    )?;
    write!(md, "Base `{}`", base_file.unwrap_or_default())?;
    if !fixed.is_empty() {
        write!(md, "; fixed: `{}`", fixed.join("`, `"))?;
    }
    writeln!(
        md,
        ". Accuracy is over honest peers, each on its own test rows; ± is the sample standard \
         deviation over seeds.\n"
    )?;
    writeln!(
        md,
        "| # | {} | final accuracy | last-5 accuracy | worst seed | worst peer | consensus distance | rejections | wall time (s) | C-index |",
        names
            .iter()
            .map(|n| cell(n))
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(
        md,
        "|---:|{}---:|---:|---:|---:|---:|---:|---:|---:|",
        "---|".repeat(names.len())
    )?;
    for (i, o) in outcomes.iter().enumerate() {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.2e} | {:.0} | {:.1} | {} |",
            i + 1,
            o.choices
                .iter()
                .map(|(_, l)| cell(l))
                .collect::<Vec<_>>()
                .join(" | "),
            plus_minus(o.mean_accuracy, o.std_accuracy),
            plus_minus(o.last5_accuracy, o.std_last5_accuracy),
            o.worst_seed_accuracy,
            o.worst_peer_accuracy,
            o.consensus_distance,
            o.rejections,
            o.wall_seconds,
            o.mean_c_index
                .map_or("-".to_owned(), |c| plus_minus(c, o.std_c_index))
        )?;
    }
    writeln!(md, "\n{COLUMN_MEANINGS}")?;
    let path = out.join("compare.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_display_compactly() {
        let rule: Value = toml::from_str::<Table>("v = { rule = \"trimmed_mean\", trim = 4 }")
            .expect("toml")["v"]
            .clone();
        assert_eq!(compact(&rule), "trimmed_mean trim=4");
        assert_eq!(compact(&Value::Float(0.2)), "0.2");
        assert_eq!(compact(&Value::Integer(3)), "3");
        assert_eq!(
            compact(&Value::Array(vec![Value::Integer(1), Value::Integer(2)])),
            "[1, 2]"
        );
    }

    #[test]
    fn set_creates_missing_tables_and_refuses_to_descend_into_values() {
        let mut t: Table = toml::from_str("rounds = 3").expect("toml");
        set(&mut t, "attack.fraction", Value::Float(0.1)).expect("set");
        assert_eq!(t["attack"]["fraction"], Value::Float(0.1));
        let err = set(&mut t, "rounds.x", Value::Integer(1)).expect_err("not a table");
        assert!(
            matches!(&err, GridError::NotATable { prefix, .. } if prefix == "rounds"),
            "{err}"
        );
    }

    #[test]
    fn slugs_are_file_name_safe() {
        let c = Combination {
            index: 2,
            choices: vec![
                ("rule".into(), "trimmed_mean trim=4".into()),
                ("fraction".into(), "0.2".into()),
            ],
            scenario: Table::new(),
        };
        assert_eq!(c.label(), "rule=trimmed_mean trim=4, fraction=0.2");
        assert_eq!(c.slug(), "03-rule=trimmed_mean-trim=4-fraction=0.2");
    }
}
