//! The store-backed fixtures of this crate's unit tests: `medmesh-testkit`'s signed items,
//! written into a store.

use std::ops::Deref;
use std::path::PathBuf;

use bytes::Bytes;
use medmesh_protocol::identity::Verified;
use medmesh_protocol::peer::Item;
use medmesh_protocol::update::Version;
use medmesh_protocol::validation::Report;
pub(crate) use medmesh_testkit::*;

use crate::store::Store;

/// Stores a version and its payload.
pub(crate) fn put(store: &Store, version: &Verified<Version>, bytes: &Bytes) {
    store
        .put_all(&items(version, bytes))
        .expect("stores the version");
}

/// Stores a report.
pub(crate) fn put_report(store: &Store, report: &Verified<Report>) {
    store
        .put(&Item::Report(report.signed().clone()))
        .expect("stores the report");
}

/// The [`History`] fixture in a closed store file.
pub(crate) struct Mesh {
    /// Keeps the folder alive.
    _dir: tempfile::TempDir,
    /// The store file (closed: open it again).
    pub(crate) path: PathBuf,
    history: History,
}

impl Deref for Mesh {
    type Target = History;

    fn deref(&self) -> &History {
        &self.history
    }
}

/// A store holding [`history`].
pub(crate) fn mesh() -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let history = history();
    Store::open(&path)
        .expect("opens the store")
        .put_all(&history.items)
        .expect("stores the history");
    Mesh {
        _dir: dir,
        path,
        history,
    }
}
