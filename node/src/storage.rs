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
//!
//! Retention passes ([`Storage::prune`]) go through the same queue, so a deletion never races a
//! write: the writer runs one after committing the batch it came with, before it reports that
//! batch durable. A pass that fails is logged, not fatal (it is one transaction: it deleted
//! nothing, and a store that cannot be written fails the next commit anyway).

use std::sync::Arc;
use std::thread::JoinHandle;

use medmesh_learning::privacy::AccountantState;
use medmesh_protocol::identity::ContentId;
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
    /// A checkpoint, its round's parameters, and the privacy ledger if the node has one.
    Checkpoint(Checkpoint, Vec<f32>, Option<AccountantState>),
    /// The privacy ledger after a round, alone (see [`Storage::privacy`]).
    Privacy(AccountantState),
    /// A retention pass ([`Store::prune_payloads`]).
    Prune {
        keep_rounds: u64,
        pinned: Vec<ContentId>,
    },
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
            Write::Checkpoint(c, _, _) => write!(f, "Checkpoint({})", c.round),
            Write::Privacy(_) => write!(f, "Privacy"),
            Write::Prune {
                keep_rounds,
                pinned,
            } => write!(f, "Prune({keep_rounds}, {} pinned)", pinned.len()),
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

    /// Queues the peer's checkpoint with the parameters its round starts from and, if the node
    /// has one, the hospital's privacy ledger (one transaction, see [`Store::commit`]).
    pub async fn checkpoint(
        &mut self,
        checkpoint: Checkpoint,
        params: Vec<f32>,
        privacy: Option<AccountantState>,
    ) -> Result<u64, store::Error> {
        self.send(Write::Checkpoint(checkpoint, params, privacy))
            .await
    }

    /// Queues the privacy ledger after a round. The node queues it as soon as the round is
    /// trained, before it announces the version: the announcement waits for this write, so a
    /// node that stops before its next checkpoint still restarts with what the announced round
    /// spent.
    pub async fn privacy(&mut self, ledger: AccountantState) -> Result<u64, store::Error> {
        self.send(Write::Privacy(ledger)).await
    }

    /// Queues a retention pass: the writer deletes the payloads of versions more than
    /// `keep_rounds` rounds behind their author's newest, except the `pinned` ones
    /// ([`Store::prune_payloads`]), in order with every other write. Unlike a record, a pass is
    /// not worth waiting for: with the queue full it is skipped (`Ok(None)`; the next one
    /// catches up). Otherwise its sequence number.
    pub fn prune(
        &mut self,
        keep_rounds: u64,
        pinned: Vec<ContentId>,
    ) -> Result<Option<u64>, store::Error> {
        let queue = self.queue.as_ref().ok_or_else(|| self.stopped())?;
        let seq = self.queued + 1;
        match queue.try_send((
            seq,
            Write::Prune {
                keep_rounds,
                pinned,
            },
        )) {
            Ok(()) => {
                self.queued = seq;
                Ok(Some(seq))
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.stopped()),
        }
    }

    async fn send(&mut self, write: Write) -> Result<u64, store::Error> {
        let queue = self.queue.as_ref().ok_or_else(|| self.stopped())?;
        let seq = self.queued + 1;
        queue.send((seq, write)).await.map_err(|_| self.stopped())?;
        self.queued = seq;
        Ok(seq)
    }

    fn stopped(&self) -> store::Error {
        store::Error::Io {
            path: self.store.path().to_owned(),
            source: std::io::Error::other("the store's writer stopped"),
        }
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
        // The ledger only grows: the latest of the batch is the one to keep.
        let mut privacy = None;
        let mut prune = None;
        let mut last = 0;
        for (seq, write) in batch.drain(..) {
            last = seq;
            match write {
                Write::Items(more) => items.extend(more),
                // A later checkpoint supersedes an earlier one of the same batch.
                Write::Checkpoint(c, p, ledger) => {
                    checkpoint = Some((c, p));
                    privacy = ledger.or(privacy);
                }
                Write::Privacy(ledger) => privacy = Some(ledger),
                // So does a later pass; it runs once the batch is committed.
                Write::Prune {
                    keep_rounds,
                    pinned,
                } => prune = Some((keep_rounds, pinned)),
            }
        }
        let pair = checkpoint.as_ref().map(|(c, p)| (c, p.as_slice()));
        match store.commit(&items, pair, privacy.as_ref()) {
            Ok(()) => {
                if let Some((keep_rounds, pinned)) = prune {
                    prune_payloads(store, keep_rounds, &pinned);
                }
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

/// One retention pass; see the module documentation for why a failure is not fatal.
fn prune_payloads(store: &Store, keep_rounds: u64, pinned: &[ContentId]) {
    match store.prune_payloads(keep_rounds, pinned) {
        Ok(0) => {}
        Ok(freed) => tracing::info!(
            freed_bytes = freed,
            keep_rounds,
            pinned = pinned.len(),
            "pruned old payloads"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot prune old payloads; trying again later"),
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
                .checkpoint(checkpoint, vec![round as f32; 8], None)
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

    #[tokio::test]
    async fn the_privacy_ledger_goes_with_checkpoints_and_survives_a_restart() {
        use medmesh_learning::privacy::Steps;
        let ledger = |steps| AccountantState {
            history: vec![Steps {
                noise_multiplier: 1.0,
                sample_rate: 0.1,
                steps,
            }],
        };
        let checkpoint = |round| Checkpoint {
            round,
            parents: Vec::new(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let mut storage = Storage::spawn(Store::open(&path).expect("opens")).expect("spawns");
        async fn wait(storage: &mut Storage, seq: u64) {
            while storage.progress().durable < seq {
                assert_eq!(storage.changed().await.failed, None);
            }
        }
        // A round's checkpoint with the ledger so far, the ledger after its training, and the
        // next checkpoint from a loop that has no newer ledger: the newest stays.
        storage
            .checkpoint(checkpoint(1), vec![1.0; 4], Some(ledger(10)))
            .await
            .expect("queued");
        storage.privacy(ledger(20)).await.expect("queued");
        let seq = storage
            .checkpoint(checkpoint(2), vec![2.0; 4], None)
            .await
            .expect("queued");
        wait(&mut storage, seq).await;
        let read = storage
            .read(|store| (store.checkpoint(), store.privacy()))
            .await
            .expect("joins");
        assert_eq!(read.0.expect("reads").map(|(c, _)| c.round), Some(2));
        assert_eq!(read.1.expect("reads"), Some(ledger(20)));
        let seq = storage
            .checkpoint(checkpoint(3), vec![3.0; 4], Some(ledger(30)))
            .await
            .expect("queued");
        wait(&mut storage, seq).await;
        storage.close();
        drop(storage);
        let store = Store::open(&path).expect("reopens");
        assert_eq!(store.privacy().expect("reads"), Some(ledger(30)));
        let (c, params) = store.checkpoint().expect("reads").expect("stored");
        assert_eq!((c.round, params), (3, vec![3.0; 4]));
    }
}
