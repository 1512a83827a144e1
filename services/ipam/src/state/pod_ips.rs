//! Pod IPs in the domain core: who owns them and how they change.
//!
//! A node's pod IPs have one owner. Where the node's route agent runs pods (routeplane-cni), the
//! agent hands them out and reports the whole set ([`IpamState::sync_pod_ips`]); IPAM validates the
//! report against the node's CIDRs and keeps it as the cluster's view, and refuses AllocatePodIP
//! there (two allocators on one CIDR could give one address twice, the agent's working while IPAM
//! is down). Where no agent does, AllocatePodIP hands them out; what it handed out before an agent
//! took over stays reserved, and the agent is told to keep clear of it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use routeplane_net::{Cidr, Family};
use serde::{Deserialize, Serialize};

use super::{
    Change, IpamState, Mutation, NodeEntry, not_registered, release_offset, reserved_in, usable,
};
use crate::error::{IpamError, Result};
use crate::model;

/// The addresses one owner holds on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIps {
    pub ips: Vec<IpAddr>,
    /// Set when the node's route agent handed them out (an attachment of routeplane-cni).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentPod>,
}

/// What the agent says of one of its attachments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPod {
    /// "namespace/name", when the runtime named the pod.
    #[serde(default)]
    pub pod: String,
}

/// One attachment of an agent's report: owner "containerID/ifname", its addresses, its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedPod {
    pub owner: String,
    pub ips: Vec<IpAddr>,
    pub pod: String,
}

/// The answer to a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    pub accepted: bool,
    /// The generation of the last report applied.
    pub generation: u64,
    /// What AllocatePodIP handed out on the node: off limits to the agent.
    pub reserved: BTreeMap<String, Vec<IpAddr>>,
}

fn reserved_of(entry: &NodeEntry) -> BTreeMap<String, Vec<IpAddr>> {
    entry
        .pods
        .iter()
        .filter(|(_, p)| p.agent.is_none())
        .map(|(o, p)| (o.clone(), p.ips.clone()))
        .collect()
}

fn taken_offset(entry: &mut NodeEntry, ip: IpAddr) {
    let family = Family::of(ip);
    if let (Some(cidr), Some(set)) = (entry.node.cidr_of(family), entry.taken.get_mut(&family))
        && let Some(o) = cidr.offset_of(ip)
    {
        set.insert(o);
    }
}

