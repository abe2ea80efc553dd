//! Where a model version came from: the DAG of versions it was averaged from, back to
//! initialization, who trained each one, and the validation reports made on them
//! (`medmesh lineage`).
//!
//! A [`Version`] names the content ids of its parents; following them from one version gives its
//! lineage. Parents the store does not hold (never received, or from before this node joined)
//! are kept as "not stored" leaves: a lineage is never refused for being incomplete. Members are
//! named from the roster chain (the newest roster version that lists them), so a report reads as
//! "Validator 4 (Campus 4, NL)" and not as a key. [`Lineage::trace`] works over any source of
//! verified versions and reports: the store here, an exported bundle in [`crate::bundle`].
//!
//! This module only reads: it never writes to the store, and it opens the store file itself, so
//! run it while the node is stopped (redb lets one process hold the file).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use medmesh_protocol::identity::{ContentId, Digest, MemberId, Verified};
use medmesh_protocol::roster::{self, Chain, Role};
use medmesh_protocol::update::Version;
use medmesh_protocol::validation::{Dataset, Metric, Report};
use serde::{Deserialize, Serialize};

use crate::store::{self, Selection, Store};

/// What can go wrong reading a lineage from a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store file does not exist (a lineage never creates one).
    #[error("store {0} does not exist")]
    NoStore(PathBuf),
    /// The store cannot be read, or a record in it fails verification (the error names the file
    /// and the record).
    #[error(transparent)]
    Store(#[from] store::Error),
    /// No version with this id in the store.
    #[error("store {store} holds no model version {id}")]
    NotFound {
        /// The store file.
        store: PathBuf,
        /// The id asked for.
        id: ContentId,
    },
    /// `latest` found no version (by this author, when one is given).
    #[error("store {store} holds no model version{}", author.map(|a| format!(" by {a}")).unwrap_or_default())]
    NoVersions {
        /// The store file.
        store: PathBuf,
        /// The author looked for.
        author: Option<MemberId>,
    },
    /// The stored roster chain does not replay from genesis.
    #[error("store {store}: the stored roster chain does not replay: {source}")]
    Roster {
        /// The store file.
        store: PathBuf,
        /// The chain's verdict.
        source: roster::Error,
    },
}

/// How `medmesh lineage` prints a lineage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Indented text; shared ancestors once, later mentions as "(see above)".
    #[default]
    Tree,
    /// Graphviz DOT.
    Dot,
    /// A JSON [`Document`].
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "tree" => Ok(Format::Tree),
            "dot" => Ok(Format::Dot),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format {other:?} (tree, dot, json)")),
        }
    }
}

/// A member as the roster chain knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// The member's key.
    pub id: MemberId,
    /// Name, from the newest roster version that lists the member; `None` when no roster
    /// version does.
    pub name: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// Role.
    pub role: Option<Role>,
}

impl Party {
    /// The member `id` as named by the newest roster version of `chain` that lists it.
    pub fn lookup(chain: Option<&Chain>, id: MemberId) -> Party {
        let member = chain.and_then(|chain| {
            chain
                .history()
                .iter()
                .rev()
                .find_map(|signed| signed.roster().member(&id))
        });
        Party {
            id,
            name: member.map(|m| m.name.clone()),
            site: member.map(|m| m.site.clone()),
            country: member.map(|m| m.country.clone()),
            role: member.map(|m| m.role),
        }
    }

    /// Name and country only, for graph labels.
    fn brief(&self) -> String {
        match (&self.name, &self.country) {
            (Some(name), Some(country)) => format!("{name} ({country})"),
            _ => format!("{} (not on the roster)", self.id.short()),
        }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => {
                let place: Vec<&str> = [self.site.as_deref(), self.country.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect();
                write!(f, "{name} ({}) [{}]", place.join(", "), self.id.short())
            }
            None => write!(f, "{} (not on the roster)", self.id.short()),
        }
    }
}

