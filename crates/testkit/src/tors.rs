//! The seed's two ToRs as real routers in a [`NodeLab`]: BIRD 2 in the lab's router namespaces,
//! peered with routeplane-bgp running in `ctl` beside routeplane-ipam (10.4.94.250). ToR 0 is r94
//! (eBGP, AS 64524, 10.4.36.239) and ToR 1 is r83 (iBGP, AS 64512, 10.4.36.250) — the seed's two
//! kinds of peer — both without node selectors, so that every node's pod CIDR reaches both. For the
//! failover scenarios: take a node down, then ask each ToR when its route left.
//!
//! Everything stays inside the lab's namespaces: routeplane-bgp dials the routers' core addresses
//! through r94, and its own gRPC and metrics listen on loopback in `ctl`.

use std::path::PathBuf;
use std::time::Duration;

use crate::bird::{birdc, parse_routes};
use crate::lab::{IPAM_ADDR, NodeLab};
use crate::{Service, bin};

/// (address, our AS, its AS) of each ToR.
pub const TORS: [(&str, u32, u32); 2] =
    [("10.4.36.239", 64513, 64524), ("10.4.36.250", 64512, 64512)];

/// routeplane-bgp's metrics in `ctl`.
pub const BGP_METRICS: &str = "127.0.0.1:9952";

/// routeplane-bgp's gRPC API in `ctl` (a port of the lab's own namespace).
pub const BGP_GRPC: &str = "127.0.0.1:9180";

/// IPAM's metrics in `ctl` (as [`NodeLab::start_ipam`] starts it).
pub const IPAM_METRICS: &str = "127.0.0.1:9951";

fn bird_conf(tor: usize) -> String {
    let (address, ours, theirs) = TORS[tor];
    let ipam = IPAM_ADDR.split(':').next().unwrap_or_default();
    // Each reaches the other's segment through the other: a static route lets BIRD resolve the
    // next hops (the nodes) there.
    let (igp, hop) = match tor {
        0 => ("route 10.4.83.0/24 via 10.4.36.250", "  multihop 2;\n"),
        _ => ("route 10.4.94.0/24 via 10.4.36.239", ""),
    };
    format!(
        "log stderr all;\nrouter id {address};\nprotocol device {{}}\nprotocol direct {{ ipv4; }}\nprotocol static {{ ipv4; {igp}; }}\n\
         protocol bgp routeplane {{\n  local {address} as {theirs};\n  neighbor {ipam} as {ours};\n{hop}\
         \x20 error wait time 1, 5;\n  ipv4 {{ import all; export none; }};\n}}\n"
    )
}

fn bgp_config() -> String {
    TORS.iter()
        .fold("peers:\n".to_string(), |mut s, (address, ours, theirs)| {
            s.push_str(&format!(
                "  - peer-address: {address}\n    peer-asn: {theirs}\n    my-asn: {ours}\n"
            ));
            s
        })
}

impl NodeLab {
    /// BIRD on both routers, then routeplane-bgp in `ctl` (with `bgp_extra` flags) following
    /// IPAM; returns once both sessions are Established. Call after [`NodeLab::with_routers`] and
    /// once IPAM runs.
    pub fn start_tors(&mut self, bgp_extra: &[&str]) {
        self.start_tors_with(bgp_extra, ["", ""]);
    }

