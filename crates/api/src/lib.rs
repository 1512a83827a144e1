//! routeplane's gRPC APIs, generated from `proto/` at build time with protox and tonic-prost-build.
//!
//! Contract: one module per API package (`ipam::v1` is `routeplane.ipam.v1`), and
//! [`FILE_DESCRIPTOR_SET`], the encoded descriptors of all of them, for server reflection.
#![forbid(unsafe_code)]

pub mod ipam {
    pub mod v1 {
        tonic::include_proto!("routeplane.ipam.v1");
    }
}

pub mod bgp {
    pub mod v1 {
        tonic::include_proto!("routeplane.bgp.v1");
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("routeplane.agent.v1");
    }
}

/// Encoded `FileDescriptorSet` of every routeplane API, for tonic-reflection.
/// The largest gRPC message any routeplane server or client decodes, set explicitly on each (as
/// tonic's default is today): requests are small (a SyncPodIPs report of a full node is under
/// 1 MiB), and the Watch snapshot is cut into chunks of about 1 MiB so that no consumer meets the
/// limit however many nodes there are.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/routeplane_descriptor.bin"));
