//! # medmesh-simulations
//!
//! Many real [`Peer`]s — the same state machine a hospital's node runs — over a simulated
//! network on a virtual clock. Everything is decided by a seed: link latencies, losses, training
//! times and the peers' own random choices, so a run replays byte for byte.
//!
//! The simulator is a discrete-event loop: a priority queue of deliveries ordered by virtual time
//! (ties broken by insertion order), each handed to its peer, whose actions schedule new
//! deliveries. Gossip goes to every other peer (or to fixed neighbours, or to a random sample of
//! `gossip_reach` peers) after a sampled latency, and may be lost; a payload pull answers after a
//! round trip plus the payload's size over the link bandwidth. Byzantine peers are real peers
//! too: an [`Adversary`] may rewrite what they broadcast (see [`attack`]).
//!
//! Faults, each drawn from its own generator seeded by the run's seed (so a run without them is
//! unchanged): [`Partition`]s that cut the peers into groups and heal, [`Churn`] (peers offline
//! for a while, coming back with their state) and [`Stragglers`] (slow trainers).
//!
//! It never touches a socket or the wall clock except to report how long a run took.
//!
//! The network model lives in `network`, the event loop in `sim`; their items are re-exported
//! here.
//!
//! [`Peer`]: medmesh_protocol::peer::Peer

pub mod attack;
pub mod compare;
pub mod demo;
pub mod native;
pub mod plot;
pub mod scenario;
pub mod synthetic;
pub mod topology;
#[cfg(feature = "torch")]
pub mod torch;

mod network;
mod sim;

pub use network::{Churn, Groups, Network, Outage, Partition, Stragglers};
pub use sim::{
    Adversary, AveragingOnly, Evaluate, Learner, Outbox, Score, Setup, Sim, Stats, Training,
    consensus_distance, genesis, grouped_genesis, keys,
};
