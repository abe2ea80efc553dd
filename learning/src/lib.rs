//! # medmesh-learning
//!
//! What local learning needs, shared by the peer, its training worker and the simulator:
//! datasets described by a schema ([`data`]), model specs and their parameter layout
//! ([`learner`]), evaluation [`metrics`], personalization settings ([`personal`]), differential-privacy accounting ([`privacy`]) and the
//! frames between the peer and its worker ([`frame`]).
//!
//! It must stay free of the network, the database and libtorch: the peer links it without
//! libtorch, the trainer without libp2p, the simulator without either.

pub mod data;
pub mod frame;
pub mod learner;
pub mod metrics;
pub mod personal;
pub mod privacy;
