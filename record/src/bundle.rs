//! A self-contained, offline-verifiable model bundle: what `medmesh export` writes and
//! `medmesh verify` checks, on a machine that never joined the mesh.
//!
//! A bundle is one folder:
//!
//! | file | what |
//! |---|---|
//! | `model.safetensors` | the weights, tensors named and shaped as `model.json` says |
//! | `model.json` | [`ModelFile`]: the model spec, the signed spec digest and the tensor layout |
//! | `version.bin` | the signed version (`wire::encode` of a `Signed<Version>`, as stored) |
//! | `version.json` | its human-readable copy ([`VersionRecord`]) |
//! | `lineage.bin` | every stored version of its lineage, signed, root first |
//! | `reports.bin` | every stored validation report on a version of the lineage, signed |
//! | `roster.bin` | the roster chain from genesis, with the signatures that make each version valid |
//! | `MANIFEST.json` | [`Manifest`]: every other file with its size and BLAKE3 digest, and the root id |
//!
//! The `.bin` lists share one framing: a 16-byte format mark, the number of entries (`u32`
//! little-endian), then each entry as its length (`u32` little-endian) and the protocol's own
//! canonical bytes (`wire::encode` of the signed item, exactly as the store keeps it). JSON files
//! are copies for people; [`verify`] still requires them to be exactly what medmesh writes, so
//! that no byte of a bundle escapes a check. File digests are BLAKE3 in key-derivation mode with
//! the context [`HASH_CONTEXT`], so `b3sum --derive-key "medmesh 2026-11 bundle file v1" FILE`
//! reproduces them.
//!
//! What a signature covers, and what only the manifest does: versions, reports and rosters are
//! signed; the weights are bound to the root version by its payload digest; `model.json` is bound
//! to it by the spec digest (for built-in models; a TorchScript module file is not in the bundle)
//! and the tensor layout by rebuilding it from the spec. The manifest itself is not signed, so a
//! whole bundle forged with a made-up roster verifies on its own: pin the mesh with
//! `--genesis` (the digest of the genesis roster, known from the mesh's founding documents).
//!
//! Verification never trusts a size it reads: files are capped before they are read, list
//! entries are capped per kind before they are decoded, and no check panics on a corrupt bundle.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use medmesh_learning::learner::ModelSpec;
use medmesh_protocol::identity::{self, ContentId, Digest, MemberId, Signable, Signed, Verified};
use medmesh_protocol::roster::{Chain, Outcome, Role, SignedRoster};
use medmesh_protocol::update::{self, Encoding, Version};
use medmesh_protocol::validation::Report;
use medmesh_protocol::wire;
use serde::{Deserialize, Serialize};

use crate::lineage::{self, Lineage, Party};
use crate::store::Store;

/// The weights.
pub const WEIGHTS: &str = "model.safetensors";
/// The model description ([`ModelFile`]).
pub const MODEL: &str = "model.json";
/// The signed root version.
pub const VERSION_BIN: &str = "version.bin";
/// The root version as JSON.
pub const VERSION_JSON: &str = "version.json";
/// The signed versions of the lineage.
pub const LINEAGE: &str = "lineage.bin";
/// The signed reports on the lineage.
pub const REPORTS: &str = "reports.bin";
/// The signed roster chain.
pub const ROSTER: &str = "roster.bin";
/// The manifest ([`Manifest`]).
pub const MANIFEST: &str = "MANIFEST.json";
/// Every file the manifest lists, in its order.
pub const FILES: [&str; 7] = [
    WEIGHTS,
    MODEL,
    VERSION_BIN,
    VERSION_JSON,
    LINEAGE,
    REPORTS,
    ROSTER,
];
/// The manifest's `format`.
pub const FORMAT: &str = "medmesh bundle v1";
/// BLAKE3 key-derivation context of the file digests in the manifest.
pub const HASH_CONTEXT: &str = "medmesh 2026-11 bundle file v1";

const LINEAGE_MARK: &[u8; 16] = b"medmesh lineage1";
const REPORTS_MARK: &[u8; 16] = b"medmesh reports1";
const ROSTER_MARK: &[u8; 16] = b"medmesh roster 1";
/// Room for a signed envelope around a body: length prefix, signer, signature.
const ENVELOPE: usize = 128;
const MIB: u64 = 1024 * 1024;
/// Most tensors `model.json` may describe.
const MAX_TENSORS: usize = 1 << 16;

/// Largest size accepted for each file, checked before anything is read.
fn limit(name: &str) -> u64 {
    match name {
        WEIGHTS => wire::MAX_PAYLOAD as u64 + 16 * MIB,
        VERSION_BIN => (Version::MAX_LEN + ENVELOPE) as u64,
        LINEAGE => 1024 * MIB,
        REPORTS | ROSTER => 256 * MIB,
        _ => MIB,
    }
}

/// The part of a file a failed check is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The file as a whole.
    Whole,
    /// The entry at this position of a `.bin` list (it could not be identified further).
    Entry(usize),
    /// A model version.
    Version(ContentId),
    /// A validation report.
    Report(ContentId),
    /// A roster version.
    Roster(u64),
    /// A tensor of the weights.
    Tensor(String),
    /// A field of a JSON file or of the safetensors header.
    Field(&'static str),
}

impl Part {
    fn prefix(&self) -> String {
        match self {
            Part::Whole => String::new(),
            other => format!("{other}: "),
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Whole => f.write_str("the whole file"),
            Part::Entry(i) => write!(f, "entry {i}"),
            Part::Version(id) => write!(f, "version {id}"),
            Part::Report(id) => write!(f, "report {id}"),
            Part::Roster(v) => write!(f, "roster version {v}"),
            Part::Tensor(name) => write!(f, "tensor {name:?}"),
            Part::Field(name) => write!(f, "field {name}"),
        }
    }
}

/// What can go wrong writing or verifying a bundle; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bundle file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Export: the lineage cannot be read from the store (the error names the store).
    #[error(transparent)]
    Lineage(#[from] lineage::Error),
    /// A check failed: in which file, on which part of it, and why.
    #[error("{file}: {}{reason}", part.prefix())]
    Check {
        /// The bundle file.
        file: &'static str,
        /// The part of it.
        part: Part,
        /// The check that failed.
        reason: String,
    },
}

impl Error {
    /// The bundle file a failed check is about, if it is one.
    pub fn file(&self) -> Option<&'static str> {
        match self {
            Error::Check { file, .. } => Some(file),
            _ => None,
        }
    }
}

fn fail(file: &'static str, part: Part, reason: impl Into<String>) -> Error {
    Error::Check {
        file,
        part,
        reason: reason.into(),
    }
}

/// `MANIFEST.json`: what a bundle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Content id of the exported version.
    pub root: ContentId,
    /// [`HASH_CONTEXT`], the BLAKE3 key-derivation context of the digests.
    pub blake3_context: String,
    /// Every file but the manifest, in the order of [`FILES`].
    pub files: Vec<FileEntry>,
}