/// A stored version in a lineage.
#[derive(Debug, Clone)]
pub struct Node {
    /// The version, its signature verified.
    pub version: Verified<Version>,
    /// Generations from the root (the root is 0), along the shortest path.
    pub depth: usize,
    /// Its author.
    pub author: Party,
    /// Whether its parents were followed (false when the depth limit stopped there).
    pub expanded: bool,
}

/// A validation report on a version of a lineage.
#[derive(Debug, Clone)]
pub struct ReportNode {
    /// The report, its signature verified.
    pub report: Verified<Report>,
    /// Its validator.
    pub validator: Party,
}

/// A parent link: `child` was averaged from `parent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The newer version.
    pub child: ContentId,
    /// A version it was averaged from.
    pub parent: ContentId,
}

/// The lineage of one model version; see the module documentation.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// The version whose lineage this is.
    pub root: ContentId,
    /// Stored versions reached from the root, breadth first (the root first), each once.
    pub versions: Vec<Node>,
    /// Parents named by a version here but not stored, in the order they were reached.
    pub missing: Vec<ContentId>,
    /// Every parent link of every expanded version, child to parent, once per pair.
    pub edges: Vec<Edge>,
    /// Reports on the versions here, in version order.
    pub reports: Vec<ReportNode>,
    /// The generation limit it was traced with, if any.
    pub depth: Option<usize>,
    /// The roster chain members were named from, if there is one.
    pub roster: Option<Chain>,
}

impl Lineage {
    /// Follows parent links breadth first from `root`, at most `depth` generations (all when
    /// `None`), asking `version` for each parent (`None`: not stored) and `reports` for the
    /// reports on each version reached. Members are named from `roster`. Each version is asked
    /// for once, so a DAG with shared ancestors costs one look-up per version.
    pub fn trace<E>(
        root: Verified<Version>,
        depth: Option<usize>,
        roster: Option<Chain>,
        mut version: impl FnMut(&ContentId) -> Result<Option<Verified<Version>>, E>,
        mut reports: impl FnMut(&ContentId) -> Result<Vec<Verified<Report>>, E>,
    ) -> Result<Lineage, E> {
        let root_id = root.id();
        let mut seen = HashSet::from([root_id]);
        let mut queue = VecDeque::from([(root, 0usize)]);
        let (mut nodes, mut missing, mut edges) = (Vec::new(), Vec::new(), Vec::new());
        while let Some((v, d)) = queue.pop_front() {
            let expanded = depth.is_none_or(|max| d < max);
            if expanded {
                for (i, parent) in v.parents.iter().enumerate() {
                    // A version may name a parent twice; the link is drawn once.
                    if v.parents[..i].contains(parent) {
                        continue;
                    }
                    edges.push(Edge {
                        child: v.id(),
                        parent: *parent,
                    });
                    if !seen.insert(*parent) {
                        continue;
                    }
                    match version(parent)? {
                        Some(p) => queue.push_back((p, d + 1)),
                        None => missing.push(*parent),
                    }
                }
            }
            let author = Party::lookup(roster.as_ref(), v.author);
            nodes.push(Node {
                version: v,
                depth: d,
                author,
                expanded,
            });
        }
        let mut found = Vec::new();
        for node in &nodes {
            for report in reports(&node.version.id())? {
                let validator = Party::lookup(roster.as_ref(), report.validator);
                found.push(ReportNode { report, validator });
            }
        }
        Ok(Lineage {
            root: root_id,
            versions: nodes,
            missing,
            edges,
            reports: found,
            depth,
            roster,
        })
    }

    /// The lineage of `root` from an open store, with the store's roster chain (replayed from
    /// genesis) to name members; a store without a roster names nobody.
    pub fn from_store(
        store: &Store,
        root: Verified<Version>,
        depth: Option<usize>,
    ) -> Result<Lineage, Error> {
        let history = store.roster_history()?;
        let roster = if history.is_empty() {
            None
        } else {
            Some(
                Chain::from_history(history).map_err(|source| Error::Roster {
                    store: store.path().to_owned(),
                    source,
                })?,
            )
        };
        Ok(Self::trace(
            root,
            depth,
            roster,
            |id| store.version(id),
            |id| store.reports(Some(id)),
        )?)
    }

