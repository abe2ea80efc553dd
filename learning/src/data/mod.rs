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
//!   is not binary after its rule, a category level that was not declared, or a row the split
//!   does not account for is an error naming the file, the 1-based line and the column;
//! - fit anything on test rows: imputation means and normalisation statistics come from train
//!   rows only;
//! - do I/O other than reading the schema and the files it names.
//!
//! # The schema
//!
//! A dataset is one TOML file plus the CSV files it names. Paths in the schema are relative to
//! the schema's folder. Every table rejects unknown keys, so a typo is an error, not a default.
//! `docs/DATA.md` is the same reference for users, one row per key (a test in `schema` fails
//! when a key is missing there).
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
//! | `[split]` | exactly one of: `column = "..."` (a column of each site's data file gives each row's part), `file = "..."` (a split file) or `fraction` (a seeded draw), see below. Naming two of `column`, `file` and `fraction` is an error. |
//! | `[[sites]]` | `name`, `file`, and for split columns and split files optionally `train_value` / `test_value` |
//!
//! Data files are CSV as RFC 4180 has it (double quotes, `""` inside quotes), UTF-8 or ASCII,
//! lines ending in LF or CRLF; an initial UTF-8 byte-order mark is ignored, blank lines are
//! skipped, and fields are trimmed of spaces. Line numbers in errors are physical lines (a quoted
//! field spanning lines counts them all) and are what a split file's `line_column` refers to.
//!
//! Features are, in this order: every column that is not dropped, not the label, time or event,
//! not categorical, not the split file's key and not the split column, in the first site file's
//! column order; then the one-hot columns of each `[[categorical]]` entry, in schema order. Files
//! with a header are matched by column name, so sites may order their columns differently, but
//! they must all have the same columns.
//!
//! **Split by a column** (`column = "split"`): the named column of each site's own data file says
//! per row whether it is train (the site's `train_value`, default `"train"`) or test (its
//! `test_value`, default `"test"`); `[split]` may set `train_value`/`test_value` for every site,
//! `[[sites]]` for one. The column is never a feature; without a header `columns` must name it.
//! A value that is neither is an [`Error::Split`] naming the data file, the line, the column, the
//! value and the values expected, unless `unlisted = "skip"`, which leaves such rows out. Sites
//! sharing one data file are told apart by their own `train_value`/`test_value` (a row with
//! another site's value is that site's). Rows dropped for missing values are not checked. The
//! form takes only `column`, `train_value`, `test_value` and `unlisted`.
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
//! A hospital's own train/test column instead: `split = { column = "split" }` (its values
//! `"train"`/`"test"` unless `train_value`/`test_value` say otherwise).
//!
//! # Inside
//!
//! The work is split by stage, in private submodules: `schema` checks the TOML, `reader` streams
//! a site's CSV into rows, `split` gives each row its part, `normalize` imputes and standardises
//! with train statistics; this file drives them in turn. They are layered so that none uses a
//! module above it: `table` and `error` use nothing here, `normalize` only those two, `schema`
//! adds `normalize` (for [`Normalization`]), `reader` adds `schema`, `split` adds `reader`.

mod error;
#[cfg(test)]
mod fixture;
mod normalize;
mod reader;
mod schema;
mod split;
mod table;

use std::path::Path;

pub use self::error::{Error, MAX_COLUMNS, MAX_FILE_BYTES, MAX_RECORD_BYTES, MAX_ROWS, MAX_VALUES};
pub use self::normalize::Normalization;
use self::schema::{MissingPolicy, Schema, SplitRule};
use self::split::{SplitTable, Splitter};
pub use self::table::{Site, Table, Task};

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

/// Finds a dataset file the project ships (`data/heart-disease/schema.toml`) wherever the
/// program runs from: `path` itself if it exists (or is absolute), else `path` under each
/// folder above the running executable (`target/release/…` sits in the checkout), else under
/// the checkout the program was built from. An error names every place looked at.
pub fn find_shipped(path: &Path) -> Result<std::path::PathBuf, String> {
    if path.is_absolute() || path.exists() {
        return Ok(path.to_owned());
    }
    let exe_dirs = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .map(|dir| dir.ancestors().map(Path::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bases: Vec<std::path::PathBuf> = exe_dirs.into_iter().chain([built_in]).collect();
    find_under(path, &bases)
}

/// `path` under the first of `bases` that has it, or an error naming every place looked at
/// (`path` itself first).
fn find_under(path: &Path, bases: &[std::path::PathBuf]) -> Result<std::path::PathBuf, String> {
    let mut tried = vec![path.to_owned()];
    for base in bases {
        let candidate = base.join(path);
        if candidate.exists() {
            return Ok(candidate);
        }
        tried.push(candidate);
    }
    Err(format!(
        "cannot find {} (looked at {}); pass the dataset's schema file",
        path.display(),
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
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

// Loading drives every stage in turn, so it sits here, above them all.
impl Schema {
    fn load(&self, normalization: Normalization) -> Result<Dataset, Error> {
        let mut splitter = match &self.split {
            SplitRule::File(f) => Splitter::File(SplitTable::read(self, f)?),
            SplitRule::Column(c) => Splitter::Column(c.clone()),
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
                Splitter::Column(rule) => split::column_split(rule, spec, &self.sites, &rows)?,
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
                    split::fraction_split(rows.table.rows, strata, *fraction, *seed, &spec.name)
                }
            };
            let mut site = rows.into_site(spec, &parts)?;
            if self.policy == MissingPolicy::ImputeMean {
                normalize::impute(
                    &mut site,
                    &spec.path,
                    features.as_deref().unwrap_or_default(),
                )?;
            }
            held += site.train.x.len() + site.test.x.len();
            sites.push(site);
        }
        if let Splitter::File(table) = &splitter {
            table.check_used(self)?;
        }
        let names = features.as_deref().unwrap_or_default();
        let paths: Vec<&Path> = self.sites.iter().map(|s| s.path.as_path()).collect();
        normalize::apply(&self.path, &paths, &mut sites, names, normalization)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fixture::{column, heart};

    #[test]
    fn shipped_data_is_found_under_the_programs_folders_and_a_miss_names_where_it_looked() {
        let checkout = tempfile::tempdir().expect("tempdir");
        let schema = checkout.path().join("data/set/schema.toml");
        std::fs::create_dir_all(schema.parent().expect("parent")).expect("mkdir");
        std::fs::write(&schema, "").expect("write");
        let release = checkout.path().join("target/release");
        let bases: Vec<std::path::PathBuf> = release.ancestors().map(Path::to_owned).collect();
        let relative = Path::new("data/set/schema.toml");
        assert_eq!(find_under(relative, &bases), Ok(schema));
        let error = find_under(Path::new("data/none.toml"), &bases).expect_err("missing");
        assert!(
            error.contains("data/none.toml") && error.contains("looked at"),
            "{error}"
        );
        // From the checkout as built, wherever the test runs.
        assert!(find_shipped(Path::new("data/heart-disease/schema.toml")).is_ok());
    }

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
}
