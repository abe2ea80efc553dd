//! When the node prunes old payloads from its store.
//!
//! The store keeps every signed record forever (versions, reports, rosters: lineage and
//! certification must stay checkable) but not every payload: a version's parameters are needed
//! while members may still pull them and while they are worth auditing, not for ever. The node
//! keeps the payloads of each author's last `retention_rounds` rounds, plus every payload in the
//! lineage of its own final version and of every certified version (pinned), and deletes the
//! rest; the freed pages are reused by later writes, so the file stops growing.
//!
//! A pass runs every `retention_rounds / 2` rounds (at least every round) of the newest version
//! known, in three steps, none of them on the event loop: once the writes queued before it are
//! durable (so the versions it starts from are in the store), the pinned lineages are walked on
//! the blocking pool ([`medmesh_record::lineage::reachable`]); then the pass is queued to the
//! store's writer ([`crate::storage::Storage::prune`]), which deletes in order with every other
//! write. This module only schedules: it never touches the store itself.

/// Where the next pass stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No pass under way.
    Idle,
    /// A pass is due once the writes up to this sequence number are durable.
    Waiting(u64),
    /// The pinned lineages are being walked.
    Walking,
}

/// The retention schedule; see the module documentation.
#[derive(Debug)]
pub(super) struct Retention {
    keep_rounds: u64,
    every: u64,
    /// Newest round of any version known.
    newest: u64,
    /// `newest` when the last pass started.
    last: u64,
    state: State,
}

impl Retention {
    /// Keeps `keep_rounds` rounds per author (0: every payload, no pass ever runs); `newest` is the
    /// newest round the store held at start.
    pub(super) fn new(keep_rounds: u64, newest: u64) -> Self {
        Retention {
            keep_rounds,
            every: (keep_rounds / 2).max(1),
            newest,
            last: 0,
            state: State::Idle,
        }
    }

    /// Rounds kept behind each author's newest.
    pub(super) fn keep_rounds(&self) -> u64 {
        self.keep_rounds
    }

    /// A version of `round` became known.
    pub(super) fn handle_version(&mut self, round: u64) {
        self.newest = self.newest.max(round);
    }

    /// Whether a pass starts now: its pinned lineages are to be walked. `queued` is the store's
    /// last queued write, `durable` the last durable one.
    pub(super) fn poll_walk(&mut self, queued: u64, durable: u64) -> bool {
        if self.state == State::Idle
            && self.keep_rounds > 0
            && self.newest > self.keep_rounds
            && self.newest >= self.last + self.every
        {
            self.last = self.newest;
            self.state = State::Waiting(queued);
        }
        match self.state {
            State::Waiting(after) if durable >= after => {
                self.state = State::Walking;
                true
            }
            _ => false,
        }
    }

