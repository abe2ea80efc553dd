//! # medmesh-node
//!
//! The peer a hospital runs. It drives the sans-IO [`medmesh_protocol::peer::Peer`] and owns
//! everything the protocol must not do: files, keys, training and the network. The simulator
//! reuses the parts that are not network-bound (data, learners, metrics).

pub mod admin;
pub mod baseline;
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

#[cfg(test)]
mod testkit;
