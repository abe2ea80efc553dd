//! A real network on one machine: Linux network namespaces joined by veth pairs and bridges,
//! centre LANs behind nftables masquerading NAT routers, and a shaped link abroad.

pub mod run;
pub mod stranger;
pub mod topology;
