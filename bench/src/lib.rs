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

/// The nearest-rank percentile `p` (0–100] of `v`: with fewer than 100 values, p99 is the worst.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len().max(1)) - 1]
}

/// User and system CPU seconds a process has used, all its threads (/proc/PID/stat utime and
/// stime, in USER_HZ ticks, 100 a second on Linux whatever the kernel's HZ).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ") state".
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub use routeplane_testkit::sh;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 50.0), 5.0);
        assert_eq!(percentile(v.clone(), 99.0), 10.0);
        assert_eq!(percentile(v.clone(), 100.0), 10.0);
        assert_eq!(percentile(v, 1.0), 1.0);
    }
}
