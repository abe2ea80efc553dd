//! # medmesh-lab
//!
//! Local meshes on one machine, for the demo and the peer's multi-process tests: [`mesh`] makes
//! every site of a dataset a hospital with its own key, store, config and `medmesh run`
//! process on loopback, signs the founders' roster, waits for the outcomes and reports them;
//! [`quality`] repeats it over seeds and summarizes each hospital's figures.
//! [`programs`] finds (and for tests, builds) the peer's two programs. [`netlab`] builds a real
//! network of namespaces, NAT routers and a shaped link on one machine (root only).
//!
//! Nothing here is special-cased in the peer, and nothing here is part of what a hospital
//! deploys: the lab only writes configs and starts the real binaries.

pub mod mesh;
pub mod netlab;
pub mod programs;
pub mod quality;
