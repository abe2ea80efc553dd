//! The peer's crash-safe store: every signed item it creates or accepts, and its own progress.
//!
//! One [redb](https://docs.rs/redb) file holds the roster chain, the model versions, their
//! payloads, the validation reports and a small key-value space for the peer's state (round, own
//! latest version, a parameter checkpoint). Every write is one redb transaction committed with
//! [`redb::Durability::Immediate`] and quick repair (two-phase commit plus the allocator state in
//! each commit), so when [`Store::put`] returns the item survives a `kill -9` or a power cut, and
//! reopening after a crash is immediate instead of a walk over every page. A crash mid-write
//! leaves the previous commit intact: a transaction is entirely there or not at all.
//!
//! Signed items are stored as they travelled (the envelope's canonical bytes) under their content
//! id and are verified twice: on the way in (an item whose signature fails is refused) and on the
//! way out (a record altered on disk is an [`Error::Tampered`], never a value).
//! [`Store::verify_all`] checks everything at once, for restarts and fault tests.
//!
//! # Layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"format"` | `medmesh store v1` (refuses other files that happen to be redb) |
//! | `versions` | content id | `wire::encode(Signed<Version>)` |
//! | `newest_round` | author id | newest round of any stored version by that author (for pruning) |
//! | `payloads` | version content id | payload length in bytes |
//! | `payload_chunks` | content id ‖ chunk index (u32 BE) | up to [`CHUNK`] payload bytes |
//! | `reports` | content id | `wire::encode(Signed<Report>)` |
//! | `reports_by_model` | model id ‖ report id | `()` |
//! | `rosters` | roster version | `wire::encode(SignedRoster)` |
//! | `state` | key | bytes |
//!
//! The `state` keys: `checkpoint` (`wire::encode(Checkpoint)`) and `params` (little-endian
//! `f32`s), the round the peer resumes and the parameters it starts from, always written
//! together; and `privacy`, the hospital's DP accountant state (JSON of
//! `medmesh_learning::privacy::AccountantState`), written with them when the node has one and
//! alone when a round has just spent privacy. A store without `privacy` (older, or of a node
//! without DP) reads as no ledger.
//!
//! Payloads are cut into chunks of just under 1 MiB because redb keeps each value in one page
//! of a power-of-two size: a 300 MB payload stored whole would take a 512 MiB page (and one
//! 512 MiB read to look at it). Chunks keep the space overhead near 2 %, let the store learn a
//! payload's length without reading it, and stay far below redb's value limit (3 GiB); payloads
//! themselves are capped at [`wire::MAX_PAYLOAD`].
//!
//! This module must never hand out a signed item it has not just verified, never delete a version
//! record, report or roster (lineage and certification must stay checkable), and never panic on a
//! damaged file (redb asserts on some, e.g. a truncated file; every call catches that and returns
//! [`Error::Corrupt`]). Its calls block (fsync, hashing): call them off the async runtime
//! (`tokio::task::spawn_blocking`). A [`Store`] is `Send + Sync`; writes are serialized by redb.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use medmesh_learning::privacy::{Accountant, AccountantState};
use medmesh_protocol::identity::{self, ContentId, MemberId, Signable, Signed, Verified};
use medmesh_protocol::peer::{Checkpoint, Item};
use medmesh_protocol::roster::{self, Chain, Outcome, SignedRoster};
use medmesh_protocol::update::{self, PayloadDescriptor, Version};
use medmesh_protocol::validation::Report;
use medmesh_protocol::wire;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

/// Marks a redb file as a medmesh store of this layout.
const FORMAT: &[u8] = b"medmesh store v1";
/// Payload bytes per chunk: 1 MiB less room for the page header, the key and neighbouring small
/// entries, so each chunk fits a 1 MiB page instead of spilling into a 2 MiB one.
pub const CHUNK: usize = 1024 * 1024 - 16 * 1024;
/// redb's page cache (reads get 90 %, writes 10 %). redb's default is 1 GiB; a peer also holds
/// its model and training data, and payload reads go through the cache chunk by chunk.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VERSIONS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("versions");
const NEWEST: TableDefinition<[u8; 32], u64> = TableDefinition::new("newest_round");
const PAYLOADS: TableDefinition<[u8; 32], u64> = TableDefinition::new("payloads");
const CHUNKS: TableDefinition<[u8; 36], &[u8]> = TableDefinition::new("payload_chunks");
const REPORTS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("reports");
const REPORTS_BY_MODEL: TableDefinition<[u8; 64], ()> = TableDefinition::new("reports_by_model");
const ROSTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("rosters");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// State keys of the peer's checkpoint and of the parameters its round starts from.
const CHECKPOINT_KEY: &str = "checkpoint";
const PARAMS_KEY: &str = "params";
/// State key of the hospital's privacy ledger.
const PRIVACY_KEY: &str = "privacy";

/// What went wrong with the store; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is damaged (truncated, bad checksums) or is not a medmesh store (garbage, another
    /// program's redb file, another layout).
    #[error("store {path} is corrupt or not a medmesh store: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb or the store found.
        detail: String,
    },
    /// Another process (or another [`Store`] in this one) has the file open.
    #[error("store {path} is already open in another process or handle")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing the file failed: permissions, a missing folder, a full disk. A failed
    /// write leaves the previous commit intact.
    #[error("store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Any other database failure.
    #[error("store {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A stored record no longer verifies (it does not decode, its signature fails, it sits under
    /// another content id, its payload does not hash to its digest): the file was altered outside
    /// the store. [`Store::verify_all`] lists every such record.
    #[error("store {path}: stored {record} fails verification: {reason}")]
    Tampered {
        /// The file.
        path: PathBuf,
        /// The record.
        record: Record,
        /// Why it fails.
        reason: String,
    },
    /// An item offered for storage whose signature does not verify.
    #[error("store {path}: refusing an unverifiable {kind}: {source}")]
    Unverified {
        /// The file.
        path: PathBuf,
        /// `version` or `report`.
        kind: &'static str,
        /// Why it fails.
        source: identity::Error,
    },
    /// A payload whose length or digest does not match its stored version.
    #[error("store {path}: payload of version {id} does not match the version: {source}")]
    PayloadMismatch {
        /// The file.
        path: PathBuf,
        /// The version.
        id: ContentId,
        /// Length or digest mismatch (boxed: it is the largest error of this enum).
        source: Box<update::Error>,
    },
    /// A payload larger than [`wire::MAX_PAYLOAD`].
    #[error(
        "store {path}: payload of version {id} has {len} bytes, more than the limit of {} bytes",
        wire::MAX_PAYLOAD
    )]
    PayloadTooLarge {
        /// The file.
        path: PathBuf,
        /// The version.
        id: ContentId,
        /// Its length.
        len: usize,
    },
    /// A privacy ledger that does not check: offered for storage, or read back (the file was
    /// altered, or written by a newer program). Never read as "nothing spent".
    #[error("store {path}: the privacy ledger {detail}")]
    Privacy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A roster that does not extend the stored chain (fork, rollback, gap, missing signatures,
    /// another mesh).
    #[error("store {path}: roster version {version} does not extend the stored chain: {source}")]
    Roster {
        /// The file.
        path: PathBuf,
        /// The version offered.
        version: u64,
        /// The chain's verdict.
        source: roster::Error,
    },
}

/// A stored record, as named in errors and audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Record {
    /// A model version.
    Version(ContentId),
    /// The payload of a model version.
    Payload(ContentId),
    /// A validation report.
    Report(ContentId),
    /// A roster version.
    Roster(u64),
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Version(id) => write!(f, "version {id}"),
            Record::Payload(id) => write!(f, "payload of version {id}"),
            Record::Report(id) => write!(f, "report {id}"),
            Record::Roster(version) => write!(f, "roster version {version}"),
        }
    }
}

/// A record that failed [`Store::verify_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The record.
    pub record: Record,
    /// Why it fails.
    pub reason: String,
}

/// The result of [`Store::verify_all`]: how many records of each kind were checked, and which
/// failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Version records checked.
    pub versions: usize,
    /// Payloads checked (read whole, and hashed when their version is stored).
    pub payloads: usize,
    /// Payloads whose version is not stored, so whose digest could not be checked.
    pub orphan_payloads: usize,
    /// Reports checked (and their index entries).
    pub reports: usize,
    /// Roster versions checked by replaying the chain from genesis.
    pub rosters: usize,
    /// Every record that fails, in table order.
    pub faults: Vec<Fault>,
}

impl Audit {
    /// Whether every record verified.
    pub fn is_clean(&self) -> bool {
        self.faults.is_empty()
    }

    /// Whether this record failed.
    pub fn failed(&self, record: &Record) -> bool {
        self.faults.iter().any(|f| &f.record == record)
    }
}

/// The peer's store; see the module documentation.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Maps redb's errors to the store's, attaching the file.
trait At<T> {
    fn at(self, path: &Path) -> Result<T, Error>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, Error> {
        self.map_err(|e| classify(path, e.into()))
    }
}

