//! Operator state: the peers and paths added through the API (AddPeer, AnnouncePath), what they
//! may be, and how they outlive this process.
//!
//! They are kept in IPAM as operator entries (kind `bgp-peer` keyed by peer address, its value a
//! bgp-config peer entry as JSON; kind `bgp-path` keyed by prefix), so that they are durable and
//! every routeplane-bgp replica following IPAM applies the same. A request is checked here, written
//! to IPAM, and applied when it comes back on the Watch feed — on this replica as on the others —
//! and the API answers once this replica has applied it. What comes back is checked again as if it
//! were a request: an entry another replica (or another version) wrote that this one cannot take —
//! a path outside its `--announce-allow`, an address its bgp-config already names — is left out
//! and logged, never half-applied.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use routeplane_api::bgp::v1 as pb;
use routeplane_api::ipam::v1 as ipam;
use routeplane_config::{ExpressionSpec, Peer, PeerSpec, SelectorSpec};
use routeplane_net::{Cidr, Family};
use routeplane_runtime::dial::Dialer;
use routeplane_watch::FeedOperatorEntry;
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::transport::Channel;

use crate::policy::OperatorPath;

/// The operator entry kinds routeplane-bgp keeps in IPAM.
pub const PEER_KIND: &str = "bgp-peer";
pub const PATH_KIND: &str = "bgp-path";

/// How many entries go to IPAM in one call (IPAM takes at most 1,000 and 1 MiB).
pub const BATCH: usize = 500;

/// An address from a request field, or INVALID_ARGUMENT naming the field and the text.
pub fn parse_ip(field: &str, text: &str) -> Result<IpAddr, Status> {
    text.trim()
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{field} {text:?} is not an IP address")))
}

/// An AddPeer request as the bgp-config entry it stands for.
pub fn spec_from(r: &pb::AddPeerRequest) -> Result<PeerSpec, Status> {
    let given = |v: &str| (!v.is_empty()).then(|| v.to_string());
    Ok(PeerSpec {
        peer_address: r.peer_address.clone(),
        peer_asn: r.peer_asn,
        my_asn: r.my_asn,
        peer_port: match r.peer_port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                Status::invalid_argument(format!("peerPort {p} is not a TCP port (1 to 65535)"))
            })?),
        },
        source_address: given(&r.source_address),
        hold_time: given(&r.hold_time),
        keepalive_time: given(&r.keepalive_time),
        router_id: given(&r.router_id),
        password: given(&r.password),
        ebgp_multihop: r.ebgp_multihop,
        node_selectors: r
            .node_selectors
            .iter()
            .map(|s| SelectorSpec {
                match_labels: s.match_labels.clone().into_iter().collect(),
                match_expressions: s
                    .match_expressions
                    .iter()
                    .map(|e| ExpressionSpec {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                        values: e.values.clone(),
                    })
                    .collect(),
            })
            .collect(),
        ttl_security: r.ttl_security,
        max_prefixes: (r.max_prefixes != 0).then_some(r.max_prefixes),
        max_prefixes_restart: given(&r.max_prefixes_restart),
        keep_received: r.keep_received,
    })
}

