//! Tabular datasets: CSV files, one per hospital ("site"), described by a TOML schema, loaded
//! into numeric train/test tables that learners and the simulator consume.
//!
//! This module is for turning files a hospital already has into the exact numbers a model is
//! trained on, reproducibly: which columns are features, how missing values and categories are
//! handled, which rows are train and which are test, and how features are standardised.
//!
//! It must never:
//! - panic on file content, or hold more than a bounded amount of it in memory — files over
//!   [`MAX_FILE_BYTES`], records over [`MAX_RECORD_BYTES`], more than [`MAX_ROWS`] rows per
//!   file, [`MAX_COLUMNS`] columns or [`MAX_VALUES`] feature values per dataset are refused with
//!   [`Error::TooLarge`], and CSV is streamed, never read into one string;
//! - guess: a value that is neither a finite number nor a declared missing marker, a label that
//!   is not binary after its rule, a category level that was not declared, or a row the split file
//!   does not account for is an error naming the file, the 1-based line and the column;
//! - fit anything on test rows: imputation means and normalisation statistics come from train
//!   rows only;
//! - do I/O other than reading the schema and the files it names.
//!
//! # The schema
//!
//! A dataset is one TOML file plus the CSV files it names. Paths in the schema are relative to
//! the schema's folder. Every table rejects unknown keys, so a typo is an error, not a default.
//!
//! | key | meaning |
//! |---|---|
//! | `name` | dataset name (required) |
//! | `header` | whether the data files start with a header line (default `true`) |
//! | `delimiter` | one ASCII character, e.g. `","` (default), `";"`, `"\t"` |
//! | `columns` | column names, required exactly when `header = false` |
//! | `drop` | columns that are ignored entirely (not parsed, not checked for missing values) |
//! | `normalization` | `"per_site"`, `"pooled"` or `"none"` (required); see below |
//! | `[missing]` | `markers = ["?", ""]` (compared after trimming spaces), `policy = "drop_row"` or `"impute_mean"`. Without this table no value may be missing. |
//! | `[label]` | binary label: `column`, and one rule: `positive_if = "> 0"` (operators `>`, `>=`, `<`, `<=`, `==`, `!=` against a number), or `positive = [...]` with `negative = [...]` (numbers or strings; any other value is an error), or no rule (values must be `0` or `1`) |
//! | `[survival]` | `time = "T"` (finite, ≥ 0) and `event = "E"` (`0` censored / `1` observed). Makes the task [`Task::Survival`]; `[label]` is then optional. |
//! | `[[categorical]]` | `column`, `levels = [...]` (numbers match numerically, so `1` matches `1.0`; strings match exactly), `drop_first` (default `false`). One 0/1 feature named `column=level` per level, the first one left out when `drop_first`. A value that is not a level is an error. |
//! | `[split]` | either a split file or a seeded fraction, see below |
//! | `[[sites]]` | `name`, `file`, and for split files optionally `train_value` / `test_value` |
//!
//! Data files are CSV as RFC 4180 has it (double quotes, `""` inside quotes), UTF-8 or ASCII,
//! lines ending in LF or CRLF; an initial UTF-8 byte-order mark is ignored, blank lines are
//! skipped, and fields are trimmed of spaces. Line numbers in errors are physical lines (a quoted
//! field spanning lines counts them all) and are what a split file's `line_column` refers to.
//!
//! Features are, in this order: every column that is not dropped, not the label, time or event,
//! not categorical and not the split key, in the first site file's column order; then the
//! one-hot columns of each `[[categorical]]` entry, in schema order. Files with a header are
//! matched by column name, so sites may order their columns differently, but they must all have
//! the same columns.
//!
//! **Split from a file** (`file = ...`): a CSV file with a header, comma-separated. Each of its rows
//! names one data row, by line number (`line_column`: the 1-based line of the record in the data
//! file) or by a key (`key_column`: a column with that name in both files, never a feature), and
//! gives its part in `split_column`: `train_value` (default `"train"`) or `test_value` (default
//! `"test"`). With `site_column`, an entry belongs to the site whose name equals that column's
//! value (entries for sites the schema does not list are ignored); without it, sites may share
//! one data file and are told apart by their own `train_value`/`test_value`. Every usable data
//! row of a site must be listed (unless `unlisted = "skip"`), every listed row must be a usable
//! row (rows dropped for missing values must not be listed), and a split value that belongs to
//! no site is an error.
//!
//! **Split by fraction** (`fraction = 0.66, seed = 43, stratify = true`): per site,
//! `floor(fraction × rows)` rows go to train. With `stratify`, each class (of the label, or of the
//! event for survival data) gets `floor(fraction × class rows)` train rows, and the rows still
//! needed go one each to the classes with the largest remainders. Rows are drawn with a
//! Fisher–Yates shuffle driven by ChaCha8 seeded with `seed`, on a stream derived from the site's
//! name, so a site's split depends only on its own rows, the seed and its name. Train and test
//! keep the file's row order.
//!
//! **Order of work**, per site: parse and drop rows (a row missing its label, time or event is
//! always dropped; a row missing a feature is dropped under `drop_row`), split, then under
//! `impute_mean` fill each missing feature (including one-hot columns of a missing category) with
//! the mean of the site's train rows. Finally normalisation, fitted on train rows only and applied
//! to train and test: `per_site` uses each site's own train mean and unbiased standard deviation,
//! `pooled` those of all sites' train rows together, `none` leaves values alone; every feature
//! (one-hot columns included) becomes `(x − mean) / (std + 1e-9)`, so a constant column becomes 0.
//! A value this takes beyond the `f32` range (a test value far from a train column with almost no
//! spread) is refused with [`Error::TooLarge`].
//!
//! # Example
//!
//! FLamby's Fed-Heart-Disease, as shipped in `data/heart-disease/schema.toml`:
//!
//! ```toml
//! name = "heart-disease"
//! header = false
//! delimiter = ","
//! columns = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach",
//!            "exang", "oldpeak", "slope", "ca", "thal", "num"]
//! drop = ["slope", "ca", "thal"]
//! normalization = "per_site"
//!
//! [missing]
//! markers = ["?"]
//! policy = "drop_row"
//!
//! [label]
//! column = "num"
//! positive_if = "> 0"
//!
//! [[categorical]]
//! column = "cp"
//! levels = [1, 2, 3, 4]
//! drop_first = true
//!
//! [[categorical]]
//! column = "restecg"
//! levels = [0, 1, 2]
//! drop_first = true
//!
//! [split]
//! file = "flamby_split.csv"
//! site_column = "center"
//! line_column = "line"
//! split_column = "split"
//!
//! [[sites]]
//! name = "cleveland"
//! file = "processed.cleveland.data"
//!
//! [[sites]]
//! name = "hungarian"
//! file = "processed.hungarian.data"
//!
//! [[sites]]
//! name = "switzerland"
//! file = "processed.switzerland.data"
//!
//! [[sites]]
//! name = "va"
//! file = "processed.va.data"
//! ```
//!
//! A survival dataset whose sites share one file, split by a patient key (as
//! `data/tcga-brca/schema.toml`):
//!
//! ```toml
//! name = "tcga-brca"
//! normalization = "none"
//! survival = { time = "T", event = "E" }
//! split = { file = "train_test_split.csv", key_column = "pid", split_column = "fold2", unlisted = "skip" }
//! sites = [
//!   { name = "northeast", file = "brca.csv", train_value = "train_0", test_value = "test_0" },
//!   { name = "south", file = "brca.csv", train_value = "train_1", test_value = "test_1" },
//! ]
//! ```
//!
//! A random split instead of a split file: `split = { fraction = 0.66, seed = 43, stratify = true }`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use csv::ByteRecord;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// Largest data or split file read, in bytes (1 GiB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Most records read from one data or split file.
pub const MAX_ROWS: usize = 10_000_000;
/// Most bytes one CSV record may take (a quoted field may span lines); bounds a hostile line.
pub const MAX_RECORD_BYTES: u64 = 4 << 20;
/// Most columns in a file, and most features after one-hot encoding.
pub const MAX_COLUMNS: usize = 100_000;
/// Most feature values one dataset holds (400 MB of `f32`).
pub const MAX_VALUES: usize = 100_000_000;
/// Largest schema file read, in bytes.
const MAX_SCHEMA_BYTES: u64 = 1 << 20;
/// Most characters of an offending value quoted in an error.
const MAX_SHOWN: usize = 64;
/// Added to the standard deviation, as FLamby does, so constant columns divide by 1e-9, not 0.
const STD_EPSILON: f64 = 1e-9;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A numeric table, row-major.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// `rows × cols` feature values, row after row.
    #[serde(with = "crate::worker::f32_le")]
    pub x: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// Number of features per row.
    pub cols: usize,
    /// 0/1 labels, one per row; empty if the dataset has no label.
    #[serde(with = "crate::worker::f32_le")]
    pub y: Vec<f32>,
    /// Survival times, one per row; empty unless the dataset is a survival dataset.
    #[serde(with = "crate::worker::f32_le")]
    pub time: Vec<f32>,
    /// 0/1 event indicators (1 = event observed), one per row; empty unless survival.
    #[serde(with = "crate::worker::f32_le")]
    pub event: Vec<f32>,
}

impl Table {
    /// The features of row `i`.
    ///
    /// # Panics
    /// If `i >= self.rows`, as slice indexing does.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows of `parts`, one after the other. No parts give an empty table with no columns.
    ///
    /// # Panics
    /// If the parts have different column counts, or some have labels (or survival targets) and
    /// others, with rows, do not: mixing them is a bug in the caller, not a data problem.
    pub fn concat(parts: &[&Table]) -> Table {
        let Some(first) = parts.first() else {
            return Table::default();
        };
        let mut out = Table {
            cols: first.cols,
            ..Table::default()
        };
        for part in parts {
            assert_eq!(
                part.cols, out.cols,
                "Table::concat: different column counts"
            );
            out.x.extend_from_slice(&part.x);
            out.y.extend_from_slice(&part.y);
            out.time.extend_from_slice(&part.time);
            out.event.extend_from_slice(&part.event);
            out.rows += part.rows;
        }
        for (len, what) in [
            (out.y.len(), "labels"),
            (out.time.len(), "times"),
            (out.event.len(), "events"),
        ] {
            assert!(
                len == 0 || len == out.rows,
                "Table::concat: some parts have {what} and others do not"
            );
        }
        out
    }

    /// Rows `start`, `start + step`, `start + 2·step`, … (all rows past the end: none).
    ///
    /// # Panics
    /// If `step` is 0.
    pub fn every(&self, start: usize, step: usize) -> Table {
        assert!(step > 0, "Table::every: step 0");
        let picked: Vec<usize> = (start..self.rows).step_by(step).collect();
        let take = |v: &[f32]| -> Vec<f32> {
            if v.is_empty() {
                Vec::new()
            } else {
                picked.iter().map(|&i| v[i]).collect()
            }
        };
        Table {
            x: picked.iter().flat_map(|&i| self.row(i)).copied().collect(),
            rows: picked.len(),
            cols: self.cols,
            y: take(&self.y),
            time: take(&self.time),
            event: take(&self.event),
        }
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Number of rows labelled 1.
    pub fn positives(&self) -> usize {
        self.y.iter().filter(|&&v| v > 0.5).count()
    }

    /// The rows `indices` of `self`, in that order.
    fn select(&self, indices: &[usize]) -> Table {
        let mut out = Table {
            cols: self.cols,
            rows: indices.len(),
            x: Vec::with_capacity(indices.len() * self.cols),
            ..Table::default()
        };
        for &i in indices {
            out.x.extend_from_slice(self.row(i));
            if !self.y.is_empty() {
                out.y.push(self.y[i]);
            }
            if !self.time.is_empty() {
                out.time.push(self.time[i]);
                out.event.push(self.event[i]);
            }
        }
        out
    }
}

/// One hospital's data.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Site name, as in the schema.
    pub name: String,
    /// Rows the site trains on.
    pub train: Table,
    /// Rows held out for evaluation.
    pub test: Table,
}

/// What the label columns mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Binary classification: `y` is 0/1.
    Binary,
    /// Survival analysis: `time` and `event`.
    Survival,
}

/// How features are standardised; statistics always come from train rows only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Each site with the mean and unbiased standard deviation of its own train rows.
    PerSite,
    /// Every site with the mean and standard deviation of all sites' train rows together
    /// (the centralised "pooled" baseline).
    Pooled,
    /// Values are left as parsed.
    None,
}

