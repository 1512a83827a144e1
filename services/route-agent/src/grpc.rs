//! routeplane.agent.v1 over tonic: reads the agent's state. The explanations come from the same
//! decision that installs the routes (`desired::explain`).

use std::net::IpAddr;

use routeplane_api::agent::v1 as pb;
use routeplane_runtime::time::rfc3339;
use tonic::{Request, Response, Status};

use crate::agent::{Shared, lock};
use crate::desired::{Explained, PeerNode, explain};

pub struct AgentGrpc {
    shared: Shared,
}

impl AgentGrpc {
    pub fn new(shared: Shared) -> pb::agent_server::AgentServer<AgentGrpc> {
        pb::agent_server::AgentServer::new(AgentGrpc { shared })
    }
}

/// The explanations for every other node's pod CIDRs, from the agent's current view.
fn explanations(shared: &Shared) -> Vec<Explained> {
    let s = lock(shared);
    let peers: Vec<PeerNode> = s
        .nodes
        .values()
        .map(|n| PeerNode {
            name: n.name.clone(),
            addresses: n.addresses.clone(),
            pod_cidrs: n.pod_cidrs.clone(),
        })
        .collect();
    explain(&s.node, &peers, &s.connected, &s.remote_gateways)
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentGrpc {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        let s = lock(&self.shared);
        let alloc = s.alloc.clone().unwrap_or_else(|| crate::agent::Allocation {
            node: s.node.clone(),
            pod_cidrs: vec![],
            router_ips: vec![],
        });
        Ok(Response::new(pb::AgentStatus {
            node: s.node.clone(),
            addresses: s.addresses.iter().map(ToString::to_string).collect(),
            pod_cidrs: alloc.pod_cidrs,
            router_ips: alloc.router_ips,
            ipam_connected: s.ipam_connected,
            synced: s.synced,
            routes_installed: s.installed.len() as u32,
            last_reconcile: s.last_reconcile.map(rfc3339).unwrap_or_default(),
            last_error: s.last_error.clone(),
            datapath: if s.ebpf_counters.is_some() {
                "ebpf"
            } else {
                "kernel"
            }
            .into(),
            ebpf_entries: s.ebpf_routes.len() as u32,
        }))
    }

    async fn list_routes(
        &self,
        _: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let why = explanations(&self.shared);
        let s = lock(&self.shared);
        let kernel = s.installed.iter().map(|r| (r, "kernel"));
        let ebpf = s.ebpf_routes.iter().map(|r| (r, "ebpf"));
        let routes = kernel
            .chain(ebpf)
            .map(|(r, datapath)| {
                let ifname = s
                    .connected
                    .iter()
                    .find(|c| c.ifindex == r.ifindex)
                    .map(|c| c.ifname.clone())
                    .unwrap_or_default();
                let node = why.iter().find_map(|e| match e {
                    Explained::Direct { route, node, .. } if route.destination == r.destination => {
                        Some((node.clone(), "is on the same L2 segment"))
                    }
                    Explained::ViaGateway { route, node, .. }
                        if route.destination == r.destination =>
                    {
                        Some((
                            node.clone(),
                            "is on another segment: through the configured gateway",
                        ))
                    }
                    _ => None,
                });
                pb::InstalledRoute {
                    destination: r.destination.to_string(),
                    gateway: r.gateway.to_string(),
                    interface: ifname,
                    reason: match &node {
                        Some((n, why)) => format!("node {n} {why}"),
                        None => "stale: removed at the next reconcile".to_string(),
                    },
                    node: node.map(|n| n.0).unwrap_or_default(),
                    datapath: datapath.into(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListRoutesResponse { routes }))
    }

    async fn explain_route(
        &self,
        req: Request<pb::ExplainRouteRequest>,
    ) -> Result<Response<pb::ExplainRouteResponse>, Status> {
        let text = req.get_ref().destination.trim().to_string();
        let ip: IpAddr = text.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "destination {text:?} is not an IP address, e.g. 10.5.114.1"
            ))
        })?;
        let (me, own, gateways, ebpf) = {
            let s = lock(&self.shared);
            let own = s.alloc.as_ref().and_then(|a| {
                a.pod_cidrs
                    .iter()
                    .find(|c| {
                        c.parse::<routeplane_net::Cidr>()
                            .is_ok_and(|c| c.contains_addr(ip))
                    })
                    .cloned()
            });
            // Which eBPF entry, if any, carries this address, and the counters.
            let ebpf = s.ebpf_counters.map(|counters| {
                let entry = s
                    .ebpf_routes
                    .iter()
                    .find(|r| r.destination.contains_addr(ip))
                    .map(|r| r.destination);
                (entry, counters)
            });
            (s.node.clone(), own, s.default_gateway.clone(), ebpf)
        };
        let answer = |pod_cidr: String, node: String, kind: &str, explanation: String| {
            let (entry, (forwarded, passed)) = ebpf.unwrap_or((None, (0, 0)));
            let by_ebpf = entry.is_some_and(|e| e.to_string() == pod_cidr);
            Ok(Response::new(pb::ExplainRouteResponse {
                destination: ip.to_string(),
                pod_cidr,
                node,
                kind: kind.into(),
                explanation: if by_ebpf {
                    format!("eBPF (bpf_redirect_neigh, no kernel route): {explanation}")
                } else {
                    explanation
                },
                datapath: if by_ebpf { "ebpf" } else { "kernel" }.into(),
                ebpf_forwarded_packets: forwarded,
                ebpf_passed_packets: passed,
            }))
        };
        if let Some(cidr) = own {
            return answer(
                cidr.clone(),
                me,
                "local",
                format!("local: {cidr} is this node's pod CIDR, on its router interface rp_host"),
            );
        }
        for e in explanations(&self.shared) {
            match e {
                Explained::Direct {
                    route,
                    node,
                    ifname,
                } if route.destination.contains_addr(ip) => {
                    return answer(
                        route.destination.to_string(),
                        node.clone(),
                        "direct",
                        format!(
                            "direct via {} dev {ifname}: same L2 segment as node {node}",
                            route.gateway
                        ),
                    );
                }
                Explained::ViaGateway {
                    route,
                    node,
                    ifname,
                } if route.destination.contains_addr(ip) => {
                    let text = format!(
                        "via the configured gateway {} dev {ifname}: node {node} is on another segment",
                        route.gateway
                    );
                    return answer(route.destination.to_string(), node.clone(), "gateway", text);
                }
                Explained::ViaDefault {
                    destination,
                    node,
                    why,
                } if destination.contains_addr(ip) => {
                    let gw = match &gateways[usize::from(ip.is_ipv6())] {
                        Some((gw, dev)) => format!("default route via {gw} dev {dev}"),
                        None => "no default route on this node".to_string(),
                    };
                    return answer(
                        destination.to_string(),
                        node,
                        "default",
                        format!("{gw}: {why}"),
                    );
                }
                _ => {}
            }
        }
        Err(Status::not_found(format!(
            "{ip} is in no node's pod CIDR known to this agent"
        )))
    }
}
