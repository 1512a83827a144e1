//! routeplane-ipam's views: `nodes`, `ipam show` (calicoctl ipam show: usage per pool and per
//! node), `drain NODE`, `watch`.

use std::collections::HashMap;

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_api::ipam::v1::watch_event::Event;
use routeplane_net::{Cidr, Family};
use serde::Serialize;

use crate::cli::Format;
use crate::connect::{Conn, CtlError, request};
use crate::output::{self, Progress, Render, Table};

fn client(c: &Conn) -> IpamClient<tonic::transport::Channel> {
    IpamClient::new(c.channel.clone()).max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES)
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub ready: bool,
    pub draining: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drain_ends_on_register: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held_down: bool,
    pub addresses: Vec<String>,
    pub pod_cidrs: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub revision: u64,
}

impl From<pb::Node> for Node {
    fn from(n: pb::Node) -> Node {
        Node {
            name: n.name,
            ready: n.ready,
            draining: n.draining,
            drain_ends_on_register: n.drain_ends_on_register,
            held_down: n.held_down,
            addresses: n.addresses,
            pod_cidrs: n.pod_cidrs,
            labels: n.labels.into_iter().collect(),
            revision: n.revision,
        }
    }
}

impl Node {
    fn state(&self) -> String {
        let ready = match (self.ready, self.held_down) {
            (true, _) => "Ready",
            (false, false) => "NotReady",
            (false, true) => "NotReady,HeldDown",
        };
        match (self.draining, self.drain_ends_on_register) {
            (false, _) => ready.into(),
            (true, false) => format!("{ready},Draining"),
            (true, true) => format!("{ready},Draining (agent stopped)"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Nodes {
    pub nodes: Vec<Node>,
}

impl Render for Nodes {
    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(&["NAME", "STATUS", "ADDRESSES", "POD CIDRS", "LABELS"]);
        for n in &self.nodes {
            t.row(node_row(n));
        }
        vec![t]
    }
}

fn node_row(n: &Node) -> Vec<String> {
    vec![
        n.name.clone(),
        n.state(),
        n.addresses.join(","),
        n.pod_cidrs.join(","),
        n.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    ]
}

async fn list_nodes(c: &Conn) -> Result<Vec<Node>, CtlError> {
    let listed = c
        .answer(client(c).list_nodes(request(pb::ListNodesRequest {})).await)
        .await?;
    Ok(listed.nodes.into_iter().map(Node::from).collect())
}

pub async fn nodes(c: &Conn) -> Result<Nodes, CtlError> {
    Ok(Nodes {
        nodes: list_nodes(c).await?,
    })
}

#[derive(Debug, Serialize)]
pub struct PodPool {
    pub cidr: String,
    pub mask_size: u32,
    pub node_cidrs_used: u64,
    pub node_cidrs_total: u64,
    pub pod_ips_used: u64,
    pub pod_ips_capacity: u64,
    pub drained: bool,
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct NodeUsage {
    pub node: String,
    pub pod_cidrs: Vec<String>,
    pub pod_ips_used: u64,
    /// Usable pod addresses of its CIDRs: less network, router and (IPv4) broadcast.
    pub pod_ips_capacity: u128,
}

#[derive(Debug, Serialize)]
pub struct ServicePool {
    pub name: String,
    pub addresses: Vec<String>,
    pub used: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub pod_pools: Vec<PodPool>,
    pub nodes: Vec<NodeUsage>,
    pub service_pools: Vec<ServicePool>,
}

fn share(used: u128, of: u128) -> String {
    if of == 0 {
        return "-".into();
    }
    format!("{used}/{of} ({:.0}%)", used as f64 * 100.0 / of as f64)
}

impl Render for Usage {
    fn tables(&self) -> Vec<Table> {
        let mut pools = Table::new(&[
            "POOL",
            "NODE MASK",
            "NODE CIDRS",
            "POD IPS",
            "DRAINED",
            "FROM",
        ])
        .titled("pod CIDR pools");
        for p in &self.pod_pools {
            pools.row(vec![
                p.cidr.clone(),
                format!("/{}", p.mask_size),
                share(p.node_cidrs_used.into(), p.node_cidrs_total.into()),
                share(p.pod_ips_used.into(), p.pod_ips_capacity.into()),
                if p.drained { "yes" } else { "no" }.into(),
                p.source.clone(),
            ]);
        }
        let mut nodes = Table::new(&["NODE", "POD CIDRS", "POD IPS"]).titled("per node");
        for n in &self.nodes {
            nodes.row(vec![
                n.node.clone(),
                n.pod_cidrs.join(","),
                share(n.pod_ips_used.into(), n.pod_ips_capacity),
            ]);
        }
        let mut services =
            Table::new(&["POOL", "ADDRESSES", "LOADBALANCER IPS"]).titled("LoadBalancer pools");
        for s in &self.service_pools {
            services.row(vec![
                s.name.clone(),
                s.addresses.join(","),
                share(s.used.into(), s.total.into()),
            ]);
        }
        vec![pools, nodes, services]
    }
}

/// Usable pod addresses of a node CIDR, as IPAM counts them.
fn usable(cidr: &str) -> u128 {
    cidr.parse::<Cidr>().map_or(0, |c| {
        c.size()
            .saturating_sub(if c.family() == Family::V4 { 3 } else { 2 })
    })
}

pub async fn show(c: &Conn) -> Result<Usage, CtlError> {
    let pools = c
        .answer(client(c).list_pools(request(pb::ListPoolsRequest {})).await)
        .await?;
    let all = list_nodes(c).await?;
    let nodes = match held_per_node(&pools.nodes, all.len()) {
        // A node registered between the two calls is not in the counts: it holds none yet.
        Some(held) => all
            .iter()
            .map(|n| usage(n, held.get(n.name.as_str()).copied().unwrap_or(0)))
            .collect(),
        None => usage_by_node_calls(c, &all).await?,
    };
    Ok(Usage {
        pod_pools: pools
            .pod_pools
            .into_iter()
            .map(|p| PodPool {
                cidr: p.cidr,
                mask_size: p.mask_size,
                node_cidrs_used: p.node_cidrs_used,
                node_cidrs_total: p.node_cidrs_total,
                pod_ips_used: p.pod_ips_used,
                pod_ips_capacity: p.pod_ips_capacity,
                drained: p.drained,
                source: p.source,
            })
            .collect(),
        nodes,
        service_pools: pools
            .service_pools
            .into_iter()
            .map(|s| ServicePool {
                name: s.name,
                addresses: s.addresses,
                used: s.used,
                total: s.total,
            })
            .collect(),
    })
}

/// The pod IPs each node holds, from ListPools — or None when IPAM reported none for nodes it
/// has: an IPAM older than the field, to be asked node by node.
fn held_per_node(reported: &[pb::NodePodIPs], nodes: usize) -> Option<HashMap<&str, u64>> {
    if reported.is_empty() && nodes > 0 {
        return None;
    }
    Some(
        reported
            .iter()
            .map(|n| (n.node.as_str(), n.pod_ips_used))
            .collect(),
    )
}

fn usage(n: &Node, pod_ips_used: u64) -> NodeUsage {
    NodeUsage {
        node: n.name.clone(),
        pod_cidrs: n.pod_cidrs.clone(),
        pod_ips_used,
        pod_ips_capacity: n.pod_cidrs.iter().map(|c| usable(c)).sum(),
    }
}

/// Against an older IPAM: one ListPodIPs per node, which on a large cluster takes a while, so it
/// says how far it got.
async fn usage_by_node_calls(c: &Conn, all: &[Node]) -> Result<Vec<NodeUsage>, CtlError> {
    let progress = Progress::new();
    let mut nodes = Vec::new();
    for (i, n) in all.iter().enumerate() {
        progress.step("reading pod IPs per node", i, all.len());
        let req = request(pb::ListPodIPsRequest {
            node: n.name.clone(),
        });
        let held = match c.answer(client(c).list_pod_i_ps(req).await).await {
            Ok(r) => r.allocations,
            Err(e) => {
                progress.done();
                return Err(e);
            }
        };
        nodes.push(usage(n, held.iter().map(|a| a.ips.len() as u64).sum()));
    }
    progress.done();
    Ok(nodes)
}

#[derive(Debug, Serialize)]
pub struct Drained {
    pub node: Node,
}

impl Render for Drained {
    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(&["NAME", "STATUS", "ADDRESSES", "POD CIDRS", "LABELS"]);
        t.row(node_row(&self.node));
        vec![t]
    }
}

pub async fn drain(c: &Conn, node: &str, cancel: bool) -> Result<Drained, CtlError> {
    let req = request(pb::DrainNodeRequest {
        name: node.to_string(),
        cancel,
        until_registered: false,
    });
    let node = c.answer(client(c).drain_node(req).await).await?;
    Ok(Drained { node: node.into() })
}

pub fn drain_note(d: &Drained, cancel: bool) -> String {
    if cancel {
        format!(
            "{}: drain ended; routeplane-bgp announces its prefixes as before",
            d.node.name
        )
    } else {
        format!(
            "{}: drained; routeplane-bgp announces its prefixes with GRACEFUL_SHUTDOWN (65535:0) and withdraws them after its --drain-delay (30s by default); `routeplanectl drain {} --cancel` ends it",
            d.node.name, d.node.name
        )
    }
}

/// One event of the feed, as printed.
#[derive(Debug, Serialize)]
pub struct Change {
    pub revision: u64,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_ip: Option<(String, String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<(usize, usize)>,
}

impl Change {
    fn of(e: pb::WatchEvent) -> Option<Change> {
        let mut c = Change {
            revision: e.revision,
            kind: "",
            node: None,
            name: String::new(),
            service_ip: None,
            snapshot: None,
        };
        match e.event? {
            Event::Snapshot(s) => {
                c.kind = "snapshot";
                c.snapshot = Some((s.nodes.len(), s.service_ips.len()));
            }
            Event::NodeUpdated(n) => {
                c.kind = "node-updated";
                c.name = n.name.clone();
                c.node = Some(n.into());
            }
            Event::NodeDeleted(n) => {
                c.kind = "node-deleted";
                c.name = n.name;
            }
            Event::ServiceIpAssigned(s) => {
                c.kind = "service-ip-assigned";
                c.name = s.service.clone();
                c.service_ip = Some((s.service, s.ip, s.pool));
            }
            Event::ServiceIpReleased(s) => {
                c.kind = "service-ip-released";
                c.name = s.service.clone();
                c.service_ip = Some((s.service, s.ip, s.pool));
            }
            Event::OperatorEntries(_) | Event::Progress(_) => return None,
        }
        Some(c)
    }

    fn line(&self) -> String {
        let what = match (&self.node, &self.service_ip, self.snapshot) {
            (Some(n), _, _) => format!("{} {} {}", n.name, n.state(), n.pod_cidrs.join(",")),
            (_, Some((service, ip, pool)), _) => format!("{service} {ip} (pool {pool})"),
            (_, _, Some((nodes, ips))) => format!("{nodes} nodes, {ips} LoadBalancer IPs"),
            _ => self.name.clone(),
        };
        format!("{:<10} {:<20} {what}", self.revision, self.kind)
    }
}

pub async fn watch(
    c: &Conn,
    format: Format,
    from_revision: u64,
    count: Option<u64>,
) -> Result<(), CtlError> {
    // No deadline: it runs until interrupted or --count events.
    let req = tonic::Request::new(pb::WatchRequest {
        from_revision,
        operator_entries: false,
    });
    let mut stream = c.answer(client(c).watch(req).await).await?;
    if format == Format::Table {
        println!("{:<10} {:<20} WHAT", "REVISION", "EVENT");
    }
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let event = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => {
                return Err(CtlError::Unreachable {
                    service: c.kind.name,
                    url: c.url.clone(),
                    reason: "the feed ended (the server stopped?)".into(),
                });
            }
            Err(s) => return Err(c.error(s).await),
        };
        let Some(change) = Change::of(event) else {
            continue;
        };
        seen += 1;
        let text = match format {
            Format::Table => change.line() + "\n",
            // One JSON object per line (JSON Lines), one YAML document per event.
            Format::Json => serde_json::to_string(&change)
                .map(|s| s + "\n")
                .map_err(|e| CtlError::Output(e.to_string()))?,
            Format::Yaml => serde_yaml::to_string(&change)
                .map(|s| format!("---\n{s}"))
                .map_err(|e| CtlError::Output(e.to_string()))?,
        };
        output::write(&text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(node: &str, pod_ips_used: u64) -> pb::NodePodIPs {
        pb::NodePodIPs {
            node: node.into(),
            pod_ips_used,
        }
    }

    #[test]
    fn pod_ips_per_node_come_from_list_pools_unless_an_older_ipam_sent_none() {
        let listed = [reported("n1", 3), reported("n2", 0)];
        let held = held_per_node(&listed, 2).unwrap();
        assert_eq!((held["n1"], held["n2"]), (3, 0));
        assert!(
            held_per_node(&[], 2).is_none(),
            "nodes but no counts: ask each"
        );
        assert!(held_per_node(&[], 0).unwrap().is_empty(), "no nodes at all");
    }
}
