//! What IPAM hands out and publishes: nodes with their pod CIDRs, pod-IP allocations, Service IPs,
//! and the events of the Watch feed. Names arriving from clients are validated into newtypes here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use routeplane_net::{Cidr, Family};
use serde::{Deserialize, Serialize};

use crate::error::{IpamError, Result};

/// A persisted, strictly increasing change counter.
pub type Revision = u64;

/// A node as IPAM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// One per enabled family, IPv4 first.
    #[serde(with = "cidr_list")]
    pub pod_cidrs: Vec<Cidr>,
    pub ready: bool,
    /// Drained (DrainNode, or cordoned in Kubernetes): routeplane-bgp announces its prefixes with
    /// RFC 8326's GRACEFUL_SHUTDOWN community, then withdraws them after its drain delay.
    /// Left out of the record when false, so records of nodes never drained read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The drain is the node's agent's own shutdown: it ends when the agent registers again.
    /// An operator's drain or a cordon holds until undone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain_ends_on_register: bool,
    /// Damped for dying and returning too often (`state/liveness.rs`): NotReady however steady
    /// its heartbeat, until the penalty decays. Left out of the record when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_down: bool,
    /// Revision of the last change to this node.
    pub revision: Revision,
}

/// What DrainNode asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Ends the drain, whoever started it.
    End,
    /// Until undone (an operator, a cordon). Turns an agent's drain into one that holds.
    Hold,
    /// The node's agent is shutting down: until it registers again. A drain that holds stays so.
    UntilRegistered,
}

impl Node {
    /// The first usable address of each pod CIDR: Cilium's cilium_host address, reserved for the node.
    pub fn router_ips(&self) -> Vec<IpAddr> {
        self.pod_cidrs
            .iter()
            .filter_map(|c| c.nth_addr(ROUTER_OFFSET))
            .collect()
    }

    pub fn cidr_of(&self, family: Family) -> Option<Cidr> {
        self.pod_cidrs
            .iter()
            .copied()
            .find(|c| c.family() == family)
    }
}

/// Offset of the router IP inside a node CIDR (10.5.114.1 in 10.5.114.0/24).
pub const ROUTER_OFFSET: u128 = 1;

/// A LoadBalancer IP held by a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIp {
    pub service: String,
    pub ip: IpAddr,
    pub pool: String,
}

/// One entry of the Watch feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    NodeUpdated(Node),
    NodeDeleted {
        name: String,
        pod_cidrs: Vec<String>,
    },
    ServiceIpAssigned(ServiceIp),
    ServiceIpReleased(ServiceIp),
    /// One write or delete of operator entries; `deleted` carries kind and key, no value.
    OperatorEntries {
        put: Vec<OperatorEntry>,
        deleted: Vec<OperatorKey>,
    },
}

/// Another service's operator state that IPAM keeps durable and publishes (`state/operator.rs`):
/// routeplane-bgp's peers from AddPeer and paths from AnnouncePath. The value is the owner's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorEntry {
    pub kind: String,
    pub key: String,
    pub value: String,
}

impl OperatorEntry {
    pub fn new(kind: &str, key: &str, value: &str) -> OperatorEntry {
        OperatorEntry {
            kind: kind.into(),
            key: key.into(),
            value: value.into(),
        }
    }

    /// Its name: kind and key.
    pub fn name(&self) -> OperatorKey {
        OperatorKey {
            kind: self.kind.clone(),
            key: self.key.clone(),
        }
    }
}

/// An operator entry's name: its kind and its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OperatorKey {
    pub kind: String,
    pub key: String,
}

/// The longest kind, key and value an operator entry may have.
pub const MAX_OPERATOR_KIND: usize = 32;
pub const MAX_OPERATOR_KEY: usize = 256;
pub const MAX_OPERATOR_VALUE: usize = 16 * 1024;

/// Kinds name what they hold ("bgp-peer"); keys are printable and bounded. They become sled keys
/// (`o/KIND\0KEY`) and travel in every snapshot, hence the bounds.
pub fn validate_operator_key(kind: &str, key: &str) -> Result<()> {
    let kind_ok = !kind.is_empty()
        && kind.len() <= MAX_OPERATOR_KIND
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !kind_ok {
        return Err(IpamError::InvalidArgument(format!(
            "operator entry kind {kind:?} is not valid: use lowercase letters, digits and '-', at most {MAX_OPERATOR_KIND} (e.g. \"bgp-peer\")"
        )));
    }
    if key.is_empty() || key.len() > MAX_OPERATOR_KEY || key.chars().any(char::is_control) {
        return Err(IpamError::InvalidArgument(format!(
            "operator entry key {key:?} of kind {kind} is not valid: give a printable key of 1 to {MAX_OPERATOR_KEY} bytes (e.g. a peer address)"
        )));
    }
    Ok(())
}