impl IpamState {
    /// Gives `owner` an address of each wanted family from the node's CIDRs. Idempotent per owner.
    pub fn allocate_pod_ip(
        &mut self,
        node: &str,
        owner: &str,
        family: Option<Family>,
    ) -> Result<(Vec<IpAddr>, Option<Mutation>)> {
        model::validate_owner(owner)?;
        let max = self.max_pods_per_node;
        let entry = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| not_registered(node))?;
        if entry.agent_generation.is_some() {
            return Err(IpamError::FailedPrecondition(format!(
                "node {node}'s pod IPs are handed out by its route agent (routeplane-cni asks it when a container starts); ListPodIPs shows them, and AllocatePodIP serves only nodes without an agent"
            )));
        }
        let wanted: Vec<Cidr> = match family {
            None => entry.node.pod_cidrs.clone(),
            Some(f) => vec![entry.node.cidr_of(f).ok_or_else(|| {
                IpamError::FailedPrecondition(format!("node {node} has no {f} pod CIDR: {f} is not enabled in values.yaml (ipv4.enabled / ipv6.enabled)"))
            })?],
        };
        // One lookup of the owner here and one insert at the end: this runs on every call.
        let held = match entry.pods.get(owner) {
            Some(p) => p.ips.clone(),
            None if entry.pods.len() >= max => {
                return Err(IpamError::Exhausted(format!(
                    "node {node} holds pod IPs for {} owners, the most one node may have ({max}, --max-pods-per-node); release the IPs of pods that are gone",
                    entry.pods.len()
                )));
            }
            None => Vec::new(),
        };
        let mut fresh = Vec::new();
        for cidr in &wanted {
            if held.iter().any(|ip| cidr.contains_addr(*ip)) {
                continue;
            }
            let set = entry.taken.entry(cidr.family()).or_default();
            match set
                .allocate(cidr.size(), |o| reserved_in(cidr, o))
                .and_then(|o| cidr.nth_addr(o))
            {
                Some(ip) => fresh.push(ip),
                None => {
                    for ip in &fresh {
                        release_offset(entry, *ip);
                    }
                    let free = usable(cidr);
                    return Err(IpamError::Exhausted(format!(
                        "node {node}'s pod CIDR {cidr} is full: {free} of {free} pod IPs in use; release pod IPs that are gone or use a shorter clusterPool mask size for new nodes"
                    )));
                }
            }
        }
        let mut ips: Vec<IpAddr> = held
            .iter()
            .chain(&fresh)
            .copied()
            .filter(|ip| wanted.iter().any(|c| c.contains_addr(*ip)))
            .collect();
        ips.sort_by_key(|ip| Family::of(*ip));
        if fresh.is_empty() {
            return Ok((ips, None));
        }
        let mut all = held;
        all.extend(&fresh);
        all.sort_by_key(|ip| Family::of(*ip));
        entry.pods.insert(
            owner.to_string(),
            PodIps {
                ips: all.clone(),
                agent: None,
            },
        );
        self.bump();
        let change = Change::PutPodIps {
            node: node.to_string(),
            owner: owner.to_string(),
            ips: all,
            agent: None,
        };
        Ok((ips, Some(self.mutation(vec![change], None))))
    }

    /// Releases what `owner` holds (nothing is not an error); an agent's attachment is refused.
    pub fn release_pod_ip(
        &mut self,
        node: &str,
        owner: &str,
    ) -> Result<(Vec<IpAddr>, Option<Mutation>)> {
        let entry = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| not_registered(node))?;
        if entry.pods.get(owner).is_some_and(|p| p.agent.is_some()) {
            return Err(IpamError::FailedPrecondition(format!(
                "{owner} on node {node} was handed out by the node's route agent: it is released when its container goes (CNI DEL or GC), not through IPAM"
            )));
        }
        let Some(held) = entry.pods.remove(owner) else {
            return Ok((Vec::new(), None));
        };
        for ip in &held.ips {
            release_offset(entry, *ip);
        }
        self.bump();
        let change = Change::DeletePodIps {
            node: node.to_string(),
            owner: owner.to_string(),
        };
        Ok((held.ips, Some(self.mutation(vec![change], None))))
    }

    /// The pod IPs held on `node`, by owner, in owner order.
    pub fn pod_ips(&self, node: &str) -> Result<BTreeMap<String, PodIps>> {
        let pods = &self.entry(node)?.pods;
        Ok(pods.iter().map(|(o, p)| (o.clone(), p.clone())).collect())
    }

    /// Applies the route agent's report of every pod IP it holds on `node`: validated whole, then
    /// the node's agent-held addresses become exactly these. A report older than the last one
    /// applied changes nothing (`accepted` false).
    pub fn sync_pod_ips(
        &mut self,
        node: &str,
        generation: u64,
        report: Vec<ReportedPod>,
    ) -> Result<(SyncOutcome, Option<Mutation>)> {
        let entry = self.nodes.get(node).ok_or_else(|| not_registered(node))?;
        let reserved = reserved_of(entry);
        let reported: BTreeMap<String, PodIps> =
            validate_report(entry, &reserved, report, self.max_pods_per_node)?;
        let current: BTreeMap<&String, &PodIps> = entry
            .pods
            .iter()
            .filter(|(_, p)| p.agent.is_some())
            .collect();
        let unchanged = current.len() == reported.len()
            && reported.iter().all(|(o, p)| current.get(o) == Some(&p));
        let stored = entry.agent_generation;
        let outcome = |accepted: bool, generation: u64| SyncOutcome {
            accepted,
            generation,
            reserved: reserved.clone(),
        };
        match stored {
            Some(g) if generation < g || (generation == g && !unchanged) => {
                return Ok((outcome(false, g), None));
            }
            Some(g) if generation == g => return Ok((outcome(true, g), None)),
            _ => {}
        }
        let mut changes = Vec::new();
        for owner in current.keys().filter(|o| !reported.contains_key(**o)) {
            changes.push(Change::DeletePodIps {
                node: node.to_string(),
                owner: (*owner).clone(),
            });
        }
        for (owner, pod) in &reported {
            if current.get(owner) != Some(&pod) {
                changes.push(Change::PutPodIps {
                    node: node.to_string(),
                    owner: owner.clone(),
                    ips: pod.ips.clone(),
                    agent: pod.agent.clone(),
                });
            }
        }
        changes.push(Change::PutPodSync {
            node: node.to_string(),
            generation,
        });
        let Some(entry) = self.nodes.get_mut(node) else {
            return Err(not_registered(node));
        };
        let gone: Vec<IpAddr> = entry
            .pods
            .values()
            .filter(|p| p.agent.is_some())
            .flat_map(|p| p.ips.clone())
            .collect();
        for ip in gone {
            release_offset(entry, ip);
        }
        entry.pods.retain(|_, p| p.agent.is_none());
        for (owner, pod) in reported {
            for ip in &pod.ips {
                taken_offset(entry, *ip);
            }
            entry.pods.insert(owner, pod);
        }
        entry.agent_generation = Some(generation);
        self.bump();
        let m = self.mutation(changes, None);
        Ok((outcome(true, generation), Some(m)))
    }
}