    /// The distinct authors, in the order their first version was reached.
    pub fn contributors(&self) -> Vec<&Party> {
        distinct(self.versions.iter().map(|n| &n.author))
    }

    /// The distinct validators, in the order of their first report.
    pub fn validators(&self) -> Vec<&Party> {
        distinct(self.reports.iter().map(|r| &r.validator))
    }

    /// One line: how many versions and reports, the contributing hospitals and the validators.
    pub fn summary(&self) -> String {
        let names = |parties: Vec<&Party>| {
            if parties.is_empty() {
                "none".to_owned()
            } else {
                parties
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        };
        let contributors = self.contributors();
        let validators = self.validators();
        let missing = match self.missing.len() {
            0 => String::new(),
            1 => " (1 ancestor not stored)".to_owned(),
            n => format!(" ({n} ancestors not stored)"),
        };
        format!(
            "lineage of {}: {} version{}{missing}, {} report{}; contributing hospitals ({}): {}; validators ({}): {}",
            self.root.short(),
            self.versions.len(),
            plural(self.versions.len()),
            self.reports.len(),
            plural(self.reports.len()),
            contributors.len(),
            names(contributors.clone()),
            validators.len(),
            names(validators.clone()),
        )
    }

    /// Prints in `format`: [`Lineage::to_tree`], [`Lineage::to_dot`] or [`Lineage::to_json`].
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Tree => self.to_tree(),
            Format::Dot => self.to_dot(),
            Format::Json => self.to_json(),
        }
    }

    /// Indented text, the root first: each version with its round, author, samples, degree and
    /// training metrics, the reports on it, then its parents. A version reached a second time is
    /// printed as "(see above)"; a parent that is not stored as "(not stored)". Ends with
    /// [`Lineage::summary`].
    pub fn to_tree(&self) -> String {
        let index: HashMap<ContentId, &Node> =
            self.versions.iter().map(|n| (n.version.id(), n)).collect();
        let reports = self.reports_by_model();
        let mut printed = HashSet::new();
        let mut out = String::new();
        // (id, prefix of its line, prefix of the lines below it); explicit stack, as a lineage
        // can be thousands of rounds deep.
        let mut stack = vec![(self.root, String::new(), String::new())];
        while let Some((id, head, body)) = stack.pop() {
            let Some(node) = index.get(&id) else {
                let _ = writeln!(out, "{head}{} (not stored)", id.short());
                continue;
            };
            let v = &node.version;
            if !printed.insert(id) {
                let _ = writeln!(out, "{head}{} round {} (see above)", id.short(), v.round);
                continue;
            }
            let _ = writeln!(
                out,
                "{head}{} round {} by {}",
                id.short(),
                v.round,
                node.author
            );
            let parents: Vec<ContentId> = if node.expanded {
                self.edges
                    .iter()
                    .filter(|e| e.child == id)
                    .map(|e| e.parent)
                    .collect()
            } else {
                Vec::new()
            };
            let detail = format!("{body}{}", if parents.is_empty() { "  " } else { "│ " });
            let _ = writeln!(
                out,
                "{detail}  samples {}, degree {}{}",
                v.samples,
                v.degree,
                training_metrics(&v.metrics)
            );
            for r in reports.get(&id).into_iter().flatten() {
                let _ = writeln!(out, "{detail}  report {}", report_line(r));
            }
            if !node.expanded && !v.parents.is_empty() {
                let _ = writeln!(
                    out,
                    "{detail}  {} parent{} beyond the depth limit",
                    v.parents.len(),
                    plural(v.parents.len())
                );
            }
            for (i, parent) in parents.iter().enumerate().rev() {
                let last = i + 1 == parents.len();
                let (connector, below) = if last {
                    ("└─ ", "   ")
                } else {
                    ("├─ ", "│  ")
                };
                stack.push((
                    *parent,
                    format!("{body}{connector}"),
                    format!("{body}{below}"),
                ));
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// Graphviz DOT: one box per version (the root bold, versions not stored dashed), edges
    /// from child to parent, and each report as a note-shaped node pointing at its version.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph lineage {\n");
        out.push_str("  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n");
        let _ = writeln!(out, "  // {}", dot_escape(&self.summary()));
        for node in &self.versions {
            let v = &node.version;
            let mut label = format!(
                "{}\\nround {}\\n{}\\nsamples {}, degree {}",
                v.id().short(),
                v.round,
                dot_escape(&node.author.brief()),
                v.samples,
                v.degree
            );
            for (name, value) in &v.metrics {
                let _ = write!(label, "\\n{} {value:.3}", dot_escape(name));
            }
            if !node.expanded && !v.parents.is_empty() {
                label.push_str("\\n(parents not shown)");
            }
            let style = if v.id() == self.root {
                ", penwidth=2"
            } else {
                ""
            };
            let _ = writeln!(out, "  \"v{}\" [label=\"{label}\"{style}];", v.id());
        }
        for id in &self.missing {
            let _ = writeln!(
                out,
                "  \"v{id}\" [label=\"{}\\nnot stored\", style=dashed];",
                id.short()
            );
        }
        for edge in &self.edges {
            let _ = writeln!(out, "  \"v{}\" -> \"v{}\";", edge.child, edge.parent);
        }
        for r in &self.reports {
            let report = &r.report;
            let mut label = format!(
                "report {}\\n{}\\n{}, {} samples",
                report.id().short(),
                dot_escape(&r.validator.brief()),
                dot_escape(&report.dataset.name),
                report.samples
            );
            for (name, metric) in &report.metrics {
                let _ = write!(label, "\\n{} {}", dot_escape(name), metric_text(metric));
            }
            let _ = writeln!(
                out,
                "  \"r{}\" [shape=note, label=\"{label}\"];",
                report.id()
            );
            let _ = writeln!(
                out,
                "  \"r{}\" -> \"v{}\" [style=dashed, arrowhead=none];",
                report.id(),
                report.model
            );
        }
        out.push_str("}\n");
        out
    }

    /// The machine-readable [`Document`].
    pub fn document(&self) -> Document {
        Document {
            root: self.root,
            versions: self
                .versions
                .iter()
                .map(|n| {
                    let v = &n.version;
                    VersionEntry {
                        id: v.id(),
                        author: n.author.clone(),
                        experiment: v.experiment.clone(),
                        model: v.model,
                        round: v.round,
                        samples: v.samples,
                        degree: v.degree,
                        parents: v.parents.clone(),
                        metrics: v.metrics.clone(),
                        params: v.payload.params,
                        depth: n.depth,
                        expanded: n.expanded,
                    }
                })
                .collect(),
            edges: self.edges.clone(),
            reports: self
                .reports
                .iter()
                .map(|r| {
                    let report = &r.report;
                    ReportEntry {
                        id: report.id(),
                        model: report.model,
                        validator: r.validator.clone(),
                        dataset: report.dataset.clone(),
                        samples: report.samples,
                        metrics: report.metrics.clone(),
                        issued_at_ms: report.issued_at_ms,
                    }
                })
                .collect(),
            missing: self.missing.clone(),
            contributors: self.contributors().into_iter().cloned().collect(),
            validators: self.validators().into_iter().cloned().collect(),
        }
    }

    /// [`Lineage::document`] as pretty JSON, with a final newline.
    pub fn to_json(&self) -> String {
        // Only strings, numbers and maps with string keys: serializing cannot fail; a NaN
        // metric (which the version rules forbid) would print as null.
        let mut text = serde_json::to_string_pretty(&self.document())
            .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
        text.push('\n');
        text
    }

    fn reports_by_model(&self) -> HashMap<ContentId, Vec<&ReportNode>> {
        let mut map: HashMap<ContentId, Vec<&ReportNode>> = HashMap::new();
        for r in &self.reports {
            map.entry(r.report.model).or_default().push(r);
        }
        map
    }
}

/// A lineage as JSON: `{ root, versions, edges, reports, missing, contributors, validators }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The version whose lineage this is.
    pub root: ContentId,
    /// Stored versions, breadth first from the root.
    pub versions: Vec<VersionEntry>,
    /// Parent links, child to parent.
    pub edges: Vec<Edge>,
    /// Reports on the versions.
    pub reports: Vec<ReportEntry>,
    /// Parents that are not stored.
    pub missing: Vec<ContentId>,
    /// Distinct authors.
    pub contributors: Vec<Party>,
    /// Distinct validators.
    pub validators: Vec<Party>,
}

