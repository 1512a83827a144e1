//! What each peer should receive, from the IPAM feed and bgp-config — and, from the same decision,
//! why a peer does not receive a prefix (ExplainPrefix). Pure: the speaker passes in the nodes,
//! Service IPs, pools, peers and which sessions are up.
//!
//! - A node's pod CIDRs go to the peers that select the node, next hop = the node's address of the
//!   family, ORIGIN IGP; eBGP peers get AS_PATH [my-asn], iBGP peers an empty AS_PATH and
//!   LOCAL_PREF (RFC 4271 §5.1.2, §5.1.5).
//! - Which peers select a node: those whose `node-selectors` match its labels; a peer without
//!   selectors takes the nodes that no peer's selectors select. With no selectors anywhere that is
//!   every node (MetalLB's rule); with the seed's config it is the seed's split — nodes labelled
//!   `kubernetes/route=bgp-peer-83` to 10.4.36.250/.251, the others to 10.4.36.238/.239.
//! - A LoadBalancer IP goes to every peer, with the eligible nodes (announced, selected by that
//!   peer, with an address of the family) as next hops: one path per node where ADD-PATH send was
//!   negotiated, otherwise one node chosen by rendezvous hashing, so that it moves only when that
//!   node stops being eligible.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use routeplane_config::{AddressPool, NodeSelector, PoolProtocol};
use routeplane_net::{Cidr, Family};

use crate::message::{Nlri, Origin, PathAttributes};
use crate::rib::Routes;

/// LOCAL_PREF sent to iBGP peers when the pool says nothing (RFC 4271 leaves it local; 100 is usual).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// RFC 8326 §3: the well-known GRACEFUL_SHUTDOWN community, 65535:0. Paths of a drained node carry
/// it until they are withdrawn, so that routers that honour it (BIRD, FRR, Junos, IOS XR) move
/// traffic to other paths first.
pub const GRACEFUL_SHUTDOWN: (u16, u16) = (65535, 0);

/// A node as the policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub pod_cidrs: Vec<Cidr>,
    pub ready: bool,
    /// Ready, or NotReady for less than the withdrawal grace period; and not drained for longer
    /// than the drain delay.
    pub announce: bool,
    /// Drained (IPAM's DrainNode): while still announced, its paths carry GRACEFUL_SHUTDOWN.
    pub draining: bool,
    /// Held down by IPAM for flapping (NotReady while its damping penalty decays): for explanations.
    pub held_down: bool,
    /// Stable ADD-PATH identifier of this node's paths.
    pub path_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub service: String,
    pub ip: IpAddr,
    pub pool: String,
}

/// One peer as the policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub address: IpAddr,
    pub my_asn: u32,
    pub peer_asn: u32,
    pub node_selectors: Vec<NodeSelector>,
    /// Negotiated families; `None` while the session is not Established.
    pub families: Option<Vec<Family>>,
    pub add_path_send: Vec<Family>,
    /// Session state, for explanations.
    pub state: String,
}

impl PeerView {
    fn ibgp(&self) -> bool {
        self.my_asn == self.peer_asn
    }
}

/// How an operator announced a prefix through the API. Shared between prefixes announced alike,
/// so that a hundred thousand of them cost little more than their prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OperatorPath {
    pub next_hop: IpAddr,
    /// Only these peers; every peer when empty.
    pub peers: Vec<IpAddr>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<(u16, u16)>,
}

/// values.yaml's bgp.announce switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    pub pod_cidr: bool,
    pub loadbalancer_ip: bool,
}

pub struct Inputs<'a> {
    pub nodes: &'a [NodeView],
    pub services: &'a [ServiceView],
    pub operator: &'a BTreeMap<Cidr, Arc<OperatorPath>>,
    pub pools: &'a [AddressPool],
    pub peers: &'a [PeerView],
    pub announce: Announce,
    /// This speaker is shutting down (SIGTERM with --shutdown-drain): every path it sends carries
    /// GRACEFUL_SHUTDOWN, as a drained node's do.
    pub graceful_shutdown: bool,
}

/// Where a prefix comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    PodCidr { node: String, cidr: Cidr },
    LoadBalancerIp { service: String, pool: String },
    Operator { prefix: Cidr },
}

/// For one source and one peer: the paths sent, or why none is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub peer: IpAddr,
    pub source: Source,
    pub outcome: Result<Vec<(Nlri, PathAttributes)>, String>,
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn show_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "none".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Marks a path of a drained node (RFC 8326 §4): the GRACEFUL_SHUTDOWN community, and to iBGP
/// peers LOCAL_PREF 0 as well, since an iBGP receiver may not act on the community itself (§5).
fn graceful_shutdown(peer: &PeerView, attributes: &mut PathAttributes) {
    if !attributes.communities.contains(&GRACEFUL_SHUTDOWN) {
        attributes.communities.push(GRACEFUL_SHUTDOWN);
    }
    if peer.ibgp() {
        attributes.local_pref = Some(0);
    }
}

