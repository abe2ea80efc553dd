//! # medmesh-node
//!
//! The peer a hospital runs. It drives the sans-IO [`medmesh_protocol::peer::Peer`] and owns
//! everything the protocol must not do: files, keys, training and the network. The simulator
//! reuses the parts that are not network-bound.

pub mod keys;