/// A dataset: its sites, each split into train and test, with the same features.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Name from the schema.
    pub name: String,
    /// Feature names, one per column of every table.
    pub features: Vec<String>,
    /// Sites, in schema order.
    pub sites: Vec<Site>,
    /// Binary or survival.
    pub task: Task,
}

impl Dataset {
    /// Loads with the schema's own normalization.
    pub fn load(schema: &Path) -> Result<Dataset, Error> {
        let schema = Schema::read(schema)?;
        let normalization = schema.normalization;
        schema.load(normalization)
    }

    /// Loads with another normalization (the pooled baseline needs `Normalization::Pooled`).
    pub fn load_with(schema: &Path, normalization: Normalization) -> Result<Dataset, Error> {
        Schema::read(schema)?.load(normalization)
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// Union of all sites' train rows, in site order.
    pub fn pooled_train(&self) -> Table {
        let parts: Vec<&Table> = self.sites.iter().map(|s| &s.train).collect();
        self.concat(&parts)
    }

    /// Union of all sites' test rows, in site order.
    pub fn pooled_test(&self) -> Table {
        let parts: Vec<&Table> = self.sites.iter().map(|s| &s.test).collect();
        self.concat(&parts)
    }

    fn concat(&self, parts: &[&Table]) -> Table {
        let mut out = Table::concat(parts);
        out.cols = self.features.len();
        out
    }
}

/// What went wrong loading a dataset. Errors about file content name the file, the 1-based line
/// and the column.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The schema is not valid TOML, does not match the format, or contradicts itself.
    #[error("schema {path}: {message}")]
    Schema {
        /// The schema file.
        path: PathBuf,
        /// What is wrong (TOML errors include their line and column).
        message: String,
    },
    /// The schema names a column that the file (or the schema's `columns`) does not have.
    #[error("{path}: no column `{column}`")]
    UnknownColumn {
        /// The file expected to have the column.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// A header line is unusable: duplicate names, or columns that differ from the first site's.
    #[error("{path} line {line}: {message}")]
    Header {
        /// The data file.
        path: PathBuf,
        /// The header's line.
        line: u64,
        /// What is wrong, naming the column.
        message: String,
    },
    /// A value is neither a finite number nor a missing marker.
    #[error("{path} line {line}, column `{column}`: `{value}` is not a number")]
    NotNumeric {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Column name.
        column: String,
        /// The value as written (shortened).
        value: String,
    },
    /// A categorical value is not one of the declared levels.
    #[error("{path} line {line}, column `{column}`: `{value}` is not one of the levels {levels}")]
    UnknownLevel {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Column name.
        column: String,
        /// The value as written (shortened).
        value: String,
        /// The declared levels.
        levels: String,
    },
    /// A label (or event) is not binary after the schema's rule.
    #[error("{path} line {line}, column `{column}`: `{value}` is not a binary label ({rule})")]
    LabelNotBinary {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Column name.
        column: String,
        /// The value as written (shortened).
        value: String,
        /// What the rule accepts.
        rule: String,
    },
    /// A number outside the range its column allows (a negative survival time).
    #[error("{path} line {line}, column `{column}`: `{value}` {message}")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Column name.
        column: String,
        /// The value as written (shortened).
        value: String,
        /// Why it is refused.
        message: String,
    },
    /// The split file and the data disagree: a usable row is not listed, a listed row does not
    /// exist or was dropped, a split value is unknown, a row is listed twice.
    #[error("{path} line {line}: {message}")]
    Split {
        /// The split file or the data file, whichever holds the offending line.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// What is wrong, naming the column.
        message: String,
    },
    /// A record has a different number of fields than the header or `columns`.
    #[error("{path} line {line}: {found} fields, expected {expected}")]
    RaggedRow {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Fields per record.
        expected: usize,
        /// Fields in this record.
        found: usize,
    },
    /// A file or the dataset is beyond the limits of this module.
    #[error("{path}: too large: {message}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which limit, and where.
        message: String,
    },
    /// A site has no usable rows (the file is empty, or every row was dropped or belongs to other
    /// sites).
    #[error("{path}: no usable data rows")]
    Empty {
        /// The data file.
        path: PathBuf,
    },
    /// A site has too few train rows to fit normalization.
    #[error("{path}: site `{site}` has {rows} train rows; normalization needs at least 2")]
    TooFewRows {
        /// The site's data file (the schema for pooled normalization).
        path: PathBuf,
        /// The site (`all sites` for pooled normalization).
        site: String,
        /// Its train rows.
        rows: usize,
    },
    /// Under `impute_mean`, a column has missing values but no value in the site's train rows.
    #[error(
        "{path}: column `{column}` has missing values but none in the train rows of site `{site}` to impute a mean from"
    )]
    NoValues {
        /// The site's data file.
        path: PathBuf,
        /// The site.
        site: String,
        /// The feature.
        column: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// The schema as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    name: String,
    #[serde(default = "default_header")]
    header: bool,
    #[serde(default = "default_delimiter")]
    delimiter: String,
    columns: Option<Vec<String>>,
    #[serde(default)]
    drop: Vec<String>,
    missing: Option<RawMissing>,
    label: Option<RawLabel>,
    survival: Option<RawSurvival>,
    #[serde(default)]
    categorical: Vec<RawCategorical>,
    split: RawSplit,
    normalization: Normalization,
    sites: Vec<RawSite>,
}

fn default_header() -> bool {
    true
}