/// One version in a [`Document`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    /// Content id.
    pub id: ContentId,
    /// Author.
    pub author: Party,
    /// Experiment name.
    pub experiment: String,
    /// Digest of the model spec.
    pub model: Digest,
    /// The author's round.
    pub round: u64,
    /// Samples behind it (its averaging weight).
    pub samples: u64,
    /// Neighbours the author mixed with.
    pub degree: u32,
    /// Parents as the version names them.
    pub parents: Vec<ContentId>,
    /// Training metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Number of parameters.
    pub params: u64,
    /// Generations from the root.
    pub depth: usize,
    /// Whether its parents were followed.
    pub expanded: bool,
}

/// One report in a [`Document`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportEntry {
    /// Content id of the report.
    pub id: ContentId,
    /// The version it is about.
    pub model: ContentId,
    /// Who validated.
    pub validator: Party,
    /// On what data.
    pub dataset: Dataset,
    /// Samples evaluated.
    pub samples: u64,
    /// Metrics with their confidence intervals.
    pub metrics: BTreeMap<String, Metric>,
    /// When, as the validator's node said (ms since the Unix epoch).
    pub issued_at_ms: u64,
}

/// Reads the lineage of the selected version from the store at `store_path` (`Latest`: the
/// highest round by `author`, by anyone when `None`), following at most `depth` generations.
pub fn read(
    store_path: &Path,
    selection: Selection,
    author: Option<MemberId>,
    depth: Option<usize>,
) -> Result<Lineage, Error> {
    if !store_path.is_file() {
        return Err(Error::NoStore(store_path.to_owned()));
    }
    let store = Store::open(store_path)?;
    let root = selection
        .find(&store, author)?
        .ok_or_else(|| match selection {
            Selection::Id(id) => Error::NotFound {
                store: store_path.to_owned(),
                id,
            },
            Selection::Latest => Error::NoVersions {
                store: store_path.to_owned(),
                author,
            },
        })?;
    Lineage::from_store(&store, root, depth)
}

