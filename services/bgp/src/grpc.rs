//! routeplane.bgp.v1 over tonic: each handler parses, reads the speaker, converts back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use routeplane_api::bgp::v1 as pb;
use routeplane_net::{Cidr, Family};
use routeplane_runtime::time::rfc3339;
use tonic::{Request, Response, Status};

use crate::message::{Nlri, Origin, PathAttributes};
use crate::policy::OperatorPath;
use crate::policy::Source;
use crate::rib::Routes;
use crate::session::{PeerStatus, SharedStatus, lock};
use crate::speaker::{Speaker, SpeakerError, SpeakerEvent};

impl From<SpeakerError> for Status {
    fn from(e: SpeakerError) -> Status {
        let msg = e.to_string();
        match e {
            SpeakerError::PeerExists(_) => Status::already_exists(msg),
            SpeakerError::NoSuchPeer(..) => Status::not_found(msg),
            SpeakerError::Refused(_) => Status::invalid_argument(msg),
        }
    }
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, Status> {
    text.trim()
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{field} {text:?} is not an IP address")))
}

/// An AddPeer request as the bgp-config entry it stands for, checked by the same code as the file.
fn peer_from(r: &pb::AddPeerRequest) -> Result<routeplane_config::Peer, Status> {
    use routeplane_config::{ExpressionSpec, PeerSpec, SelectorSpec};
    let given = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let spec = PeerSpec {
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
    };
    routeplane_config::Peer::from_spec(spec, "AddPeer")
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// What an operator path may announce to the ToRs. A default route would take over their
/// forwarding, a multicast prefix is no unicast NLRI (RFC 4271 §4.3; it could not be encoded), and
/// the NEXT_HOP must be an address a router can forward to (RFC 4271 §5.1.3): not unspecified,
/// loopback, multicast, broadcast or (IPv6) link-local.
fn routable(prefix: &Cidr, next_hop: IpAddr) -> Result<(), String> {
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
fn allowed(prefix: &Cidr, allow: &[Cidr]) -> Result<(), Status> {
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

fn path_from(r: &pb::AnnouncePathRequest) -> Result<(Cidr, OperatorPath), Status> {
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

fn event(e: SpeakerEvent) -> pb::BgpEvent {
    use pb::bgp_event::Event as E;
    match e {
        SpeakerEvent::State {
            peer,
            state,
            reason,
        } => pb::BgpEvent {
            peer_address: peer.to_string(),
            event: Some(E::State(pb::SessionState {
                state: state.name().into(),
                reason,
            })),
        },
        SpeakerEvent::Advertised {
            peer,
            nlri,
            attributes,
        } => pb::BgpEvent {
            peer_address: peer.to_string(),
            event: Some(E::Advertised(route(&nlri, &attributes))),
        },
        SpeakerEvent::Withdrawn { peer, nlri } => pb::BgpEvent {
            peer_address: peer.to_string(),
            event: Some(E::Withdrawn(pb::Route {
                prefix: nlri.prefix.to_string(),
                path_id: nlri.path_id.unwrap_or(0),
                ..Default::default()
            })),
        },
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BgpEvent, Status>> + Send>>;

pub struct BgpGrpc {
    speaker: Arc<Speaker>,
}

impl BgpGrpc {
    pub fn new(speaker: Arc<Speaker>) -> pb::bgp_server::BgpServer<BgpGrpc> {
        pb::bgp_server::BgpServer::new(BgpGrpc { speaker })
            .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES)
    }

    /// The peer's configuration and its status handle: under the speaker's lock only the handle is
    /// cloned; callers read the status under its own lock, briefly.
    fn status(&self, peer: &str) -> Result<PeerRef, Status> {
        let addr: IpAddr = peer
            .trim()
            .parse()
            .map_err(|_| Status::invalid_argument(format!("peerAddress {peer:?} is not an IP address: give a configured peer's address, e.g. 10.4.36.239")))?;
        let state = self.speaker.lock();
        let entry = state.peers.get(&addr).ok_or_else(|| {
            let known: Vec<String> = state.peers.keys().map(ToString::to_string).collect();
            Status::not_found(format!(
                "{addr} is not a configured peer; peers are: {}",
                known.join(", ")
            ))
        })?;
        Ok(PeerRef {
            config: entry.config.clone(),
            status: Arc::clone(&entry.status),
            router_id: entry.router_id.to_string(),
            source: state.peer_source(&addr),
        })
    }
}

/// One peer, looked up by address: what the API shows of it.
struct PeerRef {
    config: routeplane_config::Peer,
    status: SharedStatus,
    router_id: String,
    /// "file" (bgp-config) or "api" (AddPeer).
    source: &'static str,
}

fn family_name(f: &Family) -> String {
    match f {
        Family::V4 => "ipv4-unicast".into(),
        Family::V6 => "ipv6-unicast".into(),
    }
}

fn peer(
    config: &routeplane_config::Peer,
    s: &PeerStatus,
    router_id: String,
    source: &str,
) -> pb::Peer {
    let n = s.negotiated.as_ref();
    pb::Peer {
        source: source.into(),
        peer_address: config.peer_address.to_string(),
        local_asn: config.my_asn,
        peer_asn: config.peer_asn,
        session_state: s.state.name().into(),
        uptime_seconds: s.since.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        families: n
            .map(|n| n.families.iter().map(family_name).collect())
            .unwrap_or_default(),
        received: s.received.len() as u64,
        advertised: s.advertised.len() as u64,
        hold_time_seconds: n.map_or(0, |n| n.hold_time.as_secs() as u32),
        keepalive_seconds: n.map_or(0, |n| n.keepalive.as_secs() as u32),
        last_error: s
            .last_error
            .as_ref()
            .map(|e| e.0.clone())
            .unwrap_or_default(),
        last_error_time: s
            .last_error
            .as_ref()
            .map(|e| rfc3339(e.1))
            .unwrap_or_default(),
        router_id,
        peer_router_id: n.map(|n| n.peer_router_id.to_string()).unwrap_or_default(),
        max_prefixes: config.max_prefixes,
        update_repairs: s
            .repairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect(),
        ttl_security: config.ttl_security,
        tcp_md5: config.password.is_some(),
    }
}

fn route(n: &Nlri, a: &PathAttributes) -> pb::Route {
    pb::Route {
        prefix: n.prefix.to_string(),
        path_id: n.path_id.unwrap_or(0),
        next_hop: a.next_hop.to_string(),
        as_path: a.as_path.clone(),
        origin: match a.origin {
            Origin::Igp => "IGP",
            Origin::Egp => "EGP",
            Origin::Incomplete => "INCOMPLETE",
        }
        .into(),
        local_pref: a.local_pref,
        med: a.med,
        communities: a
            .communities
            .iter()
            .map(|(h, l)| format!("{h}:{l}"))
            .collect(),
    }
}

fn routes(r: &Routes) -> pb::ListRoutesResponse {
    pb::ListRoutesResponse {
        routes: r.iter().map(|(n, a)| route(n, a)).collect(),
    }
}

/// Each method's access: reads for any identity; peers and paths are the operator's.
pub fn policy(method: &str) -> routeplane_runtime::authz::Access {
    use routeplane_runtime::authz::Access;
    match method {
        "ListPeers" | "GetPeer" | "ListAdvertised" | "ListReceived" | "ExplainPrefix"
        | "WatchEvents" => Access::Read,
        _ => Access::Operator,
    }
}

#[tonic::async_trait]
impl pb::bgp_server::Bgp for BgpGrpc {
    async fn add_peer(
        &self,
        req: Request<pb::AddPeerRequest>,
    ) -> Result<Response<pb::Peer>, Status> {
        let peer = peer_from(req.get_ref())?;
        let address = peer.peer_address.to_string();
        self.speaker.add_peer(peer)?;
        self.get_peer(Request::new(pb::GetPeerRequest {
            peer_address: address,
        }))
        .await
    }

    async fn delete_peer(
        &self,
        req: Request<pb::DeletePeerRequest>,
    ) -> Result<Response<pb::DeletePeerResponse>, Status> {
        self.speaker
            .delete_peer(parse_ip("peerAddress", &req.get_ref().peer_address)?)?;
        Ok(Response::new(pb::DeletePeerResponse {}))
    }

    async fn announce_path(
        &self,
        req: Request<pb::AnnouncePathRequest>,
    ) -> Result<Response<pb::AnnouncePathResponse>, Status> {
        let (prefix, path) = path_from(req.get_ref())?;
        allowed(&prefix, &self.speaker.announce_allow())?;
        self.speaker.announce(vec![(prefix, Arc::new(path))]);
        Ok(Response::new(pb::AnnouncePathResponse {}))
    }

    async fn announce_paths(
        &self,
        req: Request<tonic::Streaming<pb::AnnouncePathRequest>>,
    ) -> Result<Response<pb::AnnouncePathsResponse>, Status> {
        // Checked whole before anything is applied: a bad item leaves nothing half-announced.
        // Paths announced alike share one description.
        let allow = self.speaker.announce_allow();
        let mut stream = req.into_inner();
        let mut paths = Vec::new();
        let mut alike: std::collections::HashMap<OperatorPath, Arc<OperatorPath>> =
            std::collections::HashMap::new();
        while let Some(item) = stream.message().await? {
            let index = paths.len();
            let (prefix, path) = path_from(&item)
                .map_err(|s| Status::invalid_argument(format!("item {index}: {}", s.message())))?;
            allowed(&prefix, &allow)
                .map_err(|s| Status::new(s.code(), format!("item {index}: {}", s.message())))?;
            let shared = alike
                .entry(path.clone())
                .or_insert_with(|| Arc::new(path))
                .clone();
            paths.push((prefix, shared));
        }
        let accepted = paths.len() as u64;
        self.speaker.announce(paths);
        Ok(Response::new(pb::AnnouncePathsResponse { accepted }))
    }

    async fn withdraw_path(
        &self,
        req: Request<pb::WithdrawPathRequest>,
    ) -> Result<Response<pb::WithdrawPathResponse>, Status> {
        let prefix: Cidr =
            req.get_ref()
                .prefix
                .parse()
                .map_err(|e: routeplane_net::NetError| {
                    Status::invalid_argument(format!("prefix: {e}"))
                })?;
        Ok(Response::new(pb::WithdrawPathResponse {
            withdrawn: self.speaker.withdraw(&prefix),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        use tokio_stream::StreamExt as _;
        use tokio_stream::wrappers::BroadcastStream;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        let stream = BroadcastStream::new(self.speaker.subscribe()).map(|r| match r {
            Ok(e) => Ok(event(e)),
            Err(BroadcastStreamRecvError::Lagged(n)) => Err(Status::aborted(format!(
                "this watcher fell {n} events behind and was cut off; call WatchEvents again"
            ))),
        });
        // End the stream after the first error (a lagged watcher is told once, then cut off).
        let mut failed = false;
        let stream = stream.take_while(move |r| {
            let go = !failed;
            failed |= r.is_err();
            go
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_peers(
        &self,
        _: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let state = self.speaker.lock();
        let peers = state
            .peers
            .iter()
            .map(|(addr, e)| {
                let source = state.peer_source(addr);
                peer(&e.config, &lock(&e.status), e.router_id.to_string(), source)
            })
            .collect();
        Ok(Response::new(pb::ListPeersResponse { peers }))
    }

    async fn get_peer(
        &self,
        req: Request<pb::GetPeerRequest>,
    ) -> Result<Response<pb::Peer>, Status> {
        let address = req.get_ref().peer_address.clone();
        // The speaker's lock is released before the status lock is taken (the metrics take them
        // the other way round, nested).
        let p = self.status(&address)?;
        let shown = peer(&p.config, &lock(&p.status), p.router_id, p.source);
        Ok(Response::new(shown))
    }

    async fn list_advertised(
        &self,
        req: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let status = self.status(&req.get_ref().peer_address)?.status;
        let advertised = Arc::clone(&lock(&status).advertised);
        Ok(Response::new(routes(&advertised)))
    }

    async fn list_received(
        &self,
        req: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let PeerRef { config, status, .. } = self.status(&req.get_ref().peer_address)?;
        let status = lock(&status);
        match status.received.routes() {
            Some(r) => Ok(Response::new(routes(r))),
            None => Err(Status::failed_precondition(format!(
                "peer {} keeps only the prefixes it sent ({} now), to count them against max-prefixes: set keep-received: true on it in bgp-config to list them with their attributes",
                config.peer_address,
                status.received.len()
            ))),
        }
    }

    async fn explain_prefix(
        &self,
        req: Request<pb::ExplainPrefixRequest>,
    ) -> Result<Response<pb::ExplainPrefixResponse>, Status> {
        let text = req.get_ref().prefix.trim().to_string();
        let prefix: Cidr = match text.parse() {
            Ok(c) => c,
            // A bare address asks about its host route (a LoadBalancer IP).
            Err(e) => match text.parse::<IpAddr>() {
                Ok(ip) => Cidr::containing(ip, Family::of(ip).bits())
                    .ok_or_else(|| Status::invalid_argument(e.to_string()))?,
                Err(_) => return Err(Status::invalid_argument(format!("prefix: {e}"))),
            },
        };
        let views = self.speaker.views(Instant::now());
        let mut sources: Vec<pb::PrefixSource> = Vec::new();
        for v in views.inputs().explain(&prefix) {
            let (kind, node, service, pool) = match &v.source {
                Source::PodCidr { node, .. } => {
                    ("pod CIDR", node.clone(), String::new(), String::new())
                }
                Source::LoadBalancerIp { service, pool } => (
                    "LoadBalancer IP",
                    String::new(),
                    service.clone(),
                    pool.clone(),
                ),
                Source::Operator { .. } => {
                    ("operator path", String::new(), String::new(), String::new())
                }
            };
            let verdict = match v.outcome {
                Ok(paths) => pb::PeerVerdict {
                    peer_address: v.peer.to_string(),
                    advertised: true,
                    routes: paths.iter().map(|(n, a)| route(n, a)).collect(),
                    reason: String::new(),
                },
                Err(reason) => pb::PeerVerdict {
                    peer_address: v.peer.to_string(),
                    advertised: false,
                    routes: vec![],
                    reason,
                },
            };
            match sources
                .iter_mut()
                .find(|s| s.kind == kind && s.node == node && s.service == service)
            {
                Some(s) => s.peers.push(verdict),
                None => sources.push(pb::PrefixSource {
                    kind: kind.into(),
                    node,
                    service,
                    pool,
                    peers: vec![verdict],
                }),
            }
        }
        if sources.is_empty() {
            return Err(Status::not_found(format!(
                "{prefix} is neither a node's pod CIDR, a Service's LoadBalancer IP known to IPAM, nor an announced path"
            )));
        }
        Ok(Response::new(pb::ExplainPrefixResponse {
            prefix: prefix.to_string(),
            sources,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
