//! routeplane.bgp.v1 over tonic: each handler parses, reads the speaker, converts back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use routeplane_api::bgp::v1 as pb;
use routeplane_net::{Cidr, Family};
use tonic::{Request, Response, Status};

use crate::message::{Nlri, Origin, PathAttributes};
use crate::policy::Source;
use crate::rib::Routes;
use crate::session::{PeerStatus, lock};
use crate::speaker::Speaker;

pub struct BgpGrpc {
    speaker: Arc<Speaker>,
}

impl BgpGrpc {
    pub fn new(speaker: Arc<Speaker>) -> pb::bgp_server::BgpServer<BgpGrpc> {
        pb::bgp_server::BgpServer::new(BgpGrpc { speaker })
    }

    fn status(&self, peer: &str) -> Result<(routeplane_config::Peer, PeerStatus), Status> {
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
        Ok((entry.config.clone(), lock(&entry.status).clone()))
    }
}

fn family_name(f: &Family) -> String {
    match f {
        Family::V4 => "ipv4-unicast".into(),
        Family::V6 => "ipv6-unicast".into(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    // Seconds since the epoch, formatted without a date library: UTC, RFC 3339.
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

fn peer(config: &routeplane_config::Peer, s: &PeerStatus, router_id: String) -> pb::Peer {
    let n = s.negotiated.as_ref();
    pb::Peer {
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

#[tonic::async_trait]
impl pb::bgp_server::Bgp for BgpGrpc {
    async fn list_peers(
        &self,
        _: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let state = self.speaker.lock();
        let peers = state
            .peers
            .values()
            .map(|e| peer(&e.config, &lock(&e.status), e.router_id.to_string()))
            .collect();
        Ok(Response::new(pb::ListPeersResponse { peers }))
    }

    async fn get_peer(
        &self,
        req: Request<pb::GetPeerRequest>,
    ) -> Result<Response<pb::Peer>, Status> {
        let address = req.get_ref().peer_address.clone();
        let (config, status) = self.status(&address)?;
        let router_id = self
            .speaker
            .lock()
            .peers
            .get(&config.peer_address)
            .map(|e| e.router_id.to_string())
            .unwrap_or_default();
        Ok(Response::new(peer(&config, &status, router_id)))
    }

    async fn list_advertised(
        &self,
        req: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        Ok(Response::new(routes(
            &self.status(&req.get_ref().peer_address)?.1.advertised,
        )))
    }

    async fn list_received(
        &self,
        req: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        Ok(Response::new(routes(
            &self.status(&req.get_ref().peer_address)?.1.received,
        )))
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
                "{prefix} is neither a node's pod CIDR nor a Service's LoadBalancer IP known to IPAM"
            )));
        }
        Ok(Response::new(pb::ExplainPrefixResponse {
            prefix: prefix.to_string(),
            sources,
        }))
    }
}
