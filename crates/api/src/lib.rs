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
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/routeplane_descriptor.bin"));