fn classify(path: &Path, error: redb::Error) -> Error {
    let path = path.to_owned();
    match error {
        redb::Error::Corrupted(detail) => Error::Corrupt { path, detail },
        redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => Error::Corrupt {
            path,
            detail: error.to_string(),
        },
        redb::Error::DatabaseAlreadyOpen => Error::Locked { path },
        // redb reads its header and regions with exact-length reads: a short file is truncated.
        redb::Error::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Corrupt {
                path,
                detail: format!("file is truncated ({source})"),
            }
        }
        // redb's only use of this kind: the file does not start with redb's magic number.
        redb::Error::Io(source) if source.kind() == std::io::ErrorKind::InvalidData => {
            Error::Corrupt {
                path,
                detail: "not a redb database (no redb magic number)".into(),
            }
        }
        redb::Error::Io(source) => Error::Io { path, source },
        other => Error::Database {
            path,
            source: Box::new(other),
        },
    }
}

/// Runs a database operation, turning a panic inside redb into [`Error::Corrupt`]. redb 2.6 (and
/// 3.x) asserts on some damaged files instead of returning an error, e.g. a file shorter than its
/// header says (`storage.raw_file_len()? >= header.layout().len()`). The panic message still
/// reaches stderr through the panic hook; the caller gets an error naming the file.
fn guarded<T>(path: &Path, operation: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(operation)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Error::Corrupt {
                path: path.to_owned(),
                detail: format!("the database engine failed on this file: {message}"),
            })
        }
    }
}

fn chunk_key(id: &ContentId, index: u32) -> [u8; 36] {
    let mut key = [0u8; 36];
    key[..32].copy_from_slice(id.as_bytes());
    key[32..].copy_from_slice(&index.to_be_bytes());
    key
}

fn report_key(model: &ContentId, report: &ContentId) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(model.as_bytes());
    key[32..].copy_from_slice(report.as_bytes());
    key
}

/// Length and digest of `bytes` against a version's payload descriptor.
fn check_payload(descriptor: &PayloadDescriptor, bytes: &[u8]) -> Result<(), update::Error> {
    if bytes.len() as u64 != descriptor.len {
        return Err(update::Error::PayloadLength {
            expected: descriptor.len,
            found: bytes.len() as u64,
        });
    }
    if update::payload_digest(bytes) != descriptor.digest {
        return Err(update::Error::PayloadDigest);
    }
    Ok(())
}

/// Decodes and verifies stored envelopes in one batch and checks each sits under its content id.
fn verify_rows<T: Signable>(
    rows: Vec<(ContentId, Result<Signed<T>, String>)>,
) -> Vec<(ContentId, Result<Verified<T>, String>)> {
    let mut out = Vec::with_capacity(rows.len());
    let (mut ids, mut envelopes) = (Vec::new(), Vec::new());
    for (id, row) in rows {
        match row {
            Ok(signed) => {
                ids.push(id);
                envelopes.push(signed);
            }
            Err(reason) => out.push((id, Err(reason))),
        }
    }
    let verified = identity::verify_batch(envelopes);
    out.extend(ids.into_iter().zip(verified).map(|(id, result)| {
        let result = result.map_err(|e| e.to_string()).and_then(|v| {
            if v.id() == id {
                Ok(v)
            } else {
                Err(format!("its content id is {}", v.id()))
            }
        });
        (id, result)
    }));
    out
}

/// Decodes one stored envelope.
fn decode_row<T: Signable>(bytes: &[u8]) -> Result<Signed<T>, String> {
    wire::decode(bytes).map_err(|e| e.to_string())
}

/// Decodes and verifies one stored envelope under its content id.
fn verify_row<T: Signable>(id: ContentId, bytes: &[u8]) -> Result<Verified<T>, String> {
    let verified = decode_row::<T>(bytes)?
        .verify()
        .map_err(|e| e.to_string())?;
    if verified.id() != id {
        return Err(format!("its content id is {}", verified.id()));
    }
    Ok(verified)
}

/// Follows the chain from genesis, naming the first version that fails.
fn replay(history: Vec<SignedRoster>) -> Result<Chain, (u64, roster::Error)> {
    let mut versions = history.into_iter();
    let genesis = versions.next().ok_or((0, roster::Error::EmptyHistory))?;
    let mut chain = Chain::from_genesis(genesis).map_err(|e| (0, e))?;
    for update in versions {
        let version = update.roster().version;
        match chain.apply(update) {
            Ok(Outcome::Advanced { .. }) => {}
            Ok(Outcome::Duplicate) => {
                return Err((version, roster::Error::Invalid("a version is stored twice")));
            }
            Err(e) => return Err((version, e)),
        }
    }
    Ok(chain)
}

impl Store {
    /// Opens the store at `path`, creating the file if it does not exist (its folder must). An
    /// unclean shutdown is recovered from here. A damaged file, or a file that is not a medmesh
    /// store, is [`Error::Corrupt`]; a file another process has open is [`Error::Locked`].
    pub fn open(path: &Path) -> Result<Store, Error> {
        Self::open_with(path, |builder| builder.create(path))
    }

    /// Opens a store kept by `backend` instead of a file of its own (`path` names it in errors):
    /// for storage a file cannot model, and for tests that inject faults (a full or slow disk).
    pub fn open_with_backend(
        path: &Path,
        backend: impl redb::StorageBackend,
    ) -> Result<Store, Error> {
        Self::open_with(path, |builder| builder.create_with_backend(backend))
    }

