//! routeplane route agent: runs on every node, registers it with IPAM and keeps its lease, owns
//! its pods' IPs and wiring (routeplane-cni asks it), and installs routes to the other nodes' pod
//! CIDRs.
//!
//! Contract: every route the agent installs carries its netlink protocol number, and it never
//! changes or deletes a route without it. What to install (`desired`) and what to change
//! (`reconcile`), the pod-IP allocator (`pods::allocator`) are pure; netlink sits behind `kernel`
//! and `pods::wiring`, eBPF behind `ebpf`, the disk behind `pods::store` and `registration`. A pod
//! IP is persisted before it is answered, and handed out from this node's pod CIDRs only, never
//! twice, never one routeplane-ipam reserved.
#![forbid(unsafe_code)]

/// The gRPC service names, as health checks and reflection know them.
pub const GRPC_SERVICE: &str = "routeplane.agent.v1.Agent";
pub const CNI_SERVICE: &str = "routeplane.agent.v1.Cni";

pub mod agent;
pub mod batch;
pub mod cni_install;
pub mod desired;
pub mod ebpf;
pub mod grpc;
pub mod heartbeat;
pub mod kernel;
pub mod lpm;
pub mod metrics;
pub mod node_object;
pub mod pods;
pub mod reconcile;
pub mod registration;
pub mod server;
pub mod settings;
