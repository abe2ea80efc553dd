//! A minimal in-memory driver for scenario tests: real `Peer`s, a fake clock, fixed latency, no
//! loss. The simulator crate has the full network model; this stays small on purpose so the
//! protocol crate can test itself without it.
#![allow(dead_code, unreachable_pub)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use medmesh_protocol::identity::{ContentId, Keypair, MemberId};
use medmesh_protocol::peer::{Action, Config, Event, Peer};
use medmesh_protocol::roster::{Chain, Member, Role, Roster};
use medmesh_testkit::{key, member, signed_by};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const LATENCY: Duration = Duration::from_millis(20);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Delivery {
    Gossip {
        to: usize,
        from: MemberId,
        bytes: Vec<u8>,
    },
    Payload {
        to: usize,
        from: MemberId,
        id: ContentId,
        data: Option<Vec<u8>>,
    },
    Trained {
        to: usize,
        params: Vec<u32>,
    },
    Timeout {
        to: usize,
    },
}

pub struct Net {
    pub peers: Vec<Peer>,
    pub index: BTreeMap<MemberId, usize>,
    pub queue: BinaryHeap<Reverse<(Duration, u64, Delivery)>>,
    pub seq: u64,
    pub now: Duration,
    pub rng: ChaCha8Rng,
    pub events: Vec<(usize, Event)>,
    /// Peers whose "training" sends the sign-flipped, amplified model (`50 − 10·x`) instead.
    pub attackers: Vec<usize>,
    /// Every gossip message sent, by sender index, in order.
    pub sent: Vec<(usize, Vec<u8>)>,
    /// Each peer's roster group.
    pub groups: Vec<String>,
    /// Gossip messages and payloads delivered between peers of different groups.
    pub across: u64,
}

/// The keys of members 1..=`n`: `keys(n)[i]` is the key of member `i + 1` of [`chain`].
pub fn keys(n: usize) -> Vec<Keypair> {
    (1..=n)
        .map(|i| key(u8::try_from(i).expect("at most 255 members")))
        .collect()
}

/// A genesis roster (threshold 2) of members 1..=`roles.len()` with `roles`, signed by all of
/// them.
pub fn chain(roles: &[Role]) -> Chain {
    grouped_chain(roles, &vec![String::new(); roles.len()])
}

/// [`chain`] with each member in the roster group `groups[i]`.
pub fn grouped_chain(roles: &[Role], groups: &[String]) -> Chain {
    let members = (1..)
        .zip(roles)
        .zip(groups)
        .map(|((n, role), group)| Member {
            group: group.clone(),
            ..member(n, *role)
        })
        .collect();
    let roster = Roster::genesis("test-mesh", 2, members).expect("valid genesis");
    let signers: Vec<u8> = (1..).take(roles.len()).collect();
    Chain::from_genesis(signed_by(roster, &signers)).expect("founders signed")
}

impl Net {
    /// A mesh of hospitals holding `keys` (the [`keys`] of as many members: the roster is
    /// [`chain`]'s).
    pub fn new(
        keys: &[Keypair],
        configs: Vec<Config>,
        inits: Vec<Vec<f32>>,
        samples: &[u64],
    ) -> Self {
        let roles = vec![Role::Hospital; keys.len()];
        Self::with_chain(chain(&roles), keys, configs, inits, samples)
    }

    pub fn with_chain(
        chain: Chain,
        keys: &[Keypair],
        configs: Vec<Config>,
        inits: Vec<Vec<f32>>,
        samples: &[u64],
    ) -> Self {
        let peers: Vec<Peer> = keys
            .iter()
            .zip(configs)
            .zip(inits)
            .zip(samples)
            .map(|(((k, c), p), s)| Peer::new(c, k.clone(), chain.clone(), p, *s).expect("peer"))
            .collect();
        let index = peers.iter().enumerate().map(|(i, p)| (p.id(), i)).collect();
        let groups = keys
            .iter()
            .map(|k| {
                chain
                    .current()
                    .member(&k.id())
                    .map(|m| m.group.clone())
                    .unwrap_or_default()
            })
            .collect();
        let mut net = Self {
            peers,
            index,
            queue: BinaryHeap::new(),
            seq: 0,
            now: Duration::ZERO,
            rng: ChaCha8Rng::seed_from_u64(99),
            events: Vec::new(),
            attackers: Vec::new(),
            sent: Vec::new(),
            groups,
            across: 0,
        };
        for i in 0..net.peers.len() {
            net.drain(i);
        }
        net
    }

