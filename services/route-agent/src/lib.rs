//! routeplane route agent: runs on every node, registers it with IPAM and keeps its lease, and
//! installs routes to the other nodes' pod CIDRs.
//!
//! Contract: every route the agent installs carries its netlink protocol number, and it never
//! changes or deletes a route without it. What to install (`desired`) and what to change
//! (`reconcile`) are pure functions; netlink sits behind `kernel`.
#![forbid(unsafe_code)]

/// The gRPC service name, as health checks and reflection know it.
pub const GRPC_SERVICE: &str = "routeplane.agent.v1.Agent";

pub mod agent;
pub mod batch;
pub mod desired;
pub mod ebpf;
pub mod grpc;
pub mod kernel;
pub mod lpm;
pub mod metrics;
pub mod node_object;
pub mod reconcile;
