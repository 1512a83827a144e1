//! routeplane.agent.v1 over tonic: reads the agent's state. The explanations come from the same
//! decision that installs the routes (`desired::explain`).

use std::net::IpAddr;
use std::sync::Arc;

use routeplane_api::agent::v1 as pb;
use routeplane_runtime::time::rfc3339;
use tonic::{Request, Response, Status};

use crate::agent::{Shared, lock};
use crate::desired::{Explained, PeerNode, explain};
use crate::pods::PodNetwork;

pub struct AgentGrpc {
    shared: Shared,
    pods: Arc<PodNetwork>,
}

impl AgentGrpc {
    pub fn new(shared: Shared, pods: Arc<PodNetwork>) -> pb::agent_server::AgentServer<AgentGrpc> {
        pb::agent_server::AgentServer::new(AgentGrpc { shared, pods })
            .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES)
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
        let pods = self.pods.attachments().len() as u32;
        let free: u128 = self
            .pods
            .usage()
            .iter()
            .map(|(_, used, cap)| cap - used.min(cap))
            .sum();
        let (_, report_pending) = self.pods.reported();
        let s = lock(&self.shared);
        let strings = |v: &[IpAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        let (pod_cidrs, router_ips) = match &s.alloc {
            Some(a) => (
                a.pod_cidrs.iter().map(ToString::to_string).collect(),
                strings(&a.router_ips),
            ),
            None => (Vec::new(), Vec::new()),
        };
        Ok(Response::new(pb::AgentStatus {
            node: s.node.clone(),
            addresses: strings(&s.addresses),
            pod_cidrs,
            router_ips,
            ipam_connected: s.ipam_connected,
            ipam_disconnected_since: s.ipam_disconnected_since.map(rfc3339).unwrap_or_default(),
            ipam_disconnects: s.ipam_disconnects,
            synced: s.synced,
            routes_installed: s.installed.len() as u32,
            last_reconcile: s.last_reconcile.map(rfc3339).unwrap_or_default(),
            last_error: s.last_error.clone(),
            datapath: if s.ebpf_routes_on { "ebpf" } else { "kernel" }.into(),
            ebpf_entries: s.ebpf_routes.len() as u32,
            pods,
            pod_ips_free: u64::try_from(free).unwrap_or(u64::MAX),
            classifiers: s.ebpf_counters.is_some(),
            uplinks: s.uplinks.clone(),
            ebpf_hop_drops: s.ebpf_counters.map(|c| c.hop_drops).unwrap_or_default(),
            pods_report_pending: report_pending,
        }))
    }

    async fn list_routes(
        &self,
        _: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let why = explanations(&self.shared);
        let pods = self.pods.attachments();
        let s = lock(&self.shared);
        let own: Vec<routeplane_net::Cidr> =
            s.alloc.iter().flat_map(|a| a.pod_cidrs.clone()).collect();
        let kernel = s.installed.iter().map(|r| (r, "kernel"));
        let ebpf = s.ebpf_routes.iter().map(|r| (r, "ebpf"));
        let routes = kernel
            .chain(ebpf)
            .map(|(r, datapath)| {
                let mut ifname = s
                    .connected
                    .iter()
                    .find(|c| c.ifindex == r.ifindex)
                    .map(|c| c.ifname.clone())
                    .unwrap_or_default();
                let pod = pods.iter().find(|a| {
                    r.gateway.is_none()
                        && r.destination.prefix_len() == r.destination.family().bits()
                        && a.ips.contains(&r.destination.network())
                });
                let (node, reason) = if own.contains(&r.destination) {
                    (
                        s.node.clone(),
                        "this node's pod CIDR, to its router interface".to_string(),
                    )
                } else if let Some(a) = pod {
                    ifname = a.host_veth.clone();
                    let who = if a.pod.is_empty() {
                        format!("container {}", a.container_id)
                    } else {
                        format!("pod {}", a.pod)
                    };
                    (s.node.clone(), format!("{who} on this node ({})", a.ifname))
                } else {
                    match why.iter().find_map(|e| match e {
                        Explained::Direct { route, node, .. }
                            if route.destination == r.destination =>
                        {
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
                    }) {
                        Some((n, why)) => (n.clone(), format!("node {n} {why}")),
                        None => (
                            String::new(),
                            "stale: removed at the next reconcile".to_string(),
                        ),
                    }
                };
                pb::InstalledRoute {
                    destination: r.destination.to_string(),
                    gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    interface: ifname,
                    reason,
                    node,
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
                    .find(|c| c.contains_addr(ip))
                    .map(ToString::to_string)
            });
            // Which eBPF entry, if any, carries this address, and the counters.
            let ebpf = s
                .ebpf_counters
                .filter(|_| s.ebpf_routes_on)
                .map(|counters| {
                    let entry = s
                        .ebpf_routes
                        .iter()
                        .find(|r| r.destination.contains_addr(ip))
                        .map(|r| r.destination);
                    (entry, (counters.forwarded, counters.passed))
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
        if let Some(cidr) = &own
            && let Some(pod) = self
                .pods
                .attachments()
                .into_iter()
                .find(|a| a.ips.contains(&ip))
        {
            let who = if pod.pod.is_empty() {
                format!("container {}", pod.container_id)
            } else {
                format!("pod {} (container {})", pod.pod, pod.container_id)
            };
            return answer(
                cidr.clone(),
                me,
                "pod",
                format!(
                    "pod: {ip} is {who} on this node, through {} ({})",
                    pod.host_veth, pod.ifname
                ),
            );
        }
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
                            route.gateway.map(|g| g.to_string()).unwrap_or_default()
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
                        route.gateway.map(|g| g.to_string()).unwrap_or_default()
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