    pub fn push(&mut self, at: Duration, d: Delivery) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, d)));
    }

    pub fn gossip(&mut self, to: usize, from: MemberId, bytes: Vec<u8>) {
        self.push(self.now + LATENCY, Delivery::Gossip { to, from, bytes });
    }

    /// Gossips `message` from peer `i` to every other peer, or to those of its group.
    fn broadcast(&mut self, i: usize, message: &medmesh_protocol::wire::Message, group: bool) {
        let bytes = message.to_bytes();
        let from = self.peers[i].id();
        self.sent.push((i, bytes.clone()));
        for to in 0..self.peers.len() {
            let other_group = self.groups[to] != self.groups[i];
            if to == i || (group && other_group) {
                continue;
            }
            self.across += u64::from(other_group);
            self.gossip(to, from, bytes.clone());
        }
    }

    pub fn drain(&mut self, i: usize) {
        while let Some(action) = self.peers[i].poll_action() {
            match action {
                Action::Train { params, .. } => {
                    // Averaging only: "training" returns the parameters unchanged after a
                    // random delay, so peers drift out of lockstep.
                    let delay = Duration::from_millis(self.rng.random_range(10..200));
                    let attacker = self.attackers.contains(&i);
                    let params = params
                        .iter()
                        .map(|p| if attacker { 50.0 - 10.0 * p } else { *p })
                        .map(f32::to_bits)
                        .collect();
                    self.push(self.now + delay, Delivery::Trained { to: i, params });
                }
                Action::Broadcast(message) => self.broadcast(i, &message, false),
                Action::BroadcastGroup(message) => self.broadcast(i, &message, true),
                Action::Fetch { from, id } => {
                    if self
                        .index
                        .get(&from)
                        .is_some_and(|&j| self.groups[j] != self.groups[i])
                    {
                        self.across += 1;
                    }
                    let data = self
                        .index
                        .get(&from)
                        .and_then(|&j| self.peers[j].payload(&id))
                        .map(|b| b.to_vec());
                    self.push(
                        self.now + 2 * LATENCY,
                        Delivery::Payload {
                            to: i,
                            from,
                            id,
                            data,
                        },
                    );
                }
                Action::Persist(_) => {}
                Action::Event(e) => self.events.push((i, e)),
            }
        }
        if let Some(t) = self.peers[i].poll_timeout() {
            self.push(t.max(self.now), Delivery::Timeout { to: i });
        }
    }

    /// Runs until every peer finished or `limit` virtual time passed.
    pub fn run(&mut self, limit: Duration) {
        while let Some(Reverse((at, _, d))) = self.queue.pop() {
            if at > limit || self.peers.iter().all(Peer::is_finished) {
                break;
            }
            self.now = at;
            let now = at;
            let to = match d {
                Delivery::Gossip { to, from, bytes } => {
                    self.peers[to].handle_message(now, from, &bytes);
                    to
                }
                Delivery::Payload { to, from, id, data } => {
                    self.peers[to].handle_payload(now, from, id, data.map(Bytes::from));
                    to
                }
                Delivery::Trained { to, params } => {
                    let params = params.into_iter().map(f32::from_bits).collect();
                    self.peers[to]
                        .handle_trained(now, params, BTreeMap::new())
                        .expect("trained accepted");
                    to
                }
                Delivery::Timeout { to } => {
                    if self.peers[to].poll_timeout().is_some_and(|t| t <= now) {
                        self.peers[to].handle_timeout(now);
                    }
                    to
                }
            };
            self.drain(to);
        }
    }

    pub fn max_distance_to(&self, target: &[f64]) -> f64 {
        self.peers
            .iter()
            .map(|p| {
                p.params()
                    .iter()
                    .zip(target)
                    .map(|(a, b)| (f64::from(*a) - b).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .fold(0.0, f64::max)
    }

    /// Largest distance of a peer's model to the peers' mean (use after the run: a training
    /// peer's parameters are with its trainer).
    /// Runs until every peer finished (at most `limit` of virtual time) and asserts each ends
    /// within `tolerance` of `target`, relative to `target`'s norm; `what` names the target.
    pub fn run_to_average(&mut self, limit: Duration, target: &[f64], tolerance: f64, what: &str) {
        self.run(limit);
        assert!(self.peers.iter().all(Peer::is_finished), "all peers finish");
        let err = self.max_distance_to(target) / norm(target);
        assert!(err < tolerance, "relative distance to {what}: {err}");
    }

    /// Runs until every peer finished (at most `limit`) and asserts they agree to within 1e-4 of
    /// `start` (the initial spread) near `target`: random pulls do not conserve the weighted
    /// mean exactly, but it stays well inside the initial spread.
    pub fn run_to_consensus(&mut self, limit: Duration, target: &[f64], start: f64) {
        self.run(limit);
        assert!(self.peers.iter().all(Peer::is_finished), "all peers finish");
        let spread = self.spread();
        assert!(
            spread < 1e-4 * start,
            "consensus spread {spread} from {start}"
        );
        let err = self.max_distance_to(target) / start;
        assert!(err < 0.5, "consensus far from the weighted average: {err}");
    }

    pub fn spread(&self) -> f64 {
        let models: Vec<Vec<f32>> = self.peers.iter().map(|p| p.params().to_vec()).collect();
        spread(&models)
    }
}

/// Largest distance of a vector to the vectors' mean.
pub fn spread(vectors: &[Vec<f32>]) -> f64 {
    let n = vectors.len() as f64;
    let mean: Vec<f64> = (0..vectors[0].len())
        .map(|j| vectors.iter().map(|v| f64::from(v[j])).sum::<f64>() / n)
        .collect();
    vectors
        .iter()
        .map(|v| {
            norm(
                &v.iter()
                    .zip(&mean)
                    .map(|(a, b)| f64::from(*a) - b)
                    .collect::<Vec<_>>(),
            )
        })
        .fold(0.0, f64::max)
}

pub fn inits(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

pub fn weighted_average(vectors: &[Vec<f32>], weights: &[u64]) -> Vec<f64> {
    let total: f64 = weights.iter().map(|w| *w as f64).sum();
    (0..vectors[0].len())
        .map(|j| {
            vectors
                .iter()
                .zip(weights)
                .map(|(v, w)| f64::from(v[j]) * *w as f64)
                .sum::<f64>()
                / total
        })
        .collect()
}

pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}
