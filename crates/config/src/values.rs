//! Cilium's Helm `values.yaml`. Only the keys that shape routeplane's network are read (the table
//! `READ` below); every other key is collected in [`HelmValues::ignored`] so that a service can list
//! them once at startup. Defaults are Cilium 1.11's chart defaults.

use std::path::Path;

use routeplane_net::{Cidr, Family};
use serde_yaml::Value;

use crate::{ConfigError, read_file};

/// The seed's values.yaml, verbatim: every service's default when no file is given.
const EMBEDDED: &str = include_str!("../../../examples/seed/values.yaml");

const READ: &[&str] = &[
    "autoDirectNodeRoutes",
    "tunnel",
    "ipv4.enabled",
    "ipv6.enabled",
    "bgp.enabled",
    "bgp.announce.loadbalancerIP",
    "bgp.announce.podCIDR",
    "ipam.mode",
    "ipam.operator.clusterPoolIPv4PodCIDR",
    "ipam.operator.clusterPoolIPv4PodCIDRList",
    "ipam.operator.clusterPoolIPv4MaskSize",
    "ipam.operator.clusterPoolIPv6PodCIDR",
    "ipam.operator.clusterPoolIPv6PodCIDRList",
    "ipam.operator.clusterPoolIPv6MaskSize",
];

/// One family's cluster pool: where node CIDRs are carved from, and their size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPool {
    pub family: Family,
    pub cidrs: Vec<Cidr>,
    pub mask_size: u8,
    /// The values.yaml key the CIDRs came from, for error messages.
    pub source_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BgpAnnounce {
    pub pod_cidr: bool,
    pub loadbalancer_ip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    Disabled,
    Vxlan,
    Geneve,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmValues {
    pub ipam_mode: String,
    pub ipv4_enabled: bool,
    pub ipv6_enabled: bool,
    pub ipv4_pool: ClusterPool,
    pub ipv6_pool: ClusterPool,
    pub bgp_enabled: bool,
    pub bgp_announce: BgpAnnounce,
    pub auto_direct_node_routes: bool,
    pub tunnel: Tunnel,
    /// Keys present in the file that routeplane does not act on, as dotted paths.
    pub ignored: Vec<String>,
    /// Remarks worth logging once (a deprecated key shadowed by its replacement, say).
    pub notes: Vec<String>,
}

impl HelmValues {
    /// The embedded default: the seed's values.yaml.
    pub fn embedded() -> HelmValues {
        // The embedded file is tested to parse; a failure here is a build defect, not input.
        #[allow(clippy::expect_used)]
        Self::parse(EMBEDDED, "embedded values.yaml").expect("embedded values.yaml parses")
    }

    pub fn load(path: &Path) -> Result<HelmValues, ConfigError> {
        Self::parse(&read_file(path)?, &path.display().to_string())
    }

    /// The pools of the enabled families, IPv4 first.
    pub fn enabled_pools(&self) -> Vec<&ClusterPool> {
        let mut pools = Vec::new();
        if self.ipv4_enabled {
            pools.push(&self.ipv4_pool);
        }
        if self.ipv6_enabled {
            pools.push(&self.ipv6_pool);
        }
        pools
    }

    pub fn parse(text: &str, origin: &str) -> Result<HelmValues, ConfigError> {
        let root: Value = serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
            origin: origin.to_string(),
            source,
        })?;
        let root = if root.is_null() {
            Value::Mapping(Default::default())
        } else {
            root
        };
        if !root.is_mapping() {
            return Err(ConfigError::invalid(
                origin,
                "(top level)",
                show(&root),
                "a mapping of Helm values",
            ));
        }
        let r = Reader {
            root: &root,
            origin,
        };
        let ipam_mode = r.string("ipam.mode", "cluster-pool")?;
        if ipam_mode != "cluster-pool" {
            return Err(ConfigError::invalid(
                origin,
                "ipam.mode",
                ipam_mode,
                "routeplane implements \"cluster-pool\" (the seed's mode)",
            ));
        }
        let mut notes = Vec::new();
        let ipv4_pool = r.pool(Family::V4, "10.0.0.0/8", 24, &mut notes)?;
        let ipv6_pool = r.pool(Family::V6, "fd00::/104", 120, &mut notes)?;
        let tunnel = match r.string("tunnel", "vxlan")?.as_str() {
            "disabled" => Tunnel::Disabled,
            "vxlan" => Tunnel::Vxlan,
            "geneve" => Tunnel::Geneve,
            other => {
                return Err(ConfigError::invalid(
                    origin,
                    "tunnel",
                    other,
                    "one of disabled, vxlan, geneve",
                ));
            }
        };
        let mut ignored = Vec::new();
        collect_ignored(&root, "", &mut ignored);
        Ok(HelmValues {
            ipam_mode,
            ipv4_enabled: r.bool("ipv4.enabled", true)?,
            ipv6_enabled: r.bool("ipv6.enabled", false)?,
            ipv4_pool,
            ipv6_pool,
            bgp_enabled: r.bool("bgp.enabled", false)?,
            bgp_announce: BgpAnnounce {
                pod_cidr: r.bool("bgp.announce.podCIDR", false)?,
                loadbalancer_ip: r.bool("bgp.announce.loadbalancerIP", false)?,
            },
            auto_direct_node_routes: r.bool("autoDirectNodeRoutes", false)?,
            tunnel,
            ignored,
            notes,
        })
    }
}

