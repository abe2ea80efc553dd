//! # medmesh-record
//!
//! The signed record a peer keeps, and what can be proven from it without the network: the
//! crash-safe [`store`] of every signed item and the peer's checkpoint, the [`lineage`] of a
//! model version (who trained it, what it was averaged from, who validated it), [`export`] of
//! a version with its [`bundle`] (lineage, reports, roster chain, manifest), and the bundle's
//! offline verification (`medmesh verify`).
//!
//! It never opens a socket and never starts a training worker: a bundle verifies on a machine
//! that has neither the mesh nor libtorch. Store calls block on the disk; a caller on an async
//! runtime runs them off its event loop.

pub mod bundle;
pub mod export;
pub mod lineage;
pub mod store;

#[cfg(test)]
mod testkit;