/// A report is taken whole or not at all: every address in the node's CIDR of its family, off the
/// network, router and broadcast addresses, at most one per family per attachment, none twice,
/// none held by an AllocatePodIP owner.
fn validate_report(
    entry: &NodeEntry,
    reserved: &BTreeMap<String, Vec<IpAddr>>,
    report: Vec<ReportedPod>,
    max_pods: usize,
) -> Result<BTreeMap<String, PodIps>> {
    let node = &entry.node.name;
    if report.len() > max_pods {
        return Err(IpamError::InvalidArgument(format!(
            "node {node}'s report lists {} pods: a node may have at most {max_pods} (--max-pods-per-node)",
            report.len()
        )));
    }
    let held_by_ipam: BTreeMap<IpAddr, &String> = reserved
        .iter()
        .flat_map(|(o, ips)| ips.iter().map(move |ip| (*ip, o)))
        .collect();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for pod in report {
        model::validate_owner(&pod.owner)?;
        if reserved.contains_key(&pod.owner) {
            return Err(IpamError::FailedPrecondition(format!(
                "owner {:?} on node {node} is held through AllocatePodIP, not by the agent",
                pod.owner
            )));
        }
        let mut families = BTreeSet::new();
        for ip in &pod.ips {
            let family = Family::of(*ip);
            let cidr = entry.node.cidr_of(family).ok_or_else(|| {
                IpamError::InvalidArgument(format!(
                    "pod IP {ip} of {} is {family} but node {node} has no {family} pod CIDR (its CIDRs: {})",
                    pod.owner,
                    cidrs(entry)
                ))
            })?;
            match cidr.offset_of(*ip) {
                Some(o) if !reserved_in(&cidr, o) => {}
                Some(_) => {
                    return Err(IpamError::InvalidArgument(format!(
                        "pod IP {ip} of {} is the network, router or broadcast address of node {node}'s pod CIDR {cidr}",
                        pod.owner
                    )));
                }
                None => {
                    return Err(IpamError::InvalidArgument(format!(
                        "pod IP {ip} of {} lies outside node {node}'s pod CIDRs ({})",
                        pod.owner,
                        cidrs(entry)
                    )));
                }
            }
            if !families.insert(family) {
                return Err(IpamError::InvalidArgument(format!(
                    "{} reports two {family} pod IPs on node {node}: an attachment has one per family",
                    pod.owner
                )));
            }
            if let Some(owner) = held_by_ipam.get(ip) {
                return Err(IpamError::FailedPrecondition(format!(
                    "pod IP {ip} of {} on node {node} is held by {owner} (AllocatePodIP): one address, two owners",
                    pod.owner
                )));
            }
            if let Some(other) = seen.insert(*ip, pod.owner.clone()) {
                return Err(IpamError::InvalidArgument(format!(
                    "pod IP {ip} is reported for both {other} and {} on node {node}",
                    pod.owner
                )));
            }
        }
        let mut ips = pod.ips;
        ips.sort_by_key(|ip| Family::of(*ip));
        out.insert(
            pod.owner,
            PodIps {
                ips,
                agent: Some(AgentPod { pod: pod.pod }),
            },
        );
    }
    Ok(out)
}

fn cidrs(entry: &NodeEntry) -> String {
    entry
        .node
        .pod_cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