/// Every version in the lineages of `roots`, the roots included (stored or not), each once:
/// what a node's retention pins so that the payloads of its final and certified models' whole
/// ancestry stay (`medmesh-node`'s `retention`). Version records are never pruned, so the walk
/// always reaches back to initialization: one verified read per stored version reached, and
/// lineages that share ancestors (they all do, in a mesh) are walked once.
pub fn reachable(store: &Store, roots: &[ContentId]) -> Result<Vec<ContentId>, Error> {
    let mut reached: HashSet<ContentId> = HashSet::new();
    for root in roots {
        if !reached.insert(*root) {
            continue;
        }
        let Some(version) = store.version(root)? else {
            continue;
        };
        // A version reached from an earlier root had its ancestors walked then: it is not
        // asked for again (it comes back as "missing", which stops the walk there).
        let lineage = Lineage::trace(
            version,
            None,
            None,
            |id| {
                if reached.contains(id) {
                    Ok(None)
                } else {
                    store.version(id)
                }
            },
            |_| Ok(Vec::new()),
        )?;
        reached.extend(lineage.versions.iter().map(|n| n.version.id()));
        reached.extend(lineage.missing);
    }
    Ok(reached.into_iter().collect())
}

fn distinct<'a>(parties: impl Iterator<Item = &'a Party>) -> Vec<&'a Party> {
    let mut seen = HashSet::new();
    parties.filter(|p| seen.insert(p.id)).collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn training_metrics(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(name, value)| format!(", {name} {value:.3}"))
        .collect()
}