/// A peer from its spec, checked by the same code as the file's entries.
pub fn peer_from(spec: PeerSpec, origin: &str) -> Result<Peer, Status> {
    Peer::from_spec(spec, origin).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// What an operator path may announce to the ToRs. A default route would take over their
/// forwarding, a multicast prefix is no unicast NLRI (RFC 4271 §4.3; it could not be encoded), and
/// the NEXT_HOP must be an address a router can forward to (RFC 4271 §5.1.3): not unspecified,
/// loopback, multicast, broadcast or (IPv6) link-local.
pub fn routable(prefix: &Cidr, next_hop: IpAddr) -> Result<(), String> {
    if prefix.prefix_len() == 0 {
        return Err(format!(
            "prefix {prefix} is a default route: it would draw all of the ToRs' traffic; announce /1 or longer"
        ));
    }
    if prefix.network().is_multicast() {
        return Err(format!(
            "prefix {prefix} is multicast: only unicast prefixes are announced"
        ));
    }
    let unusable = next_hop.is_unspecified()
        || next_hop.is_loopback()
        || next_hop.is_multicast()
        || match next_hop {
            IpAddr::V4(a) => a.is_broadcast(),
            IpAddr::V6(a) => a.is_unicast_link_local(),
        };
    if unusable {
        return Err(format!(
            "nextHop {next_hop} is not an address routers can forward to (unspecified, loopback, multicast, broadcast and link-local are refused): give the node's address"
        ));
    }
    Ok(())
}

/// Operator paths only inside `--announce-allow`'s ranges: the allow-list is what stands between
/// an operator certificate and any prefix of the data centre.
pub fn allowed(prefix: &Cidr, allow: &[Cidr]) -> Result<(), Status> {
    if allow.is_empty() {
        return Err(Status::failed_precondition(
            "AnnouncePath is off: routeplane-bgp was started without --announce-allow; start it with the ranges operators may announce, e.g. --announce-allow 192.0.2.0/24",
        ));
    }
    let inside = |a: &Cidr| {
        a.family() == prefix.family()
            && a.prefix_len() <= prefix.prefix_len()
            && a.contains_addr(prefix.network())
    };
    if allow.iter().any(inside) {
        return Ok(());
    }
    let list: Vec<String> = allow.iter().map(ToString::to_string).collect();
    Err(Status::permission_denied(format!(
        "prefix {prefix} is outside the ranges operators may announce (--announce-allow {})",
        list.join(",")
    )))
}

pub fn path_from(r: &pb::AnnouncePathRequest) -> Result<(Cidr, OperatorPath), Status> {
    let prefix: Cidr = r
        .prefix
        .parse()
        .map_err(|e: routeplane_net::NetError| Status::invalid_argument(format!("prefix: {e}")))?;
    let next_hop = parse_ip("nextHop", &r.next_hop)?;
    if Family::of(next_hop) != prefix.family() {
        return Err(Status::invalid_argument(format!(
            "nextHop {next_hop} and prefix {prefix} are of different families"
        )));
    }
    routable(&prefix, next_hop).map_err(Status::invalid_argument)?;
    let peers = r
        .peers
        .iter()
        .map(|p| parse_ip("peers[]", p))
        .collect::<Result<Vec<_>, _>>()?;
    let communities = r
        .communities
        .iter()
        .map(|c| {
            c.split_once(':')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "community {c:?} is not ASN:VALUE with two 16-bit numbers"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        prefix,
        OperatorPath {
            next_hop,
            peers,
            local_pref: r.local_pref,
            med: r.med,
            communities,
        },
    ))
}

/// An operator path as its IPAM entry holds it: the request's fields but the prefix (the key).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PathSpec {
    next_hop: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_pref: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    med: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    communities: Vec<String>,
}

fn json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: serde_json cannot fail on them.
    serde_json::to_string(value).unwrap_or_default()
}

/// The IPAM entry of a peer added through the API, keyed by its address as the peer shows it.
pub fn peer_entry(peer: &Peer, spec: &PeerSpec) -> ipam::OperatorEntry {
    ipam::OperatorEntry {
        kind: PEER_KIND.into(),
        key: peer.peer_address.to_string(),
        value: json(spec),
    }
}

/// The IPAM entry of an announced path, keyed by its prefix in canonical form.
pub fn path_entry(prefix: &Cidr, r: &pb::AnnouncePathRequest) -> ipam::OperatorEntry {
    let spec = PathSpec {
        next_hop: r.next_hop.trim().to_string(),
        peers: r.peers.iter().map(|p| p.trim().to_string()).collect(),
        local_pref: r.local_pref,
        med: r.med,
        communities: r.communities.clone(),
    };
    ipam::OperatorEntry {
        kind: PATH_KIND.into(),
        key: prefix.to_string(),
        value: json(&spec),
    }
}

/// An entry left out: its key and why.
pub type Refused = (String, String);