    /// The walk finished (the pass is queued to the writer, or given up until the next one).
    pub(super) fn handle_walked(&mut self) {
        self.state = State::Idle;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use medmesh_protocol::identity::ContentId;
    use medmesh_record::lineage;
    use medmesh_record::store::Store;
    use medmesh_testkit::{items, key, version};

    use super::*;
    use crate::storage::Storage;

    #[test]
    fn a_pass_runs_every_half_retention_once_the_writes_before_it_are_durable() {
        let mut retention = Retention::new(10, 0);
        let mut passes = Vec::new();
        let (mut queued, mut durable) = (0, 0);
        for round in 1..=40 {
            retention.handle_version(round);
            queued += 2;
            if retention.poll_walk(queued, durable) {
                passes.push(round);
                retention.handle_walked();
            }
            // The writer is one write behind: a pass waits for it.
            durable = queued - 1;
            if retention.poll_walk(queued, durable) {
                passes.push(round);
                retention.handle_walked();
            }
            durable = queued;
            if retention.poll_walk(queued, durable) {
                passes.push(round);
                retention.handle_walked();
            }
        }
        // Nothing to prune until a round is more than 10 behind; then every 5 rounds.
        assert_eq!(passes, [11, 16, 21, 26, 31, 36]);
    }

    #[test]
    fn one_pass_at_a_time_and_none_when_retention_is_off() {
        let mut retention = Retention::new(4, 100);
        assert!(retention.poll_walk(7, 7), "a restarted node prunes at once");
        retention.handle_version(200);
        assert!(!retention.poll_walk(8, 8), "the walk is still under way");
        retention.handle_walked();
        assert!(retention.poll_walk(8, 8));

        let mut off = Retention::new(0, 1000);
        off.handle_version(2000);
        assert!(!off.poll_walk(1, 1));
    }

    /// Waits until every queued write (and retention pass) is done.
    async fn flush(storage: &mut Storage) {
        while storage.progress().durable < storage.queued() {
            let progress = storage.changed().await;
            assert_eq!(progress.failed, None);
        }
    }

    /// 300 rounds of four hospitals, each version averaging the four of the round before, with
    /// 60 kB payloads, through the node's retention as the event loop drives it (this schedule,
    /// the lineage walk, the writer's pass). One version of round 20 is certified. The file
    /// stops growing once the first passes have run: redb reuses the pages a pass frees, so no
    /// compaction is needed.
    #[tokio::test]
    async fn the_store_stops_growing_and_pinned_lineages_keep_their_payloads() {
        const KEEP: u64 = 10;
        const PARAMS: usize = 15_000;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let mut storage = Storage::spawn(Store::open(&path).expect("opens")).expect("spawns");
        let authors: Vec<_> = (1..=4).map(key).collect();
        let mut retention = Retention::new(KEEP, 0);
        let mut by_round: Vec<Vec<ContentId>> = vec![Vec::new()];
        let mut certified: Vec<ContentId> = Vec::new();
        let mut pinned_at_certification: Vec<ContentId> = Vec::new();
        let mut sizes = Vec::new();
        for round in 1..=300u64 {
            let mut ids = Vec::new();
            for (n, author) in authors.iter().enumerate() {
                let params = vec![round as f32 + n as f32; PARAMS];
                let parents = by_round.last().cloned().unwrap_or_default();
                let (v, bytes) = version(author, round, parents, &params);
                ids.push(v.id());
                storage
                    .put(items(&v, &bytes).to_vec())
                    .await
                    .expect("queued");
            }
            by_round.push(ids);
            retention.handle_version(round);
            // As the loop does each turn (here once the writer caught up, for a schedule that
            // does not depend on the disk's speed).
            flush(&mut storage).await;
            if retention.poll_walk(storage.queued(), storage.progress().durable) {
                let roots = certified.clone();
                let pinned = storage
                    .read(move |store| lineage::reachable(store, &roots))
                    .await
                    .expect("joins")
                    .expect("walks");
                retention.handle_walked();
                storage
                    .prune(retention.keep_rounds(), pinned)
                    .expect("writer runs")
                    .expect("room in the queue");
                flush(&mut storage).await;
            }
            if round == 20 {
                certified.push(by_round[20][0]);
                // What its lineage still holds now must stay.
                let roots = certified.clone();
                pinned_at_certification = storage
                    .read(move |store| {
                        lineage::reachable(store, &roots)
                            .expect("walks")
                            .into_iter()
                            .filter(|id| store.payload(id).expect("reads").is_some())
                            .collect()
                    })
                    .await
                    .expect("joins");
            }
            if round == 50 || round == 300 {
                let size = std::fs::metadata(&path).expect("stat").len();
                sizes.push((round, size));
            }
        }
        let [(_, at_50), (_, at_300)] = sizes[..] else {
            panic!("two sizes: {sizes:?}");
        };
        eprintln!("store size: {at_50} bytes after 50 rounds, {at_300} after 300");

        let kept: HashSet<ContentId> = storage
            .read(|store| {
                let versions = store.versions().expect("reads");
                assert_eq!(versions.len(), 1200, "no version record is ever deleted");
                assert!(store.verify_all().expect("audits").is_clean());
                versions
                    .iter()
                    .map(|v| v.id())
                    .filter(|id| store.payload(id).expect("reads").is_some())
                    .collect()
            })
            .await
            .expect("joins");
        // Rounds 6..=19 were in the store when the round-20 version was certified; its lineage
        // (every version of those rounds, with full fan-out) pins them.
        assert_eq!(pinned_at_certification.len(), 14 * 4 + 1);
        assert!(pinned_at_certification.iter().all(|id| kept.contains(id)));
        // The last pass (round 296) kept rounds 286..=296; 297..=300 came after it.
        let recent: HashSet<ContentId> = by_round[286..].iter().flatten().copied().collect();
        assert!(recent.is_subset(&kept));
        assert_eq!(kept.len(), pinned_at_certification.len() + recent.len());
        // The bound is two rounds' worth of payloads.
        assert!(
            at_300 <= at_50 + 2 * 4 * 60_000,
            "the store grew from {at_50} bytes after 50 rounds to {at_300} after 300"
        );
        storage.close();
    }
}
