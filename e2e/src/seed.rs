//! The seed's network as the compose stacks build it — its ToRs, its four nodes and their peer
//! groups — and the checks both stack tests make of it: IPAM's view of the nodes, each ToR's routes.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{BirdRoute, Stack, grpcurl, wait_for};

/// A ToR: its compose service, its core address and the BIRD protocol towards the other ToR.
pub struct Tor {
    pub service: &'static str,
    pub core: &'static str,
    pub gateway: &'static str,
    pub to_other: &'static str,
}
pub const TOR_94: Tor = Tor {
    service: "tor-94",
    core: "10.4.36.239",
    gateway: "10.4.94.1",
    to_other: "tor83",
};
pub const TOR_83: Tor = Tor {
    service: "tor-83",
    core: "10.4.36.250",
    gateway: "10.4.83.1",
    to_other: "tor94",
};

/// The four nodes: service (= node name), address, and its ToR (the seed's peer groups: labelled
/// kubernetes/route=bgp-peer-83 to 10.4.36.250, the others to 10.4.36.239).
pub const NODES: [(&str, &str, &Tor); 4] = [
    ("node-94-1", "10.4.94.11", &TOR_94),
    ("node-94-2", "10.4.94.12", &TOR_94),
    ("node-83-1", "10.4.83.11", &TOR_83),
    ("node-83-2", "10.4.83.12", &TOR_83),
];

pub fn other(tor: &Tor) -> &'static Tor {
    if tor.service == TOR_94.service {
        &TOR_83
    } else {
        &TOR_94
    }
}

/// node name -> (pod CIDRs, router IPs), as IPAM has them.
pub type Allocations = BTreeMap<String, (Vec<String>, Vec<String>)>;

/// The allocations, once the IPAM at `ipam` has all four nodes Ready with a pod CIDR each.
pub fn ipam_nodes_at(ipam: &str) -> Result<Allocations, String> {
    let reply = grpcurl(ipam, "routeplane.ipam.v1.Ipam/ListNodes", "{}")?;
    let strings = |node: &Value, key: &str| -> Vec<String> {
        node[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let nodes: Allocations = reply["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["ready"].as_bool() == Some(true))
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                (strings(n, "podCidrs"), strings(n, "routerIps")),
            )
        })
        .collect();
    if nodes.len() == NODES.len() && nodes.values().all(|(cidrs, _)| cidrs.len() == 1) {
        Ok(nodes)
    } else {
        Err(format!("IPAM's ready nodes: {reply}"))
    }
}

/// Whether each ToR holds every node's pod CIDR the way the seed's peer groups say: its own nodes'
/// from routeplane with the node as next hop, the other segment's from the other ToR.
pub fn routers_route_every_node(stack: &Stack, nodes: &Allocations) -> Result<(), String> {
    for tor in [&TOR_94, &TOR_83] {
        let routes = stack.bird_routes(tor.service)?;
        for (name, address, home) in NODES {
            let cidr = &nodes[name].0[0];
            let want = if home.service == tor.service {
                BirdRoute {
                    protocol: "routeplane".into(),
                    via: address.into(),
                }
            } else {
                BirdRoute {
                    protocol: tor.to_other.into(),
                    via: other(tor).core.into(),
                }
            };
            if routes.get(cidr) != Some(&want) {
                return Err(format!(
                    "{}: {cidr} of {name} is {:?}, want {want:?}; all: {routes:?}",
                    tor.service,
                    routes.get(cidr)
                ));
            }
        }
    }
    Ok(())
}

/// Root, a running dockerd with Compose v2, and the images of docker/build-images; a test that
/// lacks one fails, naming it (scripts/test provides them all).
pub fn require_stack(extra_images: &[&str]) {
    routeplane_testkit::privileged::require(&["docker", "grpcurl", "iptables"]);
    let works = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        works(&["compose", "version"]) && works(&["info"]),
        "no running dockerd with Docker Compose v2 (scripts/test installs and starts them)"
    );
    for image in [
        "routeplane-ipam",
        "routeplane-bgp",
        "routeplane-agent",
        "routeplane-bird",
    ]
    .iter()
    .chain(extra_images)
    {
        assert!(
            works(&["image", "inspect", &format!("{image}:latest")]),
            "image {image}:latest is missing: run docker/build-images first"
        );
    }
}

/// IPAM (at `ipam`) gives every node a pod CIDR; both ToRs learn all four, per the seed's peer
/// groups.
pub fn routers_learn_every_node(stack: &Stack, ipam: &str) -> Allocations {
    let (nodes, took) = wait_for("four Ready nodes in IPAM", Duration::from_secs(60), || {
        ipam_nodes_at(ipam)
    });
    println!("IPAM: {nodes:?} after {took:?}");
    let ((), took) = wait_for(
        "every pod CIDR at both ToRs",
        Duration::from_secs(60),
        || routers_route_every_node(stack, &nodes),
    );
    println!("both ToRs route every node's pod CIDR {took:?} after the nodes were Ready");

    nodes
}
