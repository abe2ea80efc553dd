//! The store, off the event loop: one writer thread owns every write, fed through a bounded
//! queue, and reads run on tokio's blocking pool.
//!
//! A redb commit is an fsync; on a slow or busy disk it takes as long as the disk says. Were
//! it made on the event loop, gossipsub's heartbeats, yamux and every peer talking to this
//! node would wait for it. Instead the loop queues writes and goes on; the writer commits
//! whatever has queued up in one transaction (a disk that takes 2 s per commit still keeps up
//! with a mesh, it just commits more per fsync) and publishes how far it got as a sequence
//! number. The loop holds back what must not leave the node before its record is durable — a
//! signed announcement — until that number passes the write it depends on.
//!
//! The queue is bounded: a disk slower than the mesh for long enough fills it, and the loop
//! then waits for room, which is the back-pressure a node must feel rather than drop records.
//! A failed write stops the writer and is reported once; the node stops on it (a peer that
//! cannot keep its record must not go on signing).

use std::sync::Arc;
use std::thread::JoinHandle;

use medmesh_protocol::peer::{Checkpoint, Item};
use medmesh_record::store::{self, Store};
use tokio::sync::{mpsc, watch};

/// Writes waiting for the writer; each is one item or one checkpoint.
const QUEUE: usize = 1024;
/// Most writes committed in one transaction.
const BATCH: usize = 256;

/// One queued write.
enum Write {
    Items(Vec<Item>),
    Checkpoint(Checkpoint, Vec<f32>),
}

/// How far the writer got.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Every write up to this sequence number is durable.
    pub durable: u64,
    /// The write that failed, if one did; the writer stops after it.
    pub failed: Option<String>,
}

/// The node's store, with its writer thread.
#[derive(Debug)]
pub struct Storage {
    store: Arc<Store>,
    queue: Option<mpsc::Sender<(u64, Write)>>,
    progress: watch::Receiver<Progress>,
    queued: u64,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Write::Items(items) => write!(f, "Items({})", items.len()),
            Write::Checkpoint(c, _) => write!(f, "Checkpoint({})", c.round),
        }
    }
}

impl Storage {
    /// Starts the writer thread of `store`.
    pub fn spawn(store: Store) -> std::io::Result<Storage> {
        let store = Arc::new(store);
        let (queue, rx) = mpsc::channel(QUEUE);
        let (tx, progress) = watch::channel(Progress::default());
        let writer = std::thread::Builder::new()
            .name("medmesh-store".into())
            .spawn({
                let store = store.clone();
                move || write_loop(&store, rx, &tx)
            })?;
        Ok(Storage {
            store,
            queue: Some(queue),
            progress,
            queued: 0,
            writer: Some(writer),
        })
    }

    /// The store, for reads: call it from a blocking context ([`Storage::read`]) or before the
    /// loop starts.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Queues `items`; their sequence number (compare with [`Progress::durable`]).
    pub async fn put(&mut self, items: Vec<Item>) -> Result<u64, store::Error> {
        self.send(Write::Items(items)).await
    }

    /// Queues the peer's checkpoint with the parameters its round starts from (one
    /// transaction, see [`Store::set_checkpoint`]).
    pub async fn checkpoint(
        &mut self,
        checkpoint: Checkpoint,
        params: Vec<f32>,
    ) -> Result<u64, store::Error> {
        self.send(Write::Checkpoint(checkpoint, params)).await
    }

    async fn send(&mut self, write: Write) -> Result<u64, store::Error> {
        let stopped = || store::Error::Io {
            path: self.store.path().to_owned(),
            source: std::io::Error::other("the store's writer stopped"),
        };
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        let seq = self.queued + 1;
        queue.send((seq, write)).await.map_err(|_| stopped())?;
        self.queued = seq;
        Ok(seq)
    }

    /// The sequence number of the last write queued.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// How far the writer got.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until the writer makes progress (forever once it stopped).
    pub async fn changed(&mut self) -> Progress {
        if self.progress.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.progress.borrow_and_update().clone()
    }

    /// Runs `read` on the store on tokio's blocking pool.
    pub fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
    }

    /// Lets the writer finish what is queued and waits for it.
    pub fn close(&mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the store's writer panicked");
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: takes what has queued up (at most [`BATCH`] writes), commits it in one
/// transaction, publishes the progress; stops at the first failure or when the queue closes.
fn write_loop(
    store: &Store,
    mut rx: mpsc::Receiver<(u64, Write)>,
    progress: &watch::Sender<Progress>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.blocking_recv().map(|w| batch.push(w)).is_some() {
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut items = Vec::new();
        let mut checkpoint = None;
        let mut last = 0;
        for (seq, write) in batch.drain(..) {
            last = seq;
            match write {
                Write::Items(more) => items.extend(more),
                // A later checkpoint supersedes an earlier one of the same batch.
                Write::Checkpoint(c, p) => checkpoint = Some((c, p)),
            }
        }
        let pair = checkpoint.as_ref().map(|(c, p)| (c, p.as_slice()));
        match store.commit(&items, pair) {
            Ok(()) => {
                progress.send_modify(|p| p.durable = last);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the store");
                progress.send_modify(|p| p.failed = Some(e.to_string()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_become_durable_in_order_and_checkpoints_pair_with_their_params() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let mut storage = Storage::spawn(Store::open(&path).expect("opens")).expect("spawns");
        let mut last = 0;
        for round in 1..=20u64 {
            let checkpoint = Checkpoint {
                round,
                parents: Vec::new(),
            };
            last = storage
                .checkpoint(checkpoint, vec![round as f32; 8])
                .await
                .expect("queued");
        }
        assert_eq!(last, storage.queued());
        while storage.progress().durable < last {
            let progress = storage.changed().await;
            assert_eq!(progress.failed, None);
        }
        let (checkpoint, params) = storage
            .read(|store| store.checkpoint())
            .await
            .expect("joins")
            .expect("reads")
            .expect("stored");
        assert_eq!(checkpoint.round, 20);
        assert_eq!(params, vec![20.0; 8]);
        storage.close();
        drop(storage);
        let store = Store::open(&path).expect("reopens once the writer let go");
        assert_eq!(
            store.checkpoint().expect("reads").map(|(c, _)| c.round),
            Some(20)
        );
    }
}