fn default_delimiter() -> String {
    ",".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMissing {
    markers: Vec<String>,
    policy: MissingPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MissingPolicy {
    DropRow,
    ImputeMean,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    column: String,
    positive_if: Option<String>,
    positive: Option<Vec<Level>>,
    negative: Option<Vec<Level>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSurvival {
    time: String,
    event: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategorical {
    column: String,
    levels: Vec<Level>,
    #[serde(default)]
    drop_first: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    file: Option<String>,
    site_column: Option<String>,
    line_column: Option<String>,
    key_column: Option<String>,
    split_column: Option<String>,
    train_value: Option<String>,
    test_value: Option<String>,
    unlisted: Option<Unlisted>,
    fraction: Option<f64>,
    seed: Option<u64>,
    stratify: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Unlisted {
    Error,
    Skip,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    file: String,
    train_value: Option<String>,
    test_value: Option<String>,
}

/// A categorical level or label value: numbers match numerically, text exactly.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum Level {
    Number(f64),
    Text(String),
}

impl Level {
    fn matches(&self, text: &str) -> bool {
        match self {
            Level::Number(n) => number(text) == Some(*n),
            Level::Text(t) => t == text,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Number(n) => write!(f, "{n}"),
            Level::Text(t) => f.write_str(t),
        }
    }
}

fn list(levels: &[Level]) -> String {
    levels
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The schema, checked.

struct Schema {
    path: PathBuf,
    name: String,
    header: bool,
    delimiter: u8,
    columns: Vec<String>,
    drop: BTreeSet<String>,
    markers: Vec<String>,
    policy: MissingPolicy,
    label: Option<Label>,
    survival: Option<RawSurvival>,
    categorical: Vec<Categorical>,
    split: SplitRule,
    normalization: Normalization,
    sites: Vec<SiteSpec>,
}

struct Label {
    column: String,
    rule: LabelRule,
}

enum LabelRule {
    ZeroOne,
    Compare(Op, f64),
    Values {
        positive: Vec<Level>,
        negative: Vec<Level>,
    },
}

#[derive(Clone, Copy)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl LabelRule {
    fn describe(&self) -> String {
        match self {
            LabelRule::ZeroOne => "the label must be 0 or 1".to_owned(),
            LabelRule::Compare(..) => "the label must be a number".to_owned(),
            LabelRule::Values { positive, negative } => format!(
                "positive values: {}; negative values: {}",
                list(positive),
                list(negative)
            ),
        }
    }
}

struct Categorical {
    column: String,
    levels: Vec<Level>,
    drop_first: bool,
}

impl Label {
    fn check(l: RawLabel, bad: &impl Fn(String) -> Error) -> Result<Label, Error> {
        let rule = match (l.positive_if, l.positive, l.negative) {
            (None, None, None) => LabelRule::ZeroOne,
            (Some(rule), None, None) => {
                let (op, value) = parse_rule(&rule).ok_or_else(|| {
                    bad(format!(
                        "`label.positive_if = {rule:?}`: expected an operator (>, >=, <, <=, ==, !=) and a number, e.g. \"> 0\""
                    ))
                })?;
                LabelRule::Compare(op, value)
            }
            (None, Some(positive), Some(negative)) => {
                if positive.is_empty() || negative.is_empty() {
                    return Err(bad(
                        "`label.positive` and `label.negative` must not be empty".into(),
                    ));
                }
                if let Some(both) = positive.iter().find(|p| negative.contains(p)) {
                    return Err(bad(format!(
                        "label value `{both}` is both positive and negative"
                    )));
                }
                LabelRule::Values { positive, negative }
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(bad(
                    "`label.positive` and `label.negative` go together, so that any other value is an error".into(),
                ));
            }
            (Some(_), _, _) => {
                return Err(bad(
                    "`label` takes either `positive_if` or `positive`/`negative`, not both".into(),
                ));
            }
        };
        Ok(Label {
            column: l.column,
            rule,
        })
    }
}

impl Categorical {
    fn check(
        raw: Vec<RawCategorical>,
        bad: &impl Fn(String) -> Error,
    ) -> Result<Vec<Categorical>, Error> {
        let mut out = Vec::with_capacity(raw.len());
        let mut one_hot = 0usize;
        for c in raw {
            if c.levels.is_empty() {
                return Err(bad(format!("categorical `{}` has no levels", c.column)));
            }
            if let Some(i) = (1..c.levels.len()).find(|&i| c.levels[..i].contains(&c.levels[i])) {
                return Err(bad(format!(
                    "categorical `{}` lists level `{}` twice",
                    c.column, c.levels[i]
                )));
            }
            one_hot += c.levels.len();
            if one_hot > MAX_COLUMNS {
                return Err(bad(format!("more than {MAX_COLUMNS} one-hot columns")));
            }
            out.push(Categorical {
                column: c.column,
                levels: c.levels,
                drop_first: c.drop_first,
            });
        }
        Ok(out)
    }

    /// How many features the column becomes.
    fn width(&self) -> usize {
        self.levels.len() - usize::from(self.drop_first)
    }
}

impl SplitRule {
    fn check(
        raw: &RawSplit,
        dir: &Path,
        bad: &impl Fn(String) -> Error,
    ) -> Result<SplitRule, Error> {
        match (&raw.file, raw.fraction) {
            (Some(_), Some(_)) => Err(bad(
                "`split` takes either `file` or `fraction`, not both".into()
            )),
            (None, None) => Err(bad("`split` needs `file` or `fraction`".into())),
            (None, Some(fraction)) => {
                if raw.site_column.is_some()
                    || raw.line_column.is_some()
                    || raw.key_column.is_some()
                    || raw.split_column.is_some()
                    || raw.train_value.is_some()
                    || raw.test_value.is_some()
                    || raw.unlisted.is_some()
                {
                    return Err(bad(
                        "a `fraction` split takes only `fraction`, `seed` and `stratify`".into(),
                    ));
                }
                if !(fraction > 0.0 && fraction < 1.0) {
                    return Err(bad(format!(
                        "`split.fraction` must be between 0 and 1 (exclusive), not {fraction}"
                    )));
                }
                let seed = raw.seed.ok_or_else(|| {
                    bad("a `fraction` split needs a `seed`, so that it can be repeated".into())
                })?;
                Ok(SplitRule::Fraction {
                    fraction,
                    seed,
                    stratify: raw.stratify.unwrap_or(false),
                })
            }
            (Some(file), None) => {
                if raw.seed.is_some() || raw.stratify.is_some() {
                    return Err(bad(
                        "`seed` and `stratify` belong to `fraction` splits, not split files".into(),
                    ));
                }
                let by = match (&raw.line_column, &raw.key_column) {
                    (Some(l), None) => By::Line(l.clone()),
                    (None, Some(k)) => By::Key(k.clone()),
                    _ => {
                        return Err(bad(
                            "a split file needs exactly one of `line_column` and `key_column`"
                                .into(),
                        ));
                    }
                };
                let split_column = raw
                    .split_column
                    .clone()
                    .ok_or_else(|| bad("a split file needs `split_column`".into()))?;
                Ok(SplitRule::File(SplitFile {
                    path: dir.join(file),
                    site_column: raw.site_column.clone(),
                    by,
                    split_column,
                    unlisted: raw.unlisted.unwrap_or(Unlisted::Error),
                }))
            }
        }
    }
}

impl SiteSpec {
    fn check(
        raw: Vec<RawSite>,
        raw_split: &RawSplit,
        split: &SplitRule,
        dir: &Path,
        bad: &impl Fn(String) -> Error,
    ) -> Result<Vec<SiteSpec>, Error> {
        if raw.is_empty() {
            return Err(bad("no `[[sites]]`".into()));
        }
        if let Some(dup) = first_duplicate(raw.iter().map(|s| &s.name)) {
            return Err(bad(format!("site `{dup}` is listed twice")));
        }
        let mut sites = Vec::with_capacity(raw.len());
        for s in raw {
            if s.name.trim().is_empty() {
                return Err(bad("a site has an empty name".into()));
            }
            if matches!(split, SplitRule::Fraction { .. })
                && (s.train_value.is_some() || s.test_value.is_some())
            {
                return Err(bad(format!(
                    "site `{}`: `train_value`/`test_value` need a split file",
                    s.name
                )));
            }
            let train_value = s
                .train_value
                .or_else(|| raw_split.train_value.clone())
                .unwrap_or_else(|| "train".to_owned());
            let test_value = s
                .test_value
                .or_else(|| raw_split.test_value.clone())
                .unwrap_or_else(|| "test".to_owned());
            if train_value == test_value {
                return Err(bad(format!(
                    "site `{}`: train and test split values are both `{train_value}`",
                    s.name
                )));
            }
            sites.push(SiteSpec {
                name: s.name,
                path: dir.join(s.file),
                train_value,
                test_value,
            });
        }
        // Sites sharing a file must be told apart by the split file, or they would all get the
        // same rows.
        for (i, a) in sites.iter().enumerate() {
            for b in &sites[i + 1..] {
                if a.path != b.path {
                    continue;
                }
                let apart = match split {
                    SplitRule::File(f) => {
                        f.site_column.is_some()
                            || ![&b.train_value, &b.test_value]
                                .iter()
                                .any(|v| **v == a.train_value || **v == a.test_value)
                    }
                    SplitRule::Fraction { .. } => false,
                };
                if !apart {
                    return Err(bad(format!(
                        "sites `{}` and `{}` read the same file; sharing a file needs a split file that gives each site its own `train_value`/`test_value`",
                        a.name, b.name
                    )));
                }
            }
        }
        Ok(sites)
    }
}

enum SplitRule {
    File(SplitFile),
    Fraction {
        fraction: f64,
        seed: u64,
        stratify: bool,
    },
}

struct SplitFile {
    path: PathBuf,
    site_column: Option<String>,
    by: By,
    split_column: String,
    unlisted: Unlisted,
}

enum By {
    Line(String),
    Key(String),
}

struct SiteSpec {
    name: String,
    path: PathBuf,
    train_value: String,
    test_value: String,
}

impl Schema {
    fn read(path: &Path) -> Result<Schema, Error> {
        let file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        if len > MAX_SCHEMA_BYTES {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                message: format!("a schema of {len} bytes (at most {MAX_SCHEMA_BYTES})"),
            });
        }
        let mut text = String::new();
        file.take(MAX_SCHEMA_BYTES)
            .read_to_string(&mut text)
            .map_err(io_error(path))?;
        let raw: RawSchema = toml::from_str(&text).map_err(|e| Error::Schema {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Schema::check(path, raw)
    }

    /// Checks the rules that span fields, and resolves paths against the schema's folder.
    fn check(path: &Path, raw: RawSchema) -> Result<Schema, Error> {
        let bad = |message: String| Error::Schema {
            path: path.to_owned(),
            message,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if raw.name.trim().is_empty() {
            return Err(bad("`name` is empty".into()));
        }
        let delimiter = match raw.delimiter.as_bytes() {
            [d] if d.is_ascii() && !matches!(*d, b'"' | b'\n' | b'\r') => *d,
            _ => {
                return Err(bad(format!(
                    "`delimiter` must be one ASCII character other than a quote or newline, not {:?}",
                    raw.delimiter
                )));
            }
        };
        let columns = match (raw.header, raw.columns) {
            (true, None) => Vec::new(),
            (true, Some(_)) => {
                return Err(bad(
                    "`columns` is for files without a header; with `header = true` names come from the header".into(),
                ));
            }
            (false, None) => return Err(bad("`header = false` needs `columns`".into())),
            (false, Some(c)) if c.is_empty() => return Err(bad("`columns` is empty".into())),
            (false, Some(c)) => c,
        };
        if columns.len() > MAX_COLUMNS {
            return Err(bad(format!("more than {MAX_COLUMNS} columns")));
        }
        if let Some(dup) = first_duplicate(columns.iter()) {
            return Err(bad(format!("column `{dup}` is listed twice in `columns`")));
        }
        if let Some(dup) = first_duplicate(raw.drop.iter()) {
            return Err(bad(format!("column `{dup}` is listed twice in `drop`")));
        }
        let (markers, policy) = match raw.missing {
            Some(m) => (
                m.markers.iter().map(|s| s.trim().to_owned()).collect(),
                m.policy,
            ),
            None => (Vec::new(), MissingPolicy::DropRow),
        };
        let label = raw.label.map(|l| Label::check(l, &bad)).transpose()?;
        if label.is_none() && raw.survival.is_none() {
            return Err(bad(
                "a dataset needs a `[label]`, a `[survival]` section, or both".into(),
            ));
        }
        let categorical = Categorical::check(raw.categorical, &bad)?;
        let split = SplitRule::check(&raw.split, dir, &bad)?;
        let sites = SiteSpec::check(raw.sites, &raw.split, &split, dir, &bad)?;

        let schema = Schema {
            path: path.to_owned(),
            name: raw.name,
            header: raw.header,
            delimiter,
            columns,
            drop: raw.drop.into_iter().collect(),
            markers,
            policy,
            label,
            survival: raw.survival,
            categorical,
            split,
            normalization: raw.normalization,
            sites,
        };
        let roles = schema.roles();
        if let Some(dup) = first_duplicate(roles.iter().map(|(c, _)| c)) {
            let what: Vec<&str> = roles
                .iter()
                .filter(|(c, _)| c == dup)
                .map(|(_, r)| *r)
                .collect();
            return Err(bad(format!(
                "column `{dup}` has more than one role: {}",
                what.join(", ")
            )));
        }
        if let Some((key, _)) = schema.key_role()
            && let Some((_, role)) = roles.iter().find(|(c, r)| *c == key && *r != "drop")
        {
            return Err(bad(format!(
                "column `{key}` is the split key and cannot also be the {role}"
            )));
        }
        if !schema.header {
            // Without a header, every column the schema names must be in `columns` now.
            for (column, _) in roles.iter().chain(schema.key_role().iter()) {
                if !schema.columns.contains(column) {
                    return Err(Error::UnknownColumn {
                        path: path.to_owned(),
                        column: column.clone(),
                    });
                }
            }
        }
        Ok(schema)
    }

    /// Every column with a role other than feature, and the role.
    fn roles(&self) -> Vec<(String, &'static str)> {
        let mut roles: Vec<(String, &'static str)> =
            self.drop.iter().map(|c| (c.clone(), "drop")).collect();
        if let Some(l) = &self.label {
            roles.push((l.column.clone(), "label"));
        }
        if let Some(s) = &self.survival {
            roles.push((s.time.clone(), "survival time"));
            roles.push((s.event.clone(), "survival event"));
        }
        for c in &self.categorical {
            roles.push((c.column.clone(), "categorical"));
        }
        roles
    }

    /// The data column that keys the split file, if any. It is never a feature; it may also be
    /// listed in `drop`.
    fn key_role(&self) -> Option<(String, &'static str)> {
        match &self.split {
            SplitRule::File(SplitFile { by: By::Key(k), .. }) => Some((k.clone(), "split key")),
            _ => None,
        }
    }

    fn is_missing(&self, text: &str) -> bool {
        self.markers.iter().any(|m| m == text)
    }

    fn load(&self, normalization: Normalization) -> Result<Dataset, Error> {
        let mut splitter = match &self.split {
            SplitRule::File(f) => Splitter::File(SplitTable::read(self, f)?),
            SplitRule::Fraction {
                fraction,
                seed,
                stratify,
            } => Splitter::Fraction {
                fraction: *fraction,
                seed: *seed,
                stratify: *stratify,
            },
        };
        let mut features: Option<Vec<String>> = None;
        let mut sites = Vec::with_capacity(self.sites.len());
        let mut held = 0usize;
        for spec in &self.sites {
            let rows = self.read_rows(spec, &mut features, MAX_VALUES - held)?;
            let parts = match &mut splitter {
                Splitter::File(table) => table.assign(spec, &rows)?,
                Splitter::Fraction {
                    fraction,
                    seed,
                    stratify,
                } => {
                    // Stratify on the label, or on the event for survival data.
                    let strata = match (*stratify, self.label.is_some()) {
                        (false, _) => None,
                        (true, true) => Some(rows.table.y.as_slice()),
                        (true, false) => Some(rows.table.event.as_slice()),
                    };
                    fraction_split(rows.table.rows, strata, *fraction, *seed, &spec.name)
                }
            };
            let mut site = rows.into_site(spec, &parts)?;
            if self.policy == MissingPolicy::ImputeMean {
                impute(&mut site, spec, features.as_deref().unwrap_or_default())?;
            }
            held += site.train.x.len() + site.test.x.len();
            sites.push(site);
        }
        if let Splitter::File(table) = &splitter {
            table.check_used(self)?;
        }
        let names = features.as_deref().unwrap_or_default();
        normalize(&self.path, &self.sites, &mut sites, names, normalization)?;
        Ok(Dataset {
            name: self.name.clone(),
            features: features.unwrap_or_default(),
            sites,
            task: if self.survival.is_some() {
                Task::Survival
            } else {
                Task::Binary
            },
        })
    }

    /// Where each schema role sits in a file with columns `names`, and which columns are
    /// features. The first file fixes the feature names; later files must have the same ones.
    fn layout(
        &self,
        names: &[String],
        path: &Path,
        header_line: u64,
        features: &mut Option<Vec<String>>,
    ) -> Result<Layout, Error> {
        let mut index = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            if index.insert(name.as_str(), i).is_some() {
                return Err(Error::Header {
                    path: path.to_owned(),
                    line: header_line,
                    message: format!("column `{name}` appears twice"),
                });
            }
        }
        let find = |column: &str| {
            index
                .get(column)
                .copied()
                .ok_or_else(|| Error::UnknownColumn {
                    path: path.to_owned(),
                    column: column.to_owned(),
                })
        };
        let roles = self.roles();
        let key = self.key_role();
        let mut taken = BTreeSet::new();
        for (column, _) in roles.iter().chain(key.iter()) {
            taken.insert(find(column)?);
        }
        let numeric_here: Vec<&String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken.contains(i))
            .map(|(_, n)| n)
            .collect();
        let numeric = match features {
            None => {
                let mut all: Vec<String> = numeric_here.iter().map(|n| (*n).clone()).collect();
                for c in &self.categorical {
                    let skip = usize::from(c.drop_first);
                    all.extend(c.levels[skip..].iter().map(|l| format!("{}={l}", c.column)));
                }
                if all.is_empty() {
                    return Err(Error::Schema {
                        path: self.path.clone(),
                        message: format!("no feature columns are left in {}", path.display()),
                    });
                }
                if all.len() > MAX_COLUMNS {
                    return Err(Error::TooLarge {
                        path: path.to_owned(),
                        message: format!("more than {MAX_COLUMNS} features"),
                    });
                }
                let numeric = numeric_here
                    .iter()
                    .map(|n| find(n))
                    .collect::<Result<_, _>>()?;
                *features = Some(all);
                numeric
            }
            Some(all) => {
                let one_hot: usize = self.categorical.iter().map(Categorical::width).sum();
                let expected = &all[..all.len() - one_hot];
                if let Some(extra) = numeric_here.iter().find(|n| !expected.contains(**n)) {
                    return Err(Error::Header {
                        path: path.to_owned(),
                        line: header_line,
                        message: format!(
                            "column `{extra}` is not a feature of the first site's file"
                        ),
                    });
                }
                expected.iter().map(|n| find(n)).collect::<Result<_, _>>()?
            }
        };
        Ok(Layout {
            width: names.len(),
            numeric,
            categorical: self
                .categorical
                .iter()
                .map(|c| find(&c.column))
                .collect::<Result<_, _>>()?,
            label: self.label.as_ref().map(|l| find(&l.column)).transpose()?,
            time: self.survival.as_ref().map(|s| find(&s.time)).transpose()?,
            event: self.survival.as_ref().map(|s| find(&s.event)).transpose()?,
            key: key.map(|(k, _)| find(&k)).transpose()?,
            names: names.to_vec(),
        })
    }

    /// Parses a site's file: every record, minus the rows dropped for missing values.
    fn read_rows(
        &self,
        site: &SiteSpec,
        features: &mut Option<Vec<String>>,
        budget: usize,
    ) -> Result<Rows, Error> {
        let path = &site.path;
        let mut records = Records::open(path, self.delimiter, usize::from(self.header))?;
        let mut record = ByteRecord::new();
        let mut header_line = 0;
        let names: Vec<String> = if self.header {
            let Some(line) = records.next(&mut record)? else {
                return Err(Error::Empty { path: path.clone() });
            };
            header_line = line;
            if record.len() > MAX_COLUMNS {
                return Err(Error::TooLarge {
                    path: path.clone(),
                    message: format!("more than {MAX_COLUMNS} columns"),
                });
            }
            record
                .iter()
                .map(|f| String::from_utf8_lossy(f).trim().to_owned())
                .collect()
        } else {
            self.columns.clone()
        };
        let layout = self.layout(&names, path, header_line, features)?;
        let cols = features.as_ref().map_or(0, Vec::len);
        let mut rows = Rows {
            table: Table {
                cols,
                ..Table::default()
            },
            lines: Vec::new(),
            keys: Vec::new(),
        };
        let mut row = Vec::with_capacity(cols);
        while let Some(line) = records.next(&mut record)? {
            if record.len() != layout.width {
                return Err(Error::RaggedRow {
                    path: path.clone(),
                    line,
                    expected: layout.width,
                    found: record.len(),
                });
            }
            row.clear();
            let Some(parsed) = self.parse_row(&record, line, path, &layout, &mut row)? else {
                continue;
            };
            if rows.table.x.len() + row.len() > budget {
                return Err(Error::TooLarge {
                    path: path.clone(),
                    message: format!(
                        "line {line}: more than {MAX_VALUES} feature values in the dataset"
                    ),
                });
            }
            let t = &mut rows.table;
            t.x.extend_from_slice(&row);
            t.rows += 1;
            if self.label.is_some() {
                t.y.push(parsed.y);
            }
            if self.survival.is_some() {
                t.time.push(parsed.time);
                t.event.push(parsed.event);
            }
            rows.lines.push(line);
            if let Some(key) = parsed.key {
                rows.keys.push(key);
            }
        }
        if rows.table.rows == 0 {
            return Err(Error::Empty { path: path.clone() });
        }
        Ok(rows)
    }

    /// One record into `row` (features, NaN where missing). `None` if the row is dropped.
    fn parse_row(
        &self,
        record: &ByteRecord,
        line: u64,
        path: &Path,
        layout: &Layout,
        row: &mut Vec<f32>,
    ) -> Result<Option<Parsed>, Error> {
        let field = |i: usize| Field {
            raw: record.get(i).unwrap_or_default(),
            line,
            path,
            column: layout.names.get(i).map_or("", String::as_str),
        };
        let mut missing = false;
        for &i in &layout.numeric {
            let f = field(i);
            if self.is_missing(f.text()) {
                missing = true;
                row.push(f32::NAN);
            } else {
                row.push(f.number()? as f32);
            }
        }
        for (c, &i) in self.categorical.iter().zip(&layout.categorical) {
            let f = field(i);
            let text = f.text();
            if self.is_missing(text) {
                missing = true;
                row.extend(std::iter::repeat_n(f32::NAN, c.width()));
                continue;
            }
            let Some(level) = c.levels.iter().position(|l| l.matches(text)) else {
                return Err(Error::UnknownLevel {
                    path: path.to_owned(),
                    line,
                    column: c.column.clone(),
                    value: f.shown(),
                    levels: list(&c.levels),
                });
            };
            let skip = usize::from(c.drop_first);
            row.extend((skip..c.levels.len()).map(|j| if j == level { 1.0 } else { 0.0 }));
        }
        let mut target_missing = false;
        let mut y = f32::NAN;
        if let (Some(label), Some(i)) = (&self.label, layout.label) {
            let f = field(i);
            if self.is_missing(f.text()) {
                target_missing = true;
            } else {
                y = f.label(&label.rule)?;
            }
        }
        let (mut time, mut event) = (f32::NAN, f32::NAN);
        if let (Some(t), Some(e)) = (layout.time, layout.event) {
            let f = field(t);
            if self.is_missing(f.text()) {
                target_missing = true;
            } else {
                let value = f.number()?;
                if value < 0.0 {
                    return Err(Error::OutOfRange {
                        path: path.to_owned(),
                        line,
                        column: f.column.to_owned(),
                        value: f.shown(),
                        message: "is a negative survival time".to_owned(),
                    });
                }
                time = value as f32;
            }
            let f = field(e);
            if self.is_missing(f.text()) {
                target_missing = true;
            } else {
                event = f.label(&LabelRule::ZeroOne).map_err(|e| match e {
                    Error::LabelNotBinary {
                        path,
                        line,
                        column,
                        value,
                        ..
                    } => Error::LabelNotBinary {
                        path,
                        line,
                        column,
                        value,
                        rule: "an event must be 0 (censored) or 1 (observed)".to_owned(),
                    },
                    other => other,
                })?;
            }
        }
        let key = layout
            .key
            .map(|i| String::from_utf8_lossy(field(i).raw).trim().to_owned());
        if target_missing || (missing && self.policy == MissingPolicy::DropRow) {
            return Ok(None);
        }
        Ok(Some(Parsed {
            y,
            time,
            event,
            key,
        }))
    }
}

/// Where things are in one data file.
struct Layout {
    width: usize,
    /// Field index of each numeric feature, in feature order.
    numeric: Vec<usize>,
    /// Field index of each `[[categorical]]` entry.
    categorical: Vec<usize>,
    label: Option<usize>,
    time: Option<usize>,
    event: Option<usize>,
    key: Option<usize>,
    names: Vec<String>,
}

/// How rows get their part, once the split file (if any) is read.
enum Splitter {
    File(SplitTable),
    Fraction {
        fraction: f64,
        seed: u64,
        stratify: bool,
    },
}

struct Parsed {
    y: f32,
    time: f32,
    event: f32,
    key: Option<String>,
}

/// A site file's kept rows, before the split.
struct Rows {
    table: Table,
    /// 1-based line of each row.
    lines: Vec<u64>,
    /// Split key of each row (empty unless the split file is keyed by a column).
    keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Train,
    Test,
    /// The row belongs to another site sharing the file, or is not listed and `unlisted = "skip"`.
    Skip,
}

impl Rows {
    fn into_site(self, spec: &SiteSpec, parts: &[Part]) -> Result<Site, Error> {
        let pick = |want: Part| -> Vec<usize> {
            parts
                .iter()
                .enumerate()
                .filter(|(_, p)| **p == want)
                .map(|(i, _)| i)
                .collect()
        };
        let (train, test) = (pick(Part::Train), pick(Part::Test));
        if train.is_empty() && test.is_empty() {
            return Err(Error::Empty {
                path: spec.path.clone(),
            });
        }
        Ok(Site {
            name: spec.name.clone(),
            train: self.table.select(&train),
            test: self.table.select(&test),
        })
    }
}

/// One field of a record, with what an error about it must say.
struct Field<'a> {
    raw: &'a [u8],
    line: u64,
    path: &'a Path,
    column: &'a str,
}

impl Field<'_> {
    /// The field trimmed of spaces; invalid UTF-8 gives text that matches nothing.
    fn text(&self) -> &str {
        std::str::from_utf8(self.raw).map_or("\u{FFFD}", str::trim)
    }

    /// The field for an error message: lossy, control characters escaped, shortened.
    fn shown(&self) -> String {
        let text = String::from_utf8_lossy(self.raw);
        let text = text.trim();
        let mut out = String::new();
        for (i, c) in text.chars().enumerate() {
            if i == MAX_SHOWN {
                out.push('…');
                break;
            }
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn number(&self) -> Result<f64, Error> {
        number(self.text()).ok_or_else(|| Error::NotNumeric {
            path: self.path.to_owned(),
            line: self.line,
            column: self.column.to_owned(),
            value: self.shown(),
        })
    }

    fn label(&self, rule: &LabelRule) -> Result<f32, Error> {
        let not_binary = || Error::LabelNotBinary {
            path: self.path.to_owned(),
            line: self.line,
            column: self.column.to_owned(),
            value: self.shown(),
            rule: rule.describe(),
        };
        let positive = match rule {
            LabelRule::ZeroOne => match number(self.text()) {
                Some(0.0) => false,
                Some(1.0) => true,
                _ => return Err(not_binary()),
            },
            LabelRule::Compare(op, threshold) => {
                let v = self.number()?;
                match op {
                    Op::Gt => v > *threshold,
                    Op::Ge => v >= *threshold,
                    Op::Lt => v < *threshold,
                    Op::Le => v <= *threshold,
                    Op::Eq => v == *threshold,
                    Op::Ne => v != *threshold,
                }
            }
            LabelRule::Values { positive, negative } => {
                let text = self.text();
                if positive.iter().any(|l| l.matches(text)) {
                    true
                } else if negative.iter().any(|l| l.matches(text)) {
                    false
                } else {
                    return Err(not_binary());
                }
            }
        };
        Ok(if positive { 1.0 } else { 0.0 })
    }
}

/// A finite number that also fits `f32`; `None` for anything else (including `NaN`, `inf`).
fn number(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (*v as f32).is_finite())
}

fn parse_rule(rule: &str) -> Option<(Op, f64)> {
    let rule = rule.trim();
    let (op, rest) = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
    ]
    .into_iter()
    .find_map(|(s, op)| rule.strip_prefix(s).map(|rest| (op, rest)))?;
    Some((op, number(rest.trim())?))
}

fn first_duplicate<'a, T: Ord + 'a>(items: impl Iterator<Item = &'a T>) -> Option<&'a T> {
    let mut seen = BTreeSet::new();
    items.into_iter().find(|item| !seen.insert(*item))
}

// ---------------------------------------------------------------------------------------------
// Bounded CSV reading.

/// Why a [`Limited`] reader stopped.
#[derive(Debug)]
enum Limit {
    File,
    Record,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::File => "file too large",
            Limit::Record => "record too long",
        })
    }
}