struct Reader<'a> {
    root: &'a Value,
    origin: &'a str,
}

impl Reader<'_> {
    /// The value at a dotted path; an explicit `null` counts as absent, as Helm treats it.
    fn get(&self, path: &str) -> Option<&Value> {
        path.split('.')
            .try_fold(self.root, |v, k| v.get(k))
            .filter(|v| !v.is_null())
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ConfigError::invalid(
                self.origin,
                key,
                show(v),
                "true or false",
            )),
        }
    }

    fn string(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(ConfigError::invalid(self.origin, key, show(v), "a string")),
        }
    }

    fn cidr(&self, key: &str, text: &str, family: Family) -> Result<Cidr, ConfigError> {
        let cidr: Cidr = text.parse().map_err(|e: routeplane_net::NetError| {
            ConfigError::invalid(self.origin, key, format!("{text:?}"), e.to_string())
        })?;
        if cidr.family() != family {
            return Err(ConfigError::invalid(
                self.origin,
                key,
                text,
                format!(
                    "this key takes {family} CIDRs, and {text} is {}",
                    cidr.family()
                ),
            ));
        }
        Ok(cidr)
    }

    /// Cilium's rule: a non-empty `clusterPoolIPvXPodCIDRList` wins over the deprecated single key.
    fn pool(
        &self,
        family: Family,
        default_cidr: &str,
        default_mask: u8,
        notes: &mut Vec<String>,
    ) -> Result<ClusterPool, ConfigError> {
        let v = match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        let list_key = format!("ipam.operator.clusterPool{v}PodCIDRList");
        let single_key = format!("ipam.operator.clusterPool{v}PodCIDR");
        let mask_key = format!("ipam.operator.clusterPool{v}MaskSize");
        let list = match self.get(&list_key) {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => self.cidr(&format!("{list_key}[{i}]"), s, family),
                    other => Err(ConfigError::invalid(
                        self.origin,
                        format!("{list_key}[{i}]"),
                        show(other),
                        "a CIDR string",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(ConfigError::invalid(
                    self.origin,
                    &list_key,
                    show(other),
                    "a list of CIDR strings",
                ));
            }
        };
        let (cidrs, source_key) = if list.is_empty() {
            let text = self.string(&single_key, default_cidr)?;
            (vec![self.cidr(&single_key, &text, family)?], single_key)
        } else {
            if self.get(&single_key).is_some() {
                notes.push(format!(
                    "{single_key} is deprecated and ignored because {list_key} is set"
                ));
            }
            (list, list_key)
        };
        let mask_size = match self.get(&mask_key) {
            None => default_mask,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|m| u8::try_from(m).ok())
                .filter(|m| *m <= family.bits())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        self.origin,
                        &mask_key,
                        n.to_string(),
                        format!("a prefix length from 1 to {}", family.bits()),
                    )
                })?,
            Some(other) => {
                return Err(ConfigError::invalid(
                    self.origin,
                    &mask_key,
                    show(other),
                    "a prefix length (a number)",
                ));
            }
        };
        Ok(ClusterPool {
            family,
            cidrs,
            mask_size,
            source_key,
        })
    }
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{v:?}"))
}