/// One file of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name inside the bundle.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// [`file_digest`] of its bytes.
    pub blake3: Digest,
}

impl Manifest {
    /// The exact bytes medmesh writes: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, numbers and hex digests only: serializing cannot fail (an empty manifest
        // would not verify anyway).
        json_bytes(self).unwrap_or_default()
    }
}

/// BLAKE3 (context [`HASH_CONTEXT`]) of a bundle file's bytes, as the manifest lists it.
pub fn file_digest(bytes: &[u8]) -> Digest {
    Digest::of(HASH_CONTEXT, bytes)
}

/// `model.json`: how the weights are laid out and which model they belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// The model spec digest the root version was signed with.
    pub spec_digest: Digest,
    /// The model spec, when the exporter knew it (from its node config).
    pub spec: Option<ModelSpec>,
    /// Encoding of the signed payload.
    pub encoding: Encoding,
    /// Number of parameters.
    pub params: u64,
    /// The tensors in the order the payload flattens them.
    pub tensors: Vec<TensorEntry>,
}

/// One tensor of a [`ModelFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    /// Name in `model.safetensors`.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
}

impl ModelFile {
    /// The description of `version`'s weights laid out as `layout` (names and shapes in
    /// payload order), with the spec when it is known.
    pub fn new(
        version: &Version,
        spec: Option<&ModelSpec>,
        layout: &[(&str, Vec<usize>)],
    ) -> ModelFile {
        ModelFile {
            spec_digest: version.model,
            spec: spec.cloned(),
            encoding: version.payload.encoding,
            params: version.payload.params,
            tensors: layout
                .iter()
                .map(|(name, dims)| TensorEntry {
                    name: (*name).to_owned(),
                    shape: dims.iter().map(|&d| d as u64).collect(),
                })
                .collect(),
        }
    }
}

/// Pretty JSON and a final newline: the one form medmesh writes its JSON files in.
fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The `__metadata__` of `model.safetensors`: which signed version the weights are.
pub fn tensor_metadata(id: ContentId, version: &Version) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_owned(), "pt".to_owned()),
        ("medmesh.version".to_owned(), id.to_string()),
        ("medmesh.author".to_owned(), version.author.to_string()),
        ("medmesh.round".to_owned(), version.round.to_string()),
        ("medmesh.experiment".to_owned(), version.experiment.clone()),
    ])
}

/// The version's JSON copy, as `version.json` holds it.
fn version_json(version: &Verified<Version>) -> Result<Vec<u8>, serde_json::Error> {
    json_bytes(&VersionRecord {
        id: version.id(),
        version: version.value().clone(),
    })
}

/// What [`write()`] added to an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The files written, the manifest last.
    pub files: Vec<PathBuf>,
    /// Versions in `lineage.bin`.
    pub versions: usize,
    /// Ancestors named in the lineage but not stored (so not in the bundle).
    pub missing: usize,
    /// Reports in `reports.bin`.
    pub reports: usize,
    /// Newest roster version in `roster.bin`; `None` when the store has no roster (such a
    /// bundle does not verify).
    pub roster: Option<u64>,
}

/// Completes an export in `out`, where `model.safetensors`, `version.json` and `version.bin`
/// of `root` are already written: adds `model.json` (`model`), `lineage.bin`, `reports.bin` and
/// `roster.bin` from `store`, then `MANIFEST.json` over every file as it is on disk.
pub fn write(
    store: &Store,
    root: &Verified<Version>,
    model: &ModelFile,
    out: &Path,
) -> Result<Written, Error> {
    let manifest_path = out.join(MANIFEST);
    // A manifest left by an earlier export must not vouch for a half-written one.
    match std::fs::remove_file(&manifest_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                path: manifest_path,
                source: e,
            });
        }
        _ => {}
    }
    let lineage = Lineage::from_store(store, root.clone(), None)?;
    let mut files = Vec::new();
    let mut put = |name: &'static str, bytes: Vec<u8>| -> Result<(), Error> {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        files.push(path);
        Ok(())
    };
    let json = json_bytes(model).map_err(|e| Error::Io {
        path: out.join(MODEL),
        source: std::io::Error::other(e),
    })?;
    put(MODEL, json)?;
    put(
        LINEAGE,
        frame(
            LINEAGE,
            LINEAGE_MARK,
            lineage
                .versions
                .iter()
                .map(|n| wire::encode(n.version.signed())),
        )?,
    )?;
    put(
        REPORTS,
        frame(
            REPORTS,
            REPORTS_MARK,
            lineage
                .reports
                .iter()
                .map(|r| wire::encode(r.report.signed())),
        )?,
    )?;
    let history = lineage.roster.as_ref().map(Chain::history).unwrap_or(&[]);
    put(
        ROSTER,
        frame(ROSTER, ROSTER_MARK, history.iter().map(wire::encode))?,
    )?;

    let mut entries = Vec::with_capacity(FILES.len());
    for name in FILES {
        let bytes = read_capped(out, name, None, limit(name))?;
        entries.push(FileEntry {
            name: name.to_owned(),
            size: bytes.len() as u64,
            blake3: file_digest(&bytes),
        });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        root: root.id(),
        blake3_context: HASH_CONTEXT.to_owned(),
        files: entries,
    };
    std::fs::write(&manifest_path, manifest.to_bytes()).map_err(|source| Error::Io {
        path: manifest_path.clone(),
        source,
    })?;
    files.push(manifest_path);
    Ok(Written {
        files,
        versions: lineage.versions.len(),
        missing: lineage.missing.len(),
        reports: lineage.reports.len(),
        roster: history.last().map(|r| r.roster().version),
    })
}

/// Frames canonical item bytes as a `.bin` list (see the module documentation).
fn frame(
    file: &'static str,
    mark: &[u8; 16],
    items: impl Iterator<Item = Vec<u8>>,
) -> Result<Vec<u8>, Error> {
    let too_many = || {
        fail(
            file,
            Part::Whole,
            "more entries or bytes than a list can frame",
        )
    };
    let mut out = mark.to_vec();
    out.extend_from_slice(&[0; 4]);
    let mut count = 0u32;
    for item in items {
        let len = u32::try_from(item.len()).map_err(|_| too_many())?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&item);
        count = count.checked_add(1).ok_or_else(too_many)?;
    }
    out[16..20].copy_from_slice(&count.to_le_bytes());
    Ok(out)
}

fn take_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