impl std::error::Error for Limit {}

/// A file that refuses to yield more than [`MAX_FILE_BYTES`] in total, or more than
/// [`MAX_RECORD_BYTES`] between two resets of `record` (give or take the CSV reader's 8 KiB
/// buffer), and that ends with a newline even when the file does not, so that every record is
/// newline-terminated and line numbers can be derived from the reader's position.
struct Limited {
    file: File,
    total: u64,
    record: u64,
    last: u8,
}

impl Read for Limited {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 {
            if self.total > 0 && self.last != b'\n' && !buf.is_empty() {
                buf[0] = b'\n';
                self.last = b'\n';
                return Ok(1);
            }
            return Ok(0);
        }
        self.last = buf[n - 1];
        self.total += n as u64;
        self.record += n as u64;
        if self.total > MAX_FILE_BYTES {
            return Err(io::Error::other(Limit::File));
        }
        if self.record > MAX_RECORD_BYTES {
            return Err(io::Error::other(Limit::Record));
        }
        Ok(n)
    }
}

/// Records of one CSV file, streamed, with the 1-based line each starts on. Lines end with LF
/// or CRLF; blank lines are skipped.
struct Records {
    reader: csv::Reader<Limited>,
    path: PathBuf,
    count: usize,
    max: usize,
}