/// Dotted paths of the keys that no entry of `READ` consumes. A subtree none of whose keys is read is
/// reported once, by its top key.
fn collect_ignored(value: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(map) = value.as_mapping() else {
        return;
    };
    for (key, child) in map {
        let key = match key {
            Value::String(s) => s.clone(),
            other => show(other),
        };
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        if READ.contains(&path.as_str()) {
            continue;
        }
        let deeper = format!("{path}.");
        if child.is_mapping() && READ.iter().any(|r| r.starts_with(&deeper)) {
            collect_ignored(child, &path, out);
        } else {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_values_load_verbatim() {
        let v = HelmValues::embedded();
        assert_eq!(v.ipam_mode, "cluster-pool");
        assert!(v.ipv4_enabled && !v.ipv6_enabled);
        assert_eq!(v.ipv4_pool.cidrs, vec!["10.5.112.0/21".parse().unwrap()]);
        assert_eq!(v.ipv4_pool.mask_size, 24);
        assert_eq!(
            v.ipv4_pool.source_key,
            "ipam.operator.clusterPoolIPv4PodCIDR"
        );
        assert_eq!(v.ipv6_pool.cidrs, vec!["fd00::/104".parse().unwrap()]);
        assert_eq!(v.ipv6_pool.mask_size, 120);
        assert!(v.bgp_enabled && v.bgp_announce.pod_cidr && v.bgp_announce.loadbalancer_ip);
        assert!(v.auto_direct_node_routes);
        assert_eq!(v.tunnel, Tunnel::Disabled);
        assert_eq!(
            v.ignored,
            [
                "installIptablesRules",
                "ipMasqAgent",
                "kubeProxyReplacement",
                "l2NeighDiscovery",
                "l7Proxy",
                "localRedirectPolicy"
            ]
        );
        assert_eq!(v.enabled_pools().len(), 1);
    }

    #[test]
    fn list_wins_over_deprecated_key_and_unknown_nested_keys_are_reported() {
        let text = "ipam:\n  operator:\n    clusterPoolIPv4PodCIDR: 10.0.0.0/8\n    clusterPoolIPv4PodCIDRList: [10.1.0.0/16, 10.2.0.0/16]\n    extra: 1\nipv6:\n  enabled: true\n";
        let v = HelmValues::parse(text, "t").unwrap();
        assert_eq!(v.ipv4_pool.cidrs.len(), 2);
        assert_eq!(
            v.ipv4_pool.source_key,
            "ipam.operator.clusterPoolIPv4PodCIDRList"
        );
        assert_eq!(v.notes.len(), 1);
        assert_eq!(v.ignored, ["ipam.operator.extra"]);
        assert!(v.ipv6_enabled);
    }

    #[test]
    fn empty_file_gives_chart_defaults() {
        let v = HelmValues::parse("", "t").unwrap();
        assert_eq!(v.ipv4_pool.cidrs, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(v.tunnel, Tunnel::Vxlan);
        assert!(!v.bgp_announce.pod_cidr);
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases = [
            (
                "ipv4:\n  enabled: yes-please\n",
                "t: ipv4.enabled: yes-please is not valid: true or false",
            ),
            (
                "ipam:\n  mode: kubernetes\n",
                "t: ipam.mode: kubernetes is not valid",
            ),
            (
                "tunnel: gre\n",
                "t: tunnel: gre is not valid: one of disabled, vxlan, geneve",
            ),
            (
                "ipam:\n  operator:\n    clusterPoolIPv4PodCIDR: 10.5.112.1/21\n",
                "has host bits set: the network address of that prefix is 10.5.112.0/21",
            ),
            (
                "ipam:\n  operator:\n    clusterPoolIPv4PodCIDRList: [fd00::/104]\n",
                "ipam.operator.clusterPoolIPv4PodCIDRList[0]: fd00::/104 is not valid: this key takes IPv4 CIDRs",
            ),
            (
                "ipam:\n  operator:\n    clusterPoolIPv4MaskSize: 40\n",
                "clusterPoolIPv4MaskSize: 40 is not valid: a prefix length from 1 to 32",
            ),
        ];
        for (text, want) in cases {
            let err = HelmValues::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }
}
