//! Which kernel routes this node should have (autoDirectNodeRoutes): for every other node whose
//! address lies in a subnet this node is directly connected to, `<pod CIDR> via <address> dev
//! <that interface>`, per family. A node on another segment gets no route — traffic follows the
//! default route to the ToR, which learned the CIDR over BGP — and [`Explained`] says so.

use std::collections::BTreeMap;
use std::net::IpAddr;

use routeplane_net::{Cidr, Family};

/// A route this agent owns: through a gateway (another node, a configured gateway), or on-link
/// (`None`: a pod's address on its veth, this node's pod CIDR on its router interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub destination: Cidr,
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
}

/// A subnet this node is directly connected to, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub subnet: Cidr,
    pub ifindex: u32,
    pub ifname: String,
}

/// Another node as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<Cidr>,
}

/// Why a pod CIDR is or is not routed directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explained {
    Direct {
        route: Route,
        node: String,
        ifname: String,
    },
    /// Another segment, routed through a gateway the operator configured (`--remote-gateway`).
    ViaGateway {
        route: Route,
        node: String,
        ifname: String,
    },
    ViaDefault {
        destination: Cidr,
        node: String,
        why: String,
    },
}

impl Explained {
    pub fn route(&self) -> Option<&Route> {
        match self {
            Explained::Direct { route, .. } | Explained::ViaGateway { route, .. } => Some(route),
            Explained::ViaDefault { .. } => None,
        }
    }
}

/// For each other node's pod CIDR, its route or why it has none. `me` is this node's name;
/// `gateways` are the configured gateways for other segments (at most one per family).
pub fn explain(
    me: &str,
    nodes: &[PeerNode],
    connected: &[Connected],
    gateways: &[IpAddr],
) -> Vec<Explained> {
    let mut out = Vec::new();
    for node in nodes.iter().filter(|n| n.name != me) {
        for cidr in &node.pod_cidrs {
            let family = cidr.family();
            let candidates: Vec<&IpAddr> = node
                .addresses
                .iter()
                .filter(|a| Family::of(**a) == family)
                .collect();
            let direct = candidates.iter().find_map(|a| {
                connected
                    .iter()
                    .find(|c| c.subnet.contains_addr(**a))
                    .map(|c| (**a, c))
            });
            out.push(match direct {
                Some((gateway, c)) => Explained::Direct {
                    route: Route {
                        destination: *cidr,
                        gateway: Some(gateway),
                        ifindex: c.ifindex,
                    },
                    node: node.name.clone(),
                    ifname: c.ifname.clone(),
                },
                None if let Some((gateway, c)) = gateways
                    .iter()
                    .filter(|g| Family::of(**g) == family)
                    .find_map(|g| {
                        connected
                            .iter()
                            .find(|c| c.subnet.contains_addr(*g))
                            .map(|c| (*g, c))
                    }) =>
                {
                    Explained::ViaGateway {
                        route: Route {
                            destination: *cidr,
                            gateway: Some(gateway),
                            ifindex: c.ifindex,
                        },
                        node: node.name.clone(),
                        ifname: c.ifname.clone(),
                    }
                }
                None => Explained::ViaDefault {
                    destination: *cidr,
                    node: node.name.clone(),
                    why: if candidates.is_empty() {
                        format!("node {} has no {family} address", node.name)
                    } else {
                        let addrs: Vec<String> =
                            candidates.iter().map(ToString::to_string).collect();
                        format!(
                            "node {} ({}) is on another segment; the ToR learned {cidr} over BGP",
                            node.name,
                            addrs.join(", ")
                        )
                    },
                },
            });
        }
    }
    out
}

/// The routes this node should have, by destination.
pub fn desired(
    me: &str,
    nodes: &[PeerNode],
    connected: &[Connected],
    gateways: &[IpAddr],
) -> BTreeMap<Cidr, Route> {
    explain(me, nodes, connected, gateways)
        .iter()
        .filter_map(Explained::route)
        .map(|r| (r.destination, *r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, addrs: &[&str], cidrs: &[&str]) -> PeerNode {
        PeerNode {
            name: name.into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn seg94() -> Vec<Connected> {
        vec![
            Connected {
                subnet: "10.4.94.0/24".parse().unwrap(),
                ifindex: 2,
                ifname: "eth0".into(),
            },
            Connected {
                subnet: "fd04:94::/64".parse().unwrap(),
                ifindex: 2,
                ifname: "eth0".into(),
            },
        ]
    }

    #[test]
    fn the_seeds_two_traceroutes() {
        let nodes = [
            node("me", &["10.4.94.11"], &["10.5.112.0/24"]),
            node("same-segment", &["10.4.94.12"], &["10.5.114.0/24"]),
            node("other-segment", &["10.4.83.21"], &["10.5.119.0/24"]),
        ];
        let routes = desired("me", &nodes, &seg94(), &[]);
        assert_eq!(
            routes.len(),
            1,
            "only the same-segment node gets a direct route: {routes:?}"
        );
        let r = routes[&"10.5.114.0/24".parse().unwrap()];
        assert_eq!((r.gateway, r.ifindex), (Some(ip("10.4.94.12")), 2));
        let why = explain("me", &nodes, &seg94(), &[]);
        assert!(why.iter().any(|e| matches!(e, Explained::ViaDefault { why, .. } if why.contains("other-segment (10.4.83.21) is on another segment; the ToR learned 10.5.119.0/24 over BGP"))));
    }

    #[test]
    fn a_configured_gateway_takes_other_segments() {
        let nodes = [
            node("far", &["10.4.83.21"], &["10.5.119.0/24"]),
            node("near", &["10.4.94.12"], &["10.5.114.0/24"]),
        ];
        let gw: IpAddr = "10.4.94.1".parse().unwrap();
        let routes = desired("me", &nodes, &seg94(), &[gw]);
        assert_eq!(routes[&"10.5.119.0/24".parse().unwrap()].gateway, Some(gw));
        assert_eq!(
            routes[&"10.5.114.0/24".parse().unwrap()].gateway,
            Some(ip("10.4.94.12")),
            "same segment stays direct"
        );
        let unreachable: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            desired("me", &nodes, &seg94(), &[unreachable]).len(),
            1,
            "a gateway on no connected subnet is not used"
        );
    }

    #[test]
    fn each_family_uses_its_own_address() {
        let nodes = [
            node(
                "b",
                &["10.4.94.12", "fd04:94::12"],
                &["10.5.114.0/24", "fd00::200/120"],
            ),
            node("c", &["10.4.94.13"], &["fd00::300/120"]),
        ];
        let routes = desired("me", &nodes, &seg94(), &[]);
        assert_eq!(
            routes[&"fd00::200/120".parse().unwrap()].gateway,
            Some(ip("fd04:94::12"))
        );
        assert!(
            !routes.contains_key(&"fd00::300/120".parse().unwrap()),
            "no IPv6 address, no IPv6 route"
        );
        assert!(explain("me", &nodes, &seg94(), &[]).iter().any(|e| matches!(e, Explained::ViaDefault { why, .. } if why == "node c has no IPv6 address")));
    }
}