impl Records {
    /// Opens `path`; `extra` records (a header) are allowed beyond [`MAX_ROWS`].
    fn open(path: &Path, delimiter: u8, extra: usize) -> Result<Records, Error> {
        let file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        if len > MAX_FILE_BYTES {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                message: format!("{len} bytes (at most {MAX_FILE_BYTES})"),
            });
        }
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            // Records end at `\n` only, and consume it: line numbers below rely on that. A `\r`
            // before it stays in the last field, and fields are trimmed.
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(Limited {
                file,
                total: 0,
                record: 0,
                last: 0,
            });
        Ok(Records {
            reader,
            path: path.to_owned(),
            count: 0,
            max: MAX_ROWS + extra,
        })
    }

    /// The next record and the line it starts on, or `None` at the end.
    fn next(&mut self, record: &mut ByteRecord) -> Result<Option<u64>, Error> {
        loop {
            self.reader.get_mut().record = 0;
            match self.reader.read_byte_record(record) {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(e) => return Err(self.error(e)),
            }
            // The reader has consumed the record's closing `\n` (every record has one, see
            // `Limited`); newlines inside quoted fields are still in the record.
            let inside = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
            let line = self
                .reader
                .position()
                .line()
                .saturating_sub(1 + inside)
                .max(1);
            if self.reader.position().record() == 1 {
                strip_bom(record);
            }
            if record.len() == 1 && record.get(0).is_some_and(|f| f.trim_ascii().is_empty()) {
                // A line of spaces, or the `\r` of an empty CRLF line.
                continue;
            }
            self.count += 1;
            if self.count > self.max {
                return Err(Error::TooLarge {
                    path: self.path.clone(),
                    message: format!("line {line}: more than {MAX_ROWS} rows"),
                });
            }
            return Ok(Some(line));
        }
    }

    fn error(&self, e: csv::Error) -> Error {
        let line = e
            .position()
            .map_or_else(|| self.reader.position().line(), csv::Position::line);
        let message = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(source) => {
                match source.get_ref().and_then(|i| i.downcast_ref::<Limit>()) {
                    Some(Limit::File) => Error::TooLarge {
                        path: self.path.clone(),
                        message: format!("more than {MAX_FILE_BYTES} bytes"),
                    },
                    Some(Limit::Record) => Error::TooLarge {
                        path: self.path.clone(),
                        message: format!(
                            "line {line}: a record longer than {MAX_RECORD_BYTES} bytes"
                        ),
                    },
                    None => Error::Io {
                        path: self.path.clone(),
                        source,
                    },
                }
            }
            // With flexible records and byte records, csv reports nothing else; keep it anyway.
            _ => Error::Io {
                path: self.path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, message),
            },
        }
    }
}

fn strip_bom(record: &mut ByteRecord) {
    let Some(first) = record.get(0) else { return };
    if !first.starts_with(BOM) {
        return;
    }
    let mut stripped = ByteRecord::with_capacity(record.as_slice().len(), record.len());
    stripped.push_field(&first[BOM.len()..]);
    for field in record.iter().skip(1) {
        stripped.push_field(field);
    }
    stripped.set_position(record.position().cloned());
    *record = stripped;
}

// ---------------------------------------------------------------------------------------------
// Splits.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Line(u64),
    Text(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Line(l) => write!(f, "line {l}"),
            Key::Text(t) => write!(f, "key `{t}`"),
        }
    }
}

struct Entry {
    /// The site column's value; empty without a site column.
    site: String,
    key: Key,
    value: String,
    line: u64,
}

/// A split file, read once, and which of its entries the sites used.
struct SplitTable {
    path: PathBuf,
    split_column: String,
    /// The data column holding the key (empty for line numbers).
    key_column: String,
    entries: Vec<Entry>,
    index: BTreeMap<(String, Key), usize>,
    used: Vec<bool>,
    has_site_column: bool,
    unlisted: Unlisted,
}

impl SplitTable {
    fn read(schema: &Schema, rule: &SplitFile) -> Result<SplitTable, Error> {
        let path = &rule.path;
        let mut records = Records::open(path, b',', 1)?;
        let mut record = ByteRecord::new();
        if records.next(&mut record)?.is_none() {
            return Err(Error::Empty { path: path.clone() });
        }
        let names: Vec<String> = record
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_owned())
            .collect();
        let find = |column: &str| {
            names
                .iter()
                .position(|n| n == column)
                .ok_or_else(|| Error::UnknownColumn {
                    path: path.clone(),
                    column: column.to_owned(),
                })
        };
        let site_at = rule.site_column.as_deref().map(find).transpose()?;
        let (key_name, key_at) = match &rule.by {
            By::Line(c) | By::Key(c) => (c.as_str(), find(c)?),
        };
        let split_at = find(&rule.split_column)?;

        let mut table = SplitTable {
            path: path.clone(),
            split_column: rule.split_column.clone(),
            key_column: match &rule.by {
                By::Key(k) => k.clone(),
                By::Line(_) => String::new(),
            },
            entries: Vec::new(),
            index: BTreeMap::new(),
            used: Vec::new(),
            has_site_column: site_at.is_some(),
            unlisted: rule.unlisted,
        };
        let text = |record: &ByteRecord, i: usize| {
            String::from_utf8_lossy(record.get(i).unwrap_or_default())
                .trim()
                .to_owned()
        };
        while let Some(line) = records.next(&mut record)? {
            if record.len() != names.len() {
                return Err(Error::RaggedRow {
                    path: path.clone(),
                    line,
                    expected: names.len(),
                    found: record.len(),
                });
            }
            let site = site_at.map(|i| text(&record, i)).unwrap_or_default();
            let sites: Vec<&SiteSpec> = if site_at.is_some() {
                schema.sites.iter().filter(|s| s.name == site).collect()
            } else {
                schema.sites.iter().collect()
            };
            if sites.is_empty() {
                // A site this schema does not load.
                continue;
            }
            let value = text(&record, split_at);
            if !sites
                .iter()
                .any(|s| s.train_value == value || s.test_value == value)
            {
                let mut known: Vec<String> = sites
                    .iter()
                    .flat_map(|s| {
                        [
                            format!("`{}`", s.train_value),
                            format!("`{}`", s.test_value),
                        ]
                    })
                    .collect();
                known.dedup();
                return Err(Error::Split {
                    path: path.clone(),
                    line,
                    message: format!(
                        "column `{}`: unknown split value `{}` (expected {})",
                        rule.split_column,
                        Field {
                            raw: value.as_bytes(),
                            line,
                            path,
                            column: ""
                        }
                        .shown(),
                        known.join(" or ")
                    ),
                });
            }
            let raw_key = text(&record, key_at);
            let key = match rule.by {
                By::Line(_) => match raw_key.parse::<u64>() {
                    Ok(n) if n >= 1 => Key::Line(n),
                    _ => {
                        return Err(Error::Split {
                            path: path.clone(),
                            line,
                            message: format!(
                                "column `{key_name}`: `{}` is not a line number (1, 2, ...)",
                                Field {
                                    raw: raw_key.as_bytes(),
                                    line,
                                    path,
                                    column: ""
                                }
                                .shown()
                            ),
                        });
                    }
                },
                By::Key(_) => Key::Text(raw_key),
            };
            if let Some(&first) = table.index.get(&(site.clone(), key.clone())) {
                return Err(Error::Split {
                    path: path.clone(),
                    line,
                    message: format!(
                        "column `{key_name}`: {key} is listed twice (first on line {})",
                        table.entries[first].line
                    ),
                });
            }
            table
                .index
                .insert((site.clone(), key.clone()), table.entries.len());
            table.entries.push(Entry {
                site,
                key,
                value,
                line,
            });
        }
        table.used = vec![false; table.entries.len()];
        Ok(table)
    }

    /// Each row's part for `site`.
    fn assign(&mut self, site: &SiteSpec, rows: &Rows) -> Result<Vec<Part>, Error> {
        let site_key = if self.has_site_column {
            site.name.clone()
        } else {
            String::new()
        };
        let mut parts = Vec::with_capacity(rows.lines.len());
        for (i, &line) in rows.lines.iter().enumerate() {
            let key = match rows.keys.get(i) {
                Some(k) => Key::Text(k.clone()),
                None => Key::Line(line),
            };
            let Some(&at) = self.index.get(&(site_key.clone(), key.clone())) else {
                match self.unlisted {
                    Unlisted::Skip => {
                        parts.push(Part::Skip);
                        continue;
                    }
                    Unlisted::Error => {
                        return Err(Error::Split {
                            path: site.path.clone(),
                            line,
                            message: format!(
                                "this row ({key}) of site `{}` is not listed in {}",
                                site.name,
                                self.path.display()
                            ),
                        });
                    }
                }
            };
            let entry = &self.entries[at];
            let part = if entry.value == site.train_value {
                Part::Train
            } else if entry.value == site.test_value {
                Part::Test
            } else {
                // Another site's row in a shared file (values were checked when reading).
                parts.push(Part::Skip);
                continue;
            };
            if self.used[at] {
                return Err(Error::Split {
                    path: site.path.clone(),
                    line,
                    message: format!(
                        "column `{}`: {key} appears on more than one row, so the split file cannot tell them apart",
                        self.key_column
                    ),
                });
            }
            self.used[at] = true;
            parts.push(part);
        }
        Ok(parts)
    }

    /// Every entry for a loaded site must have matched one of its usable rows.
    fn check_used(&self, schema: &Schema) -> Result<(), Error> {
        for (entry, used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let site = schema.sites.iter().find(|s| {
                (!self.has_site_column || s.name == entry.site)
                    && (s.train_value == entry.value || s.test_value == entry.value)
            });
            let Some(site) = site else { continue };
            return Err(Error::Split {
                path: self.path.clone(),
                line: entry.line,
                message: format!(
                    "column `{}`: lists {} of site `{}`, but {} has no such usable row (missing, dropped for a missing value, or past the end)",
                    self.split_column,
                    entry.key,
                    site.name,
                    site.path.display()
                ),
            });
        }
        Ok(())
    }
}

/// Fraction split of `n` rows: train/test per row, keeping file order.
fn fraction_split(
    n: usize,
    strata: Option<&[f32]>,
    fraction: f64,
    seed: u64,
    site: &str,
) -> Vec<Part> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(fnv1a(site.as_bytes()));
    let mut groups: Vec<Vec<usize>> = match strata {
        Some(s) => {
            let (positive, negative): (Vec<usize>, Vec<usize>) =
                (0..n).partition(|&i| s.get(i).is_some_and(|&v| v > 0.5));
            vec![negative, positive]
        }
        None => vec![(0..n).collect()],
    };
    let n_train = ((n as f64 * fraction).floor() as usize).min(n);
    let exact: Vec<f64> = groups.iter().map(|g| g.len() as f64 * fraction).collect();
    let mut quota: Vec<usize> = exact
        .iter()
        .zip(&groups)
        .map(|(e, g)| (e.floor() as usize).min(g.len()))
        .collect();
    let mut left = n_train.saturating_sub(quota.iter().sum());
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - quota[a] as f64;
        let rb = exact[b] - quota[b] as f64;
        rb.total_cmp(&ra)
            .then(groups[b].len().cmp(&groups[a].len()))
            .then(a.cmp(&b))
    });
    for g in order {
        if left > 0 && quota[g] < groups[g].len() {
            quota[g] += 1;
            left -= 1;
        }
    }
    let mut parts = vec![Part::Test; n];
    for (group, quota) in groups.iter_mut().zip(quota) {
        shuffle(group, &mut rng);
        for &i in &group[..quota] {
            parts[i] = Part::Train;
        }
    }
    parts
}

/// Fisher–Yates with our own unbiased draw, so that splits do not depend on `rand`'s algorithms.
fn shuffle(items: &mut [usize], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Uniform in `0..n` (Lemire's multiply-and-reject); `n > 0`.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Imputation and normalization.

/// Fills missing features with the mean of the site's train rows.
fn impute(site: &mut Site, spec: &SiteSpec, features: &[String]) -> Result<(), Error> {
    let cols = site.train.cols;
    for c in 0..cols {
        let column = |t: &Table| {
            (0..t.rows)
                .map(move |r| t.x[r * cols + c])
                .collect::<Vec<_>>()
        };
        let (train, test) = (column(&site.train), column(&site.test));
        if !train.iter().chain(&test).any(|v| v.is_nan()) {
            continue;
        }
        let known: Vec<f64> = train
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| f64::from(v))
            .collect();
        if known.is_empty() {
            return Err(Error::NoValues {
                path: spec.path.clone(),
                site: spec.name.clone(),
                column: features.get(c).cloned().unwrap_or_default(),
            });
        }
        let mean = (known.iter().sum::<f64>() / known.len() as f64) as f32;
        for t in [&mut site.train, &mut site.test] {
            for r in 0..t.rows {
                let v = &mut t.x[r * cols + c];
                if v.is_nan() {
                    *v = mean;
                }
            }
        }
    }
    Ok(())
}

/// Mean and unbiased standard deviation of every column over the rows of `tables`.
fn moments(tables: &[&Table], cols: usize) -> (usize, Vec<f64>, Vec<f64>) {
    let n: usize = tables.iter().map(|t| t.rows).sum();
    let mut mean = vec![0.0f64; cols];
    let mut var = vec![0.0f64; cols];
    if cols == 0 || n == 0 {
        return (n, mean, var);
    }
    for t in tables {
        for row in t.x.chunks_exact(cols) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    for t in tables {
        for row in t.x.chunks_exact(cols) {
            for ((s, m), &v) in var.iter_mut().zip(&mean).zip(row) {
                let d = f64::from(v) - m;
                *s += d * d;
            }
        }
    }
    let std = var
        .iter()
        .map(|s| {
            if n > 1 {
                (s / (n - 1) as f64).sqrt()
            } else {
                0.0
            }
        })
        .collect();
    (n, mean, std)
}

/// Standardizes every value of `table` with train statistics. Returns the column of the first
/// value that leaves the `f32` range, which only a test value far outside a train column of
/// (almost) no spread can do.
fn standardize(table: &mut Table, mean: &[f64], std: &[f64]) -> Option<usize> {
    if table.cols == 0 {
        return None;
    }
    for row in table.x.chunks_exact_mut(table.cols) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
            *v = ((f64::from(*v) - m) / (s + STD_EPSILON)) as f32;
        }
    }
    let cols = table.cols;
    table
        .x
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| i % cols)
}