/// Splits a `.bin` list into its entries, refusing any entry longer than `max_item` before
/// looking at it.
fn unframe<'a>(
    file: &'static str,
    mark: &[u8; 16],
    bytes: &'a [u8],
    max_item: usize,
) -> Result<Vec<&'a [u8]>, Error> {
    let rest = bytes.strip_prefix(mark.as_slice()).ok_or_else(|| {
        fail(
            file,
            Part::Whole,
            format!(
                "does not start with its format mark {:?}",
                String::from_utf8_lossy(mark)
            ),
        )
    })?;
    let (count, mut rest) =
        take_u32(rest).ok_or_else(|| fail(file, Part::Whole, "ends before its entry count"))?;
    let mut items = Vec::new();
    for i in 0..count as usize {
        let (len, after) = take_u32(rest)
            .ok_or_else(|| fail(file, Part::Entry(i), "the file ends before this entry"))?;
        let len = len as usize;
        if len > max_item {
            return Err(fail(
                file,
                Part::Entry(i),
                format!("claims {len} bytes, more than the {max_item} an entry may have"),
            ));
        }
        let (item, after) = after.split_at_checked(len).ok_or_else(|| {
            fail(
                file,
                Part::Entry(i),
                format!("claims {len} bytes, but only {} remain", after.len()),
            )
        })?;
        items.push(item);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(fail(
            file,
            Part::Whole,
            format!(
                "{} bytes follow the last of its {count} entries",
                rest.len()
            ),
        ));
    }
    Ok(items)
}

