//! Train/test splits: from a split file (rows named by line or key, per site), from a column of
//! the site's own data file, or by a seeded, optionally stratified fraction; and a site's rows
//! turned into its [`Site`].
//!
//! It must never leave a row unaccounted for: every usable row is listed (unless
//! `unlisted = "skip"`), every listed row is a usable row, and a split value no site owns is an
//! error (for a split column, unless `unlisted = "skip"`). A fraction split must never depend on `rand`'s algorithms or on other sites: it is a
//! function of the site's rows, the seed and the site's name only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use csv::ByteRecord;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::error::Error;
use super::reader::{Records, Rows};
use super::schema::{By, Field, Schema, SiteSpec, SplitColumn, SplitFile, Unlisted};
use super::table::Site;

/// How rows get their part, once the split file (if any) is read.
pub(super) enum Splitter {
    File(SplitTable),
    Column(SplitColumn),
    Fraction {
        fraction: f64,
        seed: u64,
        stratify: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Train,
    Test,
    /// The row belongs to another site sharing the file, or is not listed and `unlisted = "skip"`.
    Skip,
}

impl Rows {
    pub(super) fn into_site(self, spec: &SiteSpec, parts: &[Part]) -> Result<Site, Error> {
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
pub(super) struct SplitTable {
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
    pub(super) fn read(schema: &Schema, rule: &SplitFile) -> Result<SplitTable, Error> {
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
    pub(super) fn assign(&mut self, site: &SiteSpec, rows: &Rows) -> Result<Vec<Part>, Error> {
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
    pub(super) fn check_used(&self, schema: &Schema) -> Result<(), Error> {
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

/// Each row's part for `site` from its own `[split] column`, whose value per row (read into
/// `rows.keys`) is the site's `train_value` or `test_value`. A value of another site reading the
/// same file skips the row; any other value is an error naming the data file, the line, the
/// column, the value and the values expected, or skips the row under `unlisted = "skip"`.
pub(super) fn column_split(
    rule: &SplitColumn,
    site: &SiteSpec,
    sites: &[SiteSpec],
    rows: &Rows,
) -> Result<Vec<Part>, Error> {
    let sharing: Vec<&SiteSpec> = sites.iter().filter(|s| s.path == site.path).collect();
    let mut parts = Vec::with_capacity(rows.lines.len());
    for (i, &line) in rows.lines.iter().enumerate() {
        let value = rows.keys.get(i).map_or("", String::as_str);
        let part = if value == site.train_value {
            Part::Train
        } else if value == site.test_value {
            Part::Test
        } else if rule.unlisted == Unlisted::Skip
            || sharing
                .iter()
                .any(|s| s.train_value == value || s.test_value == value)
        {
            // Another site's row in a shared file, or a row in neither part.
            Part::Skip
        } else {
            let mut known: Vec<String> = Vec::new();
            for s in &sharing {
                for v in [&s.train_value, &s.test_value] {
                    let v = format!("`{v}`");
                    if !known.contains(&v) {
                        known.push(v);
                    }
                }
            }
            return Err(Error::Split {
                path: site.path.clone(),
                line,
                message: format!(
                    "column `{}`: unknown split value `{}` (expected {}; `unlisted = \"skip\"` in `[split]` skips such rows)",
                    rule.column,
                    Field {
                        raw: value.as_bytes(),
                        line,
                        path: &site.path,
                        column: &rule.column,
                    }
                    .shown(),
                    known.join(" or ")
                ),
            });
        };
        parts.push(part);
    }
    Ok(parts)
}

/// Fraction split of `n` rows: train/test per row, keeping file order.
pub(super) fn fraction_split(
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::data::fixture::{Fixture, TCGA, TOY, column, says};
    use crate::data::{Dataset, Table, Task};

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

    /// Two sites with headers, split by their own `part` column; site `b` names its parts
    /// `fit`/`holdout` and orders its columns differently.
    const OWN: &str = r#"
name = "own"
normalization = "none"
[label]
column = "y"
[split]
column = "part"
[[sites]]
name = "a"
file = "a.csv"
[[sites]]
name = "b"
file = "b.csv"
train_value = "fit"
test_value = "holdout"
"#;

    #[test]
    fn split_column_takes_the_rows_each_site_marks_and_is_no_feature() {
        let f = Fixture::new(
            OWN,
            &[
                (
                    "a.csv",
                    "id,part,x,y\n1,train,10,0\n2,test,20,1\n3,train,30,1\n4, test ,40,0\n5,train,50,0\n",
                ),
                (
                    "b.csv",
                    "x,y,id,part\n60,1,6,holdout\n70,0,7,fit\n80,1,8,fit\n",
                ),
            ],
        );
        let data = f.load().expect("loads");
        assert_eq!(
            data.features,
            ["id", "x"],
            "the split column is not a feature"
        );
        let ids = |t: &Table| column(t, 0);
        let a = data.site("a").expect("a");
        assert_eq!(
            (ids(&a.train), ids(&a.test)),
            (vec![1.0, 3.0, 5.0], vec![2.0, 4.0])
        );
        assert_eq!(
            (a.train.y.clone(), a.test.y.clone()),
            (vec![0.0, 1.0, 0.0], vec![1.0, 0.0])
        );
        assert_eq!(column(&a.train, 1), [10.0, 30.0, 50.0]);
        let b = data.site("b").expect("b");
        assert_eq!((ids(&b.train), ids(&b.test)), (vec![7.0, 8.0], vec![6.0]));
        assert_eq!(column(&b.test, 1), [60.0]);

        // `b`'s own values are not `a`'s: `train` in b.csv is an unknown value there.
        f.write("b.csv", b"x,y,id,part\n60,1,6,holdout\n70,0,7,train\n");
        let e = f.error();
        assert!(matches!(e, Error::Split { line: 3, .. }), "{e:?}");
        says(
            &e,
            &[
                "b.csv line 3",
                "column `part`",
                "unknown split value `train`",
                "expected `fit` or `holdout`",
            ],
        );
    }

    #[test]
    fn split_column_in_a_shared_headerless_survival_file() {
        let schema = r#"
name = "surv"
header = false
columns = ["pid", "age", "T", "E", "fold"]
normalization = "none"
survival = { time = "T", event = "E" }
split = { column = "fold", unlisted = "skip" }
sites = [
  { name = "north", file = "all.csv", train_value = "train_0", test_value = "test_0" },
  { name = "south", file = "all.csv", train_value = "train_1", test_value = "test_1" },
]
"#;
        let rows = "1,50,10.5,1,train_0\n2,60,20,0,test_0\n3,70,30,1,train_1\n\
                    4,80,40,0,validation\n5,55,50,1,train_0\n6,65,60,0,test_1\n";
        let f = Fixture::new(schema, &[("all.csv", rows)]);
        let data = f.load().expect("loads");
        assert_eq!(data.task, Task::Survival);
        assert_eq!(data.features, ["pid", "age"]);
        let north = data.site("north").expect("north");
        assert_eq!(
            (column(&north.train, 0), column(&north.test, 0)),
            (vec![1.0, 5.0], vec![2.0])
        );
        assert_eq!(
            (north.train.time.clone(), north.train.event.clone()),
            (vec![10.5, 50.0], vec![1.0, 1.0])
        );
        let south = data.site("south").expect("south");
        assert_eq!(
            (column(&south.train, 0), column(&south.test, 0)),
            (vec![3.0], vec![6.0])
        );
        assert_eq!(south.test.time, [60.0]);

        // Without `unlisted = "skip"`, the row in neither part is an error listing every
        // value the file's sites use.
        f.write(
            "schema.toml",
            schema.replace(", unlisted = \"skip\"", "").as_bytes(),
        );
        let e = f.error();
        assert!(matches!(e, Error::Split { line: 4, .. }), "{e:?}");
        says(
            &e,
            &[
                "all.csv line 4",
                "column `fold`",
                "unknown split value `validation`",
                "`train_0` or `test_0` or `train_1` or `test_1`",
            ],
        );
    }

    #[test]
    fn split_column_errors() {
        let one = OWN
            .split("[[sites]]\nname = \"b\"")
            .next()
            .expect("site a")
            .to_owned();
        let run = |schema: &str, data: &str| Fixture::new(schema, &[("a.csv", data)]).error();
        let good = "id,part,y\n1,train,0\n2,test,1\n";
        assert!(Fixture::new(&one, &[("a.csv", good)]).load().is_ok());

        let e = run(&one, "id,part,y\n1,train,0\n2,Train,1\n3,test,0\n");
        assert!(matches!(e, Error::Split { line: 3, .. }), "{e:?}");
        says(
            &e,
            &[
                "a.csv line 3",
                "column `part`",
                "unknown split value `Train`",
                "expected `train` or `test`",
            ],
        );
        // An empty value is no part either; a hostile one is shown escaped.
        let e = run(&one, "id,part,y\n1,,0\n");
        says(&e, &["a.csv line 2", "unknown split value ``"]);
        let e = run(&one, "id,part,y\n1,\"\u{1b}[31m\",0\n");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");

        let e = run(&one, "id,fold,y\n1,train,0\n");
        assert!(matches!(e, Error::UnknownColumn { .. }), "{e:?}");
        says(&e, &["a.csv", "no column `part`"]);
        let headerless = one.replace(
            "normalization",
            "header = false\ncolumns = [\"id\", \"fold\", \"y\"]\nnormalization",
        );
        let e = run(&headerless, "1,train,0\n");
        assert!(matches!(e, Error::UnknownColumn { .. }), "{e:?}");
        says(&e, &["schema.toml", "no column `part`"]);

        for (extra, keys) in [
            ("file = \"split.csv\"", "not `file` and `column`"),
            ("fraction = 0.5", "not `column` and `fraction`"),
        ] {
            let schema = one.replace("column = \"part\"", &format!("column = \"part\"\n{extra}"));
            let e = run(&schema, good);
            assert!(matches!(e, Error::Schema { .. }), "{e:?}");
            says(
                &e,
                &[
                    "schema.toml",
                    "only one of `file`, `column` and `fraction`",
                    keys,
                ],
            );
        }
        let schema = one.replace(
            "column = \"part\"",
            "column = \"part\"\nsplit_column = \"part\"\nseed = 1",
        );
        says(
            &run(&schema, good),
            &["a `column` split takes only", "`split_column`, `seed`"],
        );
        let schema = one.replace("column = \"part\"", "column = \"y\"");
        says(
            &run(&schema, good),
            &["column `y` is the split column and cannot also be the label"],
        );
        let shared = one.replace(
            "file = \"a.csv\"",
            "file = \"a.csv\"\n[[sites]]\nname = \"b\"\nfile = \"a.csv\"\ntest_value = \"test_b\"",
        );
        says(
            &run(&shared, good),
            &["sites `a` and `b` read the same file"],
        );
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
}
