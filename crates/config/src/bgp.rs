//! MetalLB's legacy `bgp-config` (the ConfigMap Cilium 1.11's BGP mode reads), parsed strictly:
//! every struct denies unknown fields, so a misspelt key fails with its name and the valid ones.
//! Values are then checked and turned into typed settings ([`Peer`], [`AddressPool`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use routeplane_net::{Family, IpRange};
use serde::{Deserialize, Serialize};

use crate::selector::{MatchExpression, NodeSelector, Operator};
use crate::{ConfigError, parse_go_duration, read_file};

const EMBEDDED: &str = include_str!("../../../config/bgp-config.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    peers: Vec<PeerSpec>,
    #[serde(default)]
    bgp_communities: BTreeMap<String, String>,
    #[serde(default)]
    address_pools: Vec<RawPool>,
}

/// One peer as bgp-config writes it, before its values are checked: what the file holds and what
/// an AddPeer request is turned into, so that both are checked by [`Peer::from_spec`] alone.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeerSpec {
    pub peer_address: String,
    pub peer_asn: u32,
    pub my_asn: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub ebgp_multihop: bool,
    #[serde(default)]
    pub node_selectors: Vec<SelectorSpec>,
    // routeplane's own keys (MetalLB has none for these):
    #[serde(default)]
    pub ttl_security: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prefixes_restart: Option<String>,
    #[serde(default)]
    pub keep_received: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SelectorSpec {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<ExpressionSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpressionSpec {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPool {
    name: String,
    protocol: String,
    addresses: Vec<String>,
    auto_assign: Option<bool>,
    #[serde(default)]
    avoid_buggy_ips: bool,
    #[serde(default)]
    bgp_advertisements: Vec<RawAdvertisement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAdvertisement {
    aggregation_length: Option<u8>,
    aggregation_length_v6: Option<u8>,
    localpref: Option<u32>,
    #[serde(default)]
    communities: Vec<String>,
}

/// A ConfigMap wrapping the config under `data."config.yaml"`, as `kubectl get cm bgp-config -oyaml` shows it.
#[derive(Debug, Deserialize)]
struct ConfigMap {
    kind: String,
    data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    pub peers: Vec<Peer>,
    pub address_pools: Vec<AddressPool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub peer_address: IpAddr,
    pub peer_asn: u32,
    pub my_asn: u32,
    pub peer_port: u16,
    pub source_address: Option<IpAddr>,
    pub hold_time: Duration,
    pub keepalive_time: Duration,
    pub router_id: Option<Ipv4Addr>,
    pub password: Option<String>,
    pub ebgp_multihop: bool,
    pub node_selectors: Vec<NodeSelector>,
    /// GTSM (RFC 5082): send with TTL 255 and drop the peer's packets that arrive with less.
    pub ttl_security: bool,
    /// The most prefixes the peer may send; one more ends the session with Cease/Maximum Number
    /// of Prefixes Reached (RFC 4486 §4).
    pub max_prefixes: u32,
    /// How long a session ended for too many prefixes waits before it starts again.
    pub max_prefixes_restart: Duration,
    /// Keep the attributes of every received route (ListReceived shows them); without it only the
    /// prefixes are kept, to count them.
    pub keep_received: bool,
}

impl Peer {
    /// A peer from its spec, checked as a bgp-config entry is; `origin` names where it came from
    /// in errors (e.g. "AddPeer").
    pub fn from_spec(spec: PeerSpec, origin: &str) -> Result<Peer, ConfigError> {
        Checker { origin }.peer("", spec)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolProtocol {
    Bgp,
    Layer2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool {
    pub name: String,
    pub protocol: PoolProtocol,
    pub addresses: Vec<IpRange>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub bgp_advertisements: Vec<BgpAdvertisement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpAdvertisement {
    pub aggregation_length: u8,
    pub aggregation_length_v6: u8,
    pub localpref: Option<u32>,
    /// Communities as (ASN, value) pairs, named ones resolved through `bgp-communities`.
    pub communities: Vec<(u16, u16)>,
}

/// MetalLB's default hold time; keepalive defaults to a third of it (RFC 4271 §10 suggests both).
const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(90);
/// A ToR sends a node a default route or a few aggregates; 10,000 leaves room for a full data
/// centre's routes while bounding what a flooding peer costs (about 1 MB of prefixes, README).
pub const DEFAULT_MAX_PREFIXES: u32 = 10_000;
/// BIRD's `receive limit … action restart` waits too; 5 minutes keeps a peer that floods again
/// from resetting the session more than a dozen times an hour.
pub const DEFAULT_MAX_PREFIXES_RESTART: Duration = Duration::from_secs(300);

impl BgpConfig {
    /// routeplane's default: the seed's peers, with the LoadBalancer pool moved off the pod CIDR.
    pub fn embedded() -> BgpConfig {
        // Tested to parse; a failure here is a build defect, not input.
        #[allow(clippy::expect_used)]
        Self::parse(EMBEDDED, "embedded bgp-config.yaml").expect("embedded bgp-config parses")
    }

    pub fn load(path: &Path) -> Result<BgpConfig, ConfigError> {
        Self::parse(&read_file(path)?, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<BgpConfig, ConfigError> {
        let yaml_err = |source| ConfigError::Yaml {
            origin: origin.to_string(),
            source,
        };
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_err)?;
        let raw: RawConfig = if value.get("kind").is_some() {
            let cm: ConfigMap = serde_yaml::from_value(value).map_err(yaml_err)?;
            let inner = cm
                .data
                .get("config.yaml")
                .filter(|_| cm.kind == "ConfigMap")
                .ok_or_else(|| {
                    ConfigError::invalid(
                        origin,
                        "data",
                        format!("kind {}", cm.kind),
                        "a ConfigMap with a data.\"config.yaml\" key",
                    )
                })?;
            let origin = format!("{origin} (data.\"config.yaml\")");
            serde_yaml::from_str(inner).map_err(|source| ConfigError::Yaml { origin, source })?
        } else {
            serde_yaml::from_value(value).map_err(yaml_err)?
        };
        Checker { origin }.config(raw)
    }
}

struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn err(
        &self,
        key: String,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> ConfigError {
        ConfigError::invalid(self.origin, key, value, expected)
    }

    fn config(&self, raw: RawConfig) -> Result<BgpConfig, ConfigError> {
        let peers = raw
            .peers
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.peer(&format!("peers[{i}]."), p))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, p) in peers.iter().enumerate() {
            if peers
                .iter()
                .take(i)
                .any(|q| q.peer_address == p.peer_address && q.peer_port == p.peer_port)
            {
                return Err(self.err(
                    format!("peers[{i}].peer-address"),
                    p.peer_address.to_string(),
                    "an address not already listed (one session per peer)",
                ));
            }
        }
        let mut address_pools = Vec::new();
        for (i, pool) in raw.address_pools.into_iter().enumerate() {
            let pool = self.pool(i, pool, &raw.bgp_communities)?;
            if address_pools
                .iter()
                .any(|p: &AddressPool| p.name == pool.name)
            {
                return Err(self.err(
                    format!("address-pools[{i}].name"),
                    pool.name,
                    "a name not used by another pool",
                ));
            }
            address_pools.push(pool);
        }
        Ok(BgpConfig {
            peers,
            address_pools,
        })
    }

    fn ip(&self, key: String, text: &str) -> Result<IpAddr, ConfigError> {
        text.trim()
            .parse()
            .map_err(|_| self.err(key, text, "an IPv4 or IPv6 address"))
    }

    /// `prefix` starts each key an error names (`peers[2].` in a file, nothing for AddPeer).
    fn peer(&self, prefix: &str, p: PeerSpec) -> Result<Peer, ConfigError> {
        let key = |k: &str| format!("{prefix}{k}");
        let asn = |k: &str, v: u32| {
            if v == 0 {
                Err(self.err(key(k), "0", "an AS number from 1 to 4294967295"))
            } else {
                Ok(v)
            }
        };
        let duration = |k: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.as_deref()
                .map(|t| {
                    parse_go_duration(t)
                        .ok_or_else(|| self.err(key(k), t, "a duration such as 90s or 1m30s"))
                })
                .transpose()
        };
        let hold_time = duration("hold-time", &p.hold_time)?.unwrap_or(DEFAULT_HOLD_TIME);
        // RFC 4271 §4.2: the Hold Time MUST be either zero or at least three seconds.
        if !hold_time.is_zero() && hold_time < Duration::from_secs(3) {
            return Err(self.err(
                key("hold-time"),
                format!("{hold_time:?}"),
                "0s (no keepalives) or at least 3s (RFC 4271 §4.2)",
            ));
        }
        let keepalive_time =
            duration("keepalive-time", &p.keepalive_time)?.unwrap_or(hold_time / 3);
        if !hold_time.is_zero() && keepalive_time >= hold_time {
            return Err(self.err(
                key("keepalive-time"),
                format!("{keepalive_time:?}"),
                format!("shorter than hold-time ({hold_time:?})"),
            ));
        }
        let router_id = match p.router_id.as_deref() {
            None => None,
            Some(t) => Some(t.trim().parse::<Ipv4Addr>().map_err(|_| {
                self.err(
                    key("router-id"),
                    t,
                    "an IPv4 address (a BGP identifier is 32 bits)",
                )
            })?),
        };
        // RFC 5082 §3: GTSM is for peers one hop away; MetalLB's ebgp-multihop names no hop count
        // to lower the minimum by.
        let ttl_security = p.ttl_security;
        if ttl_security && p.ebgp_multihop {
            return Err(self.err(
                key("ttl-security"),
                "true",
                "false when ebgp-multihop is true: GTSM (RFC 5082) accepts only packets sent one hop away",
            ));
        }
        let max_prefixes = match p.max_prefixes {
            Some(0) => {
                return Err(self.err(
                    key("max-prefixes"),
                    "0",
                    "a number of prefixes from 1 to 4294967295",
                ));
            }
            Some(n) => n,
            None => DEFAULT_MAX_PREFIXES,
        };
        let max_prefixes_restart = duration("max-prefixes-restart", &p.max_prefixes_restart)?
            .unwrap_or(DEFAULT_MAX_PREFIXES_RESTART);
        if max_prefixes_restart < Duration::from_secs(1) {
            return Err(self.err(
                key("max-prefixes-restart"),
                format!("{max_prefixes_restart:?}"),
                "at least 1s",
            ));
        }
        let node_selectors = p
            .node_selectors
            .into_iter()
            .enumerate()
            .map(|(j, s)| self.selector(&key(&format!("node-selectors[{j}]")), s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Peer {
            peer_address: self.ip(key("peer-address"), &p.peer_address)?,
            peer_asn: asn("peer-asn", p.peer_asn)?,
            my_asn: asn("my-asn", p.my_asn)?,
            peer_port: match p.peer_port {
                Some(0) => {
                    return Err(self.err(key("peer-port"), "0", "a TCP port from 1 to 65535"));
                }
                Some(port) => port,
                None => 179,
            },
            source_address: p
                .source_address
                .as_deref()
                .map(|t| self.ip(key("source-address"), t))
                .transpose()?,
            hold_time,
            keepalive_time,
            router_id,
            password: match p.password.filter(|s| !s.is_empty()) {
                // Linux's TCP_MD5SIG_MAXKEYLEN.
                Some(pw) if pw.len() > 80 => {
                    return Err(self.err(
                        key("password"),
                        format!("({} bytes)", pw.len()),
                        "a TCP-MD5 password of at most 80 bytes",
                    ));
                }
                other => other,
            },
            ebgp_multihop: p.ebgp_multihop,
            node_selectors,
            ttl_security,
            max_prefixes,
            max_prefixes_restart,
            keep_received: p.keep_received,
        })
    }

    fn selector(&self, key: &str, s: SelectorSpec) -> Result<NodeSelector, ConfigError> {
        let match_expressions = s
            .match_expressions
            .into_iter()
            .enumerate()
            .map(|(k, e)| {
                let key = format!("{key}.match-expressions[{k}]");
                let operator = Operator::parse(&e.operator).ok_or_else(|| {
                    self.err(format!("{key}.operator"), &e.operator, Operator::NAMES)
                })?;
                let needs_values = matches!(operator, Operator::In | Operator::NotIn);
                if needs_values == e.values.is_empty() {
                    let expected = if needs_values {
                        "at least one value for In and NotIn"
                    } else {
                        "no values for Exists and DoesNotExist"
                    };
                    return Err(self.err(
                        format!("{key}.values"),
                        format!("{:?}", e.values),
                        expected,
                    ));
                }
                Ok(MatchExpression {
                    key: e.key,
                    operator,
                    values: e.values,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NodeSelector {
            match_labels: s.match_labels,
            match_expressions,
        })
    }

    fn pool(
        &self,
        i: usize,
        p: RawPool,
        communities: &BTreeMap<String, String>,
    ) -> Result<AddressPool, ConfigError> {
        let key = |k: &str| format!("address-pools[{i}].{k}");
        if p.name.trim().is_empty() {
            return Err(self.err(key("name"), "\"\"", "a non-empty pool name"));
        }
        let protocol = match p.protocol.as_str() {
            "bgp" => PoolProtocol::Bgp,
            "layer2" => PoolProtocol::Layer2,
            other => return Err(self.err(key("protocol"), other, "bgp or layer2")),
        };
        if p.addresses.is_empty() {
            return Err(self.err(
                key("addresses"),
                "[]",
                "at least one CIDR or FIRST-LAST range",
            ));
        }
        let mut addresses: Vec<IpRange> = Vec::new();
        for (j, text) in p.addresses.iter().enumerate() {
            let range: IpRange = text.parse().map_err(|e: routeplane_net::NetError| {
                self.err(key(&format!("addresses[{j}]")), text, e.to_string())
            })?;
            if let Some(other) = addresses.iter().find(|r| r.overlaps(&range)) {
                return Err(self.err(
                    key(&format!("addresses[{j}]")),
                    text,
                    format!("a range that does not overlap {other}, listed before it"),
                ));
            }
            addresses.push(range);
        }
        let bgp_advertisements = p
            .bgp_advertisements
            .into_iter()
            .enumerate()
            .map(|(j, a)| {
                self.advertisement(&key(&format!("bgp-advertisements[{j}]")), a, communities)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AddressPool {
            name: p.name,
            protocol,
            addresses,
            auto_assign: p.auto_assign.unwrap_or(true),
            avoid_buggy_ips: p.avoid_buggy_ips,
            bgp_advertisements,
        })
    }

    fn advertisement(
        &self,
        key: &str,
        a: RawAdvertisement,
        named: &BTreeMap<String, String>,
    ) -> Result<BgpAdvertisement, ConfigError> {
        let length = |k: &str, v: Option<u8>, family: Family| match v {
            None => Ok(family.bits()),
            Some(l) if l <= family.bits() => Ok(l),
            Some(l) => Err(self.err(
                format!("{key}.{k}"),
                l.to_string(),
                format!("a {family} prefix length up to {}", family.bits()),
            )),
        };
        let communities = a
            .communities
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let text = named.get(c).map(String::as_str).unwrap_or(c);
                parse_community(text).ok_or_else(|| {
                    self.err(
                        format!("{key}.communities[{j}]"),
                        c,
                        "ASN:VALUE with two 16-bit numbers, or a name from bgp-communities",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BgpAdvertisement {
            aggregation_length: length("aggregation-length", a.aggregation_length, Family::V4)?,
            aggregation_length_v6: length(
                "aggregation-length-v6",
                a.aggregation_length_v6,
                Family::V6,
            )?,
            localpref: a.localpref,
            communities,
        })
    }
}

fn parse_community(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once(':')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../../examples/seed/bgp-config.yaml");
    const SEED_CONFIGMAP: &str = include_str!("../../../examples/seed/bgp-config.configmap.yaml");

    fn check_seed(c: &BgpConfig) {
        assert_eq!(c.peers.len(), 4);
        let p = &c.peers[0];
        assert_eq!(p.peer_address, "10.4.36.239".parse::<IpAddr>().unwrap());
        assert_eq!((p.peer_asn, p.my_asn, p.peer_port), (64524, 64513, 179));
        assert_eq!(
            (p.hold_time, p.keepalive_time),
            (Duration::from_secs(90), Duration::from_secs(30))
        );
        assert!(p.node_selectors.is_empty());
        let ibgp = &c.peers[2];
        assert_eq!((ibgp.peer_asn, ibgp.my_asn), (64512, 64512));
        let e = &ibgp.node_selectors[0].match_expressions[0];
        assert_eq!(
            (e.key.as_str(), e.operator, e.values.as_slice()),
            (
                "kubernetes/route",
                Operator::In,
                &["bgp-peer-83".to_string()][..]
            )
        );
        assert_eq!(c.address_pools[0].name, "default");
        assert_eq!(c.address_pools[0].protocol, PoolProtocol::Bgp);
        assert!(c.address_pools[0].auto_assign);
    }

    #[test]
    fn seed_bgp_config_loads_verbatim_in_both_forms() {
        let plain = BgpConfig::parse(SEED, "seed").unwrap();
        check_seed(&plain);
        assert_eq!(
            plain.address_pools[0].addresses[0].to_string(),
            "10.5.112.0/21"
        );
        let cm = BgpConfig::parse(SEED_CONFIGMAP, "seed-cm").unwrap();
        assert_eq!(plain, cm);
    }

    #[test]
    fn embedded_default_is_the_seed_with_the_pool_moved() {
        let c = BgpConfig::embedded();
        check_seed(&c);
        assert_eq!(c.address_pools[0].addresses[0].to_string(), "10.5.120.0/21");
    }

    #[test]
    fn misspelt_key_is_named() {
        let text = SEED.replacen("peer-asn: 64524", "peer-asm: 64524", 1);
        let err = BgpConfig::parse(&text, "cfg").unwrap_err().to_string();
        assert!(err.contains("unknown field `peer-asm`"), "{err}");
        assert!(err.contains("peer-asn"), "should list valid keys: {err}");
        let top = format!("{SEED}adress-pools: []\n");
        let err = BgpConfig::parse(&top, "cfg").unwrap_err().to_string();
        assert!(err.contains("unknown field `adress-pools`"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                SEED.replacen("10.4.36.239", "10.4.36.300", 1),
                "peers[0].peer-address: 10.4.36.300 is not valid",
            ),
            (
                SEED.replacen("operator: In", "operator: Within", 1),
                "peers[2].node-selectors[0].match-expressions[0].operator: Within is not valid: In, NotIn",
            ),
            (
                SEED.replacen("protocol: bgp", "protocol: ospf", 1),
                "address-pools[0].protocol: ospf is not valid: bgp or layer2",
            ),
            (
                SEED.replacen("10.5.112.0/21", "10.5.112.0/33", 1),
                "address-pools[0].addresses[0]: 10.5.112.0/33 is not valid",
            ),
            (
                SEED.replacen("my-asn: 64513", "my-asn: 64513\n    hold-time: 2s", 1),
                "peers[0].hold-time: 2s is not valid",
            ),
            (
                SEED.replacen("my-asn: 64513", "my-asn: 0", 1),
                "peers[0].my-asn: 0 is not valid",
            ),
            (
                SEED.replacen(
                    "my-asn: 64513",
                    "my-asn: 64513\n    ttl-security: true\n    ebgp-multihop: true",
                    1,
                ),
                "peers[0].ttl-security: true is not valid: false when ebgp-multihop is true",
            ),
            (
                SEED.replacen("my-asn: 64513", "my-asn: 64513\n    max-prefixes: 0", 1),
                "peers[0].max-prefixes: 0 is not valid: a number of prefixes from 1",
            ),
            (
                SEED.replacen(
                    "my-asn: 64513",
                    "my-asn: 64513\n    max-prefixes-restart: 10ms",
                    1,
                ),
                "peers[0].max-prefixes-restart: 10ms is not valid: at least 1s",
            ),
            (
                SEED.replacen("10.4.36.238", "10.4.36.239", 1),
                "peers[1].peer-address: 10.4.36.239 is not valid",
            ),
            (
                SEED.replacen(
                    "- 10.5.112.0/21",
                    "- 10.5.112.0/21\n      - 10.5.113.10-10.5.113.20",
                    1,
                ),
                "address-pools[0].addresses[1]: 10.5.113.10-10.5.113.20 is not valid: a range that does not overlap 10.5.112.0/21",
            ),
        ];
        for (text, want) in cases {
            let err = BgpConfig::parse(&text, "cfg").unwrap_err().to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn routeplane_peer_keys_and_their_defaults() {
        let c = BgpConfig::parse(SEED, "seed").unwrap();
        let p = &c.peers[0];
        assert!(!p.ttl_security && !p.keep_received);
        assert_eq!(
            (p.max_prefixes, p.max_prefixes_restart),
            (DEFAULT_MAX_PREFIXES, DEFAULT_MAX_PREFIXES_RESTART)
        );
        let text = SEED.replacen(
            "my-asn: 64513",
            "my-asn: 64513\n    ttl-security: true\n    max-prefixes: 50\n    max-prefixes-restart: 1m\n    keep-received: true",
            1,
        );
        let p = &BgpConfig::parse(&text, "t").unwrap().peers[0];
        assert!(p.ttl_security && p.keep_received);
        assert_eq!(
            (p.max_prefixes, p.max_prefixes_restart),
            (50, Duration::from_secs(60))
        );
    }

    #[test]
    fn pool_options_and_advertisements() {
        let text = "bgp-communities:\n  no-export: 65535:65281\naddress-pools:\n- name: lb\n  protocol: bgp\n  auto-assign: false\n  avoid-buggy-ips: true\n  addresses: [10.9.0.10-10.9.0.20, 'fd09::/120']\n  bgp-advertisements:\n  - aggregation-length: 32\n    localpref: 100\n    communities: [no-export, '64512:7']\n";
        let c = BgpConfig::parse(text, "t").unwrap();
        let p = &c.address_pools[0];
        assert!(!p.auto_assign && p.avoid_buggy_ips);
        assert_eq!(p.addresses.len(), 2);
        assert_eq!(
            p.bgp_advertisements[0].communities,
            vec![(65535, 65281), (64512, 7)]
        );
        assert_eq!(p.bgp_advertisements[0].aggregation_length_v6, 128);
    }
}