pub fn validate_operator_entry(e: &OperatorEntry) -> Result<()> {
    validate_operator_key(&e.kind, &e.key)?;
    if e.value.len() > MAX_OPERATOR_VALUE {
        return Err(IpamError::InvalidArgument(format!(
            "operator entry {}/{}: its value of {} bytes is too large; at most {MAX_OPERATOR_VALUE}",
            e.kind,
            e.key,
            e.value.len()
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionedEvent {
    pub revision: Revision,
    pub event: Event,
}

/// Kubernetes node names are DNS subdomains (RFC 1123): that is what the agent will send.
pub fn validate_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidArgument(format!(
            "node name {name:?} is not valid: use a DNS subdomain of lowercase letters, digits, '-' and '.', at most 253 characters (e.g. \"worker-1\")"
        )))
    }
}

/// Pod-IP owners are opaque (a pod's namespace/name, a container ID) but must be printable and bounded.
pub fn validate_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > 512 || owner.chars().any(|c| c.is_control()) {
        return Err(IpamError::InvalidArgument(format!(
            "owner {owner:?} is not valid: give a non-empty printable identifier of at most 512 bytes, such as \"default/nginx-7d9c\" or a container ID"
        )));
    }
    Ok(())
}

/// Services are named "namespace/name", both DNS labels as Kubernetes requires.
pub fn validate_service(service: &str) -> Result<()> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    match service.split_once('/') {
        Some((ns, name)) if label(ns) && label(name) => Ok(()),
        _ => Err(IpamError::InvalidArgument(format!(
            "service {service:?} is not valid: write it as \"namespace/name\" with DNS labels, e.g. \"default/ingress\""
        ))),
    }
}

/// The most labels a node may carry, and their keys' and values' bytes together: a node's labels
/// travel in every Watch snapshot, so they are capped (Kubernetes caps a Node's labels only by its
/// object size; real nodes carry a few dozen).
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_BYTES: usize = 16 * 1024;

/// Label keys and values as Kubernetes bounds them (a prefix/name key, a value of at most 63
/// characters), at most [`MAX_LABELS`] of them in [`MAX_LABEL_BYTES`].
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if labels.len() > MAX_LABELS || bytes > MAX_LABEL_BYTES {
        return Err(IpamError::InvalidArgument(format!(
            "{} labels of {bytes} bytes are too many: a node may carry at most {MAX_LABELS} labels of {MAX_LABEL_BYTES} bytes (keys and values together)",
            labels.len()
        )));
    }
    let valid_chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    for (k, v) in labels {
        if k.is_empty() || k.len() > 317 || !valid_chars(k) {
            return Err(IpamError::InvalidArgument(format!(
                "label key {k:?} is not valid: use an optional DNS prefix and a name of letters, digits, '-', '_' and '.', e.g. \"kubernetes/route\""
            )));
        }
        if v.len() > 63 || !valid_chars(v) {
            return Err(IpamError::InvalidArgument(format!(
                "label {k}={v:?}: the value is not valid: at most 63 letters, digits, '-', '_' and '.'"
            )));
        }
    }
    Ok(())
}

/// Serialises CIDRs as their text so persisted records stay readable.
mod cidr_list {
    use routeplane_net::Cidr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(cidrs: &[Cidr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(cidrs.iter().map(|c| c.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes() {
        assert!(validate_node_name("worker-1.dc1").is_ok());
        for bad in ["", "Worker", "-a", "a..b", "a_b", &"x".repeat(254)] {
            let e = validate_node_name(bad).unwrap_err().to_string();
            assert!(e.contains("is not valid"), "{bad}: {e}");
        }
        assert!(validate_service("default/ingress").is_ok());
        for bad in ["ingress", "default/", "/x", "Default/x", "a/b/c"] {
            assert!(validate_service(bad).is_err(), "{bad}");
        }
        assert!(validate_owner("default/nginx-7d9c").is_ok());
        assert!(validate_owner("").is_err());
        assert!(validate_owner("a\0b").is_err());
    }

    #[test]
    fn label_sets_are_capped_in_count_and_bytes() {
        let many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let e = validate_labels(&many).unwrap_err().to_string();
        assert!(e.contains("65 labels") && e.contains("at most 64"), "{e}");
        let big: BTreeMap<String, String> = (0..60)
            .map(|i| {
                (
                    format!("example.com/{}{i}", "k".repeat(250)),
                    "v".repeat(63),
                )
            })
            .collect();
        let e = validate_labels(&big).unwrap_err().to_string();
        assert!(e.contains("16384 bytes"), "{e}");
        let fine: BTreeMap<String, String> = (0..MAX_LABELS)
            .map(|i| (format!("kubernetes.io/k{i}"), "v".repeat(63)))
            .collect();
        assert!(validate_labels(&fine).is_ok());
    }

    #[test]
    fn labels_are_bounded() {
        let ok: BTreeMap<_, _> =
            [("kubernetes/route".to_string(), "bgp-peer-83".to_string())].into();
        assert!(validate_labels(&ok).is_ok());
        let bad: BTreeMap<_, _> = [("k".to_string(), "has space".to_string())].into();
        assert!(
            validate_labels(&bad)
                .unwrap_err()
                .to_string()
                .contains("k=\"has space\"")
        );
    }

    #[test]
    fn router_ip_is_first_usable_address() {
        let n = Node {
            name: "a".into(),
            addresses: vec![],
            labels: BTreeMap::new(),
            pod_cidrs: vec![
                "10.5.114.0/24".parse().unwrap(),
                "fd00::100/120".parse().unwrap(),
            ],
            ready: true,
            draining: false,
            drain_ends_on_register: false,
            held_down: false,
            revision: 1,
        };
        assert_eq!(
            n.router_ips(),
            vec![
                "10.5.114.1".parse::<IpAddr>().unwrap(),
                "fd00::101".parse().unwrap()
            ]
        );
        let json = serde_json::to_string(&n).unwrap();
        assert!(json.contains("\"10.5.114.0/24\""));
        assert_eq!(serde_json::from_str::<Node>(&json).unwrap(), n);
    }
}