fn metric_text(m: &Metric) -> String {
    match (m.low, m.high) {
        (Some(low), Some(high)) => format!("{:.3} [{low:.3}, {high:.3}]", m.value),
        (Some(low), None) => format!("{:.3} [{low:.3}, -]", m.value),
        (None, Some(high)) => format!("{:.3} [-, {high:.3}]", m.value),
        (None, None) => format!("{:.3}", m.value),
    }
}

fn report_line(r: &ReportNode) -> String {
    let report = &r.report;
    let metrics: Vec<String> = report
        .metrics
        .iter()
        .map(|(name, m)| format!("{name} {}", metric_text(m)))
        .collect();
    format!(
        "{} by {} on {:?} ({}, {}), {} samples: {}",
        report.id().short(),
        r.validator,
        report.dataset.name,
        report.dataset.site,
        report.dataset.country,
        report.samples,
        metrics.join(", ")
    )
}

/// Text inside a DOT double-quoted string: quotes and backslashes escaped, control characters
/// (which rosters refuse, but reports may carry) dropped.
fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, key};

    fn open(mesh: &testkit::Mesh, name: &str, depth: Option<usize>) -> Lineage {
        read(&mesh.path, Selection::Id(mesh.get(name).id()), None, depth)
            .expect("reads the lineage")
    }

    #[test]
    fn reachable_is_the_union_of_lineages_roots_included() {
        let mesh = testkit::mesh();
        let store = Store::open(&mesh.path).expect("opens");
        let ids = |names: &[&str]| -> HashSet<ContentId> {
            names.iter().map(|n| mesh.get(n).id()).collect()
        };
        let a3: HashSet<ContentId> = reachable(&store, &[mesh.get("a3").id()])
            .expect("walks")
            .into_iter()
            .collect();
        let mut expected = ids(&["a1", "b1", "c1", "a2", "b2", "c2", "a3"]);
        expected.insert(mesh.missing);
        assert_eq!(
            a3, expected,
            "every ancestor, and the parent that was never stored"
        );

        // Shared ancestors once; a root the store does not hold is pinned as itself.
        let unknown = ContentId([7; 32]);
        let roots = [
            mesh.get("c2").id(),
            mesh.get("a3").id(),
            mesh.get("e1").id(),
            unknown,
        ];
        let all = reachable(&store, &roots).expect("walks");
        let set: HashSet<ContentId> = all.iter().copied().collect();
        assert_eq!(all.len(), set.len(), "each id once");
        expected.extend(ids(&["e1"]));
        expected.insert(unknown);
        assert_eq!(set, expected);
        assert!(reachable(&store, &[]).expect("walks").is_empty());
    }

    #[test]
    fn a_three_round_dag_names_every_author_and_report() {
        let mesh = testkit::mesh();
        let lineage = open(&mesh, "a3", None);
        let a3 = mesh.get("a3").id();
        assert_eq!(lineage.root, a3);
        assert_eq!(lineage.versions[0].version.id(), a3);
        let ids: HashSet<ContentId> = lineage.versions.iter().map(|n| n.version.id()).collect();
        let expected: HashSet<ContentId> = ["a1", "b1", "c1", "a2", "b2", "c2", "a3"]
            .iter()
            .map(|n| mesh.get(n).id())
            .collect();
        assert_eq!(ids, expected, "every ancestor once, nothing else");
        assert_eq!(lineage.missing, vec![mesh.missing]);
        // a3 → 3, a2 → 2, b2 → 3, c2 → 2.
        assert_eq!(lineage.edges.len(), 10);
        let depth = |name: &str| {
            lineage
                .versions
                .iter()
                .find(|n| n.version.id() == mesh.get(name).id())
                .map(|n| n.depth)
        };
        assert_eq!(
            (depth("a3"), depth("b2"), depth("a1")),
            (Some(0), Some(1), Some(2))
        );

        let authors: Vec<Option<&str>> = lineage
            .contributors()
            .iter()
            .map(|p| p.name.as_deref())
            .collect();
        assert_eq!(
            authors,
            [Some("Hospital 1"), Some("Hospital 2"), Some("Hospital 3")]
        );
        let mut reports: Vec<ContentId> = lineage.reports.iter().map(|r| r.report.id()).collect();
        reports.sort();
        let mut expected: Vec<ContentId> = mesh.reports.iter().map(|r| r.id()).collect();
        expected.sort();
        assert_eq!(
            reports, expected,
            "the reports on the lineage, not the unrelated one"
        );
        assert!(!reports.contains(&mesh.unrelated.id()));
        let validators: Vec<&Party> = lineage.validators();
        assert_eq!(validators.len(), 2);
        assert_eq!(validators[0].name.as_deref(), Some("Validator 4"));
        assert_eq!(validators[0].country.as_deref(), Some("NL"));
        assert_eq!(validators[0].role, Some(Role::Validator));

        let summary = lineage.summary();
        for name in [
            "Hospital 1",
            "Hospital 2",
            "Hospital 3",
            "Validator 4",
            "NL",
        ] {
            assert!(summary.contains(name), "{summary}");
        }
        assert!(
            summary.contains("7 versions (1 ancestor not stored), 3 reports"),
            "{summary}"
        );
        assert!(!summary.contains("Hospital 5"), "{summary}");

        let tree = lineage.to_tree();
        assert!(
            tree.starts_with(&format!("{} round 3 by Hospital 1", a3.short())),
            "{tree}"
        );
        for name in ["a1", "b1", "c1", "a2", "b2", "c2"] {
            let short = mesh.get(name).id().short();
            let full = tree
                .lines()
                .filter(|l| l.contains(&short) && l.contains(" by "))
                .count();
            assert_eq!(full, 1, "{name} printed in full once:\n{tree}");
        }
        assert!(tree.contains("(see above)"), "{tree}");
        assert!(
            tree.contains(&format!("{} (not stored)", mesh.missing.short())),
            "{tree}"
        );
        assert!(tree.contains("auc 0.860 [0.810, 0.900]"), "{tree}");
        assert!(tree.contains("Validator 4 (Campus 4, NL)"), "{tree}");
        assert!(tree.contains("samples 1"), "{tree}");
        assert!(tree.contains("loss 0.450"), "{tree}");
        assert!(tree.trim_end().ends_with(&summary), "{tree}");
    }

    #[test]
    fn dot_and_json_describe_the_same_dag() {
        let mesh = testkit::mesh();
        let lineage = open(&mesh, "a3", None);

        let dot = lineage.to_dot();
        assert!(dot.starts_with("digraph lineage {") && dot.trim_end().ends_with('}'));
        for name in ["a1", "b1", "c1", "a2", "b2", "c2", "a3"] {
            let node = format!("\"v{}\" [label=", mesh.get(name).id());
            assert_eq!(dot.matches(&node).count(), 1, "{name}:\n{dot}");
        }
        assert!(dot.contains(&format!("\"v{}\" [label=", mesh.missing)));
        assert!(dot.contains("style=dashed"));
        let version_edges = dot
            .lines()
            .filter(|l| l.trim_start().starts_with("\"v") && l.contains("->"))
            .count();
        assert_eq!(version_edges, 10, "{dot}");
        assert_eq!(dot.matches("shape=note").count(), 3, "{dot}");
        let a3 = mesh.get("a3").id();
        let a2 = mesh.get("a2").id();
        assert!(dot.contains(&format!("\"v{a3}\" -> \"v{a2}\";")), "{dot}");
        assert!(dot.contains("Validator 4 (NL)"), "{dot}");

        let doc: Document = serde_json::from_str(&lineage.to_json()).expect("parses");
        // Compared field by field: serde_json parses floats to the nearest few ulps only.
        let direct = lineage.document();
        assert_eq!(doc.edges, direct.edges);
        assert_eq!(doc.contributors, direct.contributors);
        assert_eq!(doc.validators, direct.validators);
        let ids = |d: &Document| d.versions.iter().map(|v| v.id).collect::<Vec<_>>();
        assert_eq!(ids(&doc), ids(&direct));
        assert_eq!(doc.root, a3);
        assert_eq!(doc.versions.len(), 7);
        assert_eq!(doc.edges.len(), 10);
        assert_eq!(doc.reports.len(), 3);
        assert_eq!(doc.missing, vec![mesh.missing]);
        assert_eq!(doc.contributors.len(), 3);
        let report = doc
            .reports
            .iter()
            .find(|r| r.model == a3)
            .expect("the report on the root");
        assert_eq!(report.validator.name.as_deref(), Some("Validator 4"));
        assert_eq!(report.metrics["auc"].low, Some(0.86 - 0.05));
        let root = &doc.versions[0];
        assert_eq!((root.round, root.degree, root.depth), (3, 2, 0));
        assert_eq!(root.author.country.as_deref(), Some("DE"));
        let value: serde_json::Value = serde_json::from_str(&lineage.to_json()).expect("parses");
        for field in ["root", "versions", "edges", "reports"] {
            assert!(value.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn latest_depth_and_a_store_without_a_roster() {
        let mesh = testkit::mesh();
        let latest =
            read(&mesh.path, Selection::Latest, Some(key(1).id()), Some(1)).expect("reads");
        assert_eq!(latest.root, mesh.get("a3").id());
        assert_eq!(latest.versions.len(), 4, "the root and its parents");
        assert!(latest.versions.iter().skip(1).all(|n| !n.expanded));
        assert_eq!(latest.edges.len(), 3);
        assert!(latest.missing.is_empty());
        let tree = latest.to_tree();
        assert!(tree.contains("beyond the depth limit"), "{tree}");
        assert!(!tree.contains("(not stored)"), "{tree}");

        // An initialization has a lineage of one.
        let alone = open(&mesh, "e1", None);
        assert_eq!(alone.versions.len(), 1);
        assert_eq!(alone.validators().len(), 1);
        assert!(alone.edges.is_empty());

        // Without a roster nobody has a name, and the lineage still reads.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let (v, bytes) = testkit::version(&key(7), 1, vec![ContentId([1; 32])], &[1.0; 4]);
        {
            let store = Store::open(&path).expect("opens");
            testkit::put(&store, &v, &bytes);
        }
        let lineage = read(&path, Selection::Latest, None, None).expect("reads");
        assert_eq!(lineage.missing, vec![ContentId([1; 32])]);
        assert_eq!(lineage.contributors()[0].name, None);
        assert!(lineage.to_tree().contains("not on the roster"));
        assert!(lineage.to_dot().contains("not on the roster"));
    }

    #[test]
    fn errors_name_the_store_and_the_version() {
        let mesh = testkit::mesh();
        let missing = ContentId([5; 32]);
        let err = read(&mesh.path, Selection::Id(missing), None, None).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains(&mesh.path.display().to_string()) && text.contains(&missing.to_string()),
            "{text}"
        );
        let err =
            read(&mesh.path, Selection::Latest, Some(key(9).id()), None).expect_err("nothing by 9");
        assert!(matches!(err, Error::NoVersions { .. }), "{err}");
        let nowhere = mesh.path.with_file_name("nope.redb");
        assert!(matches!(
            read(&nowhere, Selection::Latest, None, None),
            Err(Error::NoStore(p)) if p == nowhere
        ));
        assert!(!nowhere.exists(), "a lineage never creates a store");
        assert_eq!("dot".parse::<Format>(), Ok(Format::Dot));
        assert!("svg".parse::<Format>().is_err());
    }

    #[test]
    fn dot_labels_are_escaped() {
        assert_eq!(dot_escape("a \"b\" \\ c\nd"), "a \\\"b\\\" \\\\ cd");
    }
}