/// Reads bundle file `name` whole, refusing it unless it is `expected` bytes long (when given)
/// and at most `cap` bytes, before allocating.
fn read_capped(
    dir: &Path,
    name: &'static str,
    expected: Option<u64>,
    cap: u64,
) -> Result<Vec<u8>, Error> {
    let path = dir.join(name);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(name, Part::Whole, "is missing from the bundle"));
        }
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if let Some(expected) = expected
        && len != expected
    {
        return Err(fail(
            name,
            Part::Whole,
            format!("is {len} bytes, the manifest says {expected}"),
        ));
    }
    if len > cap {
        return Err(fail(
            name,
            Part::Whole,
            format!("is {len} bytes, more than the {cap} this file may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 != len {
        return Err(fail(
            name,
            Part::Whole,
            format!(
                "changed while it was read ({} bytes, then {len})",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Checks a bundle offline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The digest of the mesh's genesis roster, from a trusted source. Without it a bundle is
    /// only checked against the roster chain it carries.
    pub genesis: Option<Digest>,
}

/// What [`verify`] found in a bundle that passed every check.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The exported version.
    pub root: ContentId,
    /// The mesh named by the roster chain.
    pub mesh: String,
    /// Digest of the genesis roster (what `--genesis` pins).
    pub genesis: Digest,
    /// Newest roster version in the bundle.
    pub roster_version: u64,
    /// Tensors in the weights.
    pub tensors: usize,
    /// The lineage as the bundle holds it, members named by its roster chain.
    pub lineage: Lineage,
}

/// Checks the bundle in `dir` and returns what it holds, or the first check that fails, naming
/// the file and the part of it. Each check that passes is described to `log`, one line each:
/// the manifest; every file's size and BLAKE3 digest; the roster chain from genesis (every
/// signature, and only signatures that count); the root version's signature and its JSON copy;
/// every version of the lineage (signature, version rules, its author allowed to train by the
/// roster chain, every parent link inside the bundle, all of them ancestors of the root); every
/// report (signature, report rules, its validator allowed to validate, its model in the lineage);
/// `model.json` against the signed spec digest; and the weights against the signed payload
/// digest.
pub fn verify(dir: &Path, options: &Options, log: &mut dyn FnMut(&str)) -> Result<Checked, Error> {
    let manifest = check_manifest(dir, log)?;
    let mut contents = HashMap::new();
    let mut total = 0u64;
    for entry in &manifest.files {
        let Some(name) = FILES.into_iter().find(|f| *f == entry.name) else {
            continue;
        };
        if entry.size > limit(name) {
            return Err(fail(
                name,
                Part::Whole,
                format!(
                    "the manifest gives {} bytes, more than the {} this file may have",
                    entry.size,
                    limit(name)
                ),
            ));
        }
        let bytes = read_capped(dir, name, Some(entry.size), limit(name))?;
        let digest = file_digest(&bytes);
        if digest != entry.blake3 {
            return Err(fail(
                name,
                Part::Whole,
                format!(
                    "BLAKE3 digest {digest} does not match the manifest's {}",
                    entry.blake3
                ),
            ));
        }
        total += entry.size;
        contents.insert(name, bytes);
    }
    log(&format!(
        "files: {} files, {total} bytes: every size and BLAKE3 digest matches the manifest",
        contents.len()
    ));
    if let Ok(listing) = std::fs::read_dir(dir) {
        let mut extra: Vec<String> = listing
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != MANIFEST && !FILES.contains(&n.as_str()))
            .collect();
        extra.sort();
        for name in extra {
            log(&format!(
                "note: {name} is not part of the bundle (not checked)"
            ));
        }
    }
    let file = |name: &'static str| contents.get(name).map(Vec::as_slice).unwrap_or_default();

    let chain = check_roster(file(ROSTER), options, log)?;
    let root = check_root(file(VERSION_BIN), file(VERSION_JSON), manifest.root, log)?;
    let versions = check_lineage(file(LINEAGE), &root, &chain, log)?;
    let reports = check_reports(file(REPORTS), &versions, &chain, log)?;
    let model = check_model(file(MODEL), &root, log)?;
    let tensors = check_weights(file(WEIGHTS), &root, &model, log)?;

    let mut by_model: HashMap<ContentId, Vec<Verified<Report>>> = HashMap::new();
    for r in reports {
        by_model.entry(r.model).or_default().push(r);
    }
    let lineage = Lineage::trace(
        root.clone(),
        None,
        Some(chain.clone()),
        |id| Ok::<_, Infallible>(versions.get(id).cloned()),
        |id| Ok(by_model.get(id).cloned().unwrap_or_default()),
    )
    .unwrap_or_else(|never: Infallible| match never {});
    let genesis = chain
        .history()
        .first()
        .map(|g| g.roster().digest())
        .unwrap_or_default();
    Ok(Checked {
        root: root.id(),
        mesh: chain.current().mesh.clone(),
        genesis,
        roster_version: chain.current().version,
        tensors,
        lineage,
    })
}

fn check_manifest(dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Manifest, Error> {
    let raw = read_capped(dir, MANIFEST, None, limit(MANIFEST))?;
    let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| {
        fail(
            MANIFEST,
            Part::Whole,
            format!("is not a bundle manifest: {e}"),
        )
    })?;
    if manifest.format != FORMAT {
        return Err(fail(
            MANIFEST,
            Part::Field("format"),
            format!("is {:?}, this medmesh reads {FORMAT:?}", manifest.format),
        ));
    }
    if manifest.blake3_context != HASH_CONTEXT {
        return Err(fail(
            MANIFEST,
            Part::Field("blake3_context"),
            format!(
                "is {:?}, this medmesh hashes with {HASH_CONTEXT:?}",
                manifest.blake3_context
            ),
        ));
    }
    let mut listed = BTreeSet::new();
    for entry in &manifest.files {
        if !FILES.contains(&entry.name.as_str()) {
            return Err(fail(
                MANIFEST,
                Part::Field("files"),
                format!("lists {:?}, which is not a bundle file", entry.name),
            ));
        }
        if !listed.insert(entry.name.as_str()) {
            return Err(fail(
                MANIFEST,
                Part::Field("files"),
                format!("lists {} twice", entry.name),
            ));
        }
    }
    if let Some(absent) = FILES.iter().find(|f| !listed.contains(**f)) {
        return Err(fail(
            MANIFEST,
            Part::Field("files"),
            format!("does not list {absent}"),
        ));
    }
    if manifest.to_bytes() != raw {
        return Err(fail(
            MANIFEST,
            Part::Whole,
            "is not byte for byte the manifest medmesh writes for its contents",
        ));
    }
    log(&format!(
        "{MANIFEST}: {FORMAT}, root version {}, {} files",
        manifest.root,
        manifest.files.len()
    ));
    Ok(manifest)
}

/// Replays the roster chain from genesis, requiring every listed signature to count.
fn check_roster(
    bytes: &[u8],
    options: &Options,
    log: &mut dyn FnMut(&str),
) -> Result<Chain, Error> {
    let entries = unframe(ROSTER, ROSTER_MARK, bytes, wire::MAX_GOSSIP)?;
    let mut chain: Option<Chain> = None;
    for (i, raw) in entries.into_iter().enumerate() {
        let signed: SignedRoster = wire::decode(raw).map_err(|e| {
            fail(
                ROSTER,
                Part::Entry(i),
                format!("does not decode as a signed roster: {e}"),
            )
        })?;
        let version = signed.roster().version;
        let part = || Part::Roster(version);
        if version != i as u64 {
            return Err(fail(
                ROSTER,
                part(),
                format!("is at position {i}: the chain lists versions 0, 1, 2, ... in order"),
            ));
        }
        let listed: Vec<MemberId> = signed.signers().collect();
        let next = match chain.take() {
            None => Chain::from_genesis(signed).map_err(|e| fail(ROSTER, part(), e.to_string()))?,
            Some(mut chain) => match chain.apply(signed) {
                Ok(Outcome::Advanced { .. }) => chain,
                Ok(Outcome::Duplicate) => return Err(fail(ROSTER, part(), "is listed twice")),
                Err(e) => return Err(fail(ROSTER, part(), e.to_string())),
            },
        };
        let counted: Vec<MemberId> = next.current_signed().signers().collect();
        if counted != listed {
            return Err(fail(
                ROSTER,
                part(),
                format!(
                    "carries {} signatures of which {} count; a bundle carries exactly the valid \
                     signatures of distinct entitled members that make each version valid, in \
                     signer order",
                    listed.len(),
                    counted.len()
                ),
            ));
        }
        chain = Some(next);
    }
    let chain = chain.ok_or_else(|| {
        fail(
            ROSTER,
            Part::Whole,
            "holds no roster, so who may train and validate cannot be checked (the exporting \
             store had no roster chain)",
        )
    })?;
    let genesis = chain.history().first().map(|g| g.roster().clone());
    let digest = genesis.as_ref().map(|g| g.digest()).unwrap_or_default();
    if let Some(pinned) = options.genesis
        && pinned != digest
    {
        return Err(fail(
            ROSTER,
            Part::Roster(0),
            format!("the genesis digest is {digest}, not the pinned {pinned}: another mesh"),
        ));
    }
    let current = chain.current();
    log(&format!(
        "{ROSTER}: mesh {:?}, genesis {digest}{} signed by all {} founders; {}; {} members now",
        current.mesh,
        if options.genesis.is_some() {
            " (pinned)"
        } else {
            " (not pinned: pass --genesis to tie the bundle to a known mesh)"
        },
        genesis.map(|g| g.members.len()).unwrap_or_default(),
        match current.version {
            0 => "no later versions".to_owned(),
            n => format!("versions 1 to {n} each signed by a threshold of the previous members"),
        },
        current.members.len()
    ));
    Ok(chain)
}

fn check_root(
    bin: &[u8],
    json: &[u8],
    expected: ContentId,
    log: &mut dyn FnMut(&str),
) -> Result<Verified<Version>, Error> {
    let signed: Signed<Version> = wire::decode(bin).map_err(|e| {
        fail(
            VERSION_BIN,
            Part::Whole,
            format!("does not decode as a signed version: {e}"),
        )
    })?;
    let root = signed.verify().map_err(|e| {
        fail(
            VERSION_BIN,
            Part::Whole,
            format!("signature does not verify: {e}"),
        )
    })?;
    let part = Part::Version(root.id());
    if root.id() != expected {
        return Err(fail(
            VERSION_BIN,
            part,
            format!("is not the manifest's root version {expected}"),
        ));
    }
    root.check(root.signer())
        .map_err(|e| fail(VERSION_BIN, part.clone(), e.to_string()))?;
    let copy = version_json(&root).map_err(|e| fail(VERSION_JSON, Part::Whole, e.to_string()))?;
    if copy != json {
        return Err(fail(
            VERSION_JSON,
            Part::Whole,
            format!(
                "is not the JSON copy of the signed {VERSION_BIN} (version {}) medmesh writes",
                root.id()
            ),
        ));
    }
    log(&format!(
        "{VERSION_BIN}: version {} (round {} by {}) signature ok; {VERSION_JSON} is its copy",
        root.id(),
        root.round,
        root.author.short()
    ));
    Ok(root)
}

/// The first roster version that lets `id` act under `may`, or what the chain says of it.
fn entitled(chain: &Chain, id: &MemberId, may: fn(Role) -> bool) -> Result<u64, String> {
    let mut roles = BTreeSet::new();
    for signed in chain.history() {
        if let Some(member) = signed.roster().member(id) {
            if may(member.role) {
                return Ok(signed.roster().version);
            }
            roles.insert(format!("{:?}", member.role).to_lowercase());
        }
    }
    Err(if roles.is_empty() {
        "is not a member in any version of the roster chain".to_owned()
    } else {
        format!(
            "is a member only as {}",
            roles.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

fn decode_all<T: Signable>(
    file: &'static str,
    entries: Vec<&[u8]>,
) -> Result<Vec<Verified<T>>, Error> {
    let envelopes = entries
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            wire::decode::<Signed<T>>(raw).map_err(|e| {
                fail(
                    file,
                    Part::Entry(i),
                    format!("does not decode as a signed item: {e}"),
                )
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    identity::verify_batch(envelopes)
        .into_iter()
        .enumerate()
        .map(|(i, result)| {
            result.map_err(|e| {
                fail(
                    file,
                    Part::Entry(i),
                    format!("signature does not verify: {e}"),
                )
            })
        })
        .collect()
}

fn check_lineage(
    bytes: &[u8],
    root: &Verified<Version>,
    chain: &Chain,
    log: &mut dyn FnMut(&str),
) -> Result<HashMap<ContentId, Verified<Version>>, Error> {
    let entries = unframe(LINEAGE, LINEAGE_MARK, bytes, Version::MAX_LEN + ENVELOPE)?;
    let versions = decode_all::<Version>(LINEAGE, entries)?;
    let mut by_id = HashMap::with_capacity(versions.len());
    let mut authors = BTreeSet::new();
    for v in versions {
        let part = || Part::Version(v.id());
        v.check(v.signer())
            .map_err(|e| fail(LINEAGE, part(), e.to_string()))?;
        entitled(chain, &v.author, Role::may_train).map_err(|why| {
            fail(
                LINEAGE,
                part(),
                format!(
                    "its author {} {why}; only members allowed to train may publish versions",
                    Party::lookup(Some(chain), v.author)
                ),
            )
        })?;
        authors.insert(v.author);
        if by_id.insert(v.id(), v.clone()).is_some() {
            return Err(fail(LINEAGE, part(), "is listed twice"));
        }
    }
    if !by_id.contains_key(&root.id()) {
        return Err(fail(
            LINEAGE,
            Part::Version(root.id()),
            "the root version is not in the lineage",
        ));
    }
    let mut links = 0usize;
    let mut ids: Vec<&ContentId> = by_id.keys().collect();
    ids.sort();
    for id in ids {
        let Some(v) = by_id.get(id) else { continue };
        for parent in v.parents.iter().filter_map(|p| by_id.get(p)) {
            let bad = |why: String| fail(LINEAGE, Part::Version(v.id()), why);
            if parent.experiment != v.experiment || parent.model != v.model {
                return Err(bad(format!(
                    "its parent {} belongs to another experiment or model",
                    parent.id()
                )));
            }
            if parent.author == v.author && parent.round >= v.round {
                return Err(bad(format!(
                    "its parent {} by the same author has round {}, not below {}",
                    parent.id(),
                    parent.round,
                    v.round
                )));
            }
            links += 1;
        }
    }
    // Every version must be an ancestor of the root: a bundle carries one lineage.
    let mut reached = HashSet::from([root.id()]);
    let mut queue = vec![root.id()];
    let mut missing = HashSet::new();
    while let Some(id) = queue.pop() {
        for parent in by_id
            .get(&id)
            .map(|v| v.parents.as_slice())
            .unwrap_or_default()
        {
            if !by_id.contains_key(parent) {
                missing.insert(*parent);
            } else if reached.insert(*parent) {
                queue.push(*parent);
            }
        }
    }
    let mut strays: Vec<&ContentId> = by_id.keys().filter(|id| !reached.contains(id)).collect();
    strays.sort();
    if let Some(stray) = strays.first() {
        return Err(fail(
            LINEAGE,
            Part::Version(**stray),
            format!("is not an ancestor of the root version {}", root.id()),
        ));
    }
    log(&format!(
        "{LINEAGE}: {} versions by {} authors, all ancestors of the root: signatures ok, version \
         rules ok, every author allowed to train by the roster chain, {links} parent links \
         inside the bundle ok; {}",
        by_id.len(),
        authors.len(),
        match missing.len() {
            0 => "complete back to initialization".to_owned(),
            n => format!(
                "{n} ancestor{} not in the bundle (not stored by the exporting node)",
                if n == 1 { " is" } else { "s are" }
            ),
        }
    ));
    Ok(by_id)
}

fn check_reports(
    bytes: &[u8],
    versions: &HashMap<ContentId, Verified<Version>>,
    chain: &Chain,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Verified<Report>>, Error> {
    let entries = unframe(REPORTS, REPORTS_MARK, bytes, Report::MAX_LEN + ENVELOPE)?;
    let reports = decode_all::<Report>(REPORTS, entries)?;
    let mut seen = HashSet::new();
    let mut validators = BTreeSet::new();
    for r in &reports {
        let part = || Part::Report(r.id());
        r.check(r.signer())
            .map_err(|e| fail(REPORTS, part(), e.to_string()))?;
        entitled(chain, &r.validator, Role::may_validate).map_err(|why| {
            fail(
                REPORTS,
                part(),
                format!(
                    "its validator {} {why}; only members allowed to validate may publish reports",
                    Party::lookup(Some(chain), r.validator)
                ),
            )
        })?;
        if !versions.contains_key(&r.model) {
            return Err(fail(
                REPORTS,
                part(),
                format!("is about version {}, which is not in the lineage", r.model),
            ));
        }
        if !seen.insert(r.id()) {
            return Err(fail(REPORTS, part(), "is listed twice"));
        }
        validators.insert(r.validator);
    }
    log(&format!(
        "{REPORTS}: {} reports by {} validators: signatures ok, report rules ok, every validator \
         allowed to validate by the roster chain, every report about a version of the lineage",
        reports.len(),
        validators.len()
    ));
    Ok(reports)
}

fn check_model(
    bytes: &[u8],
    root: &Verified<Version>,
    log: &mut dyn FnMut(&str),
) -> Result<ModelFile, Error> {
    let model: ModelFile = serde_json::from_slice(bytes).map_err(|e| {
        fail(
            MODEL,
            Part::Whole,
            format!("is not a model description: {e}"),
        )
    })?;
    let canonical = json_bytes(&model).map_err(|e| fail(MODEL, Part::Whole, e.to_string()))?;
    if canonical != bytes {
        return Err(fail(
            MODEL,
            Part::Whole,
            "is not byte for byte the model description medmesh writes for its contents",
        ));
    }
    let id = root.id();
    if model.spec_digest != root.model {
        return Err(fail(
            MODEL,
            Part::Field("spec_digest"),
            format!(
                "is {}, version {id} was signed with model {}",
                model.spec_digest, root.model
            ),
        ));
    }
    if model.encoding != root.payload.encoding || model.params != root.payload.params {
        return Err(fail(
            MODEL,
            Part::Field("params"),
            format!(
                "{:?} x {} does not match the signed payload of version {id} ({:?} x {})",
                model.encoding, model.params, root.payload.encoding, root.payload.params
            ),
        ));
    }
    if model.tensors.len() > MAX_TENSORS {
        return Err(fail(
            MODEL,
            Part::Field("tensors"),
            format!("lists more than {MAX_TENSORS} tensors"),
        ));
    }
    let mut names = HashSet::new();
    let mut total = Some(0u64);
    for t in &model.tensors {
        if t.name.is_empty() || !names.insert(t.name.as_str()) {
            return Err(fail(
                MODEL,
                Part::Tensor(t.name.clone()),
                "has an empty or repeated name",
            ));
        }
        let size = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        total = total.zip(size).and_then(|(a, b)| a.checked_add(b));
    }
    if total != Some(model.params) {
        return Err(fail(
            MODEL,
            Part::Field("tensors"),
            format!(
                "lay out {} parameters, the version has {}",
                total.map_or("too many".to_owned(), |t| t.to_string()),
                model.params
            ),
        ));
    }
    let spec_note = match &model.spec {
        None => {
            "no model spec recorded: tensor names and shapes are covered by no signature".to_owned()
        }
        Some(ModelSpec::TorchScript { .. }) => {
            "TorchScript spec: its digest covers the module file, which a bundle does not carry \
             (not checked)"
                .to_owned()
        }
        Some(spec) => {
            let digest = spec
                .digest()
                .map_err(|e| fail(MODEL, Part::Field("spec"), e.to_string()))?;
            if digest != root.model {
                return Err(fail(
                    MODEL,
                    Part::Field("spec"),
                    format!(
                        "hashes to {digest}, but version {id} was signed with model {}",
                        root.model
                    ),
                ));
            }
            // Built-in models are laid out by arithmetic: no worker, no libtorch.
            let layout = spec
                .layout()
                .ok_or_else(|| fail(MODEL, Part::Field("spec"), "has no built-in layout"))?;
            let follows = layout.len() == model.tensors.len()
                && layout.iter().zip(&model.tensors).all(|((name, shape), t)| {
                    *name == t.name
                        && shape.len() == t.shape.len()
                        && shape
                            .iter()
                            .zip(&t.shape)
                            .all(|(&a, &b)| u64::try_from(a).ok() == Some(b))
                });
            if !follows {
                return Err(fail(
                    MODEL,
                    Part::Field("tensors"),
                    format!("do not follow the model spec, which lays out {layout:?}"),
                ));
            }
            "spec hashes to the signed model digest and lays out these tensors".to_owned()
        }
    };
    log(&format!(
        "{MODEL}: {} tensors, {} parameters; {spec_note}",
        model.tensors.len(),
        model.params
    ));
    Ok(model)
}

fn check_weights(
    bytes: &[u8],
    root: &Verified<Version>,
    model: &ModelFile,
    log: &mut dyn FnMut(&str),
) -> Result<usize, Error> {
    use safetensors::SafeTensors;

    let id = root.id();
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| {
        fail(
            WEIGHTS,
            Part::Whole,
            format!("is not a safetensors file: {e}"),
        )
    })?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| {
        fail(
            WEIGHTS,
            Part::Whole,
            format!("is not a safetensors file: {e}"),
        )
    })?;
    // The header is JSON padded with spaces to 8 bytes; anything but its compact form (other
    // whitespace, escapes, repeated keys) is not what medmesh writes.
    let header = bytes
        .get(8..8 + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or_default();
    let text = header.trim_end_matches(' ');
    let compact = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string(&v).ok());
    if header_len % 8 != 0
        || header_len - text.len() >= 8
        || compact.is_none_or(|c| c.len() != text.len())
    {
        return Err(fail(
            WEIGHTS,
            Part::Field("header"),
            "is not in the compact form safetensors writes",
        ));
    }
    let expected = tensor_metadata(id, root);
    let found = metadata.metadata().clone().unwrap_or_default();
    if found != expected {
        let mut keys: Vec<&String> = expected.keys().chain(found.keys()).collect();
        keys.sort();
        let key = keys
            .into_iter()
            .find(|k| expected.get(*k) != found.get(*k))
            .cloned()
            .unwrap_or_default();
        return Err(fail(
            WEIGHTS,
            Part::Field("__metadata__"),
            format!(
                "says {key} = {:?}, version {id} says {:?}",
                found.get(&key),
                expected.get(&key)
            ),
        ));
    }
    let listed: HashSet<&str> = model.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut names = file.names();
    names.sort();
    if let Some(extra) = names.iter().find(|n| !listed.contains(**n)) {
        return Err(fail(
            WEIGHTS,
            Part::Tensor((*extra).to_owned()),
            format!("is not one of the tensors {MODEL} lays out"),
        ));
    }
    let capacity = usize::try_from(root.payload.len)
        .unwrap_or(0)
        .min(bytes.len());
    let mut payload = Vec::with_capacity(capacity);
    for t in &model.tensors {
        let part = || Part::Tensor(t.name.clone());
        let view = file
            .tensor(&t.name)
            .map_err(|_| fail(WEIGHTS, part(), format!("is missing (listed in {MODEL})")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(
                WEIGHTS,
                part(),
                format!("is {:?}, not F32", view.dtype()),
            ));
        }
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        if shape != t.shape {
            return Err(fail(
                WEIGHTS,
                part(),
                format!("has shape {shape:?}, {MODEL} says {:?}", t.shape),
            ));
        }
        payload.extend_from_slice(view.data());
    }
    if payload.len() as u64 != root.payload.len
        || update::payload_digest(&payload) != root.payload.digest
    {
        return Err(fail(
            WEIGHTS,
            Part::Whole,
            format!(
                "the weights, laid out as {MODEL} says, do not hash to the payload digest signed \
                 in version {id}"
            ),
        ));
    }
    log(&format!(
        "{WEIGHTS}: {} tensors, {} parameters: they re-encode to the payload digest signed in \
         version {id}",
        model.tensors.len(),
        model.params
    ));
    Ok(model.tensors.len())
}

/// A signed model version as `version.json` holds it: its content id and the version's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Content id of the signed version.
    pub id: ContentId,
    /// The version as signed.
    #[serde(flatten)]
    pub version: Version,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::export;
    use crate::store::Selection;
    use crate::testkit::{self, key};

    /// Exports `name` of the fixture mesh (with its spec and layout) into a new folder.
    fn export_bundle(mesh: &testkit::Mesh, name: &str, dir: &Path) -> PathBuf {
        export_bundle_id(mesh, mesh.get(name).id(), dir)
    }

    /// Exports version `id` of the fixture mesh's store into a new folder.
    fn export_bundle_id(mesh: &testkit::Mesh, id: ContentId, dir: &Path) -> PathBuf {
        let spec = testkit::spec();
        let layout = spec.layout().expect("a built-in layout");
        let out = dir.join(format!("bundle-{}", id.short()));
        export(
            &mesh.path,
            Selection::Id(id),
            None,
            Some(&spec),
            Some(&layout),
            &out,
        )
        .expect("exports");
        out
    }

    fn check(dir: &Path) -> (Result<Checked, Error>, Vec<String>) {
        let mut lines = Vec::new();
        let result = verify(dir, &Options::default(), &mut |l| lines.push(l.to_owned()));
        (result, lines)
    }

    /// Rewrites the manifest so that it vouches for the files as they are now, as someone who
    /// tampers with a bundle would.
    fn forge_manifest(dir: &Path) {
        let raw = std::fs::read(dir.join(MANIFEST)).expect("reads");
        let mut manifest: Manifest = serde_json::from_slice(&raw).expect("parses");
        for entry in &mut manifest.files {
            let bytes = std::fs::read(dir.join(&entry.name)).expect("reads");
            entry.size = bytes.len() as u64;
            entry.blake3 = file_digest(&bytes);
        }
        std::fs::write(dir.join(MANIFEST), manifest.to_bytes()).expect("writes");
    }

    #[test]
    fn a_bundle_round_trips_through_verify() {
        let mesh = testkit::mesh();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = export_bundle(&mesh, "a3", dir.path());
        for name in FILES.iter().chain([&MANIFEST]) {
            assert!(out.join(name).is_file(), "{name} written");
        }
        let (result, lines) = check(&out);
        let checked = result.expect("verifies");
        let a3 = mesh.get("a3").id();
        assert_eq!(checked.root, a3);
        assert_eq!(checked.mesh, "test mesh");
        assert_eq!(checked.roster_version, 1);
        assert_eq!(checked.tensors, 2);
        assert_eq!(checked.lineage.versions.len(), 7);
        assert_eq!(checked.lineage.missing, vec![mesh.missing]);
        assert_eq!(checked.lineage.reports.len(), 3);
        let summary = checked.lineage.summary();
        for name in ["Hospital 1", "Hospital 2", "Hospital 3", "Validator 4"] {
            assert!(summary.contains(name), "{summary}");
        }
        let text = lines.join("\n");
        for name in FILES.iter().chain([&MANIFEST]) {
            assert!(text.contains(name), "{name} not reported:\n{text}");
        }
        assert!(text.contains("1 ancestor is not in the bundle"), "{text}");

        // The roster in the bundle holds only the signatures that count (the store kept three
        // for version 1, two are needed).
        let roster = std::fs::read(out.join(ROSTER)).expect("reads");
        let entries = unframe(ROSTER, ROSTER_MARK, &roster, wire::MAX_GOSSIP).expect("frames");
        let v1: SignedRoster = wire::decode(entries[1]).expect("decodes");
        assert_eq!(v1.signers().count(), 2);

        // Pinned to the right genesis it verifies; to another, roster.bin fails.
        let genesis = testkit::rosters()[0].roster().digest();
        assert_eq!(checked.genesis, genesis);
        let pinned = Options {
            genesis: Some(genesis),
        };
        verify(&out, &pinned, &mut |_| {}).expect("verifies pinned");
        let other = Options {
            genesis: Some(Digest([1; 32])),
        };
        let err = verify(&out, &other, &mut |_| {}).expect_err("another mesh");
        assert!(
            matches!(
                &err,
                Error::Check {
                    file: ROSTER,
                    part: Part::Roster(0),
                    ..
                }
            ),
            "{err}"
        );

        // An initialization is a bundle of one version; a stray file is noted, not checked.
        let e1 = export_bundle(&mesh, "e1", dir.path());
        std::fs::write(e1.join("README.txt"), "notes").expect("writes");
        let (result, lines) = check(&e1);
        let checked = result.expect("verifies");
        assert_eq!(checked.lineage.versions.len(), 1);
        assert_eq!(checked.lineage.reports.len(), 1);
        assert!(lines.iter().any(|l| l.contains("README.txt")), "{lines:?}");
    }

    #[test]
    fn any_tampered_byte_fails_and_names_the_file() {
        let mesh = testkit::mesh();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = export_bundle(&mesh, "a3", dir.path());
        let mut cases = 0;
        for name in FILES.iter().chain([&MANIFEST]) {
            let len = std::fs::metadata(out.join(name)).expect("stat").len() as usize;
            let mut positions = vec![0, len / 3, len / 2, 2 * len / 3, len - 1];
            positions.dedup();
            for position in positions {
                for (forged, flip) in [(false, 0xFF), (true, 0x01), (true, 0x80)] {
                    // A forged manifest vouches for the tampered file; tampering with the
                    // manifest itself is the plain case.
                    if forged && *name == MANIFEST {
                        continue;
                    }
                    let copy = dir.path().join(format!("t{cases}"));
                    testkit::copy_dir(&out, &copy);
                    let path = copy.join(name);
                    let mut bytes = std::fs::read(&path).expect("reads");
                    bytes[position] ^= flip;
                    std::fs::write(&path, &bytes).expect("writes");
                    if forged {
                        forge_manifest(&copy);
                    }
                    let (result, _) = check(&copy);
                    let err = result.err().unwrap_or_else(|| {
                        panic!("{name} byte {position} ^ {flip:#x} (forged {forged}) verified")
                    });
                    assert_eq!(
                        err.file(),
                        Some(*name),
                        "{name} byte {position} ^ {flip:#x} (forged {forged}): {err}"
                    );
                    assert!(err.to_string().starts_with(name), "{err}");
                    // With a forged manifest the digests match: a deeper check must catch it.
                    if *name != MANIFEST {
                        assert_eq!(forged, !err.to_string().contains("BLAKE3"), "{err}");
                    }
                    cases += 1;
                }
            }
        }
        assert!(cases >= 7 * 5 * 3, "{cases}");
    }

    #[test]
    fn removed_truncated_or_oversized_files_fail_by_name() {
        let mesh = testkit::mesh();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = export_bundle(&mesh, "a3", dir.path());
        for (i, name) in FILES.iter().chain([&MANIFEST]).enumerate() {
            let copy = dir.path().join(format!("gone{i}"));
            testkit::copy_dir(&out, &copy);
            std::fs::remove_file(copy.join(name)).expect("removes");
            let err = check(&copy).0.expect_err("missing file");
            assert_eq!(err.file(), Some(*name), "{err}");
            assert!(err.to_string().contains("missing"), "{err}");

            let copy = dir.path().join(format!("cut{i}"));
            testkit::copy_dir(&out, &copy);
            let bytes = std::fs::read(copy.join(name)).expect("reads");
            std::fs::write(copy.join(name), &bytes[..bytes.len() / 2]).expect("writes");
            if *name != MANIFEST {
                forge_manifest(&copy);
            }
            let err = check(&copy).0.expect_err("truncated file");
            assert_eq!(err.file(), Some(*name), "{err}");
        }

        // Entries claiming huge lengths or counts are refused before anything is allocated.
        for (count, len) in [(1u32, u32::MAX), (u32::MAX, 4)] {
            let copy = dir.path().join(format!("huge{count}"));
            testkit::copy_dir(&out, &copy);
            let mut bytes = LINEAGE_MARK.to_vec();
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            std::fs::write(copy.join(LINEAGE), &bytes).expect("writes");
            forge_manifest(&copy);
            let err = check(&copy).0.expect_err("hostile framing");
            assert!(
                matches!(
                    &err,
                    Error::Check {
                        file: LINEAGE,
                        part: Part::Entry(_),
                        ..
                    }
                ),
                "{err}"
            );
        }

        // A manifest claiming a file larger than allowed is refused before the file is read.
        let copy = dir.path().join("claims");
        testkit::copy_dir(&out, &copy);
        let raw = std::fs::read(copy.join(MANIFEST)).expect("reads");
        let mut manifest: Manifest = serde_json::from_slice(&raw).expect("parses");
        manifest.files[0].size = u64::MAX;
        std::fs::write(copy.join(MANIFEST), manifest.to_bytes()).expect("writes");
        let err = check(&copy).0.expect_err("oversized claim");
        assert_eq!(err.file(), Some(WEIGHTS), "{err}");
    }

    #[test]
    fn outsiders_fail_by_name_and_id() {
        let mesh = testkit::mesh();
        let dir = tempfile::tempdir().expect("tempdir");
        let (outsider_report, stranger, stranger_child, by_validator) = {
            let store = Store::open(&mesh.path).expect("opens");
            // A report by key 9, which no roster lists, on a version of a3's lineage.
            let report = testkit::report(&key(9), 9, mesh.get("a2").id(), 0.9);
            testkit::put_report(&store, &report);
            // A version by key 8, which no roster lists, averaged into a version of hospital 2.
            let (stranger, bytes) = testkit::version(&key(8), 1, vec![], &[1.0; 4]);
            testkit::put(&store, &stranger, &bytes);
            let parents = vec![mesh.get("b2").id(), stranger.id()];
            let (child, bytes) = testkit::version(&key(2), 3, parents, &[2.0; 4]);
            testkit::put(&store, &child, &bytes);
            // A version by validator 4, which may validate but not train.
            let (by_validator, bytes) = testkit::version(&key(4), 1, vec![], &[3.0; 4]);
            testkit::put(&store, &by_validator, &bytes);
            (report.id(), stranger.id(), child.id(), by_validator.id())
        };
        let spec = testkit::spec();
        let layout = spec.layout().expect("a built-in layout");
        let bundle = |id: ContentId, name: &str| {
            let out = dir.path().join(name);
            export(
                &mesh.path,
                Selection::Id(id),
                None,
                Some(&spec),
                Some(&layout),
                &out,
            )
            .expect("exports");
            out
        };

        let err = check(&bundle(mesh.get("a3").id(), "report"))
            .0
            .expect_err("a report by a non-member");
        assert!(
            matches!(&err, Error::Check { file: REPORTS, part: Part::Report(id), .. } if *id == outsider_report),
            "{err}"
        );
        assert!(err.to_string().contains("not a member"), "{err}");

        let err = check(&bundle(stranger_child, "stranger"))
            .0
            .expect_err("a version by a non-member");
        assert!(
            matches!(&err, Error::Check { file: LINEAGE, part: Part::Version(id), .. } if *id == stranger),
            "{err}"
        );
        assert!(err.to_string().contains("not a member"), "{err}");

        let err = check(&bundle(by_validator, "validator"))
            .0
            .expect_err("a version by a validator");
        assert!(
            matches!(&err, Error::Check { file: LINEAGE, part: Part::Version(id), .. } if *id == by_validator),
            "{err}"
        );
        assert!(err.to_string().contains("only as validator"), "{err}");
    }

    #[test]
    fn strays_bad_links_and_extra_roster_signatures_fail_by_name() {
        let mesh = testkit::mesh();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = export_bundle(&mesh, "a3", dir.path());
        let reframe =
            |copy: &Path, file: &'static str, mark: &[u8; 16], edit: &dyn Fn(&mut Vec<Vec<u8>>)| {
                let bytes = std::fs::read(copy.join(file)).expect("reads");
                let mut items: Vec<Vec<u8>> = unframe(file, mark, &bytes, wire::MAX_GOSSIP)
                    .expect("frames")
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect();
                edit(&mut items);
                let bytes = frame(file, mark, items.into_iter()).expect("frames");
                std::fs::write(copy.join(file), bytes).expect("writes");
                forge_manifest(copy);
            };

        // A signed version of the mesh that is not an ancestor of the root.
        let copy = dir.path().join("stray");
        testkit::copy_dir(&out, &copy);
        let e1 = mesh.get("e1");
        reframe(&copy, LINEAGE, LINEAGE_MARK, &|items| {
            items.push(wire::encode(e1.signed()));
        });
        let err = check(&copy).0.expect_err("a stray version");
        assert!(
            matches!(&err, Error::Check { file: LINEAGE, part: Part::Version(id), .. } if *id == e1.id()),
            "{err}"
        );

        // The same version twice.
        let copy = dir.path().join("twice");
        testkit::copy_dir(&out, &copy);
        reframe(&copy, LINEAGE, LINEAGE_MARK, &|items| {
            let again = items[1].clone();
            items.push(again);
        });
        let err = check(&copy).0.expect_err("a version twice");
        assert!(err.to_string().contains("listed twice"), "{err}");

        // The store's roster version 1 with all three signatures it was stored with: one more
        // than counts.
        let copy = dir.path().join("signatures");
        testkit::copy_dir(&out, &copy);
        reframe(&copy, ROSTER, ROSTER_MARK, &|items| {
            items[1] = wire::encode(&testkit::rosters()[1]);
        });
        let err = check(&copy).0.expect_err("an extra signature");
        assert!(
            matches!(
                &err,
                Error::Check {
                    file: ROSTER,
                    part: Part::Roster(1),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("3 signatures of which 2 count"),
            "{err}"
        );

        // A version naming, as its parent, a later round of its own author.
        let backwards = {
            let store = Store::open(&mesh.path).expect("opens");
            let (v, bytes) = testkit::version(&key(1), 2, vec![mesh.get("a3").id()], &[1.0; 4]);
            testkit::put(&store, &v, &bytes);
            v.id()
        };
        let err = check(&export_bundle_id(&mesh, backwards, dir.path()))
            .0
            .expect_err("a parent from the future");
        assert!(
            matches!(&err, Error::Check { file: LINEAGE, part: Part::Version(id), .. } if *id == backwards),
            "{err}"
        );
        assert!(err.to_string().contains("not below"), "{err}");
    }

    #[test]
    fn a_store_without_a_roster_exports_a_bundle_that_does_not_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let (v, bytes) = testkit::version(&key(1), 1, vec![], &[0.5; 4]);
        {
            let store = Store::open(&path).expect("opens");
            testkit::put(&store, &v, &bytes);
        }
        let out = dir.path().join("out");
        let exported = export(&path, Selection::Latest, None, None, None, &out).expect("exports");
        assert_eq!(exported.bundle.roster, None);
        assert!(
            exported.to_text().contains("no roster"),
            "{}",
            exported.to_text()
        );
        let (result, lines) = check(&out);
        let err = result.expect_err("no roster");
        assert!(
            matches!(
                &err,
                Error::Check {
                    file: ROSTER,
                    part: Part::Whole,
                    ..
                }
            ),
            "{err}"
        );
        // Everything before the roster passed and said so.
        assert!(lines.iter().any(|l| l.starts_with("files:")), "{lines:?}");
    }

    #[test]
    fn framing_round_trips_and_refuses_trailing_bytes() {
        let items = vec![vec![1u8, 2, 3], vec![], vec![9; 300]];
        let bytes = frame(LINEAGE, LINEAGE_MARK, items.clone().into_iter()).expect("frames");
        let back = unframe(LINEAGE, LINEAGE_MARK, &bytes, 300).expect("unframes");
        assert_eq!(back, items.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(unframe(LINEAGE, REPORTS_MARK, &bytes, 300).is_err());
        assert!(unframe(LINEAGE, LINEAGE_MARK, &bytes, 299).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(unframe(LINEAGE, LINEAGE_MARK, &longer, 300).is_err());
        assert!(unframe(LINEAGE, LINEAGE_MARK, &bytes[..bytes.len() - 1], 300).is_err());
    }
}