    /// Opens the store named `path` through `create` (a file, or a storage backend).
    fn open_with(
        path: &Path,
        create: impl FnOnce(&redb::Builder) -> Result<Database, redb::DatabaseError>,
    ) -> Result<Store, Error> {
        guarded(path, || {
            let mut builder = Database::builder();
            builder.set_cache_size(CACHE_BYTES);
            let db = create(&builder).at(path)?;
            let store = Store {
                db,
                path: path.to_owned(),
            };
            store.init()?;
            Ok(store)
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn tampered(&self, record: Record, reason: impl Into<String>) -> Error {
        Error::Tampered {
            path: self.path.clone(),
            record,
            reason: reason.into(),
        }
    }

    /// Checks the format mark (writing it into a new file) and creates every table.
    fn init(&self) -> Result<(), Error> {
        let txn = self.begin_write()?;
        let existing = txn.list_tables().at(&self.path)?.count()
            + txn.list_multimap_tables().at(&self.path)?.count();
        {
            let mut meta = txn.open_table(META).at(&self.path)?;
            let format = meta
                .get("format")
                .at(&self.path)?
                .map(|g| g.value().to_vec());
            match format {
                Some(format) if format == FORMAT => {}
                Some(format) => {
                    return Err(self.corrupt(format!(
                        "format mark {:?}, expected {:?}",
                        String::from_utf8_lossy(&format),
                        String::from_utf8_lossy(FORMAT)
                    )));
                }
                None if existing > 0 => {
                    return Err(self.corrupt("a redb database of another program"));
                }
                None => {
                    meta.insert("format", FORMAT).at(&self.path)?;
                }
            }
        }
        txn.open_table(VERSIONS).at(&self.path)?;
        txn.open_table(NEWEST).at(&self.path)?;
        txn.open_table(PAYLOADS).at(&self.path)?;
        txn.open_table(CHUNKS).at(&self.path)?;
        txn.open_table(REPORTS).at(&self.path)?;
        txn.open_table(REPORTS_BY_MODEL).at(&self.path)?;
        txn.open_table(ROSTERS).at(&self.path)?;
        txn.open_table(STATE).at(&self.path)?;
        txn.commit().at(&self.path)
    }

    /// A write transaction that is durable on commit and recovers instantly after a crash.
    fn begin_write(&self) -> Result<WriteTransaction, Error> {
        let mut txn = self.db.begin_write().at(&self.path)?;
        txn.set_durability(redb::Durability::Immediate);
        txn.set_quick_repair(true);
        Ok(txn)
    }

    /// Stores one item; it is on disk when this returns. See [`Store::put_all`].
    pub fn put(&self, item: &Item) -> Result<(), Error> {
        self.put_all(std::slice::from_ref(item))
    }

    /// Stores several items in one transaction: all of them are on disk when this returns, or,
    /// on an error, none. Storing an item that is already there changes nothing.
    ///
    /// Versions and reports must carry a valid signature ([`Error::Unverified`]). A payload is
    /// checked against its version when the version is stored ([`Error::PayloadMismatch`]); a
    /// payload may arrive first, and is then checked when its version arrives (and dropped if it
    /// does not match: its content id binds it to that version, so it can only be garbage). A
    /// roster must extend the stored chain by one version, or repeat one ([`Error::Roster`]), so
    /// [`Store::roster_history`] always rebuilds a chain.
    pub fn put_all(&self, items: &[Item]) -> Result<(), Error> {
        self.commit(items, None, None)
    }

    /// Stores `items` (as [`Store::put_all`]) and, if given, the peer's checkpoint with the
    /// parameters its round starts from (as [`Store::set_checkpoint`]) and the hospital's
    /// privacy ledger (replacing the stored one, see [`Store::privacy`]), in one transaction:
    /// all of it is on disk when this returns, or, on an error, none of it. A writer batches
    /// what queued up while the disk was busy through this.
    pub fn commit(
        &self,
        items: &[Item],
        checkpoint: Option<(&Checkpoint, &[f32])>,
        privacy: Option<&AccountantState>,
    ) -> Result<(), Error> {
        guarded(&self.path, || {
            if items.is_empty() && checkpoint.is_none() && privacy.is_none() {
                return Ok(());
            }
            // A ledger that would not restore is refused before anything is written.
            let privacy = privacy
                .map(|state| {
                    Accountant::restore(state)
                        .map_err(|e| e.to_string())
                        .and_then(|_| serde_json::to_vec(state).map_err(|e| e.to_string()))
                        .map_err(|e| Error::Privacy {
                            path: self.path.clone(),
                            detail: format!("offered for storage does not check: {e}"),
                        })
                })
                .transpose()?;
            // Signatures are checked before the write lock is taken.
            let mut versions = Vec::new();
            let mut reports = Vec::new();
            for item in items {
                match item {
                    Item::Version(signed) => {
                        versions.push(signed.clone().verify().map_err(|source| {
                            Error::Unverified {
                                path: self.path.clone(),
                                kind: "version",
                                source,
                            }
                        })?)
                    }
                    Item::Report(signed) => {
                        reports.push(signed.clone().verify().map_err(|source| {
                            Error::Unverified {
                                path: self.path.clone(),
                                kind: "report",
                                source,
                            }
                        })?)
                    }
                    Item::Payload { id, bytes } if bytes.len() > wire::MAX_PAYLOAD => {
                        return Err(Error::PayloadTooLarge {
                            path: self.path.clone(),
                            id: *id,
                            len: bytes.len(),
                        });
                    }
                    Item::Payload { .. } | Item::Roster(_) => {}
                }
            }
            let (mut versions, mut reports) = (versions.into_iter(), reports.into_iter());
            let txn = self.begin_write()?;
            for item in items {
                match item {
                    Item::Version(_) => {
                        if let Some(version) = versions.next() {
                            self.write_version(&txn, &version)?;
                        }
                    }
                    Item::Report(_) => {
                        if let Some(report) = reports.next() {
                            self.write_report(&txn, &report)?;
                        }
                    }
                    Item::Payload { id, bytes } => self.write_payload(&txn, id, bytes)?,
                    Item::Roster(signed) => self.write_roster(&txn, signed)?,
                }
            }
            if let Some((checkpoint, params)) = checkpoint {
                let mut table = txn.open_table(STATE).at(&self.path)?;
                table
                    .insert(CHECKPOINT_KEY, wire::encode(checkpoint).as_slice())
                    .at(&self.path)?;
                let mut bytes = Vec::new();
                update::encode_f32(params, &mut bytes);
                table.insert(PARAMS_KEY, bytes.as_slice()).at(&self.path)?;
            }
            if let Some(privacy) = privacy {
                txn.open_table(STATE)
                    .at(&self.path)?
                    .insert(PRIVACY_KEY, privacy.as_slice())
                    .at(&self.path)?;
            }
            txn.commit().at(&self.path)
        })
    }

    fn write_version(
        &self,
        txn: &WriteTransaction,
        version: &Verified<Version>,
    ) -> Result<(), Error> {
        let id = version.id();
        let mut versions = txn.open_table(VERSIONS).at(&self.path)?;
        if versions.get(id.0).at(&self.path)?.is_some() {
            return Ok(());
        }
        versions
            .insert(id.0, wire::encode(version.signed()).as_slice())
            .at(&self.path)?;
        let mut newest = txn.open_table(NEWEST).at(&self.path)?;
        let author = version.author.0;
        let seen = newest.get(author).at(&self.path)?.map(|g| g.value());
        if seen.is_none_or(|round| round < version.round) {
            newest.insert(author, version.round).at(&self.path)?;
        }
        // A payload that came first is checked now.
        let mut index = txn.open_table(PAYLOADS).at(&self.path)?;
        let len = index.get(id.0).at(&self.path)?.map(|g| g.value());
        if let Some(len) = len {
            let mut chunks = txn.open_table(CHUNKS).at(&self.path)?;
            let good = self
                .assemble(&chunks, &id, len)
                .is_ok_and(|bytes| check_payload(&version.payload, &bytes).is_ok());
            if !good {
                index.remove(id.0).at(&self.path)?;
                Self::remove_chunks(&mut chunks, &id, len).at(&self.path)?;
            }
        }
        Ok(())
    }

    fn write_payload(
        &self,
        txn: &WriteTransaction,
        id: &ContentId,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let mut index = txn.open_table(PAYLOADS).at(&self.path)?;
        if index.get(id.0).at(&self.path)?.is_some() {
            return Ok(());
        }
        let versions = txn.open_table(VERSIONS).at(&self.path)?;
        if let Some(raw) = versions.get(id.0).at(&self.path)? {
            let version = verify_row::<Version>(*id, raw.value())
                .map_err(|reason| self.tampered(Record::Version(*id), reason))?;
            check_payload(&version.payload, bytes).map_err(|source| Error::PayloadMismatch {
                path: self.path.clone(),
                id: *id,
                source: Box::new(source),
            })?;
        }
        let mut chunks = txn.open_table(CHUNKS).at(&self.path)?;
        for (index, chunk) in (0u32..).zip(bytes.chunks(CHUNK)) {
            chunks.insert(chunk_key(id, index), chunk).at(&self.path)?;
        }
        index.insert(id.0, bytes.len() as u64).at(&self.path)?;
        Ok(())
    }

    fn write_report(&self, txn: &WriteTransaction, report: &Verified<Report>) -> Result<(), Error> {
        let id = report.id();
        let mut reports = txn.open_table(REPORTS).at(&self.path)?;
        if reports.get(id.0).at(&self.path)?.is_some() {
            return Ok(());
        }
        reports
            .insert(id.0, wire::encode(report.signed()).as_slice())
            .at(&self.path)?;
        txn.open_table(REPORTS_BY_MODEL)
            .at(&self.path)?
            .insert(report_key(&report.model, &id), ())
            .at(&self.path)?;
        Ok(())
    }

    /// Replays the stored chain (a few signatures per version; rosters change rarely) and offers
    /// the new version to it, so only a valid extension is ever stored.
    fn write_roster(&self, txn: &WriteTransaction, signed: &SignedRoster) -> Result<(), Error> {
        let version = signed.roster().version;
        let refused = |source| Error::Roster {
            path: self.path.clone(),
            version,
            source,
        };
        let mut rosters = txn.open_table(ROSTERS).at(&self.path)?;
        let history = self.load_history(&rosters)?;
        let fresh = if history.is_empty() {
            Chain::from_genesis(signed.clone()).map_err(refused)?;
            true
        } else {
            let mut chain = replay(history)
                .map_err(|(v, e)| self.tampered(Record::Roster(v), e.to_string()))?;
            match chain.apply(signed.clone()).map_err(refused)? {
                Outcome::Advanced { .. } => true,
                Outcome::Duplicate => false,
            }
        };
        if fresh {
            rosters
                .insert(version, wire::encode(signed).as_slice())
                .at(&self.path)?;
        }
        Ok(())
    }

    /// The stored rosters in version order; each must sit under its version, from 0 without gaps.
    fn load_history(
        &self,
        table: &impl ReadableTable<u64, &'static [u8]>,
    ) -> Result<Vec<SignedRoster>, Error> {
        let mut history = Vec::new();
        for row in table.iter().at(&self.path)? {
            let (key, value) = row.at(&self.path)?;
            let key = key.value();
            let signed: SignedRoster = wire::decode(value.value())
                .map_err(|e| self.tampered(Record::Roster(key), e.to_string()))?;
            if key != history.len() as u64 || signed.roster().version != key {
                return Err(self.tampered(
                    Record::Roster(key),
                    format!(
                        "holds version {} at position {}",
                        signed.roster().version,
                        history.len()
                    ),
                ));
            }
            history.push(signed);
        }
        Ok(history)
    }

    /// Reads a payload's chunks into one buffer (the only copy), checking their number and sizes.
    fn assemble(
        &self,
        chunks: &impl ReadableTable<[u8; 36], &'static [u8]>,
        id: &ContentId,
        len: u64,
    ) -> Result<Bytes, Error> {
        let bad = |reason: String| self.tampered(Record::Payload(*id), reason);
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= wire::MAX_PAYLOAD)
            .ok_or_else(|| bad(format!("recorded length {len} exceeds the payload limit")))?;
        let mut out = BytesMut::with_capacity(len);
        let rows = chunks
            .range(chunk_key(id, 0)..=chunk_key(id, u32::MAX))
            .at(&self.path)?;
        for (expected, row) in (0u32..).zip(rows) {
            let (key, value) = row.at(&self.path)?;
            let index = key.value()[32..]
                .try_into()
                .map(u32::from_be_bytes)
                .unwrap_or(u32::MAX);
            let chunk = value.value();
            let room = len - out.len();
            if index != expected || chunk.is_empty() || chunk.len() > CHUNK.min(room) {
                return Err(bad(format!(
                    "chunk {index} of {} bytes does not fit after {} of {len} bytes",
                    chunk.len(),
                    out.len()
                )));
            }
            // A short chunk may only be the last one.
            if chunk.len() < CHUNK && chunk.len() != room {
                return Err(bad(format!("short chunk {index} in the middle")));
            }
            out.extend_from_slice(chunk);
        }
        if out.len() != len {
            return Err(bad(format!("holds {} of {len} bytes", out.len())));
        }
        Ok(out.freeze())
    }

    fn remove_chunks(
        chunks: &mut redb::Table<'_, [u8; 36], &'static [u8]>,
        id: &ContentId,
        len: u64,
    ) -> Result<(), redb::StorageError> {
        let count = len.div_ceil(CHUNK as u64);
        for index in 0..u32::try_from(count).unwrap_or(u32::MAX) {
            chunks.remove(chunk_key(id, index))?;
        }
        Ok(())
    }

    /// The version with this content id, its stored signature verified again; `None` if it is not
    /// stored. A stored record that fails is [`Error::Tampered`].
    pub fn version(&self, id: &ContentId) -> Result<Option<Verified<Version>>, Error> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().at(&self.path)?;
            let table = txn.open_table(VERSIONS).at(&self.path)?;
            let Some(raw) = table.get(id.0).at(&self.path)? else {
                return Ok(None);
            };
            verify_row(*id, raw.value())
                .map(Some)
                .map_err(|reason| self.tampered(Record::Version(*id), reason))
        })
    }

    /// Every stored version, verified (in one ed25519 batch), in content-id order. Holds them all
    /// in memory: about 1 KB each (more with many parents), so a mesh of 20 hospitals over 1000 rounds is ~20 MB and a
    /// second of verification. The first record that fails makes the call fail with
    /// [`Error::Tampered`]; [`Store::verify_all`] lists them all.
    pub fn versions(&self) -> Result<Vec<Verified<Version>>, Error> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().at(&self.path)?;
            let table = txn.open_table(VERSIONS).at(&self.path)?;
            let mut rows = Vec::new();
            for row in table.iter().at(&self.path)? {
                let (key, value) = row.at(&self.path)?;
                rows.push((ContentId(key.value()), decode_row::<Version>(value.value())));
            }
            verify_rows(rows)
                .into_iter()
                .map(|(id, r)| r.map_err(|reason| self.tampered(Record::Version(id), reason)))
                .collect()
        })
    }

    /// The payload of the version with this content id, or `None`. When the version is stored
    /// the bytes are checked against its digest on every read (BLAKE3, ~1 GB/s), so nothing
    /// altered on disk is served; a payload whose version has not arrived is returned unchecked.
    /// The bytes are copied once out of the database into the returned buffer.
    pub fn payload(&self, id: &ContentId) -> Result<Option<Bytes>, Error> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().at(&self.path)?;
            let index = txn.open_table(PAYLOADS).at(&self.path)?;
            let Some(len) = index.get(id.0).at(&self.path)?.map(|g| g.value()) else {
                return Ok(None);
            };
            let chunks = txn.open_table(CHUNKS).at(&self.path)?;
            let bytes = self.assemble(&chunks, id, len)?;
            let versions = txn.open_table(VERSIONS).at(&self.path)?;
            if let Some(raw) = versions.get(id.0).at(&self.path)? {
                let version = verify_row::<Version>(*id, raw.value())
                    .map_err(|reason| self.tampered(Record::Version(*id), reason))?;
                check_payload(&version.payload, &bytes)
                    .map_err(|e| self.tampered(Record::Payload(*id), e.to_string()))?;
            }
            Ok(Some(bytes))
        })
    }

    /// The stored reports on `model`, or every stored report when `None`, verified, in
    /// content-id order (for a model: in report-id order). The first record that fails makes the
    /// call fail with [`Error::Tampered`].
    pub fn reports(&self, model: Option<&ContentId>) -> Result<Vec<Verified<Report>>, Error> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().at(&self.path)?;
            let reports = txn.open_table(REPORTS).at(&self.path)?;
            let mut rows = Vec::new();
            match model {
                Some(model) => {
                    let index = txn.open_table(REPORTS_BY_MODEL).at(&self.path)?;
                    let mut high = [0xFF; 64];
                    high[..32].copy_from_slice(model.as_bytes());
                    for row in index
                        .range(report_key(model, &ContentId([0; 32]))..=high)
                        .at(&self.path)?
                    {
                        let (key, _) = row.at(&self.path)?;
                        let mut id = [0u8; 32];
                        id.copy_from_slice(&key.value()[32..]);
                        let id = ContentId(id);
                        let raw = reports.get(id.0).at(&self.path)?.ok_or_else(|| {
                            self.tampered(Record::Report(id), "indexed but missing")
                        })?;
                        rows.push((id, decode_row::<Report>(raw.value())));
                    }
                }
                None => {
                    for row in reports.iter().at(&self.path)? {
                        let (key, value) = row.at(&self.path)?;
                        rows.push((ContentId(key.value()), decode_row::<Report>(value.value())));
                    }
                }
            }
            verify_rows(rows)
                .into_iter()
                .map(|(id, r)| {
                    let report = r.map_err(|reason| self.tampered(Record::Report(id), reason))?;
                    match model {
                        Some(model) if report.model != *model => Err(self.tampered(
                            Record::Report(id),
                            format!("indexed under model {model} but is about {}", report.model),
                        )),
                        _ => Ok(report),
                    }
                })
                .collect()
        })
    }

    /// The stored roster chain, genesis first, as stored (not verified here:
    /// [`Chain::from_history`] checks every signature while it rebuilds the chain).
    pub fn roster_history(&self) -> Result<Vec<SignedRoster>, Error> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().at(&self.path)?;
            let table = txn.open_table(ROSTERS).at(&self.path)?;
            self.load_history(&table)
        })
    }

    /// Sets a small piece of the peer's own state (round, own latest version id, a parameter
    /// checkpoint); durable when it returns. Values are stored whole: keep big blobs small or
    /// store them as payloads.
    pub fn set_state(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        guarded(&self.path, || {
            let txn = self.begin_write()?;
            txn.open_table(STATE)
                .at(&self.path)?
                .insert(key, value)
                .at(&self.path)?;
            txn.commit().at(&self.path)
        })
    }

    /// Sets the peer's checkpoint and the parameters the round it names starts from, in one
    /// transaction: a crash leaves the old pair or the new one, never a checkpoint with another
    /// round's parameters.
    pub fn set_checkpoint(&self, checkpoint: &Checkpoint, params: &[f32]) -> Result<(), Error> {
        self.commit(&[], Some((checkpoint, params)), None)
    }

    /// The hospital's privacy ledger as [`Store::commit`] wrote it last, or `None` if none was
    /// ever written. One that does not decode or check is an [`Error::Privacy`]: a damaged
    /// ledger must stop the node, not restart its ε from zero.
    pub fn privacy(&self) -> Result<Option<AccountantState>, Error> {
        let Some(bytes) = self.state(PRIVACY_KEY)? else {
            return Ok(None);
        };
        let damaged = |detail: String| Error::Privacy {
            path: self.path.clone(),
            detail: format!("stored does not check: {detail}"),
        };
        let state: AccountantState =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        Accountant::restore(&state).map_err(|e| damaged(e.to_string()))?;
        Ok(Some(state))
    }

    /// The pair [`Store::set_checkpoint`] wrote last, or `None` if there is none (or it does not
    /// decode: the peer then starts from the shared initialization).
    pub fn checkpoint(&self) -> Result<Option<(Checkpoint, Vec<f32>)>, Error> {
        let (Some(checkpoint), Some(params)) =
            (self.state(CHECKPOINT_KEY)?, self.state(PARAMS_KEY)?)
        else {
            return Ok(None);
        };
        let Ok(checkpoint) = wire::decode::<Checkpoint>(&checkpoint) else {
            return Ok(None);
        };
        let mut values = Vec::new();
        if update::decode_f32(&params, &mut values).is_err() {
            return Ok(None);
        }
        Ok(Some((checkpoint, values)))
    }

    /// A piece of state set by [`Store::set_state`], or `None`.
    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().at(&self.path)?;
            let table = txn.open_table(STATE).at(&self.path)?;
            Ok(table.get(key).at(&self.path)?.map(|g| g.value().to_vec()))
        })
    }

    /// Retention: deletes the payloads of versions more than `keep_rounds` rounds behind the
    /// newest round stored for their author (`keep_rounds = 0` keeps only each author's newest),
    /// except the versions in `pinned` (the current model, certified models). Payloads whose
    /// version is not stored are kept (their round is unknown). Never deletes version records,
    /// reports or rosters: lineage and certification stay verifiable. Returns the payload bytes
    /// freed; the pages are reused by later writes (the file does not shrink, see
    /// [`Store::compact`]).
    pub fn prune_payloads(&self, keep_rounds: u64, pinned: &[ContentId]) -> Result<u64, Error> {
        guarded(&self.path, || {
            let pinned: HashSet<&ContentId> = pinned.iter().collect();
            let txn = self.begin_write()?;
            let mut freed = 0u64;
            {
                let newest: HashMap<[u8; 32], u64> = {
                    let table = txn.open_table(NEWEST).at(&self.path)?;
                    let mut map = HashMap::new();
                    for row in table.iter().at(&self.path)? {
                        let (author, round) = row.at(&self.path)?;
                        map.insert(author.value(), round.value());
                    }
                    map
                };
                let mut index = txn.open_table(PAYLOADS).at(&self.path)?;
                let versions = txn.open_table(VERSIONS).at(&self.path)?;
                let mut doomed = Vec::new();
                for row in index.iter().at(&self.path)? {
                    let (key, len) = row.at(&self.path)?;
                    let id = ContentId(key.value());
                    if pinned.contains(&id) {
                        continue;
                    }
                    let Some(raw) = versions.get(id.0).at(&self.path)? else {
                        continue;
                    };
                    // Only the round and author are needed to decide; a record that does not decode
                    // is kept for `verify_all` to report.
                    let Ok(version) = decode_row::<Version>(raw.value())
                        .and_then(|s| wire::decode::<Version>(s.body()).map_err(|e| e.to_string()))
                    else {
                        continue;
                    };
                    let newest = newest.get(&version.author.0).copied().unwrap_or(0);
                    if version.round.saturating_add(keep_rounds) < newest {
                        doomed.push((id, len.value()));
                    }
                }
                let mut chunks = txn.open_table(CHUNKS).at(&self.path)?;
                for (id, len) in doomed {
                    index.remove(id.0).at(&self.path)?;
                    Self::remove_chunks(&mut chunks, &id, len).at(&self.path)?;
                    freed += len;
                }
            }
            txn.commit().at(&self.path)?;
            Ok(freed)
        })
    }

    /// Shrinks the file after pruning by moving pages down and truncating it. Slow (it rewrites
    /// much of the file); run it rarely, e.g. at start-up. Returns whether anything moved.
    pub fn compact(&mut self) -> Result<bool, Error> {
        let Store { db, path } = self;
        guarded(path, || db.compact().at(path))
    }

    /// Re-verifies every stored record: each version and report (decodes, signature, content id),
    /// the report index both ways, each payload (chunks complete, length and digest against its
    /// version when stored) and the roster chain replayed from genesis (a version after a broken
    /// one is reported too: it cannot be checked). Returns the counts and every failure; an
    /// error is returned only when the database itself cannot be read. Reads every payload, one
    /// at a time.
    pub fn verify_all(&self) -> Result<Audit, Error> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().at(&self.path)?;
            let mut audit = Audit::default();
            let fault = |audit: &mut Audit, record, reason: String| {
                audit.faults.push(Fault { record, reason });
            };

            let versions = txn.open_table(VERSIONS).at(&self.path)?;
            let mut rows = Vec::new();
            for row in versions.iter().at(&self.path)? {
                let (key, value) = row.at(&self.path)?;
                rows.push((ContentId(key.value()), decode_row::<Version>(value.value())));
            }
            audit.versions = rows.len();
            let mut descriptors = HashMap::new();
            for (id, result) in verify_rows(rows) {
                match result {
                    Ok(version) => {
                        descriptors.insert(id, version.payload);
                    }
                    Err(reason) => fault(&mut audit, Record::Version(id), reason),
                }
            }

            let index = txn.open_table(PAYLOADS).at(&self.path)?;
            let chunks = txn.open_table(CHUNKS).at(&self.path)?;
            for row in index.iter().at(&self.path)? {
                let (key, len) = row.at(&self.path)?;
                let id = ContentId(key.value());
                audit.payloads += 1;
                let bytes = match self.assemble(&chunks, &id, len.value()) {
                    Ok(bytes) => bytes,
                    Err(Error::Tampered { reason, .. }) => {
                        fault(&mut audit, Record::Payload(id), reason);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match descriptors.get(&id) {
                    Some(descriptor) => {
                        if let Err(e) = check_payload(descriptor, &bytes) {
                            fault(&mut audit, Record::Payload(id), e.to_string());
                        }
                    }
                    // A version that failed is already reported; its payload cannot be judged.
                    None if versions.get(id.0).at(&self.path)?.is_some() => {}
                    None => audit.orphan_payloads += 1,
                }
            }

            let reports = txn.open_table(REPORTS).at(&self.path)?;
            let by_model = txn.open_table(REPORTS_BY_MODEL).at(&self.path)?;
            let mut rows = Vec::new();
            for row in reports.iter().at(&self.path)? {
                let (key, value) = row.at(&self.path)?;
                rows.push((ContentId(key.value()), decode_row::<Report>(value.value())));
            }
            audit.reports = rows.len();
            let mut models = HashMap::new();
            for (id, result) in verify_rows(rows) {
                match result {
                    Ok(report) => {
                        if by_model
                            .get(report_key(&report.model, &id))
                            .at(&self.path)?
                            .is_none()
                        {
                            fault(
                                &mut audit,
                                Record::Report(id),
                                "missing from the model index".into(),
                            );
                        }
                        models.insert(id, report.model);
                    }
                    Err(reason) => fault(&mut audit, Record::Report(id), reason),
                }
            }
            for row in by_model.iter().at(&self.path)? {
                let (key, _) = row.at(&self.path)?;
                let key = key.value();
                let (mut model, mut id) = ([0u8; 32], [0u8; 32]);
                model.copy_from_slice(&key[..32]);
                id.copy_from_slice(&key[32..]);
                let (model, id) = (ContentId(model), ContentId(id));
                let stored = reports.get(id.0).at(&self.path)?.is_some();
                match models.get(&id) {
                    Some(m) if *m == model => {}
                    Some(m) => fault(
                        &mut audit,
                        Record::Report(id),
                        format!("indexed under model {model} but is about {m}"),
                    ),
                    // A stored report that failed is already reported.
                    None if stored => {}
                    None => fault(&mut audit, Record::Report(id), "indexed but missing".into()),
                }
            }

            let rosters = txn.open_table(ROSTERS).at(&self.path)?;
            audit.rosters = usize::try_from(rosters.len().at(&self.path)?).unwrap_or(usize::MAX);
            match self.load_history(&rosters) {
                Ok(history) if history.is_empty() => {}
                Ok(history) => {
                    let total = history.len() as u64;
                    if let Err((version, e)) = replay(history) {
                        fault(&mut audit, Record::Roster(version), e.to_string());
                        for later in version + 1..total {
                            fault(
                                &mut audit,
                                Record::Roster(later),
                                format!("follows the broken version {version}"),
                            );
                        }
                    }
                }
                Err(Error::Tampered { record, reason, .. }) => fault(&mut audit, record, reason),
                Err(e) => return Err(e),
            }
            Ok(audit)
        })
    }
}

