//! # medmesh-node
//!
//! The peer a hospital runs. It drives the sans-IO [`medmesh_protocol::peer::Peer`] and owns
//! everything the protocol must not do: keys, the network, the store and training. Training
//! runs in the `medmesh-train` worker process ([`worker`], crate `medmesh-trainer`), so this
//! crate does not link libtorch; the signed record (store, lineage, bundles) is
//! `medmesh-record`, datasets and model specs are `medmesh-learning`.
//!
//! It holds only what a hospital deploys: the local multi-process launcher for test meshes is
//! `medmesh-lab`.

pub mod admin;
pub mod config;
pub mod keys;
pub mod nat;
pub mod network;
pub mod node;
pub mod storage;
pub mod template;
pub mod trainer;
pub mod validate;
pub mod worker;
