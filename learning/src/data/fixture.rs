//! Fixtures shared by the `data` unit tests: the datasets shipped in `data/`, a small
//! headerless dataset, and throwaway folders holding a schema and its files.
//!
//! It must never be compiled outside tests, nor write outside its temporary folders.

use std::fs;
use std::path::{Path, PathBuf};

use crate::data::{Dataset, Error, Normalization, Table};

pub(super) const HEART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/heart-disease/schema.toml"
);
pub(super) const TCGA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tcga-brca/schema.toml");

pub(super) fn heart(normalization: Normalization) -> Dataset {
    Dataset::load_with(Path::new(HEART), normalization).expect("heart-disease loads")
}

/// A folder holding `schema.toml` and `files`.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
}

impl Fixture {
    pub(super) fn new(schema: &str, files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("schema.toml"), schema).expect("write schema");
        for (name, content) in files {
            fs::write(dir.path().join(name), content).expect("write file");
        }
        Fixture { dir }
    }

    pub(super) fn schema(&self) -> PathBuf {
        self.dir.path().join("schema.toml")
    }

    pub(super) fn write(&self, name: &str, content: &[u8]) {
        fs::write(self.dir.path().join(name), content).expect("write file");
    }

    pub(super) fn load(&self) -> Result<Dataset, Error> {
        Dataset::load(&self.schema())
    }

    pub(super) fn error(&self) -> Error {
        self.load().expect_err("loading should fail")
    }
}

/// A headerless one-site dataset: age, chol, cp (levels 1-3, first dropped), binary y.
pub(super) const TOY: &str = r#"
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

pub(super) const TOY_ROWS: &str = "30,200,1,0\n40,210,2,1\n50,220,3,0\n60,230,1,1\n";

/// Asserts that `error` displays `parts`, and returns the message.
pub(super) fn says(error: &Error, parts: &[&str]) -> String {
    let message = error.to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "`{message}` should contain `{part}` ({error:?})"
        );
    }
    message
}

pub(super) fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (mean, var.sqrt())
}

pub(super) fn column(t: &Table, c: usize) -> Vec<f32> {
    (0..t.rows).map(|r| t.row(r)[c]).collect()
}
