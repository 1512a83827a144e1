//! routeplane BGP: BGP-4 sessions with the ToR routers.
//!
//! Contract: the session state machine (`fsm`) and the wire codec wrapper (`wire`) are pure; every
//! decode failure becomes the NOTIFICATION RFC 4271 §6 prescribes, and nothing outside `wire` sees
//! the codec library's types. No peer can hold the service up: each connection writes through its
//! own task with a bounded queue and a deadline of the hold time (`writer`), sessions get only the
//! latest route table, and IPAM changes that queue up are applied together before the policy
//! recomputes.
// Unsafe code is refused everywhere but in sockopt.rs (one setsockopt call), which allows it.
#![deny(unsafe_code)]

/// The gRPC service name, as health checks and reflection know it.
pub const GRPC_SERVICE: &str = "routeplane.bgp.v1.Bgp";

pub mod fsm;
pub mod grpc;
pub mod message;
pub mod metrics;
pub mod notification;
pub mod operator;
pub mod policy;
pub mod reload;
pub mod rib;
pub mod rib_in;
pub mod router_id;
pub mod server;
pub mod session;
pub mod settings;
pub mod sockopt;
pub mod speaker;
pub mod throttle;
pub mod wire;
pub mod writer;