impl Inputs<'_> {
    /// Whether `peer` selects `node` (see the module comment for the selector-less rule).
    fn selects(&self, peer: &PeerView, node: &NodeView) -> bool {
        if peer.node_selectors.is_empty() {
            return !self.peers.iter().any(|p| {
                !p.node_selectors.is_empty()
                    && NodeSelector::any_matches(&p.node_selectors, &node.labels)
            });
        }
        NodeSelector::any_matches(&peer.node_selectors, &node.labels)
    }

    fn attributes(
        &self,
        peer: &PeerView,
        next_hop: IpAddr,
        local_pref: Option<u32>,
        communities: Vec<(u16, u16)>,
    ) -> PathAttributes {
        let ibgp = peer.ibgp();
        PathAttributes {
            origin: Origin::Igp,
            as_path: if ibgp { vec![] } else { vec![peer.my_asn] },
            next_hop,
            med: None,
            local_pref: ibgp.then(|| local_pref.unwrap_or(DEFAULT_LOCAL_PREF)),
            communities,
        }
    }

    fn session_ready(&self, peer: &PeerView, family: Family) -> Result<(), String> {
        match &peer.families {
            None => Err(format!(
                "the session with {} is {}, not established",
                peer.address, peer.state
            )),
            Some(f) if !f.contains(&family) => Err(format!(
                "{} unicast was not negotiated with {}",
                family_name(family),
                peer.address
            )),
            Some(_) => Ok(()),
        }
    }

    fn node_cidr(
        &self,
        peer: &PeerView,
        node: &NodeView,
        cidr: &Cidr,
    ) -> Result<Vec<(Nlri, PathAttributes)>, String> {
        if !self.announce.pod_cidr {
            return Err("bgp.announce.podCIDR is false in values.yaml".into());
        }
        if !self.selects(peer, node) {
            return Err(if peer.node_selectors.is_empty() {
                format!(
                    "node {} is selected by another peer's node-selectors, and {} has none",
                    node.name, peer.address
                )
            } else {
                format!(
                    "the node-selectors of {} do not match node {} (labels: {})",
                    peer.address,
                    node.name,
                    show_labels(&node.labels)
                )
            });
        }
        if !node.announce {
            return Err(if node.draining {
                format!("node {} is drained and its drain delay is over", node.name)
            } else if node.held_down {
                format!(
                    "node {} is held down for flapping (IPAM keeps it NotReady until its damping penalty decays)",
                    node.name
                )
            } else {
                format!(
                    "node {} is NotReady and its grace period is over",
                    node.name
                )
            });
        }
        self.session_ready(peer, cidr.family())?;
        let next_hop = node
            .addresses
            .iter()
            .copied()
            .find(|a| Family::of(*a) == cidr.family())
            .ok_or_else(|| {
                format!(
                    "node {} has no {} address to be the next hop",
                    node.name,
                    family_name(cidr.family())
                )
            })?;
        // RFC 7911 §3: once ADD-PATH is negotiated for a family, every NLRI of it carries an identifier.
        let path_id = peer
            .add_path_send
            .contains(&cidr.family())
            .then_some(node.path_id);
        let nlri = Nlri {
            prefix: *cidr,
            path_id,
        };
        let mut attributes = self.attributes(peer, next_hop, None, vec![]);
        if node.draining || self.graceful_shutdown {
            graceful_shutdown(peer, &mut attributes);
        }
        Ok(vec![(nlri, attributes)])
    }

    fn service_ip(
        &self,
        peer: &PeerView,
        svc: &ServiceView,
    ) -> Result<Vec<(Nlri, PathAttributes)>, String> {
        if !self.announce.loadbalancer_ip {
            return Err("bgp.announce.loadbalancerIP is false in values.yaml".into());
        }
        let family = Family::of(svc.ip);
        let pool = self.pools.iter().find(|p| p.name == svc.pool);
        if pool.is_some_and(|p| p.protocol == PoolProtocol::Layer2) {
            return Err(format!(
                "address-pool {:?} is layer2: its addresses are not announced over BGP",
                svc.pool
            ));
        }
        self.session_ready(peer, family)?;
        let advert = pool.and_then(|p| p.bgp_advertisements.first());
        let len = advert.map_or(family.bits(), |a| {
            if family == Family::V4 {
                a.aggregation_length
            } else {
                a.aggregation_length_v6
            }
        });
        let prefix = Cidr::containing(svc.ip, len)
            .ok_or_else(|| format!("aggregation length /{len} does not fit {}", svc.ip))?;
        let (local_pref, communities) = (
            advert.and_then(|a| a.localpref),
            advert.map(|a| a.communities.clone()).unwrap_or_default(),
        );
        let eligible: Vec<(&NodeView, IpAddr)> = self
            .nodes
            .iter()
            .filter(|n| n.announce && self.selects(peer, n))
            .filter_map(|n| {
                Some((
                    n,
                    n.addresses
                        .iter()
                        .copied()
                        .find(|a| Family::of(*a) == family)?,
                ))
            })
            .collect();
        if eligible.is_empty() {
            return Err(format!(
                "no announced node selected by {} has an {} address to be the next hop",
                peer.address,
                family_name(family)
            ));
        }
        let route = |n: &NodeView, nh: IpAddr, path_id: Option<u32>| {
            let mut attributes = self.attributes(peer, nh, local_pref, communities.clone());
            if n.draining || self.graceful_shutdown {
                graceful_shutdown(peer, &mut attributes);
            }
            (Nlri { prefix, path_id }, attributes)
        };
        if peer.add_path_send.contains(&family) {
            return Ok(eligible
                .iter()
                .map(|(n, nh)| route(n, *nh, Some(n.path_id)))
                .collect());
        }
        // One path: a drained node's only while no other node can take the address.
        let undrained = eligible.iter().any(|(n, _)| !n.draining);
        let (n, nh) = eligible
            .iter()
            .filter(|(n, _)| !undrained || !n.draining)
            .max_by_key(|(n, _)| rendezvous(&svc.ip, &n.name))
            .copied()
            .ok_or("no eligible node")?;
        Ok(vec![route(n, nh, None)])
    }

    fn operator_path(
        &self,
        peer: &PeerView,
        prefix: &Cidr,
        path: &OperatorPath,
    ) -> Result<Vec<(Nlri, PathAttributes)>, String> {
        if !path.peers.is_empty() && !path.peers.contains(&peer.address) {
            return Err(format!(
                "the path was announced to {} only",
                path.peers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        self.session_ready(peer, prefix.family())?;
        let mut attrs = self.attributes(
            peer,
            path.next_hop,
            path.local_pref,
            path.communities.clone(),
        );
        attrs.med = path.med;
        if self.graceful_shutdown {
            graceful_shutdown(peer, &mut attrs);
        }
        let path_id = peer.add_path_send.contains(&prefix.family()).then_some(0);
        Ok(vec![(
            Nlri {
                prefix: *prefix,
                path_id,
            },
            attrs,
        )])
    }

    /// For one peer, every source's verdict, lazily: pod CIDRs, LoadBalancer IPs, operator paths.
    fn peer_verdicts<'s>(&'s self, peer: &'s PeerView) -> impl Iterator<Item = Verdict> + 's {
        let verdict = move |source, outcome| Verdict {
            peer: peer.address,
            source,
            outcome,
        };
        let cidrs = self
            .nodes
            .iter()
            .flat_map(|n| n.pod_cidrs.iter().map(move |c| (n, c)));
        let cidrs = cidrs.map(move |(n, c)| {
            verdict(
                Source::PodCidr {
                    node: n.name.clone(),
                    cidr: *c,
                },
                self.node_cidr(peer, n, c),
            )
        });
        let lbs = self.services.iter().map(move |s| {
            verdict(
                Source::LoadBalancerIp {
                    service: s.service.clone(),
                    pool: s.pool.clone(),
                },
                self.service_ip(peer, s),
            )
        });
        let ops = self.operator.iter().map(move |(c, p)| {
            verdict(
                Source::Operator { prefix: *c },
                self.operator_path(peer, c, p),
            )
        });
        cidrs.chain(lbs).chain(ops)
    }

    /// Every verdict, for every source and peer.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.peers
            .iter()
            .flat_map(|p| self.peer_verdicts(p))
            .collect()
    }

    /// What `peer` should have. The first source of an NLRI wins (a pod CIDR and an aggregated
    /// LoadBalancer prefix never coincide: IPAM keeps the pools apart; an operator path that
    /// repeats one of them yields to it). Equal attribute sets are shared, not repeated.
    pub fn desired(&self, peer: &PeerView) -> Routes {
        let mut routes = Routes::new();
        let mut shared: HashMap<PathAttributes, Arc<PathAttributes>> = HashMap::new();
        for (n, a) in self
            .peer_verdicts(peer)
            .filter_map(|v| v.outcome.ok())
            .flatten()
        {
            if let std::collections::btree_map::Entry::Vacant(slot) = routes.entry(n) {
                let a = match shared.get(&a) {
                    Some(s) => Arc::clone(s),
                    None => {
                        let s = Arc::new(a.clone());
                        shared.insert(a, Arc::clone(&s));
                        s
                    }
                };
                slot.insert(a);
            }
        }
        routes
    }

    /// The verdicts that concern `prefix`: for each source of it, each peer's outcome.
    pub fn explain(&self, prefix: &Cidr) -> Vec<Verdict> {
        self.verdicts()
            .into_iter()
            .filter(|v| match &v.source {
                Source::PodCidr { cidr, .. } => cidr == prefix,
                Source::LoadBalancerIp { service, .. } => self
                    .services
                    .iter()
                    .any(|s| &s.service == service && prefix.contains_addr(s.ip)),
                Source::Operator { prefix: p } => p == prefix,
            })
            .collect()
    }
}

/// Highest-random-weight hashing (FNV-1a over address and node name): every speaker picks the
/// same node for an address, and only that node leaving moves it.
fn rendezvous(ip: &IpAddr, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ip.to_string().bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