/// A peer entry read back from IPAM, checked as AddPeer checks a request.
pub fn decode_peer(e: &FeedOperatorEntry) -> Result<Peer, String> {
    let spec: PeerSpec = serde_json::from_str(&e.value).map_err(|err| err.to_string())?;
    let peer =
        peer_from(spec, "an operator entry").map_err(|status| status.message().to_string())?;
    if peer.peer_address.to_string() != e.key {
        return Err(format!(
            "it is keyed {:?} but names peer {}",
            e.key, peer.peer_address
        ));
    }
    Ok(peer)
}

/// A path entry read back from IPAM, checked as AnnouncePath checks a request.
pub fn decode_path(e: &FeedOperatorEntry, allow: &[Cidr]) -> Result<(Cidr, OperatorPath), String> {
    let spec: PathSpec = serde_json::from_str(&e.value).map_err(|err| err.to_string())?;
    let request = pb::AnnouncePathRequest {
        prefix: e.key.clone(),
        next_hop: spec.next_hop,
        peers: spec.peers,
        local_pref: spec.local_pref,
        med: spec.med,
        communities: spec.communities,
    };
    let (prefix, path) = path_from(&request).map_err(|s| s.message().to_string())?;
    if prefix.to_string() != e.key {
        return Err(format!(
            "its key {:?} is not a prefix in canonical form",
            e.key
        ));
    }
    allowed(&prefix, allow).map_err(|s| s.message().to_string())?;
    Ok((prefix, path))
}

/// Operator paths decoded from entries, those alike sharing one description (a hundred thousand
/// paths announced the same way cost one); entries that do not decode are returned with why.
pub fn decode_paths<'a>(
    entries: impl IntoIterator<Item = &'a FeedOperatorEntry>,
    allow: &[Cidr],
) -> (Vec<(Cidr, Arc<OperatorPath>)>, Vec<Refused>) {
    let mut alike: std::collections::HashMap<OperatorPath, Arc<OperatorPath>> =
        std::collections::HashMap::new();
    let (mut paths, mut refused) = (Vec::new(), Vec::new());
    for e in entries {
        match decode_path(e, allow) {
            Ok((prefix, path)) => {
                let shared = alike
                    .entry(path.clone())
                    .or_insert_with(|| Arc::new(path))
                    .clone();
                paths.push((prefix, shared));
            }
            Err(why) => refused.push((e.key.clone(), why)),
        }
    }
    (paths, refused)
}

/// The peers among `entries`, by address; those that do not decode are returned with why.
pub fn decode_peers<'a>(
    entries: impl IntoIterator<Item = &'a FeedOperatorEntry>,
) -> (BTreeMap<IpAddr, Peer>, Vec<Refused>) {
    let (mut peers, mut refused) = (BTreeMap::new(), Vec::new());
    for e in entries {
        match decode_peer(e) {
            Ok(p) => {
                peers.insert(p.peer_address, p);
            }
            Err(why) => refused.push((e.key.clone(), why)),
        }
    }
    (peers, refused)
}

/// IPAM as the keeper of operator entries: one channel, made on first use and again after a
/// failure.
pub struct OperatorStore {
    endpoint: String,
    dialer: Dialer,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl OperatorStore {
    pub fn new(endpoint: String, dialer: Dialer) -> OperatorStore {
        OperatorStore {
            endpoint,
            dialer,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<ipam::ipam_client::IpamClient<Channel>, Status> {
        let mut slot = self.channel.lock().await;
        let channel = match slot.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = self.dialer.connect(&self.endpoint).await.map_err(|e| {
                    Status::unavailable(format!(
                        "operator state is kept in IPAM, which cannot be reached at {}: {e}; nothing was changed",
                        self.endpoint
                    ))
                })?;
                *slot = Some(c.clone());
                c
            }
        };
        Ok(ipam::ipam_client::IpamClient::new(channel))
    }

    /// IPAM's refusal as this service's: its code, with where it came from.
    async fn refused(&self, status: Status) -> Status {
        if status.code() == tonic::Code::Unavailable {
            *self.channel.lock().await = None;
        }
        Status::new(
            status.code(),
            format!(
                "IPAM at {} did not store it: {}",
                self.endpoint,
                status.message()
            ),
        )
    }

    /// One call to IPAM. A connection that broke since the last call (IPAM restarted) fails its
    /// first request with UNAVAILABLE; an idempotent call is sent once more on a new connection.
    async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, Status>
    where
        F: Fn(ipam::ipam_client::IpamClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut retried = !idempotent;
        loop {
            match f(self.client().await?).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable && !retried => {
                    *self.channel.lock().await = None;
                    retried = true;
                }
                Err(s) => return Err(self.refused(s).await),
            }
        }
    }

