//! What loading a dataset can refuse, and the size limits behind [`Error::TooLarge`].
//!
//! One error type serves every stage (schema, reader, split, normalisation) so that each names
//! the file, the 1-based line and the column the same way.
//!
//! It must never depend on the other parts of `data`, since they all depend on it, and never
//! carry more of a file than a shortened value.

use std::io;
use std::path::{Path, PathBuf};

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

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::data::fixture::{Fixture, TOY, says};

    #[test]
    fn io_error_names_the_missing_file() {
        let e = Fixture::new(TOY, &[]).error();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        says(&e, &["a.csv"]);
        let e = Dataset::load(Path::new("/no/such/schema.toml")).expect_err("no schema");
        says(&e, &["/no/such/schema.toml"]);
    }
}