/// Which stored version a command means: `latest` or a content id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The newest version by the given author (by anyone when no author is known).
    Latest,
    /// The version with this content id.
    Id(ContentId),
}

impl FromStr for Selection {
    type Err = identity::Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "latest" {
            Ok(Selection::Latest)
        } else {
            text.parse().map(Selection::Id)
        }
    }
}

impl Selection {
    /// The stored version this selects: for `Latest`, the highest round by `author` (by anyone
    /// when `None`), ties broken by content id; `None` when nothing matches.
    pub fn find(
        &self,
        store: &Store,
        author: Option<MemberId>,
    ) -> Result<Option<Verified<Version>>, Error> {
        match self {
            Selection::Id(id) => store.version(id),
            Selection::Latest => Ok(store
                .versions()?
                .into_iter()
                .filter(|v| author.is_none_or(|a| v.author == a))
                .max_by_key(|v| (v.round, v.id()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use medmesh_protocol::identity::Keypair;
    use medmesh_protocol::roster::{Role, Roster};

    use super::*;
    use crate::testkit::{self, items, key, member, report, signed_by};

    /// A version with no parents and 256 parameters.
    fn version(author: &Keypair, round: u64) -> (Verified<Version>, Bytes) {
        let params: Vec<f32> = (0..256).map(|i| i as f32 + round as f32).collect();
        testkit::version(author, round, Vec::new(), &params)
    }

    /// The fixture chain: genesis, then version 1 (which has member 4 and needs 2 signatures of
    /// the genesis members).
    fn rosters() -> (SignedRoster, SignedRoster) {
        let [genesis, next] = testkit::rosters().try_into().expect("two rosters");
        (genesis, next)
    }

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        (dir, path)
    }

    /// Fills a store with one item of each kind; returns what it put.
    fn fill(store: &Store) -> (Verified<Version>, Bytes, Verified<Report>) {
        let (v, bytes) = version(&key(1), 1);
        let r = report(&key(2), 2, v.id(), 0.8);
        let (genesis, next) = rosters();
        store.put_all(&items(&v, &bytes)).expect("version");
        store
            .put(&Item::Report(r.signed().clone()))
            .expect("report");
        store.put(&Item::Roster(genesis)).expect("genesis");
        store.put(&Item::Roster(next)).expect("next roster");
        store
            .set_state("round", &7u64.to_le_bytes())
            .expect("state");
        (v, bytes, r)
    }

    fn check_filled(store: &Store, v: &Verified<Version>, bytes: &Bytes, r: &Verified<Report>) {
        assert_eq!(store.version(&v.id()).expect("reads"), Some(v.clone()));
        assert_eq!(store.versions().expect("reads"), vec![v.clone()]);
        assert_eq!(store.payload(&v.id()).expect("reads"), Some(bytes.clone()));
        assert_eq!(
            store.reports(Some(&v.id())).expect("reads"),
            vec![r.clone()]
        );
        assert_eq!(store.reports(None).expect("reads"), vec![r.clone()]);
        assert_eq!(
            store.state("round").expect("reads"),
            Some(7u64.to_le_bytes().to_vec())
        );
        let chain = Chain::from_history(store.roster_history().expect("reads")).expect("chain");
        assert_eq!(chain.current().version, 1);
        assert!(chain.current().contains(&key(4).id()));
        let audit = store.verify_all().expect("audit");
        assert!(audit.is_clean(), "{audit:?}");
        assert_eq!(
            (audit.versions, audit.payloads, audit.reports, audit.rosters),
            (1, 1, 1, 2)
        );
    }

    #[test]
    fn every_kind_round_trips_and_survives_reopening() {
        let (_dir, path) = temp();
        let store = Store::open(&path).expect("opens");
        let (v, bytes, r) = fill(&store);
        check_filled(&store, &v, &bytes, &r);
        // Idempotent: storing everything again changes nothing.
        fill(&store);
        check_filled(&store, &v, &bytes, &r);

        let missing = ContentId([9; 32]);
        assert_eq!(store.version(&missing).expect("reads"), None);
        assert_eq!(store.payload(&missing).expect("reads"), None);
        assert_eq!(store.reports(Some(&missing)).expect("reads"), vec![]);
        assert_eq!(store.state("nothing").expect("reads"), None);

        drop(store);
        let store = Store::open(&path).expect("reopens");
        check_filled(&store, &v, &bytes, &r);
    }

    #[test]
    fn a_second_handle_is_locked_out() {
        let (_dir, path) = temp();
        let _store = Store::open(&path).expect("opens");
        assert!(matches!(Store::open(&path), Err(Error::Locked { path: p }) if p == path));
    }

    #[test]
    fn big_payloads_are_chunked_exactly() {
        let (_dir, path) = temp();
        let store = Store::open(&path).expect("opens");
        // 2.5 chunks, exactly two chunks, and 5 MiB (a whole payload would take an 8 MiB page).
        let mut total = 0;
        for (n, len) in [(1u64, CHUNK * 5 / 2), (2, 2 * CHUNK), (3, 5 << 20)] {
            let params: Vec<f32> = (0..len / 4).map(|i| (i % 1000) as f32 * 0.5).collect();
            let (v, bytes) = testkit::version(&key(1), n, Vec::new(), &params);
            store.put_all(&items(&v, &bytes)).expect("stores");
            assert_eq!(store.payload(&v.id()).expect("reads"), Some(bytes));
            total += len as u64;
        }
        assert!(store.verify_all().expect("audit").is_clean());
        // Stored whole, each payload would take a page of the next power of two (4 + 2 + 8 MiB);
        // chunked, only each payload's last chunk rounds up. (Measured on 324 MB of payloads:
        // 1.7 % over the payload bytes chunked, 70 % whole.)
        let whole: u64 = [CHUNK * 5 / 2, 2 * CHUNK, 5 << 20]
            .iter()
            .map(|len| len.next_power_of_two() as u64)
            .sum();
        let stats = store.db.begin_write().expect("txn").stats().expect("stats");
        let allocated = stats.allocated_pages() * stats.page_size() as u64;
        assert!(
            allocated < whole,
            "{allocated} bytes of pages for {total} payload bytes: {stats:?}"
        );
    }

    #[test]
    fn store_and_errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Store>();
        send_sync::<Error>();
    }

    #[test]
    fn payloads_are_checked_against_their_version() {
        let (_dir, path) = temp();
        let store = Store::open(&path).expect("opens");
        let (v, _) = version(&key(1), 1);
        let (_, other) = version(&key(1), 2);
        store
            .put(&Item::Version(v.signed().clone()))
            .expect("version");
        let wrong = Item::Payload {
            id: v.id(),
            bytes: other.clone(),
        };
        assert!(matches!(
            store.put(&wrong),
            Err(Error::PayloadMismatch { id, .. }) if id == v.id()
        ));
        assert_eq!(store.payload(&v.id()).expect("reads"), None);

        // A payload may come before its version; a wrong one is dropped when the version comes.
        let (late, late_bytes) = version(&key(1), 3);
        store
            .put(&Item::Payload {
                id: late.id(),
                bytes: late_bytes.clone(),
            })
            .expect("orphan payload");
        assert_eq!(store.verify_all().expect("audit").orphan_payloads, 1);
        store
            .put(&Item::Version(late.signed().clone()))
            .expect("version");
        assert_eq!(store.payload(&late.id()).expect("reads"), Some(late_bytes));

        let (bad, _) = version(&key(1), 4);
        store
            .put(&Item::Payload {
                id: bad.id(),
                bytes: other,
            })
            .expect("orphan payload");
        store
            .put(&Item::Version(bad.signed().clone()))
            .expect("version");
        assert_eq!(store.payload(&bad.id()).expect("reads"), None);
        let audit = store.verify_all().expect("audit");
        assert!(audit.is_clean(), "{audit:?}");
        assert_eq!(audit.orphan_payloads, 0);
    }

    #[test]
    fn a_failed_batch_stores_nothing() {
        let (_dir, path) = temp();
        let store = Store::open(&path).expect("opens");
        let (v, bytes) = version(&key(1), 1);
        let (_, other) = version(&key(1), 2);
        let batch = [
            Item::Version(v.signed().clone()),
            Item::Payload {
                id: v.id(),
                bytes: other,
            },
        ];
        assert!(store.put_all(&batch).is_err());
        assert_eq!(store.version(&v.id()).expect("reads"), None);
        store.put_all(&items(&v, &bytes)).expect("stores");
    }

    #[test]
    fn forged_items_are_refused() {
        let (_dir, path) = temp();
        let store = Store::open(&path).expect("opens");
        let (v, _) = version(&key(1), 1);
        // Re-encode the envelope with one body byte flipped.
        let mut raw = wire::encode(v.signed());
        raw[10] ^= 1;
        let forged: Signed<Version> = wire::decode(&raw).expect("still decodes");
        assert!(matches!(
            store.put(&Item::Version(forged)),
            Err(Error::Unverified {
                kind: "version",
                ..
            })
        ));

        let (genesis, next) = rosters();
        assert!(matches!(
            store.put(&Item::Roster(next.clone())),
            Err(Error::Roster { version: 1, .. })
        ));
        store.put(&Item::Roster(genesis.clone())).expect("genesis");
        // Version 1 signed by too few members, and a competing genesis.
        let short = signed_by(next.roster().clone(), &[1]);
        assert!(matches!(
            store.put(&Item::Roster(short)),
            Err(Error::Roster { version: 1, .. })
        ));
        let other =
            Roster::genesis("test mesh", 1, vec![member(1, Role::Hospital)]).expect("genesis");
        assert!(matches!(
            store.put(&Item::Roster(signed_by(other, &[1]))),
            Err(Error::Roster { version: 0, .. })
        ));
        store.put(&Item::Roster(genesis)).expect("repeat is fine");
        store.put(&Item::Roster(next)).expect("next");
        assert_eq!(store.roster_history().expect("reads").len(), 2);
    }

    #[test]
    fn damaged_or_foreign_files_are_corrupt_not_panics() {
        let (dir, path) = temp();
        // Garbage.
        let garbage: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &garbage).expect("writes");
        match Store::open(&path) {
            Err(Error::Corrupt { path: p, .. }) => assert_eq!(p, path),
            other => panic!("garbage opened as {other:?}"),
        }

        // A real store, truncated at several lengths: redb asserts on most of these, which the
        // store turns into Corrupt.
        let good = dir.path().join("good.redb");
        let (v, bytes, r) = {
            let store = Store::open(&good).expect("opens");
            let filled = fill(&store);
            let (big, big_bytes) = testkit::version(&key(1), 2, Vec::new(), &vec![0.25; 200_000]);
            store.put_all(&items(&big, &big_bytes)).expect("stores");
            filled
        };
        let full = std::fs::read(&good).expect("reads");
        for cut in [0, 3, 100, 600, 4096, full.len() / 2, full.len() - 1] {
            let truncated = dir.path().join(format!("cut{cut}.redb"));
            std::fs::write(&truncated, &full[..cut]).expect("writes");
            match Store::open(&truncated) {
                // An empty file is a new store.
                Ok(store) if cut == 0 => assert_eq!(store.versions().expect("reads"), vec![]),
                Err(Error::Corrupt { path: p, detail }) => {
                    assert_eq!(p, truncated);
                    assert!(!detail.is_empty());
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }

        // Blocks of garbage written over a real store (bit rot, a stray write): opening and
        // auditing either fails with Corrupt or reports the damage; a clean audit means the
        // damage hit free space and everything reads back intact.
        for offset in (0..full.len()).step_by(full.len() / 13 + 1) {
            let damaged = dir.path().join(format!("rot{offset}.redb"));
            let mut copy = full.clone();
            let end = (offset + 4096).min(copy.len());
            copy[offset..end].copy_from_slice(&garbage[..end - offset]);
            std::fs::write(&damaged, &copy).expect("writes");
            let Ok(store) = Store::open(&damaged).inspect_err(|e| {
                assert!(matches!(e, Error::Corrupt { .. }), "rot at {offset}: {e:?}");
            }) else {
                continue;
            };
            match store.verify_all() {
                Ok(audit) if audit.is_clean() => {
                    assert_eq!(store.version(&v.id()).expect("reads"), Some(v.clone()));
                    assert_eq!(store.payload(&v.id()).expect("reads"), Some(bytes.clone()));
                    assert_eq!(store.reports(None).expect("reads"), vec![r.clone()]);
                }
                Ok(_) | Err(Error::Corrupt { .. }) => {}
                Err(e) => panic!("rot at {offset}: {e:?}"),
            }
        }

        // Another program's redb file.
        let foreign = dir.path().join("foreign.redb");
        {
            let db = Database::create(&foreign).expect("creates");
            let txn = db.begin_write().expect("txn");
            let table: TableDefinition<u64, u64> = TableDefinition::new("theirs");
            txn.open_table(table)
                .expect("table")
                .insert(1, 2)
                .expect("inserts");
            txn.commit().expect("commits");
        }
        assert!(matches!(Store::open(&foreign), Err(Error::Corrupt { .. })));

        // A missing folder is an I/O error naming the file.
        let nowhere = dir.path().join("no/such/folder/store.redb");
        assert!(matches!(Store::open(&nowhere), Err(Error::Io { path, .. }) if path == nowhere));
    }

    #[test]
    fn tampered_records_are_errors_and_audited() {
        let (_dir, path) = temp();
        let (v, bytes, r) = {
            let store = Store::open(&path).expect("opens");
            fill(&store)
        };
        let (v2, v2_bytes) = version(&key(1), 2);
        let (v3, _) = version(&key(5), 3);
        {
            let store = Store::open(&path).expect("opens");
            store.put_all(&items(&v2, &v2_bytes)).expect("stores");
        }
        // Write through a raw redb handle, as a disk fault or an intruder would.
        {
            let db = Database::create(&path).expect("raw open");
            let txn = db.begin_write().expect("txn");
            {
                let mut versions = txn.open_table(VERSIONS).expect("table");
                versions.insert(v.id().0, &b"garbage"[..]).expect("inserts");
                // A valid envelope under another version's id.
                let other = wire::encode(v3.signed());
                versions
                    .insert(v2.id().0, other.as_slice())
                    .expect("inserts");
                let mut reports = txn.open_table(REPORTS).expect("table");
                let mut raw = wire::encode(r.signed());
                let n = raw.len();
                raw[n - 1] ^= 0x40;
                reports.insert(r.id().0, raw.as_slice()).expect("inserts");
                let mut chunks = txn.open_table(CHUNKS).expect("table");
                let mut chunk = bytes.to_vec();
                chunk[3] ^= 1;
                chunks
                    .insert(chunk_key(&v.id(), 0), chunk.as_slice())
                    .expect("inserts");
                let mut rosters = txn.open_table(ROSTERS).expect("table");
                rosters.insert(1, &b"nope"[..]).expect("inserts");
            }
            txn.commit().expect("commits");
        }
        let store = Store::open(&path).expect("still opens");
        assert!(matches!(
            store.version(&v.id()),
            Err(Error::Tampered { record: Record::Version(id), .. }) if id == v.id()
        ));
        assert!(matches!(
            store.version(&v2.id()),
            Err(Error::Tampered { record: Record::Version(id), .. }) if id == v2.id()
        ));
        assert!(matches!(store.versions(), Err(Error::Tampered { .. })));
        assert!(matches!(
            store.payload(&v.id()),
            Err(Error::Tampered { .. })
        ));
        assert!(matches!(
            store.reports(Some(&v.id())),
            Err(Error::Tampered { .. })
        ));
        assert!(matches!(
            store.roster_history(),
            Err(Error::Tampered {
                record: Record::Roster(1),
                ..
            })
        ));
        let audit = store.verify_all().expect("audit");
        for record in [
            Record::Version(v.id()),
            Record::Version(v2.id()),
            Record::Report(r.id()),
            Record::Roster(1),
        ] {
            assert!(audit.failed(&record), "{record} not reported: {audit:?}");
        }
        // The payload of `v` cannot be judged (its version is broken), and v2's payload is fine.
        assert!(!audit.failed(&Record::Payload(v2.id())));
        assert_eq!(audit.faults.len(), 4, "{audit:?}");
    }

    #[test]
    fn a_payload_altered_on_disk_is_never_served() {
        let (_dir, path) = temp();
        let (v, bytes) = version(&key(1), 1);
        Store::open(&path)
            .expect("opens")
            .put_all(&items(&v, &bytes))
            .expect("stores");
        {
            let db = Database::create(&path).expect("raw open");
            let txn = db.begin_write().expect("txn");
            let mut chunk = bytes.to_vec();
            chunk[10] ^= 1;
            txn.open_table(CHUNKS)
                .expect("table")
                .insert(chunk_key(&v.id(), 0), chunk.as_slice())
                .expect("inserts");
            txn.commit().expect("commits");
        }
        let store = Store::open(&path).expect("opens");
        assert!(matches!(
            store.payload(&v.id()),
            Err(Error::Tampered {
                record: Record::Payload(_),
                ..
            })
        ));
        let audit = store.verify_all().expect("audit");
        assert_eq!(
            audit.faults.iter().map(|f| f.record).collect::<Vec<_>>(),
            vec![Record::Payload(v.id())]
        );
    }

    #[test]
    fn pruning_keeps_recent_and_pinned_payloads_and_every_record() {
        let (_dir, path) = temp();
        let store = Store::open(&path).expect("opens");
        let a: Vec<_> = (1..=5).map(|round| version(&key(1), round)).collect();
        let b: Vec<_> = (1..=2).map(|round| version(&key(2), round)).collect();
        for (v, bytes) in a.iter().chain(&b) {
            store.put_all(&items(v, bytes)).expect("stores");
        }
        let r = report(&key(2), 2, a[0].0.id(), 0.7);
        store
            .put(&Item::Report(r.signed().clone()))
            .expect("report");

        // Keep one round behind each author's newest (A: 4 and 5; B: 1 and 2), pin A's round 1.
        let freed = store.prune_payloads(1, &[a[0].0.id()]).expect("prunes");
        assert_eq!(freed, a[1].1.len() as u64 + a[2].1.len() as u64);
        let kept: Vec<bool> = a
            .iter()
            .chain(&b)
            .map(|(v, _)| store.payload(&v.id()).expect("reads").is_some())
            .collect();
        assert_eq!(kept, [true, false, false, true, true, true, true]);
        assert_eq!(store.versions().expect("reads").len(), 7);
        assert_eq!(store.reports(None).expect("reads"), vec![r]);
        let audit = store.verify_all().expect("audit");
        assert!(audit.is_clean(), "{audit:?}");
        assert_eq!((audit.versions, audit.payloads), (7, 5));
        assert_eq!(store.prune_payloads(1, &[a[0].0.id()]).expect("prunes"), 0);

        drop(store);
        let mut store = Store::open(&path).expect("reopens");
        store.compact().expect("compacts");
        assert!(store.verify_all().expect("audit").is_clean());
    }

    /// A disk that fills up: the file may not grow past `limit` bytes; writes and resizes
    /// beyond it fail with ENOSPC, as on a full file system. Everything else is redb's own
    /// file backend.
    #[derive(Debug)]
    struct FullDisk {
        file: redb::backends::FileBackend,
        limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl FullDisk {
        fn check(&self, end: u64) -> Result<(), std::io::Error> {
            if end > self.limit.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
            } else {
                Ok(())
            }
        }
    }

    impl redb::StorageBackend for FullDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, std::io::Error> {
            self.file.read(offset, len)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check(len)?;
            self.file.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> Result<(), std::io::Error> {
            self.file.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check(offset + data.len() as u64)?;
            self.file.write(offset, data)
        }
    }

    #[test]
    fn a_full_disk_fails_writes_cleanly_and_loses_nothing() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let (_dir, path) = temp();
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let open = |limit: &Arc<AtomicU64>| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .expect("file");
            let backend = FullDisk {
                file: redb::backends::FileBackend::new(file).expect("backend"),
                limit: limit.clone(),
            };
            Store::open_with_backend(&path, backend)
        };
        let store = open(&limit).expect("opens");
        let (v, bytes, r) = fill(&store);

        // The disk fills up: a 4 MB version does not fit.
        limit.store(
            std::fs::metadata(&path).expect("size").len(),
            Ordering::SeqCst,
        );
        let params: Vec<f32> = (0..1_000_000).map(|i| i as f32 * 1e-6).collect();
        let (big, big_bytes) = testkit::version(&key(3), 2, Vec::new(), &params);
        let err = store
            .put_all(&items(&big, &big_bytes))
            .expect_err("no space left");
        match &err {
            Error::Io { path: at, source } => {
                assert_eq!(at, &path);
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{source}");
            }
            other => panic!("expected an I/O error naming the file, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("store.redb"), "{message}");
        assert!(message.contains("No space left on device"), "{message}");
        // Later writes on this handle fail with an error too, never a panic.
        assert!(store.set_state("round", &8u64.to_le_bytes()).is_err());
        drop(store);

        // Space is freed (here: the limit lifted) and the node restarts: everything committed
        // before the disk filled is there and verifies, the failed write is not, and the store
        // takes writes again.
        limit.store(u64::MAX, Ordering::SeqCst);
        let store = open(&limit).expect("reopens after the full disk");
        check_filled(&store, &v, &bytes, &r);
        assert_eq!(store.version(&big.id()).expect("reads"), None);
        assert_eq!(store.payload(&big.id()).expect("reads"), None);
        store
            .put_all(&items(&big, &big_bytes))
            .expect("fits once space is free");
        assert_eq!(store.payload(&big.id()).expect("reads"), Some(big_bytes));
        drop(store);
        let store = Store::open(&path).expect("a plain open");
        assert!(store.verify_all().expect("audit").is_clean());
    }

    /// Set in the child process of [`committed_items_survive_kill_9`]: the store path to write to.
    const CRASH_CHILD: &str = "MEDMESH_STORE_CRASH_CHILD";

    /// Not a test on its own: when [`CRASH_CHILD`] is set, writes versions with payloads in a
    /// loop, from the round after the stored one, and prints `committed <round> <id>` after each
    /// durable put, until it is killed.
    #[test]
    fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_CHILD) else {
            return;
        };
        let store = Store::open(Path::new(&path)).expect("child opens");
        let first = store
            .state("round")
            .expect("child reads")
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            + 1;
        let author = key(7);
        let mut out = std::io::stdout().lock();
        for round in first..first + 500 {
            let params: Vec<f32> = (0..64 * 1024)
                .map(|i| (i as f32) * 1e-3 + round as f32)
                .collect();
            let (v, bytes) = testkit::version(&author, round, Vec::new(), &params);
            store.put_all(&items(&v, &bytes)).expect("child stores");
            store
                .set_state("round", &round.to_le_bytes())
                .expect("child state");
            writeln!(out, "committed {round} {}", v.id()).expect("stdout");
            out.flush().expect("stdout");
        }
    }

    /// Runs [`crash_child`] on `path` until it has committed `more` further items, kills it with
    /// SIGKILL (it is writing all the time, so the kill lands inside a write transaction or a
    /// fsync) and adds every item it reported committed to `committed`.
    fn write_until_killed(path: &Path, more: usize, committed: &mut Vec<(u64, ContentId)>) {
        write_until_killed_by(
            "store::tests::crash_child",
            CRASH_CHILD,
            path,
            more,
            committed,
        );
    }

    /// [`write_until_killed`] with the child test `child`, told its store by `variable`.
    fn write_until_killed_by(
        child: &str,
        variable: &str,
        path: &Path,
        more: usize,
        committed: &mut Vec<(u64, ContentId)>,
    ) {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", child, "--nocapture", "--test-threads=1"])
            .env(variable, path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns the child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::sync_channel::<String>(1024);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let parse = |line: &str| -> Option<(u64, ContentId)> {
            // libtest may print the test's name on the same line, before the child's first words.
            let start = line.find("committed ")? + "committed ".len();
            let mut words = line[start..].split(' ');
            let round = words.next()?.parse().ok()?;
            let id = words.next()?.parse().ok()?;
            Some((round, id))
        };
        let target = committed.len() + more;
        let deadline = Instant::now() + Duration::from_secs(120);
        while committed.len() < target {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("the child commits in time");
            committed.extend(parse(&line));
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reaped");
        // Everything the child printed before it died counts as committed too.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
            committed.extend(parse(&line));
        }
        reader.join().expect("reader");
        assert!(!status.success(), "the child was killed, not finished");
    }

    #[test]
    fn committed_items_survive_kill_9() {
        if std::env::var_os(CRASH_CHILD).is_some() {
            return;
        }
        let (_dir, path) = temp();
        let mut committed = Vec::new();
        // Killed three times, after a different number of writes each time; each restart
        // recovers and continues on the same file.
        for more in [20, 7, 13] {
            write_until_killed(&path, more, &mut committed);
            let store = Store::open(&path).expect("reopens after kill -9");
            for (round, id) in &committed {
                let v = store
                    .version(id)
                    .expect("reads")
                    .unwrap_or_else(|| panic!("committed round {round} lost"));
                assert_eq!(v.round, *round);
                assert!(
                    store.payload(id).expect("reads").is_some(),
                    "payload {round}"
                );
            }
            let last = committed.iter().map(|(r, _)| *r).max().unwrap_or(0);
            let round = store.state("round").expect("reads").expect("round stored");
            let round = u64::from_le_bytes(round.try_into().expect("8 bytes"));
            assert!(round >= last, "state round {round} behind committed {last}");
            let audit = store.verify_all().expect("audit");
            assert!(audit.is_clean(), "{audit:?}");
            assert!(audit.versions >= committed.len());
        }
        // The store keeps working after recovery.
        let store = Store::open(&path).expect("reopens");
        let (v, bytes) = version(&key(8), 1);
        store
            .put_all(&items(&v, &bytes))
            .expect("writes after recovery");
    }

    /// Set in the child process of [`a_checkpoint_and_its_parameters_survive_kill_9_as_a_pair`].
    const CHECKPOINT_CHILD: &str = "MEDMESH_STORE_CHECKPOINT_CHILD";

    /// Not a test on its own: when [`CHECKPOINT_CHILD`] is set, writes checkpoints of rounds
    /// after the stored one, each with parameters that name their round, and prints
    /// `committed <round>` after each, until it is killed.
    #[test]
    fn checkpoint_child() {
        let Some(path) = std::env::var_os(CHECKPOINT_CHILD) else {
            return;
        };
        let store = Store::open(Path::new(&path)).expect("child opens");
        let first = store
            .checkpoint()
            .expect("child reads")
            .map_or(0, |(c, _)| c.round)
            + 1;
        let mut out = std::io::stdout().lock();
        for round in first..first + 2000 {
            let checkpoint = Checkpoint {
                round,
                parents: vec![ContentId([round as u8; 32])],
            };
            // Big enough that the kill often lands inside the write.
            let params = vec![round as f32; 256 * 1024];
            store
                .set_checkpoint(&checkpoint, &params)
                .expect("child stores");
            writeln!(out, "committed {round} {}", ContentId([0; 32])).expect("stdout");
            out.flush().expect("stdout");
        }
    }

    #[test]
    fn a_checkpoint_and_its_parameters_survive_kill_9_as_a_pair() {
        if std::env::var_os(CHECKPOINT_CHILD).is_some() {
            return;
        }
        let (_dir, path) = temp();
        let mut committed = Vec::new();
        for more in [15, 4, 9] {
            write_until_killed_by(
                "store::tests::checkpoint_child",
                CHECKPOINT_CHILD,
                &path,
                more,
                &mut committed,
            );
            let store = Store::open(&path).expect("reopens after kill -9");
            let (checkpoint, params) = store
                .checkpoint()
                .expect("reads")
                .expect("a checkpoint was committed");
            let last = committed.iter().map(|(r, _)| *r).max().unwrap_or(0);
            assert!(
                checkpoint.round >= last,
                "checkpoint behind what was committed"
            );
            assert_eq!(params.len(), 256 * 1024);
            assert!(
                params.iter().all(|&p| p == checkpoint.round as f32),
                "round {} resumed with the parameters of round {}",
                checkpoint.round,
                params[0]
            );
            assert_eq!(
                checkpoint.parents,
                vec![ContentId([checkpoint.round as u8; 32])]
            );
        }
    }

    #[test]
    fn the_privacy_ledger_is_written_with_the_checkpoint_in_one_transaction() {
        use medmesh_learning::privacy::Steps;
        let (_dir, path) = temp();
        let ledger = |steps| AccountantState {
            history: vec![Steps {
                noise_multiplier: 1.1,
                sample_rate: 0.01,
                steps,
            }],
        };
        let checkpoint = |round| Checkpoint {
            round,
            parents: Vec::new(),
        };
        {
            let store = Store::open(&path).expect("opens");
            // A store that never had a ledger (older, or without DP) reads as none.
            assert_eq!(store.privacy().expect("reads"), None);
            store
                .commit(&[], Some((&checkpoint(3), &[3.0; 4])), Some(&ledger(300)))
                .expect("commits");
            // A roster that does not extend the (empty) chain fails inside the transaction:
            // neither the new checkpoint nor the new ledger is written.
            let (_, next) = rosters();
            let err = store
                .commit(
                    &[Item::Roster(next)],
                    Some((&checkpoint(4), &[4.0; 4])),
                    Some(&ledger(400)),
                )
                .expect_err("a roster out of order");
            assert!(matches!(err, Error::Roster { .. }), "{err}");
            // A ledger that would not restore is refused, with its checkpoint.
            let mut bad = ledger(500);
            bad.history[0].sample_rate = -1.0;
            let err = store
                .commit(&[], Some((&checkpoint(5), &[5.0; 4])), Some(&bad))
                .expect_err("a bad ledger");
            assert!(matches!(err, Error::Privacy { .. }), "{err}");
            // A checkpoint alone keeps the ledger; a ledger alone keeps the checkpoint.
            store
                .set_checkpoint(&checkpoint(6), &[6.0; 4])
                .expect("checkpoint");
            assert_eq!(store.privacy().expect("reads"), Some(ledger(300)));
            store
                .commit(&[], None, Some(&ledger(700)))
                .expect("ledger alone");
        }
        let store = Store::open(&path).expect("reopens");
        assert_eq!(store.privacy().expect("reads"), Some(ledger(700)));
        let (stored, params) = store.checkpoint().expect("reads").expect("stored");
        assert_eq!((stored.round, params), (6, vec![6.0; 4]));

        // A damaged ledger is an error, never "nothing spent".
        store
            .set_state(PRIVACY_KEY, b"{\"history\":[{\"noise_multiplier\":-3")
            .expect("state");
        let err = store.privacy().expect_err("damaged");
        assert!(
            err.to_string()
                .contains("privacy ledger stored does not check"),
            "{err}"
        );
    }
}
