//! # medmesh-protocol
//!
//! The rules of the medmesh mesh, with no I/O: no sockets, no files, no clock, no OS randomness,
//! no async runtime and no tensor library. Everything here is a pure function or a state machine
//! that takes time and bytes as inputs and hands back actions. The real node (`medmesh-node`, over
//! libp2p) and the simulator (`medmesh-simulations`, over a virtual network) are thin drivers of the
//! same [`peer::Peer`], so what a simulation measures is what hospitals run.
//!
//! Modules, from the bottom up:
//! - [`identity`]: ed25519 member keys, [`identity::Signed`] envelopes and [`identity::Verified`] values.
//! - [`roster`]: the membership chain; admission is a decision of a threshold of members.
//! - [`update`]: a signed model version with its lineage and a payload descriptor; payload encoding.
//! - [`validation`]: a signed report of a model version's metrics on a partner's local data.
//! - [`aggregate`]: averaging rules over flat `f32` parameter vectors, robust ones included.
//! - [`wire`]: the versioned message enum, hard size limits and typed decode errors.
//! - [`peer`]: the sans-IO state machine that runs decentralized learning rounds.
//!
//! See `protocol/README.md` for the order in which a driver calls the peer.

pub mod aggregate;
pub mod identity;
pub mod peer;
pub mod roster;
pub mod update;
pub mod validation;
pub mod wire;
