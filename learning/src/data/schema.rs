//! The dataset's TOML schema: the format as written (`Raw*`, unknown keys refused), the checked
//! [`Schema`] (columns and their roles, missing markers and policy, label rule, survival columns,
//! categorical levels, split rule, sites), and [`Field`], which applies those rules to one value
//! of a record.
//!
//! It must never read data or split files (the reader and the split do) and never guess: a
//! schema that contradicts itself is an [`Error::Schema`] saying what is wrong, and a value a
//! rule does not accept is an error naming its file, line and column. It reads at most
//! [`MAX_SCHEMA_BYTES`] of a schema.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{Error, MAX_COLUMNS, io_error};
use super::normalize::Normalization;

/// Largest schema file read, in bytes.
const MAX_SCHEMA_BYTES: u64 = 1 << 20;
/// Most characters of an offending value quoted in an error.
const MAX_SHOWN: usize = 64;

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
pub(super) enum MissingPolicy {
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
pub(super) struct RawSurvival {
    pub(super) time: String,
    pub(super) event: String,
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
    column: Option<String>,
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
pub(super) enum Unlisted {
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
pub(super) enum Level {
    Number(f64),
    Text(String),
}

impl Level {
    pub(super) fn matches(&self, text: &str) -> bool {
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

pub(super) fn list(levels: &[Level]) -> String {
    levels
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The schema, checked.

pub(super) struct Schema {
    pub(super) path: PathBuf,
    pub(super) name: String,
    pub(super) header: bool,
    pub(super) delimiter: u8,
    pub(super) columns: Vec<String>,
    pub(super) drop: BTreeSet<String>,
    pub(super) markers: Vec<String>,
    pub(super) policy: MissingPolicy,
    pub(super) label: Option<Label>,
    pub(super) survival: Option<RawSurvival>,
    pub(super) categorical: Vec<Categorical>,
    pub(super) split: SplitRule,
    pub(super) normalization: Normalization,
    pub(super) sites: Vec<SiteSpec>,
}

pub(super) struct Label {
    pub(super) column: String,
    pub(super) rule: LabelRule,
}

pub(super) enum LabelRule {
    ZeroOne,
    Compare(Op, f64),
    Values {
        positive: Vec<Level>,
        negative: Vec<Level>,
    },
}

#[derive(Clone, Copy)]
pub(super) enum Op {
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

pub(super) struct Categorical {
    pub(super) column: String,
    pub(super) levels: Vec<Level>,
    pub(super) drop_first: bool,
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
    pub(super) fn width(&self) -> usize {
        self.levels.len() - usize::from(self.drop_first)
    }
}

impl SplitRule {
    fn check(
        raw: &RawSplit,
        dir: &Path,
        bad: &impl Fn(String) -> Error,
    ) -> Result<SplitRule, Error> {
        let forms: Vec<&str> = [
            ("`file`", raw.file.is_some()),
            ("`column`", raw.column.is_some()),
            ("`fraction`", raw.fraction.is_some()),
        ]
        .into_iter()
        .filter(|(_, given)| *given)
        .map(|(key, _)| key)
        .collect();
        match (&raw.file, &raw.column, raw.fraction) {
            (None, None, None) => Err(bad("`split` needs `file`, `column` or `fraction`".into())),
            (None, None, Some(fraction)) => {
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
            (None, Some(column), None) => {
                let stray: Vec<&str> = [
                    ("`site_column`", raw.site_column.is_some()),
                    ("`line_column`", raw.line_column.is_some()),
                    ("`key_column`", raw.key_column.is_some()),
                    ("`split_column`", raw.split_column.is_some()),
                    ("`seed`", raw.seed.is_some()),
                    ("`stratify`", raw.stratify.is_some()),
                ]
                .into_iter()
                .filter(|(_, given)| *given)
                .map(|(key, _)| key)
                .collect();
                if !stray.is_empty() {
                    return Err(bad(format!(
                        "a `column` split takes only `column`, `train_value`, `test_value` and `unlisted`, not {}",
                        stray.join(", ")
                    )));
                }
                if column.trim().is_empty() {
                    return Err(bad("`split.column` is empty".into()));
                }
                Ok(SplitRule::Column(SplitColumn {
                    column: column.clone(),
                    unlisted: raw.unlisted.unwrap_or(Unlisted::Error),
                }))
            }
            (Some(file), None, None) => {
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
            _ => Err(bad(format!(
                "`split` takes only one of `file`, `column` and `fraction`, not {}",
                forms.join(" and ")
            ))),
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
                    "site `{}`: `train_value`/`test_value` need a split file or a split `column`",
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
        // Sites sharing a file must be told apart by the split file or column, or they would all
        // get the same rows.
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
                    SplitRule::Column(_) => ![&b.train_value, &b.test_value]
                        .iter()
                        .any(|v| **v == a.train_value || **v == a.test_value),
                    SplitRule::Fraction { .. } => false,
                };
                if !apart {
                    return Err(bad(format!(
                        "sites `{}` and `{}` read the same file; sharing a file needs a split file or a split `column` that gives each site its own `train_value`/`test_value`",
                        a.name, b.name
                    )));
                }
            }
        }
        Ok(sites)
    }
}

pub(super) enum SplitRule {
    File(SplitFile),
    /// `[split] column`: a column of each site's own data file gives each row's part.
    Column(SplitColumn),
    Fraction {
        fraction: f64,
        seed: u64,
        stratify: bool,
    },
}

pub(super) struct SplitFile {
    pub(super) path: PathBuf,
    pub(super) site_column: Option<String>,
    pub(super) by: By,
    pub(super) split_column: String,
    pub(super) unlisted: Unlisted,
}

#[derive(Clone)]
pub(super) struct SplitColumn {
    /// The data column holding each row's split value; never a feature.
    pub(super) column: String,
    /// What a value that is no site's `train_value`/`test_value` does.
    pub(super) unlisted: Unlisted,
}

pub(super) enum By {
    Line(String),
    Key(String),
}

pub(super) struct SiteSpec {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) train_value: String,
    pub(super) test_value: String,
}

impl Schema {
    pub(super) fn read(path: &Path) -> Result<Schema, Error> {
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
        if let Some((key, what)) = schema.split_role()
            && let Some((_, role)) = roles.iter().find(|(c, r)| *c == key && *r != "drop")
        {
            return Err(bad(format!(
                "column `{key}` is the {what} and cannot also be the {role}"
            )));
        }
        if !schema.header {
            // Without a header, every column the schema names must be in `columns` now.
            for (column, _) in roles.iter().chain(schema.split_role().iter()) {
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
    pub(super) fn roles(&self) -> Vec<(String, &'static str)> {
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

    /// The data column the split reads, if any, and its role: the column that keys the split
    /// file, or the `[split] column` that holds each row's part. It is never a feature; it may
    /// also be listed in `drop`.
    pub(super) fn split_role(&self) -> Option<(String, &'static str)> {
        match &self.split {
            SplitRule::File(SplitFile { by: By::Key(k), .. }) => Some((k.clone(), "split key")),
            SplitRule::Column(c) => Some((c.column.clone(), "split column")),
            _ => None,
        }
    }

    pub(super) fn is_missing(&self, text: &str) -> bool {
        self.markers.iter().any(|m| m == text)
    }
}

/// One field of a record, with what an error about it must say.
pub(super) struct Field<'a> {
    pub(super) raw: &'a [u8],
    pub(super) line: u64,
    pub(super) path: &'a Path,
    pub(super) column: &'a str,
}

impl Field<'_> {
    /// The field trimmed of spaces; invalid UTF-8 gives text that matches nothing.
    pub(super) fn text(&self) -> &str {
        std::str::from_utf8(self.raw).map_or("\u{FFFD}", str::trim)
    }

    /// The field for an error message: lossy, control characters escaped, shortened.
    pub(super) fn shown(&self) -> String {
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

    pub(super) fn number(&self) -> Result<f64, Error> {
        number(self.text()).ok_or_else(|| Error::NotNumeric {
            path: self.path.to_owned(),
            line: self.line,
            column: self.column.to_owned(),
            value: self.shown(),
        })
    }

    pub(super) fn label(&self, rule: &LabelRule) -> Result<f32, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Table;
    use crate::data::fixture::{Fixture, TOY, TOY_ROWS, says};

    /// What serde says `T` expects when `toml` holds something it does not know: the keys of a
    /// table (every `Raw*` table refuses unknown keys) or the values of an enum.
    fn expected<T: serde::de::DeserializeOwned>(toml: &str) -> Vec<String> {
        let message = match toml::from_str::<T>(toml) {
            Ok(_) => panic!("`{toml}` was accepted"),
            Err(e) => e.to_string(),
        };
        let (_, list) = message
            .split_once("expected")
            .unwrap_or_else(|| panic!("no list of what is expected in {message}"));
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    fn keys_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        expected::<T>("no_such_key = 0")
    }

    fn values_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        #[derive(Deserialize)]
        struct One<T> {
            #[allow(dead_code)]
            v: T,
        }
        expected::<One<T>>("v = \"no_such_value\"")
    }

    #[test]
    fn docs_data_md_lists_every_schema_key_and_value() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/DATA.md"))
            .expect("docs/DATA.md");
        let top = keys_of::<RawSchema>();
        let mut keys = top.clone();
        for (table, inner) in [
            ("missing", keys_of::<RawMissing>()),
            ("label", keys_of::<RawLabel>()),
            ("survival", keys_of::<RawSurvival>()),
            ("categorical", keys_of::<RawCategorical>()),
            ("split", keys_of::<RawSplit>()),
            ("sites", keys_of::<RawSite>()),
        ] {
            assert!(
                top.iter().any(|k| k == table),
                "no top-level `{table}` in {top:?}"
            );
            keys.extend(inner.iter().map(|k| format!("{table}.{k}")));
        }
        assert!(
            keys.len() > 35 && keys.iter().any(|k| k == "split.column"),
            "the walk found too few keys to be right: {keys:?}"
        );
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| {
                !(doc.contains(&format!("`{k}`"))
                    || doc.contains(&format!("`[{k}]`"))
                    || doc.contains(&format!("`[[{k}]]`")))
            })
            .collect();
        assert!(missing.is_empty(), "docs/DATA.md does not list {missing:?}");
        let values: Vec<String> = [
            values_of::<Normalization>(),
            values_of::<MissingPolicy>(),
            values_of::<Unlisted>(),
        ]
        .concat();
        assert_eq!(values.len(), 7, "{values:?}");
        let missing: Vec<&String> = values
            .iter()
            .filter(|v| !doc.contains(&format!("\"{v}\"")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/DATA.md does not name the values {missing:?}"
        );
    }

    #[test]
    fn schema_errors_say_where() {
        let e = Fixture::new("name = \"x\"\nheader = maybe\n", &[]).error();
        assert!(matches!(e, Error::Schema { .. }), "{e:?}");
        says(&e, &["schema.toml", "line 2"]);
        let e = Fixture::new(&TOY.replace("seed = 7", "seed = 7\nsede = 8"), &[]).error();
        says(&e, &["schema.toml", "sede"]);
        let e = Fixture::new(&TOY.replace("seed = 7", "seed = 7\nfile = \"s.csv\""), &[]).error();
        says(
            &e,
            &[
                "only one of `file`, `column` and `fraction`",
                "`file` and `fraction`",
            ],
        );
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
}
