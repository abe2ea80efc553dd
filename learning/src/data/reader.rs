//! Reading a site's CSV file into rows: records streamed within bounds, each with the physical
//! line it starts on ([`Records`]); the header matched against the schema ([`Layout`]); and every
//! record parsed into features and targets ([`Rows`]), minus rows dropped for missing values.
//!
//! It must never read a file whole or past its limits ([`MAX_FILE_BYTES`], [`MAX_RECORD_BYTES`],
//! [`MAX_ROWS`], [`MAX_COLUMNS`], [`MAX_VALUES`]), never panic on file content, and never decide
//! which rows are train or test (the split does) or what a missing value becomes (normalisation
//! does).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use csv::ByteRecord;

use super::error::{
    Error, MAX_COLUMNS, MAX_FILE_BYTES, MAX_RECORD_BYTES, MAX_ROWS, MAX_VALUES, io_error,
};
use super::schema::{Categorical, Field, LabelRule, MissingPolicy, Schema, SiteSpec, list};
use super::table::Table;

const BOM: &[u8] = b"\xEF\xBB\xBF";

// Reading is a method of the schema because every step of it consults the schema; it lives
// here, beside the CSV machinery it drives.
impl Schema {
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
        let key = self.split_role();
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
    pub(super) fn read_rows(
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

struct Parsed {
    y: f32,
    time: f32,
    event: f32,
    key: Option<String>,
}

/// A site file's kept rows, before the split.
pub(super) struct Rows {
    pub(super) table: Table,
    /// 1-based line of each row.
    pub(super) lines: Vec<u64>,
    /// Each row's value in the data column the split reads: the split file's key column, or
    /// `[split] column` (empty when the split reads no data column).
    pub(super) keys: Vec<String>,
}

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
pub(super) struct Records {
    reader: csv::Reader<Limited>,
    path: PathBuf,
    count: usize,
    max: usize,
}

impl Records {
    /// Opens `path`; `extra` records (a header) are allowed beyond [`MAX_ROWS`].
    pub(super) fn open(path: &Path, delimiter: u8, extra: usize) -> Result<Records, Error> {
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
    pub(super) fn next(&mut self, record: &mut ByteRecord) -> Result<Option<u64>, Error> {
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

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    use super::*;
    use crate::data::fixture::{Fixture, TOY, TOY_ROWS, says};

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
    fn empty_sites_are_errors() {
        for content in ["", "\n\n", "?,1,1,0\n,2,1,1\n"] {
            let e = Fixture::new(TOY, &[("a.csv", content)]).error();
            assert!(matches!(e, Error::Empty { .. }), "{content:?}: {e:?}");
            says(&e, &["a.csv", "no usable data rows"]);
        }
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
