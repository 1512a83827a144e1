//! What the side-by-side benchmarks share: the prefixes they install and how they summarise runs.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use routeplane_net::Cidr;

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

/// Runs a set-up command (ip, mount, bpftool…); a failure ends the benchmark with its stderr.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
