//! Nodes from the Kubernetes API, without I/O: what IPAM must do when a Node appears, changes or goes.
//!
//! A Node's InternalIP addresses (ExternalIP where it has none) and its labels become the IPAM
//! node's; a deleted Node's pod CIDRs are released only after a grace period, since a Node
//! object deleted and re-created (a kubelet re-registering, `kubectl replace`) should keep them.
//! The allocation is written back to the Node: always as the annotation [`POD_CIDRS_ANNOTATION`]
//! (routeplane's own record, which any Node may carry), and to `spec.podCIDRs` only while that is
//! empty — Kubernetes allows setting it once, and where kube-controller-manager allocates CIDRs
//! itself (`--allocate-node-cidrs`) its value stays and a warning says they disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use routeplane_net::Cidr;

use crate::model::{Drain, Node};

/// The annotation that carries a node's routeplane pod CIDRs, comma-separated, IPv4 first.
pub const POD_CIDRS_ANNOTATION: &str = "routeplane.io/pod-cidrs";

/// What IPAM needs of a Kubernetes Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeNode {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// `spec.podCIDRs` as the API has it.
    pub spec_pod_cidrs: Vec<String>,
    /// The value of [`POD_CIDRS_ANNOTATION`], if any.
    pub annotated: Option<String>,
    /// Cordoned (`spec.unschedulable`, as `kubectl cordon` and `kubectl drain` set it, or the
    /// `node.kubernetes.io/unschedulable` taint): the IPAM node is drained while it is.
    pub cordoned: bool,
}

/// The taint the node lifecycle controller puts on a cordoned Node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The drain to apply to the IPAM node so that it follows the Node's cordon; None when it does.
/// With the Kubernetes API as the source of nodes, the cordon decides: an operator's DrainNode on
/// such a node holds until the Node next changes. An agent's drain for its own shutdown is left
/// to end when the agent is back (unless the Node is cordoned: then it holds).
pub fn drain_change(node: &KubeNode, held: &Node) -> Option<Drain> {
    match (node.cordoned, held.draining, held.drain_ends_on_register) {
        (true, true, false) | (false, false, _) | (false, true, true) => None,
        (true, _, _) => Some(Drain::Hold),
        (false, true, false) => Some(Drain::End),
    }
}

/// A change to make to a Node object so that it shows IPAM's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBack {
    pub annotation: String,
    /// Set `spec.podCIDRs` (and `spec.podCIDR`), which is empty.
    pub spec: Option<Vec<String>>,
    /// `spec.podCIDRs` holds other CIDRs than IPAM's: say so, change nothing there.
    pub spec_disagrees: bool,
}

/// Whether IPAM must (re-)register a Node: it does not know it, or its addresses or labels changed.
/// A Node without an address yet (a kubelet still starting) is left alone until it has one.
pub fn needs_register(node: &KubeNode, held: Option<&Node>) -> bool {
    if node.addresses.is_empty() {
        return false;
    }
    let addresses: BTreeSet<IpAddr> = node.addresses.iter().copied().collect();
    match held {
        None => true,
        Some(h) => {
            h.addresses.iter().copied().collect::<BTreeSet<_>>() != addresses
                || h.labels != node.labels
        }
    }
}

/// What to write to the Node so that it shows `cidrs`; None when it already does.
pub fn write_back(node: &KubeNode, cidrs: &[Cidr]) -> Option<WriteBack> {
    if cidrs.is_empty() {
        return None;
    }
    let texts: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    let annotation = texts.join(",");
    let spec = node.spec_pod_cidrs.is_empty().then(|| texts.clone());
    let spec_disagrees = !node.spec_pod_cidrs.is_empty() && node.spec_pod_cidrs != texts;
    if node.annotated.as_deref() == Some(annotation.as_str()) && spec.is_none() {
        return None;
    }
    Some(WriteBack {
        annotation,
        spec,
        spec_disagrees,
    })
}

/// Deleted Nodes waiting out their grace period before IPAM releases their pod CIDRs.
#[derive(Debug)]
pub struct PendingReleases {
    grace: Duration,
    due: BTreeMap<String, Instant>,
}

impl PendingReleases {
    pub fn new(grace: Duration) -> PendingReleases {
        PendingReleases {
            grace,
            due: BTreeMap::new(),
        }
    }

    /// The Node is gone: release it at `now` + grace, unless it comes back first. A Node already
    /// waiting keeps its first deadline.
    pub fn deleted(&mut self, name: &str, now: Instant) {
        self.due.entry(name.to_string()).or_insert(now + self.grace);
    }

    /// The Node exists (again): nothing to release.
    pub fn present(&mut self, name: &str) {
        self.due.remove(name);
    }

