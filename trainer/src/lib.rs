//! # medmesh-trainer
//!
//! Local training for medmesh with libtorch, through `tch`: the learner for the node's model
//! specs ([`learner::TchLearner`]), the `medmesh-train` worker process the peer drives
//! ([`worker::serve`]; its frames are `medmesh_learning::frame`, the peer's side is `medmesh_node::worker`), and the
//! non-federated baselines ([`baseline`]) and the personalization search ([`personalize`]).
//!
//! This is the only crate of the peer that links libtorch. Keeping it out of `medmesh-node`
//! keeps the long-running peer small (libtorch alone is ~110 MB resident once loaded) and turns a
//! crash inside libtorch into an error the peer reports and recovers from.

pub mod baseline;
pub mod learner;
pub mod personalize;
pub mod worker;
