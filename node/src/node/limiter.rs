//! Per-peer token buckets for the payload requests this node answers.
//!
//! Any member may ask this node for payloads. An honest one asks for about one version of this
//! node per round (a validator, one final version), so a member asking far more often is broken
//! or is spending this hospital's disk and bandwidth on purpose. Each peer has a bucket of
//! `burst` requests, refilled at `per_second`; a request that finds its bucket empty is refused
//! (the event loop answers it "not found" without reading the store and counts it as
//! `rate_limited`).
//!
//! The map of buckets is bounded ([`MAX_TRACKED`] peers). A full bucket carries no information —
//! a peer never seen starts with one — so full buckets are dropped first when room is needed,
//! and only then the fullest. This module only admits or refuses: it never blocks, reads the
//! disk or looks at what is asked for.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Most peers tracked at once. Only roster members can connect, so this is far above any mesh.
const MAX_TRACKED: usize = 1024;

/// One peer's allowance.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Requests it may make now (fractions accumulate between requests).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// Token buckets by peer; see the module documentation.
#[derive(Debug)]
pub(super) struct Limiter<K> {
    burst: f64,
    per_second: f64,
    capacity: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Copy> Limiter<K> {
    /// Buckets of `burst` requests refilled at `per_second` (both at least 1; the config checks
    /// it, and a 0 here is taken as 1 rather than refusing everything).
    pub(super) fn new(burst: u32, per_second: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_second.max(1)),
            capacity: MAX_TRACKED,
            buckets: HashMap::new(),
        }
    }

    /// Whether `peer` may have one more request answered at `now`; if so, it is counted.
    pub(super) fn admit(&mut self, peer: K, now: Instant) -> bool {
        if self.buckets.len() >= self.capacity && !self.buckets.contains_key(&peer) {
            self.make_room(now);
        }
        let (burst, per_second) = (self.burst, self.per_second);
        let bucket = self.buckets.entry(peer).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, now, burst, per_second);
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Peers tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Drops the buckets that are full again; if none is, the fullest.
    fn make_room(&mut self, now: Instant) {
        let (burst, per_second) = (self.burst, self.per_second);
        self.buckets
            .retain(|_, b| refilled(b, now, burst, per_second) < burst);
        if self.buckets.len() >= self.capacity
            && let Some(fullest) = self
                .buckets
                .iter()
                .max_by(|a, b| {
                    refilled(a.1, now, burst, per_second)
                        .total_cmp(&refilled(b.1, now, burst, per_second))
                })
                .map(|(peer, _)| *peer)
        {
            self.buckets.remove(&fullest);
        }
    }
}

/// The tokens `bucket` holds at `now`.
fn refilled(bucket: &Bucket, now: Instant, burst: f64, per_second: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(burst)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_refill_rate() {
        let start = Instant::now();
        let mut limiter = Limiter::new(4, 2);
        let admitted = (0..10).filter(|_| limiter.admit(1u8, start)).count();
        assert_eq!(admitted, 4, "the burst, then nothing at the same instant");
        // Two tokens a second: after 1.5 s, three more requests.
        let later = start + Duration::from_millis(1500);
        let admitted = (0..10).filter(|_| limiter.admit(1u8, later)).count();
        assert_eq!(admitted, 3);
        // A long pause refills to the burst, never beyond it.
        let much_later = later + Duration::from_secs(3600);
        let admitted = (0..10).filter(|_| limiter.admit(1u8, much_later)).count();
        assert_eq!(admitted, 4);
    }

    #[test]
    fn an_honest_pace_is_never_refused() {
        // One request every 100 ms (rounds of 100 ms, one pull of this node's version each)
        // under 20 a second: the bucket never runs dry.
        let start = Instant::now();
        let mut limiter = Limiter::new(8, 20);
        for i in 0..1000u64 {
            let now = start + Duration::from_millis(100 * i);
            assert!(limiter.admit(7u8, now), "request {i} refused");
        }
    }

    #[test]
    fn peers_have_their_own_buckets() {
        let now = Instant::now();
        let mut limiter = Limiter::new(2, 1);
        assert!(limiter.admit(1u8, now) && limiter.admit(1u8, now));
        assert!(!limiter.admit(1u8, now), "peer 1 spent its burst");
        assert!(
            limiter.admit(2u8, now),
            "peer 2 is not held to peer 1's use"
        );
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_what_it_knows_longest() {
        let start = Instant::now();
        let mut limiter = Limiter::new(2, 1);
        limiter.capacity = 3;
        // Peer 0 floods; peers 1 and 2 ask once each.
        for _ in 0..5 {
            limiter.admit(0u32, start);
        }
        limiter.admit(1, start);
        limiter.admit(2, start);
        // New peers past the capacity push out the fullest buckets, not the flooder's.
        for peer in 3..100 {
            limiter.admit(peer, start);
            assert!(limiter.len() <= 3);
        }
        assert!(
            !limiter.admit(0, start),
            "the flooder's empty bucket was kept"
        );
        // Once refilled, buckets are as good as new and are dropped first.
        let later = start + Duration::from_secs(10);
        limiter.admit(1000, later);
        assert_eq!(limiter.len(), 1);
    }
}