/// Standardizes a site's train and test rows; an infinity is refused, not handed to a learner.
fn standardize_site(
    site: &mut Site,
    mean: &[f64],
    std: &[f64],
    features: &[String],
    path: &Path,
) -> Result<(), Error> {
    for table in [&mut site.train, &mut site.test] {
        if let Some(c) = standardize(table, mean, std) {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                message: format!(
                    "column `{}` of site `{}` has a value that standardizes beyond the f32 range (train mean {}, standard deviation {})",
                    features.get(c).map_or("?", String::as_str),
                    site.name,
                    mean[c],
                    std[c]
                ),
            });
        }
    }
    Ok(())
}

fn normalize(
    schema: &Path,
    specs: &[SiteSpec],
    sites: &mut [Site],
    features: &[String],
    normalization: Normalization,
) -> Result<(), Error> {
    match normalization {
        Normalization::None => {}
        Normalization::PerSite => {
            for (site, spec) in sites.iter_mut().zip(specs) {
                let (n, mean, std) = moments(&[&site.train], site.train.cols);
                if n < 2 {
                    return Err(Error::TooFewRows {
                        path: spec.path.clone(),
                        site: site.name.clone(),
                        rows: n,
                    });
                }
                standardize_site(site, &mean, &std, features, &spec.path)?;
            }
        }
        Normalization::Pooled => {
            let cols = sites.first().map_or(0, |s| s.train.cols);
            let trains: Vec<&Table> = sites.iter().map(|s| &s.train).collect();
            let (n, mean, std) = moments(&trains, cols);
            if n < 2 {
                return Err(Error::TooFewRows {
                    path: schema.to_owned(),
                    site: "all sites".to_owned(),
                    rows: n,
                });
            }
            for site in sites.iter_mut() {
                standardize_site(site, &mean, &std, features, schema)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use rand_chacha::rand_core::RngCore;

    use super::*;

    const HEART: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/heart-disease/schema.toml"
    );
    const TCGA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tcga-brca/schema.toml");

    fn heart(normalization: Normalization) -> Dataset {
        Dataset::load_with(Path::new(HEART), normalization).expect("heart-disease loads")
    }

    /// A folder holding `schema.toml` and `files`.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(schema: &str, files: &[(&str, &str)]) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::write(dir.path().join("schema.toml"), schema).expect("write schema");
            for (name, content) in files {
                fs::write(dir.path().join(name), content).expect("write file");
            }
            Fixture { dir }
        }

        fn schema(&self) -> PathBuf {
            self.dir.path().join("schema.toml")
        }

        fn write(&self, name: &str, content: &[u8]) {
            fs::write(self.dir.path().join(name), content).expect("write file");
        }

        fn load(&self) -> Result<Dataset, Error> {
            Dataset::load(&self.schema())
        }

        fn error(&self) -> Error {
            self.load().expect_err("loading should fail")
        }
    }

    /// A headerless one-site dataset: age, chol, cp (levels 1-3, first dropped), binary y.
    const TOY: &str = r#"
name = "toy"
header = false
columns = ["age", "chol", "cp", "y"]
normalization = "none"

[missing]
markers = ["?", ""]
policy = "drop_row"

[label]
column = "y"

[[categorical]]
column = "cp"
levels = [1, 2, 3]
drop_first = true

[split]
fraction = 0.5
seed = 7

[[sites]]
name = "a"
file = "a.csv"
"#;

    const TOY_ROWS: &str = "30,200,1,0\n40,210,2,1\n50,220,3,0\n60,230,1,1\n";

    /// Asserts that `error` displays `parts`, and returns the message.
    fn says(error: &Error, parts: &[&str]) -> String {
        let message = error.to_string();
        for part in parts {
            assert!(
                message.contains(part),
                "`{message}` should contain `{part}` ({error:?})"
            );
        }
        message
    }

    fn mean_std(values: &[f32]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        (mean, var.sqrt())
    }

    fn column(t: &Table, c: usize) -> Vec<f32> {
        (0..t.rows).map(|r| t.row(r)[c]).collect()
    }

    // --- The shipped data ------------------------------------------------------------------

    #[test]
    fn heart_disease_matches_flamby_sizes_features_and_labels() {
        let data = heart(Normalization::PerSite);
        assert_eq!(data.name, "heart-disease");
        assert_eq!(data.task, Task::Binary);
        assert_eq!(
            data.features,
            [
                "age",
                "sex",
                "trestbps",
                "chol",
                "fbs",
                "thalach",
                "exang",
                "oldpeak",
                "cp=2",
                "cp=3",
                "cp=4",
                "restecg=1",
                "restecg=2"
            ]
        );
        let expected = [
            ("cleveland", 199, 104, 48),
            ("hungarian", 172, 89, 33),
            ("switzerland", 30, 16, 15),
            ("va", 85, 45, 35),
        ];
        assert_eq!(data.sites.len(), expected.len());
        for (site, (name, train, test, positives)) in data.sites.iter().zip(expected) {
            assert_eq!(site.name, name);
            assert_eq!((site.train.rows, site.test.rows), (train, test), "{name}");
            assert_eq!(site.test.positives(), positives, "{name}");
            for t in [&site.train, &site.test] {
                assert_eq!(t.cols, 13);
                assert_eq!(t.x.len(), t.rows * 13);
                assert_eq!(t.y.len(), t.rows);
                assert!(t.time.is_empty() && t.event.is_empty());
                assert!(t.y.iter().all(|&y| y == 0.0 || y == 1.0));
                assert!(t.x.iter().all(|v| v.is_finite()));
            }
        }
        assert!(data.site("switzerland").is_some());
        assert!(data.site("zurich").is_none());
        let (train, test) = (data.pooled_train(), data.pooled_test());
        assert_eq!((train.rows, test.rows), (486, 254));
        assert_eq!(test.positives(), 48 + 33 + 15 + 35);
    }

    #[test]
    fn heart_disease_raw_values_follow_the_file() {
        let data = heart(Normalization::None);
        let cleveland = data.site("cleveland").expect("cleveland");
        // Line 1: 63,1,cp 1,145,233,1,restecg 2,150,0,2.3,...,num 0 — a train row.
        assert_eq!(
            cleveland.train.row(0),
            [
                63.0, 1.0, 145.0, 233.0, 1.0, 150.0, 0.0, 2.3, 0.0, 0.0, 0.0, 0.0, 1.0
            ]
        );
        assert_eq!(cleveland.train.y[0], 0.0);
        let swiss = data.site("switzerland").expect("switzerland");
        assert!(
            column(&swiss.train, 3).iter().all(|&v| v == 0.0),
            "Swiss chol is 0"
        );
    }

    #[test]
    fn heart_disease_per_site_normalization_is_fitted_on_each_sites_train_rows() {
        let raw = heart(Normalization::None);
        let data = heart(Normalization::PerSite);
        for (site, raw_site) in data.sites.iter().zip(&raw.sites) {
            for c in 0..13 {
                let values = column(&site.train, c);
                let (_, raw_std) = mean_std(&column(&raw_site.train, c));
                if raw_std == 0.0 {
                    assert!(values.iter().all(|&v| v == 0.0), "{} {c}", site.name);
                    continue;
                }
                let (mean, std) = mean_std(&values);
                assert!(mean.abs() < 1e-5, "{} column {c}: mean {mean}", site.name);
                assert!(
                    (std - 1.0).abs() < 1e-5,
                    "{} column {c}: std {std}",
                    site.name
                );
            }
        }
        // Switzerland's chol (all 0) is the documented zero-variance column, in test rows too.
        let swiss = data.site("switzerland").expect("switzerland");
        assert!(column(&swiss.test, 3).iter().all(|&v| v == 0.0));
        // The first test row of each site, computed independently in Python from the raw files.
        let reference: [(&str, [f32; 13]); 2] = [
            (
                "cleveland",
                [
                    0.199479, 0.678902, -0.702358, -0.258218, -0.411984, 1.236515, -0.67103,
                    -0.227145, 2.51761, -0.63975, -0.972729, -0.100505, -1.002509,
                ],
            ),
            (
                "switzerland",
                [
                    -1.171507, 0.327731, -1.022433, 0.0, -0.327731, -0.053849, 0.859777, 1.345557,
                    -0.182574, -0.327731, 0.38564, -0.542405, -0.182574,
                ],
            ),
        ];
        for (name, row) in reference {
            let site = data.site(name).expect("site");
            for (got, want) in site.test.row(0).iter().zip(row) {
                assert!((got - want).abs() < 1e-4, "{name}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn heart_disease_pooled_normalization_uses_all_train_rows() {
        let pooled = heart(Normalization::Pooled);
        let local = heart(Normalization::PerSite);
        assert_ne!(pooled, local);
        let train = pooled.pooled_train();
        for c in 0..13 {
            let (mean, std) = mean_std(&column(&train, c));
            assert!(mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-5, "column {c}");
        }
        let want = [
            0.31658, 0.565679, -0.685225, 0.172558, -0.41999, 1.483907, -0.793457, -0.127051,
            2.000514, -0.524427, -1.049583, -0.4166, -0.562513,
        ];
        let first = pooled.sites[0].test.row(0);
        for (got, want) in first.iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        // Same rows and labels, only the scaling differs.
        for (p, l) in pooled.sites.iter().zip(&local.sites) {
            assert_eq!(
                (p.train.y.clone(), p.test.y.clone()),
                (l.train.y.clone(), l.test.y.clone())
            );
        }
    }

    #[test]
    fn tcga_brca_matches_flamby_split() {
        let data = Dataset::load(Path::new(TCGA)).expect("tcga-brca loads");
        assert_eq!(data.task, Task::Survival);
        assert_eq!(data.features.len(), 39);
        assert_eq!(data.features[0], "age_at_index");
        assert_eq!(data.features[38], "tumor_stage_stage iiic");
        assert!(
            !data
                .features
                .iter()
                .any(|f| f == "pid" || f == "E" || f == "T")
        );
        let expected = [
            ("northeast", 248, 63, 45, 14),
            ("south", 156, 40, 35, 4),
            ("west", 164, 42, 14, 8),
            ("midwest", 129, 33, 16, 3),
            ("europe", 129, 33, 7, 2),
            ("canada", 40, 11, 2, 1),
        ];
        for (site, (name, train, test, e_train, e_test)) in data.sites.iter().zip(expected) {
            assert_eq!(site.name, name);
            assert_eq!((site.train.rows, site.test.rows), (train, test), "{name}");
            let events = |t: &Table| t.event.iter().filter(|&&e| e == 1.0).count();
            assert_eq!(
                (events(&site.train), events(&site.test)),
                (e_train, e_test),
                "{name}"
            );
            assert!(site.train.y.is_empty() && site.train.time.len() == train);
        }
        // Not normalised: ages stay in years.
        let ages = column(&data.pooled_train(), 0);
        assert!(ages.iter().all(|&a| (26.0..=90.0).contains(&a)));
    }

    // --- Format features -------------------------------------------------------------------

    #[test]
    fn header_and_headerless_files_load_the_same() {
        let plain = Fixture::new(TOY, &[("a.csv", TOY_ROWS)]);
        let with_header = Fixture::new(
            &TOY.replace("header = false", "header = true\ndelimiter = \";\"")
                .replace("columns = [\"age\", \"chol\", \"cp\", \"y\"]", ""),
            // Other column order, a BOM, spaces and CRLF line ends.
            &[(
                "a.csv",
                "\u{feff}y; cp ;age;chol\r\n0;1;30;200\r\n1;2;40;210\r\n0;3;50;220\r\n1;1;60;230\r\n",
            )],
        );
        let a = plain.load().expect("headerless");
        let b = with_header.load().expect("header");
        assert_eq!(a, b);
        assert_eq!(a.features, ["age", "chol", "cp=2", "cp=3"]);
        assert_eq!(a.sites[0].train.rows + a.sites[0].test.rows, 4);
    }

    #[test]
    fn one_hot_encodes_declared_levels() {
        let schema = r#"
name = "colors"
normalization = "none"
[label]
column = "sick"
positive = ["yes"]
negative = ["no"]
[[categorical]]
column = "color"
levels = ["red", "green", "blue"]
[[categorical]]
column = "grade"
levels = [1, 2]
drop_first = true
[split]
fraction = 0.5
seed = 1
[[sites]]
name = "a"
file = "a.csv"
"#;
        let f = Fixture::new(
            schema,
            &[(
                "a.csv",
                "id,color,grade,sick\n1,red,1.0,no\n2,green,2,yes\n3,blue,1,no\n4,green,2.0,yes\n",
            )],
        );
        let data = f.load().expect("loads");
        assert_eq!(
            data.features,
            ["id", "color=red", "color=green", "color=blue", "grade=2"]
        );
        let all = Table::concat(&[&data.sites[0].train, &data.sites[0].test]);
        let mut rows: Vec<(Vec<f32>, f32)> = (0..all.rows)
            .map(|r| (all.row(r).to_vec(), all.y[r]))
            .collect();
        rows.sort_by(|a, b| a.0[0].total_cmp(&b.0[0]));
        assert_eq!(rows[0], (vec![1.0, 1.0, 0.0, 0.0, 0.0], 0.0));
        assert_eq!(rows[1], (vec![2.0, 0.0, 1.0, 0.0, 1.0], 1.0));
        assert_eq!(rows[2], (vec![3.0, 0.0, 0.0, 1.0, 0.0], 0.0));
        assert_eq!(rows[3], (vec![4.0, 0.0, 1.0, 0.0, 1.0], 1.0));

        f.write(
            "a.csv",
            b"id,color,grade,sick\n1,red,1,no\n2,purple,2,yes\n",
        );
        let e = f.error();
        assert!(matches!(e, Error::UnknownLevel { line: 3, .. }), "{e:?}");
        says(
            &e,
            &[
                "a.csv line 3",
                "column `color`",
                "`purple`",
                "red, green, blue",
            ],
        );
    }

    #[test]
    fn label_rules() {
        let rows = "1,0,1,0\n2,0,1,1\n3,0,1,2\n4,0,1,4\n";
        let load = |rule: &str| {
            let schema = TOY.replace("column = \"y\"", &format!("column = \"y\"\n{rule}"));
            let f = Fixture::new(&schema, &[("a.csv", rows)]);
            let data = f.load().expect("loads");
            let all = data.pooled_train();
            let test = data.pooled_test();
            let mut pairs: Vec<(f32, f32)> = (0..all.rows)
                .map(|r| (all.row(r)[0], all.y[r]))
                .chain((0..test.rows).map(|r| (test.row(r)[0], test.y[r])))
                .collect();
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            pairs.into_iter().map(|(_, y)| y).collect::<Vec<_>>()
        };
        assert_eq!(load("positive_if = \"> 0\""), [0.0, 1.0, 1.0, 1.0]);
        assert_eq!(load("positive_if = \">= 2\""), [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(load("positive_if = \"< 1\""), [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(load("positive_if = \"== 4\""), [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(
            load("positive = [2, 4]\nnegative = [0, 1]"),
            [0.0, 0.0, 1.0, 1.0]
        );

        let schema = TOY.replace(
            "column = \"y\"",
            "column = \"y\"\npositive_if = \"about 3\"",
        );
        let e = Fixture::new(&schema, &[("a.csv", rows)]).error();
        assert!(matches!(e, Error::Schema { .. }), "{e:?}");
        says(&e, &["schema.toml", "positive_if"]);
    }

    #[test]
    fn drop_row_versus_impute_mean() {
        // id, chol, cp, y; lines 2 and 4 miss chol, line 5 misses cp, line 6 misses its label.
        let rows = "1,10,1,0\n2,?,2,1\n3,30,3,0\n4,,1,1\n5,50,?,0\n6,60,1,?\n";
        let schema = TOY
            .replace(
                "[\"age\", \"chol\", \"cp\", \"y\"]",
                "[\"id\", \"chol\", \"cp\", \"y\"]",
            )
            .replace(
                "fraction = 0.5\nseed = 7",
                "file = \"split.csv\"\nline_column = \"line\"\nsplit_column = \"part\"",
            );
        let f = Fixture::new(
            &schema,
            &[
                ("a.csv", rows),
                ("split.csv", "line,part\n1,train\n3,train\n"),
            ],
        );
        let dropped = f.load().expect("drop_row loads");
        let site = &dropped.sites[0];
        assert_eq!((site.train.rows, site.test.rows), (2, 0));
        assert_eq!(column(&site.train, 0), [1.0, 3.0]);

        let f = Fixture::new(
            &schema.replace("drop_row", "impute_mean"),
            &[
                ("a.csv", rows),
                (
                    "split.csv",
                    "line,part\n1,train\n2,train\n3,train\n4,test\n5,test\n",
                ),
            ],
        );
        let imputed = f.load().expect("impute_mean loads");
        let site = &imputed.sites[0];
        assert_eq!(
            (site.train.rows, site.test.rows),
            (3, 2),
            "line 6 has no label"
        );
        // chol: mean of the train values 10 and 30; cp=2, cp=3: means over train rows.
        assert_eq!(site.train.row(1), [2.0, 20.0, 1.0, 0.0]);
        assert_eq!(site.test.row(0), [4.0, 20.0, 0.0, 0.0]);
        let third = 1.0f32 / 3.0;
        assert_eq!(site.test.row(1), [5.0, 50.0, third, third]);

        // A dropped row that the split file still lists is an error naming it.
        let f = Fixture::new(
            &schema,
            &[
                ("a.csv", rows),
                ("split.csv", "line,part\n1,train\n2,train\n3,train\n"),
            ],
        );
        let e = f.error();
        assert!(matches!(e, Error::Split { line: 3, .. }), "{e:?}");
        says(&e, &["split.csv line 3", "column `part`", "line 2"]);
    }

    #[test]
    fn fraction_split_is_seeded_stratified_and_complete() {
        // 40 rows: id, 0, cp 1, label 1 for every fourth row (10 positives).
        let rows: String = (0..40)
            .map(|i| format!("{i},0,1,{}\n", u8::from(i % 4 == 0)))
            .collect();
        let split = |seed: u64, stratify: bool| {
            let schema = TOY.replace(
                "fraction = 0.5\nseed = 7",
                &format!("fraction = 0.66\nseed = {seed}\nstratify = {stratify}"),
            );
            Fixture::new(&schema, &[("a.csv", &rows)])
                .load()
                .expect("loads")
                .sites
                .remove(0)
        };
        let a = split(43, true);
        assert_eq!(a, split(43, true), "same seed, same split");
        assert_ne!(a, split(44, true), "another seed, another split");
        assert_eq!(
            (a.train.rows, a.test.rows),
            (26, 14),
            "floor(0.66 * 40) = 26"
        );
        // Stratified: floor(0.66 * 10) = 6 positives, floor(0.66 * 30) = 19 negatives, and the
        // last row goes to the class with the larger remainder (0.8 vs 0.6: negatives).
        assert_eq!((a.train.positives(), a.test.positives()), (6, 4));
        let mut ids: Vec<f32> = column(&a.train, 0);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "file order kept");
        ids.extend(column(&a.test, 0));
        ids.sort_by(f32::total_cmp);
        assert_eq!(
            ids,
            (0..40).map(|i| i as f32).collect::<Vec<_>>(),
            "every row once"
        );
        let b = split(43, false);
        assert_eq!(b.train.rows + b.test.rows, 40);
        assert_eq!(b.train.rows, 26);
    }

    #[test]
    fn survival_targets_and_event_stratified_split() {
        let schema = r#"
name = "surv"
normalization = "pooled"
survival = { time = "days", event = "died" }
split = { fraction = 0.5, seed = 3, stratify = true }
sites = [{ name = "a", file = "a.csv" }, { name = "b", file = "b.csv" }]
"#;
        let rows: String = "x,days,died\n".to_owned()
            + &(0..10)
                .map(|i| format!("{i},{}.5,{}\n", i * 10, u8::from(i < 4)))
                .collect::<String>();
        let f = Fixture::new(schema, &[("a.csv", &rows), ("b.csv", &rows)]);
        let data = f.load().expect("loads");
        assert_eq!(data.task, Task::Survival);
        for site in &data.sites {
            assert_eq!((site.train.rows, site.test.rows), (5, 5));
            assert_eq!(site.train.event.iter().filter(|&&e| e == 1.0).count(), 2);
            assert!(site.train.y.is_empty());
            assert!(site.train.time.iter().all(|t| (t - 0.5) % 10.0 == 0.0));
        }
        assert_ne!(
            data.sites[0].train, data.sites[1].train,
            "streams differ by site name"
        );

        f.write("b.csv", b"x,days,died\n1,-3,1\n");
        let e = f.error();
        assert!(matches!(e, Error::OutOfRange { line: 2, .. }), "{e:?}");
        says(&e, &["b.csv line 2", "column `days`", "`-3`", "negative"]);
        f.write("b.csv", b"x,days,died\n1,3,1\n2,4,yes\n");
        let e = f.error();
        assert!(matches!(e, Error::LabelNotBinary { line: 3, .. }), "{e:?}");
        says(&e, &["b.csv line 3", "column `died`", "`yes`"]);
    }

    #[test]
    fn table_helpers() {
        let a = Table {
            x: vec![1.0, 2.0, 3.0, 4.0],
            rows: 2,
            cols: 2,
            y: vec![1.0, 0.0],
            ..Table::default()
        };
        let empty = Table {
            cols: 2,
            ..Table::default()
        };
        assert_eq!(a.row(1), [3.0, 4.0]);
        assert!(!a.is_empty() && empty.is_empty());
        let both = Table::concat(&[&a, &empty, &a]);
        assert_eq!((both.rows, both.cols, both.positives()), (4, 2, 2));
        assert_eq!(both.row(2), [1.0, 2.0]);
        assert_eq!(Table::concat(&[]), Table::default());
    }

    #[test]
    #[should_panic(expected = "different column counts")]
    fn concat_refuses_different_widths() {
        let a = Table {
            cols: 2,
            ..Table::default()
        };
        let b = Table {
            cols: 3,
            ..Table::default()
        };
        let _ = Table::concat(&[&a, &b]);
    }

    #[test]
    fn every_deals_rows_into_disjoint_shards() {
        let t = Table {
            x: (0..10).map(|v| v as f32).collect(),
            rows: 5,
            cols: 2,
            y: vec![0.0, 1.0, 0.0, 1.0, 1.0],
            time: Vec::new(),
            event: Vec::new(),
        };
        let even = t.every(0, 2);
        let odd = t.every(1, 2);
        assert_eq!((even.rows, odd.rows), (3, 2));
        assert_eq!(even.x, [0.0, 1.0, 4.0, 5.0, 8.0, 9.0]);
        assert_eq!(odd.y, [1.0, 1.0]);
        assert!(even.time.is_empty());
        assert_eq!(even.positives() + odd.positives(), t.positives());
        assert!(t.every(7, 3).is_empty());
        assert_eq!(t.every(0, 1), t);
    }

    // --- Errors, one per variant -----------------------------------------------------------

    #[test]
    fn io_error_names_the_missing_file() {
        let e = Fixture::new(TOY, &[]).error();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        says(&e, &["a.csv"]);
        let e = Dataset::load(Path::new("/no/such/schema.toml")).expect_err("no schema");
        says(&e, &["/no/such/schema.toml"]);
    }

    #[test]
    fn schema_errors_say_where() {
        let e = Fixture::new("name = \"x\"\nheader = maybe\n", &[]).error();
        assert!(matches!(e, Error::Schema { .. }), "{e:?}");
        says(&e, &["schema.toml", "line 2"]);
        let e = Fixture::new(&TOY.replace("seed = 7", "seed = 7\nsede = 8"), &[]).error();
        says(&e, &["schema.toml", "sede"]);
        let e = Fixture::new(&TOY.replace("seed = 7", "seed = 7\nfile = \"s.csv\""), &[]).error();
        says(&e, &["either `file` or `fraction`"]);
        let e = Fixture::new(
            &TOY.replace("normalization = \"none\"", "normalization = \"global\""),
            &[],
        )
        .error();
        says(&e, &["schema.toml", "global"]);
        let e = Fixture::new(
            &TOY.replace(
                "drop_first = true",
                "drop_first = true\n[[categorical]]\ncolumn = \"y\"\nlevels = [0]",
            ),
            &[],
        )
        .error();
        says(
            &e,
            &["column `y` has more than one role", "label", "categorical"],
        );
        let shared = TOY.replace(
            "file = \"a.csv\"",
            "file = \"a.csv\"\n[[sites]]\nname = \"b\"\nfile = \"a.csv\"",
        );
        let e = Fixture::new(&shared, &[("a.csv", TOY_ROWS)]).error();
        says(&e, &["sites `a` and `b` read the same file"]);
    }

    #[test]
    fn unknown_column_in_schema_or_header() {
        let e = Fixture::new(
            &TOY.replace("[missing]", "drop = [\"cholesterol\"]\n[missing]"),
            &[],
        )
        .error();
        assert!(matches!(e, Error::UnknownColumn { .. }), "{e:?}");
        says(&e, &["schema.toml", "`cholesterol`"]);
        let schema = TOY
            .replace("header = false", "header = true")
            .replace("columns = [\"age\", \"chol\", \"cp\", \"y\"]", "");
        let e = Fixture::new(&schema, &[("a.csv", "age,chol,cp,label\n1,2,1,0\n")]).error();
        assert!(matches!(e, Error::UnknownColumn { .. }), "{e:?}");
        says(&e, &["a.csv", "no column `y`"]);
    }

    #[test]
    fn header_errors() {
        let schema = TOY
            .replace("header = false", "header = true")
            .replace("columns = [\"age\", \"chol\", \"cp\", \"y\"]", "");
        let e = Fixture::new(&schema, &[("a.csv", "age,age,cp,y\n1,2,1,0\n")]).error();
        assert!(matches!(e, Error::Header { line: 1, .. }), "{e:?}");
        says(&e, &["a.csv line 1", "column `age` appears twice"]);
        let two = schema.replace(
            "file = \"a.csv\"",
            "file = \"a.csv\"\n[[sites]]\nname = \"b\"\nfile = \"b.csv\"",
        );
        let f = Fixture::new(
            &two,
            &[
                ("a.csv", "age,chol,cp,y\n1,2,1,0\n3,4,1,1\n"),
                ("b.csv", "age,chol,bmi,cp,y\n1,2,3,1,0\n3,4,5,1,1\n"),
            ],
        );
        says(&f.error(), &["b.csv line 1", "column `bmi`"]);
    }

    #[test]
    fn not_numeric_names_file_line_column_and_value() {
        let f = Fixture::new(TOY, &[("a.csv", "30,200,1,0\n\n40,abc,2,1\n")]);
        let e = f.error();
        assert!(matches!(e, Error::NotNumeric { line: 3, .. }), "{e:?}");
        let message = says(&e, &["a.csv line 3, column `chol`: `abc` is not a number"]);
        assert!(message.contains(&f.dir.path().display().to_string()));
        // A quoted field spanning two lines, CRLF endings, a blank line: lines stay physical.
        f.write(
            "a.csv",
            b"30,200,1,0\r\n41,200,\"1\n\",0\r\n\r\n  \n40,abc,2,1",
        );
        says(&f.error(), &["a.csv line 6, column `chol`: `abc`"]);
        for bad in ["NaN", "inf", "-infinity", "1e999", "1e39", "0x10", "1,5"] {
            f.write(
                "a.csv",
                format!("30,200,1,0\n40,\"{bad}\",2,1\n").as_bytes(),
            );
            let e = f.error();
            assert!(
                matches!(e, Error::NotNumeric { line: 2, .. }),
                "{bad}: {e:?}"
            );
            says(&e, &["line 2", "column `chol`", bad]);
        }
        // A long hostile value is shortened and control characters are escaped.
        f.write(
            "a.csv",
            format!("30,\"\u{1b}[31m{}\",1,0\n", "x".repeat(10_000)).as_bytes(),
        );
        let message = f.error().to_string();
        assert!(
            message.len() < 400 && !message.contains('\u{1b}'),
            "{message}"
        );
    }

    #[test]
    fn label_not_binary() {
        let e = Fixture::new(TOY, &[("a.csv", "30,200,1,0\n40,210,2,2\n")]).error();
        assert!(matches!(e, Error::LabelNotBinary { line: 2, .. }), "{e:?}");
        says(&e, &["a.csv line 2", "column `y`", "`2`", "0 or 1"]);
        let schema = TOY.replace(
            "column = \"y\"",
            "column = \"y\"\npositive = [1]\nnegative = [0]",
        );
        let e = Fixture::new(&schema, &[("a.csv", "30,200,1,0\n40,210,2,1\n50,1,1,7\n")]).error();
        says(&e, &["a.csv line 3", "column `y`", "`7`"]);
    }

    #[test]
    fn ragged_row() {
        let e = Fixture::new(TOY, &[("a.csv", "30,200,1,0\n40,210,2\n")]).error();
        assert!(
            matches!(
                e,
                Error::RaggedRow {
                    line: 2,
                    expected: 4,
                    found: 3,
                    ..
                }
            ),
            "{e:?}"
        );
        says(&e, &["a.csv line 2", "3 fields, expected 4"]);
    }

    #[test]
    fn split_file_errors() {
        let schema = r#"
name = "s"
header = false
columns = ["x", "y"]
normalization = "none"
[label]
column = "y"
[split]
file = "split.csv"
site_column = "site"
line_column = "line"
split_column = "part"
[[sites]]
name = "a"
file = "a.csv"
"#;
        let data = "1,0\n2,1\n3,0\n";
        let run =
            |split: &str| Fixture::new(schema, &[("a.csv", data), ("split.csv", split)]).error();
        // Entries for sites this schema does not load are ignored.
        let ok = Fixture::new(
            schema,
            &[
                ("a.csv", data),
                (
                    "split.csv",
                    "site,line,part\na,1,train\na,2,train\na,3,test\nb,9,train\n",
                ),
            ],
        );
        let site = ok.load().expect("loads").sites.remove(0);
        assert_eq!((site.train.rows, site.test.rows), (2, 1));

        let e = run("site,line,part\na,1,train\na,3,test\n");
        assert!(matches!(e, Error::Split { line: 2, .. }), "{e:?}");
        says(&e, &["a.csv line 2", "not listed in", "split.csv"]);
        let e = run("site,line,part\na,1,train\na,2,validation\na,3,test\n");
        says(
            &e,
            &[
                "split.csv line 3",
                "column `part`",
                "unknown split value `validation`",
            ],
        );
        let e = run("site,line,part\na,1,train\na,2,train\na,3,test\na,4,test\n");
        says(&e, &["split.csv line 5", "line 4 of site `a`"]);
        let e = run("site,line,part\na,1,train\na,1,test\na,2,train\na,3,test\n");
        says(&e, &["split.csv line 3", "column `line`", "listed twice"]);
        let e = run("site,line,part\na,one,train\n");
        says(&e, &["split.csv line 2", "column `line`", "`one`"]);
        let e = run("site,row,part\na,1,train\n");
        assert!(matches!(e, Error::UnknownColumn { .. }), "{e:?}");
        says(&e, &["split.csv", "`line`"]);
    }

    #[test]
    fn too_large_files_and_records_are_refused() {
        let f = Fixture::new(TOY, &[]);
        let big = File::create(f.dir.path().join("a.csv")).expect("create");
        big.set_len(MAX_FILE_BYTES + 1).expect("sparse file");
        let e = f.error();
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        says(&e, &["a.csv", "too large"]);

        let mut line = "1,".repeat((MAX_RECORD_BYTES as usize) / 2 + 65_536);
        line.push('\n');
        f.write("a.csv", format!("30,200,1,0\n{line}").as_bytes());
        let e = f.error();
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        says(&e, &["a.csv", "line 2", "longer than"]);
        // An unterminated quote cannot swallow the file either.
        let open_quote = format!("30,\"{}", "2\n".repeat(MAX_RECORD_BYTES as usize));
        f.write("a.csv", open_quote.as_bytes());
        says(&f.error(), &["a.csv", "longer than"]);
    }

    #[test]
    fn empty_sites_are_errors() {
        for content in ["", "\n\n", "?,1,1,0\n,2,1,1\n"] {
            let e = Fixture::new(TOY, &[("a.csv", content)]).error();
            assert!(matches!(e, Error::Empty { .. }), "{content:?}: {e:?}");
            says(&e, &["a.csv", "no usable data rows"]);
        }
    }

    #[test]
    fn too_few_train_rows_to_normalize() {
        let schema = TOY.replace("normalization = \"none\"", "normalization = \"per_site\"");
        let e = Fixture::new(
            &schema,
            &[("a.csv", "30,200,1,0\n40,210,2,1\n50,220,3,0\n")],
        )
        .error();
        assert!(matches!(e, Error::TooFewRows { rows: 1, .. }), "{e:?}");
        says(&e, &["a.csv", "site `a` has 1 train rows"]);
    }

    /// The `dataset` fuzz target's input (`fuzz/README.md`), split into its files: both train
    /// rows have `v = 0`, so the test row's `1e30` standardized to `1e39`, an infinity as `f32`,
    /// which the target's finiteness check caught.
    #[test]
    fn a_value_that_standardizes_beyond_f32_is_refused() {
        const SCHEMA: &str = "name = \"x\"\nnormalization = \"per_site\"\n[label]\ncolumn = \"y\"\n\
            [split]\nfile = \"split.csv\"\nline_column = \"line\"\nsplit_column = \"part\"\n\
            [[sites]]\nname = \"a\"\nfile = \"a.csv\"\n";
        let split = ("split.csv", "line,part\n2,train\n3,train\n4,test\n");
        let e = Fixture::new(SCHEMA, &[("a.csv", "v,y\n0,0\n0,1\n1e30,0\n"), split]).error();
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        says(
            &e,
            &["a.csv", "column `v` of site `a`", "beyond the f32 range"],
        );
        // Pooled, it is refused too (naming the schema); a value that stays in range loads.
        let pooled = SCHEMA.replace("per_site", "pooled");
        let e = Fixture::new(&pooled, &[("a.csv", "v,y\n0,0\n0,1\n1e30,0\n"), split]).error();
        says(
            &e,
            &[
                "schema.toml",
                "column `v` of site `a`",
                "beyond the f32 range",
            ],
        );
        let fine = Fixture::new(SCHEMA, &[("a.csv", "v,y\n0,0\n0,1\n1e20,0\n"), split]);
        let data = fine.load().expect("1e20 / 1e-9 fits in f32");
        assert!((data.sites[0].test.x[0] / 1e29 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn impute_needs_a_train_value() {
        let schema = TOY.replace("drop_row", "impute_mean").replace(
            "fraction = 0.5\nseed = 7",
            "file = \"split.csv\"\nline_column = \"line\"\nsplit_column = \"part\"",
        );
        let f = Fixture::new(
            &schema,
            &[
                ("a.csv", "30,?,1,0\n40,210,2,1\n"),
                ("split.csv", "line,part\n1,train\n2,test\n"),
            ],
        );
        let e = f.error();
        assert!(matches!(e, Error::NoValues { .. }), "{e:?}");
        says(&e, &["a.csv", "column `chol`", "site `a`"]);
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let alphabet = b"0123456789.,,,,-+e?\n\n\r\"\" ;\tNaNinf\xff\x00\xef\xbb\xbf";
        let schemas = [
            TOY.to_owned(),
            TOY.replace("header = false", "header = true")
                .replace("columns = [\"age\", \"chol\", \"cp\", \"y\"]", ""),
            TOY.replace("drop_row", "impute_mean")
                .replace("normalization = \"none\"", "normalization = \"per_site\""),
        ];
        for schema in &schemas {
            let f = Fixture::new(schema, &[]);
            for round in 0..300 {
                let len = (rng.next_u32() % 400) as usize;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        let r = rng.next_u32() as usize;
                        if round % 3 == 0 {
                            r as u8
                        } else {
                            alphabet[r % alphabet.len()]
                        }
                    })
                    .collect();
                f.write("a.csv", &bytes);
                if let Ok(data) = f.load() {
                    let site = &data.sites[0];
                    assert!(
                        site.train
                            .x
                            .iter()
                            .chain(&site.test.x)
                            .all(|v| v.is_finite())
                    );
                    assert_eq!(site.train.x.len(), site.train.rows * site.train.cols);
                }
            }
        }
    }
}