    /// As [`NodeLab::start_tors`], with `tor_extra[i]` appended to ToR i's BIRD configuration
    /// (more protocols: peers of the benchmarks' own).
    pub fn start_tors_with(&mut self, bgp_extra: &[&str], tor_extra: [&str; 2]) {
        assert_eq!(self.routers.len(), 2, "start_tors needs with_routers");
        self.ctl
            .ip(&["route", "add", "10.4.36.0/24", "via", "10.4.94.1"]);
        for (tor, extra) in tor_extra.into_iter().enumerate() {
            let ns = self.routers[tor].name().to_string();
            self.spawn_bird(&format!("bird{tor}"), &ns, &(bird_conf(tor) + extra));
        }
        self.certs.make(&["bgp/bgp"], None);
        let config = self.dir.join("bgp-config.yaml");
        std::fs::write(&config, bgp_config()).expect("bgp-config.yaml");
        let mut args: Vec<String> = [
            "--bgp-config",
            config.to_str().unwrap_or_default(),
            "--ipam",
            &format!("https://{IPAM_ADDR}"),
            "--bgp-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            BGP_GRPC,
            "--metrics-listen",
            BGP_METRICS,
            "--connect-retry",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.certs.service_flags("bgp/bgp"));
        args.extend(bgp_extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bgp = Service::spawn("bgp", Some(self.ctl.name()), &bin("routeplane-bgp"), &args);
        self.services.push(bgp);
        self.wait(
            "both ToRs establish their session with routeplane-bgp",
            Duration::from_secs(30),
            || (0..2).all(|t| self.tor_established(t)),
        );
    }

    /// ToR `tor`'s BIRD control socket.
    pub fn tor_socket(&self, tor: usize) -> PathBuf {
        self.dir.join(format!("bird{tor}.ctl"))
    }

    /// Whether ToR `tor`'s session with routeplane-bgp is Established (false while BIRD starts).
    pub fn tor_established(&self, tor: usize) -> bool {
        birdc(None, &self.tor_socket(tor), "show protocols routeplane").is_ok_and(|t| {
            t.lines()
                .any(|l| l.starts_with("routeplane") && l.contains("Established"))
        })
    }

    /// The prefixes ToR `tor` learned from routeplane-bgp; a BIRD that does not answer fails the
    /// test (an empty table must mean no routes, never no answer).
    pub fn tor_prefixes(&self, tor: usize) -> Vec<String> {
        self.tor_prefixes_from(tor, "routeplane")
    }

    /// The prefixes ToR `tor` learned from its BIRD protocol `protocol`.
    pub fn tor_prefixes_from(&self, tor: usize, protocol: &str) -> Vec<String> {
        let text = birdc(
            None,
            &self.tor_socket(tor),
            &format!("show route protocol {protocol}"),
        )
        .unwrap_or_else(|e| panic!("ToR {tor}: {e}\n{}", self.logs()));
        parse_routes(&text).into_iter().map(|p| p.prefix).collect()
    }

    /// BIRD in node `node`'s namespace on configuration `conf` (a node speaking BGP itself, as
    /// Cilium's and MetalLB's speakers do), its process named `bird-NODE`.
    pub fn start_node_bird(&mut self, node: usize, conf: &str) {
        let (name, ns) = (
            self.nodes[node].name.clone(),
            self.nodes[node].ns.name().to_string(),
        );
        self.spawn_bird(&format!("bird-{name}"), &ns, conf);
    }

    /// BIRD named `name` in namespace `ns` on `conf`, its files NAME.conf and NAME.ctl in the
    /// lab's directory (`bird0`, `bird1`: the ToRs, whose sockets [`NodeLab::tor_socket`] names).
    fn spawn_bird(&mut self, name: &str, ns: &str, conf: &str) {
        let file = self.dir.join(format!("{name}.conf"));
        std::fs::write(&file, conf).expect("bird.conf");
        let socket = self.dir.join(format!("{name}.ctl"));
        let bird = Service::spawn(
            name,
            Some(ns),
            std::path::Path::new("bird"),
            &[
                "-f",
                "-c",
                file.to_str().unwrap_or_default(),
                "-s",
                socket.to_str().unwrap_or_default(),
            ],
        );
        self.services.push(bird);
    }

    /// Whether ToR `tor` has a route to `prefix` from routeplane-bgp.
    pub fn tor_has(&self, tor: usize, prefix: &str) -> bool {
        self.tor_prefixes(tor).iter().any(|p| p == prefix)
    }

    /// One call to routeplane-bgp's API with grpcurl (from `ctl`, as the lab's operator).
    pub fn bgp(&self, method: &str, body: &str) -> Result<serde_json::Value, String> {
        self.operator_call(BGP_GRPC, &format!("routeplane.bgp.v1.Bgp/{method}"), body)
    }

    /// IPAM's /metrics (empty when it does not answer).
    pub fn ipam_metrics(&self) -> String {
        crate::scrape(Some(self.ctl.name()), IPAM_METRICS).unwrap_or_default()
    }

    /// One sample of IPAM's /metrics.
    pub fn ipam_metric(&self, sample: &str) -> Option<f64> {
        crate::metric_sample(&self.ipam_metrics(), sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tor_peers_with_routeplane_in_its_own_kind() {
        let r94 = bird_conf(0);
        assert!(r94.contains("local 10.4.36.239 as 64524;"), "{r94}");
        assert!(r94.contains("neighbor 10.4.94.250 as 64513;"), "{r94}");
        let r83 = bird_conf(1);
        assert!(r83.contains("neighbor 10.4.94.250 as 64512;"), "{r83}");
        assert!(r83.contains("route 10.4.94.0/24 via 10.4.36.239"), "{r83}");
        let config = routeplane_config::BgpConfig::parse(&bgp_config(), "lab").unwrap();
        assert_eq!(config.peers.len(), 2);
    }
}
