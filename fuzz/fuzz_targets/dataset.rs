//! A hospital's data: a schema TOML and the CSV files it names, through `Dataset::load`.
//!
//! The input is up to four parts, split at its first three NUL bytes: `schema.toml`, `a.csv`,
//! `b.csv` and `split.csv`, written (missing parts as empty files) into a temporary folder made
//! once per process; the seeds' schemas name those files. A schema with a `/` in any of its strings is
//! skipped, so that no run reads a file outside that folder.
//!
//! Checks: nothing panics; a dataset that loads has at least one feature and one row per site,
//! `rows × cols` finite feature values per table, one 0/1 label per row for a binary task and
//! one non-negative time and 0/1 event per row for a survival task.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medmesh_learning::data::{Dataset, Table, Task};

const FILES: [&str; 4] = ["schema.toml", "a.csv", "b.csv", "split.csv"];

static DIR: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("a temporary folder"));

/// Whether any string in the TOML value could name a path outside the folder.
fn escapes(value: &toml::Value) -> bool {
    match value {
        toml::Value::String(s) => s.contains('/'),
        toml::Value::Array(items) => items.iter().any(escapes),
        toml::Value::Table(table) => table.values().any(escapes),
        _ => false,
    }
}

fn check_table(table: &Table, cols: usize, task: Task) {
    assert_eq!(table.cols, cols);
    assert_eq!(table.x.len(), table.rows * cols);
    assert!(
        table.x.iter().all(|v| v.is_finite()),
        "a feature value is not finite: {:?}",
        table.x
    );
    let binary = |v: &f32| *v == 0.0 || *v == 1.0;
    match task {
        Task::Binary => {
            assert_eq!(table.y.len(), table.rows);
            assert!(table.y.iter().all(binary));
        }
        Task::Survival => {
            assert_eq!(table.time.len(), table.rows);
            assert_eq!(table.event.len(), table.rows);
            assert!(table.time.iter().all(|t| t.is_finite() && *t >= 0.0));
            assert!(table.event.iter().all(binary));
            assert!(table.y.is_empty() || table.y.len() == table.rows);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.splitn(FILES.len(), |&b| b == 0).collect();
    let schema_text = String::from_utf8_lossy(parts[0]);
    if let Ok(value) = toml::from_str::<toml::Table>(&schema_text)
        && value.values().any(escapes)
    {
        return;
    }
    let dir = DIR.path();
    for (i, name) in FILES.iter().enumerate() {
        let part = parts.get(i).copied().unwrap_or_default();
        medmesh_fuzz::replace_file(&dir.join(name), part);
    }
    let schema: &Path = &dir.join(FILES[0]);
    let Ok(dataset) = Dataset::load(schema) else {
        return;
    };
    let cols = dataset.features.len();
    assert!(cols > 0, "a dataset without features");
    for site in &dataset.sites {
        assert!(
            site.train.rows + site.test.rows > 0,
            "site {} is empty",
            site.name
        );
        check_table(&site.train, cols, dataset.task);
        check_table(&site.test, cols, dataset.task);
    }
});
