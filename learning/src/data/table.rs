//! Numeric tables: the rows a learner trains on, and a site's train/test pair of them.
//!
//! Every other part of `data` produces a [`Table`] and every learner consumes one, so it stays
//! plain row-major `f32` with labels or survival targets, plus the few row operations callers
//! share (one row, concatenation, dealing rows into shards, picking rows).
//!
//! It must never know about files, the schema or statistics: a table is already numbers. Its
//! panics are for callers that mix incompatible tables (a bug), never for data.

use serde::{Deserialize, Serialize};

/// A numeric table, row-major.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// `rows × cols` feature values, row after row.
    #[serde(with = "crate::frame::f32_le")]
    pub x: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// Number of features per row.
    pub cols: usize,
    /// 0/1 labels, one per row; empty if the dataset has no label.
    #[serde(with = "crate::frame::f32_le")]
    pub y: Vec<f32>,
    /// Survival times, one per row; empty unless the dataset is a survival dataset.
    #[serde(with = "crate::frame::f32_le")]
    pub time: Vec<f32>,
    /// 0/1 event indicators (1 = event observed), one per row; empty unless survival.
    #[serde(with = "crate::frame::f32_le")]
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
        self.select(&picked)
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Number of rows labelled 1.
    pub fn positives(&self) -> usize {
        self.y.iter().filter(|&&v| v > 0.5).count()
    }

    /// The rows `indices` of `self`, in that order (a row may repeat).
    ///
    /// # Panics
    /// If an index is `>= self.rows`, as slice indexing does.
    pub fn select(&self, indices: &[usize]) -> Table {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