    /// After a full list of the Nodes: every IPAM node the list lacks is deleted as of `now`
    /// (deletions missed while routeplane-ipam was not watching), every listed one present.
    pub fn listed<'a>(
        &mut self,
        listed: &BTreeSet<String>,
        ipam_nodes: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) {
        self.due.retain(|name, _| !listed.contains(name));
        for name in ipam_nodes {
            if !listed.contains(name) {
                self.deleted(name, now);
            }
        }
    }

    /// The Nodes whose grace has run out by `now`; they leave the list.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &due {
            self.due.remove(name);
        }
        due
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube(name: &str, addr: &str, labels: &[(&str, &str)]) -> KubeNode {
        KubeNode {
            name: name.into(),
            addresses: vec![addr.parse().unwrap()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            spec_pod_cidrs: vec![],
            annotated: None,
            cordoned: false,
        }
    }

    fn held(k: &KubeNode, cidr: &str) -> Node {
        Node {
            name: k.name.clone(),
            addresses: k.addresses.clone(),
            labels: k.labels.clone(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            ready: true,
            draining: false,
            drain_ends_on_register: false,
            held_down: false,
            revision: 1,
        }
    }

    #[test]
    fn the_drain_follows_the_cordon_both_ways() {
        let mut n = kube("worker-1", "10.4.94.11", &[]);
        let mut h = held(&n, "10.5.112.0/24");
        assert_eq!(drain_change(&n, &h), None, "neither cordoned nor drained");
        n.cordoned = true;
        assert_eq!(drain_change(&n, &h), Some(Drain::Hold), "cordoned: drain");
        h.draining = true;
        assert_eq!(drain_change(&n, &h), None, "already drained");
        n.cordoned = false;
        assert_eq!(
            drain_change(&n, &h),
            Some(Drain::End),
            "uncordoned: drain ends"
        );
        // The agent's shutdown drained it: left to end when the agent is back, unless cordoned.
        h.drain_ends_on_register = true;
        assert_eq!(drain_change(&n, &h), None, "the agent's own drain");
        n.cordoned = true;
        assert_eq!(
            drain_change(&n, &h),
            Some(Drain::Hold),
            "cordoned: it holds"
        );
    }

    #[test]
    fn a_new_node_is_registered_and_an_unchanged_one_is_not() {
        let n = kube("worker-1", "10.4.94.11", &[]);
        assert!(needs_register(&n, None));
        assert!(!needs_register(&n, Some(&held(&n, "10.5.112.0/24"))));
    }

    #[test]
    fn a_label_or_address_change_registers_again() {
        let n = kube("worker-1", "10.4.94.11", &[]);
        let h = held(&n, "10.5.112.0/24");
        assert!(needs_register(
            &kube(
                "worker-1",
                "10.4.94.11",
                &[("kubernetes/route", "bgp-peer-83")]
            ),
            Some(&h)
        ));
        assert!(needs_register(
            &kube("worker-1", "10.4.94.12", &[]),
            Some(&h)
        ));
    }

    #[test]
    fn a_node_without_an_address_waits() {
        let mut n = kube("worker-1", "10.4.94.11", &[]);
        n.addresses.clear();
        assert!(!needs_register(&n, None));
    }

    #[test]
    fn the_allocation_goes_to_an_empty_spec_and_the_annotation() {
        let n = kube("worker-1", "10.4.94.11", &[]);
        let w = write_back(&n, &["10.5.112.0/24".parse().unwrap()]).unwrap();
        assert_eq!(w.annotation, "10.5.112.0/24");
        assert_eq!(w.spec, Some(vec!["10.5.112.0/24".to_string()]));
        assert!(!w.spec_disagrees);
    }

    #[test]
    fn a_spec_set_by_someone_else_stays_and_is_reported() {
        let mut n = kube("worker-1", "10.4.94.11", &[]);
        n.spec_pod_cidrs = vec!["10.244.1.0/24".into()];
        let w = write_back(&n, &["10.5.112.0/24".parse().unwrap()]).unwrap();
        assert_eq!(w.spec, None);
        assert!(w.spec_disagrees);
    }

    #[test]
    fn nothing_is_written_when_the_node_shows_the_allocation() {
        let mut n = kube("worker-1", "10.4.94.11", &[]);
        n.spec_pod_cidrs = vec!["10.5.112.0/24".into()];
        n.annotated = Some("10.5.112.0/24".into());
        assert_eq!(write_back(&n, &["10.5.112.0/24".parse().unwrap()]), None);
    }

    #[test]
    fn a_deleted_node_is_released_after_the_grace_unless_it_returns() {
        let t0 = Instant::now();
        let mut p = PendingReleases::new(Duration::from_secs(60));
        p.deleted("a", t0);
        p.deleted("b", t0);
        assert!(p.take_due(t0 + Duration::from_secs(59)).is_empty());
        p.present("b");
        p.deleted("a", t0 + Duration::from_secs(30)); // a second delete keeps the first deadline
        assert_eq!(
            p.take_due(t0 + Duration::from_secs(60)),
            vec!["a".to_string()]
        );
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn a_full_list_catches_deletions_missed_while_not_watching() {
        let t0 = Instant::now();
        let mut p = PendingReleases::new(Duration::from_secs(10));
        p.deleted("back", t0);
        let listed: BTreeSet<String> = ["back".to_string(), "kept".to_string()].into();
        p.listed(&listed, ["back", "kept", "gone"], t0);
        assert_eq!(
            p.take_due(t0 + Duration::from_secs(10)),
            vec!["gone".to_string()]
        );
    }
}
