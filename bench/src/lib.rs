//! What the side-by-side benchmarks share: the prefixes they install and how they summarise runs.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};

use routeplane_net::Cidr;

pub mod agent_e2e;

/// The i-th of a million distinct /28s through 10.0.0.0/8.
pub fn slash28(i: u32) -> Cidr {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    Cidr::containing(IpAddr::V4(Ipv4Addr::from(base + (i % (1 << 20)) * 16)), 28)
        .expect("28 bits fit IPv4")
}

/// The middle value (upper middle for an even count); runs are alternated, so outliers of either
/// tool stay out of the figure.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub use routeplane_testkit::sh;