    /// Writes entries (with `create_only`, none may exist yet); the revision to wait for.
    pub async fn put(
        &self,
        entries: Vec<ipam::OperatorEntry>,
        create_only: bool,
    ) -> Result<u64, Status> {
        let request = ipam::PutOperatorEntriesRequest {
            entries,
            create_only,
        };
        let done = self
            .call(!create_only, |mut c| {
                let request = request.clone();
                async move { c.put_operator_entries(request).await }
            })
            .await?;
        Ok(done.revision)
    }

    /// Deletes entries; the revision to wait for, or None when nothing was there to delete.
    pub async fn delete(&self, kind: &str, keys: Vec<String>) -> Result<Option<u64>, Status> {
        let request = ipam::DeleteOperatorEntriesRequest {
            kind: kind.into(),
            keys,
        };
        let done = self
            .call(true, |mut c| {
                let request = request.clone();
                async move { c.delete_operator_entries(request).await }
            })
            .await?;
        Ok((done.changed > 0).then_some(done.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(e: ipam::OperatorEntry) -> FeedOperatorEntry {
        FeedOperatorEntry {
            kind: e.kind,
            key: e.key,
            value: e.value,
        }
    }

    #[test]
    fn a_peer_and_a_path_come_back_from_their_entries_as_they_went_in() {
        let request = pb::AddPeerRequest {
            peer_address: " 10.4.36.239".into(),
            peer_asn: 64512,
            my_asn: 64513,
            hold_time: "30s".into(),
            password: "s3cret".into(),
            max_prefixes: 100,
            ..Default::default()
        };
        let spec = spec_from(&request).unwrap();
        let peer = peer_from(spec.clone(), "AddPeer").unwrap();
        let entry = peer_entry(&peer, &spec);
        assert_eq!(
            (entry.kind.as_str(), entry.key.as_str()),
            (PEER_KIND, "10.4.36.239")
        );
        assert!(
            entry.value.contains("\"peer-asn\":64512"),
            "bgp-config's keys: {}",
            entry.value
        );
        assert_eq!(decode_peer(&fed(entry)).unwrap(), peer);

        let allow: Vec<Cidr> = vec!["192.0.2.0/24".parse().unwrap()];
        let request = pb::AnnouncePathRequest {
            prefix: "192.0.2.0/25".into(),
            next_hop: "10.4.36.11".into(),
            local_pref: Some(200),
            communities: vec!["64512:100".into()],
            ..Default::default()
        };
        let (prefix, path) = path_from(&request).unwrap();
        let entry = path_entry(&prefix, &request);
        assert_eq!(decode_path(&fed(entry), &allow).unwrap(), (prefix, path));
    }

    #[test]
    fn entries_this_replica_cannot_take_are_refused_with_why() {
        let allow: Vec<Cidr> = vec!["192.0.2.0/24".parse().unwrap()];
        let entry = |kind: &str, key: &str, value: &str| FeedOperatorEntry {
            kind: kind.into(),
            key: key.into(),
            value: value.into(),
        };
        let paths = [
            (
                "198.51.100.0/24",
                r#"{"next-hop":"10.0.0.1"}"#,
                "--announce-allow",
            ),
            (
                "192.0.2.0/24",
                r#"{"next-hop":"127.0.0.1"}"#,
                "nextHop 127.0.0.1",
            ),
            (
                "192.0.2.1/24",
                r#"{"next-hop":"10.0.0.1"}"#,
                "host bits set",
            ),
            ("fd00:0::/64", r#"{"next-hop":"fd00::1"}"#, "canonical"),
            ("192.0.2.0/24", r#"{"nexthop":"10.0.0.1"}"#, "nexthop"),
        ];
        for (key, value, why) in paths {
            let refused = decode_path(&entry(PATH_KIND, key, value), &allow).unwrap_err();
            assert!(refused.contains(why), "{key} {value}: {refused}");
        }
        let bad_asn = entry(
            PEER_KIND,
            "10.0.0.1",
            r#"{"peer-address":"10.0.0.1","peer-asn":0,"my-asn":1}"#,
        );
        let other_key = entry(
            PEER_KIND,
            "10.0.0.2",
            r#"{"peer-address":"10.0.0.1","peer-asn":1,"my-asn":1}"#,
        );
        for (e, why) in [
            (&bad_asn, "peer-asn: 0 is not valid"),
            (&other_key, "names peer 10.0.0.1"),
        ] {
            let refused = decode_peer(e).unwrap_err();
            assert!(refused.contains(why), "{}: {refused}", e.key);
        }
        let (peers, refused) = decode_peers([&bad_asn, &other_key]);
        assert_eq!((peers.len(), refused.len()), (0, 2));
    }

    #[test]
    fn paths_announced_alike_share_one_description() {
        let allow: Vec<Cidr> = vec!["192.0.2.0/24".parse().unwrap()];
        let entries: Vec<FeedOperatorEntry> = (0..4)
            .map(|i| FeedOperatorEntry {
                kind: PATH_KIND.into(),
                key: format!("192.0.2.{i}/32"),
                value: r#"{"next-hop":"10.0.0.1"}"#.into(),
            })
            .collect();
        let (paths, refused) = decode_paths(&entries, &allow);
        assert!(refused.is_empty());
        assert!(Arc::ptr_eq(&paths[0].1, &paths[3].1));
    }

    fn check(prefix: &str, next_hop: &str) -> Result<(), String> {
        routable(&prefix.parse().unwrap(), next_hop.parse().unwrap())
    }

    #[test]
    fn operator_paths_are_unicast_prefixes_via_forwardable_next_hops() {
        assert_eq!(check("192.0.2.0/24", "10.4.94.11"), Ok(()));
        assert_eq!(check("0.0.0.0/1", "10.4.94.11"), Ok(()));
        assert_eq!(check("fd00::/120", "fd04:94::11"), Ok(()));
        for (prefix, next_hop, needle) in [
            (
                "0.0.0.0/0",
                "10.4.94.11",
                "prefix 0.0.0.0/0 is a default route",
            ),
            ("::/0", "fd04:94::11", "prefix ::/0 is a default route"),
            (
                "224.0.0.0/4",
                "10.4.94.11",
                "prefix 224.0.0.0/4 is multicast",
            ),
            ("ff02::/16", "fd04:94::11", "prefix ff02::/16 is multicast"),
            ("192.0.2.0/24", "0.0.0.0", "nextHop 0.0.0.0 is not"),
            ("192.0.2.0/24", "127.0.0.1", "nextHop 127.0.0.1 is not"),
            ("192.0.2.0/24", "239.1.1.1", "nextHop 239.1.1.1 is not"),
            (
                "192.0.2.0/24",
                "255.255.255.255",
                "nextHop 255.255.255.255 is not",
            ),
            ("fd00::/120", "::", "nextHop :: is not"),
            ("fd00::/120", "::1", "nextHop ::1 is not"),
            ("fd00::/120", "fe80::1", "nextHop fe80::1 is not"),
        ] {
            let e = check(prefix, next_hop).expect_err(prefix);
            assert!(e.contains(needle), "{prefix} via {next_hop}: {e}");
        }
    }
}
