//! routeplane IPAM: the only writer of allocation state.
//!
//! Contract: nodes get one pod CIDR per enabled family carved from the cluster pool (Cilium's
//! cluster-pool IPAM); pods get addresses from their node's CIDR, never its network, router or
//! broadcast address; Services get LoadBalancer IPs from bgp-config's address-pools. No address is
//! ever held by two owners, across restarts included. Every change is durable before it is
//! acknowledged — concurrent requests share one write through the store's `journal`: with sled,
//! the write-ahead log (`wal`) synced with sled brought up to date behind it (`materialize`);
//! with etcd (`etcd`), transactions fenced on the revision key — and is then published in
//! revision order on the Watch feed. Both stores hold the same records (`records`). Reads see only
//! what is durable (`image`). Storage that refuses writes (a full or read-only disk, etcd without
//! quorum or out of space) refuses writes with `Unavailable` (`ResourceExhausted` when full)
//! while reads and Watch go on, until it takes them again (`engine`). The domain core (`state`)
//! does no I/O; `journal`, `wal`, `store` (sled), `etcd`, `commit` (group commit and the
//! published view), `materialize`, `engine` and `grpc` (tonic) sit around it.
#![forbid(unsafe_code)]

/// The gRPC service name, as health checks and reflection know it.
pub const GRPC_SERVICE: &str = "routeplane.ipam.v1.Ipam";

/// The health service name that is SERVING while writes are taken: NOT_SERVING in degraded mode
/// (the disk refuses writes; reads and Watch go on, and GRPC_SERVICE stays SERVING) and once the
/// service has failed.
pub const WRITES_HEALTH: &str = "routeplane.ipam.v1.Ipam/writes";

pub mod address_set;
pub mod commit;
pub mod engine;
pub mod error;
pub mod etcd;
pub mod grpc;
pub mod heartbeat;
pub mod heartbeat_datagrams;
pub mod image;
pub mod ipam;
pub mod journal;
pub mod kubernetes;
pub mod lease_clock;
pub mod materialize;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod pod_pools;
pub mod records;
pub mod server;
pub mod service_pools;
pub mod settings;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod store_check;
pub mod wal;
pub mod watch_wire;
