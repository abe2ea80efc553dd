//! # medmesh-node
//!
//! The peer a hospital runs. It drives the sans-IO [`medmesh_protocol::peer::Peer`] and owns
//! everything the protocol must not do: files, keys, training and the network. Training itself
//! runs in the `medmesh-train` worker process ([`worker`], crate `medmesh-trainer`), so this
//! crate does not link libtorch. The simulator reuses the parts that are not network-bound
//! (data, metrics, privacy accounting).

pub mod admin;
pub mod bundle;
pub mod config;
pub mod data;
pub mod keys;
pub mod learner;
pub mod lineage;
pub mod mesh;
pub mod metrics;
pub mod network;
pub mod node;
pub mod privacy;
pub mod store;
pub mod trainer;
pub mod validate;
pub mod worker;

#[cfg(test)]
mod testkit;
