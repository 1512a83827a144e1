//! routeplane.bgp.v1 over tonic: each handler parses, reads the speaker, converts back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routeplane_api::bgp::v1 as pb;
use routeplane_net::{Cidr, Family};
use routeplane_runtime::time::rfc3339;
use tonic::{Request, Response, Status};

use crate::message::{Nlri, Origin, PathAttributes};
use crate::operator::{self as op, OperatorStore};
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
            SpeakerError::NotApplied(..) => Status::deadline_exceeded(msg),
        }
    }
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

/// How long an operator change may take to come back from IPAM and be applied here.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// The same for a whole AnnouncePaths stream (a full table comes back as hundreds of events).
const APPLY_WAIT_STREAM: Duration = Duration::from_secs(60);

pub struct BgpGrpc {
    speaker: Arc<Speaker>,
    /// Where AddPeer's peers and AnnouncePath's paths are kept.
    store: Arc<OperatorStore>,
}

impl BgpGrpc {
    pub fn new(
        speaker: Arc<Speaker>,
        store: Arc<OperatorStore>,
    ) -> pb::bgp_server::BgpServer<BgpGrpc> {
        pb::bgp_server::BgpServer::new(BgpGrpc { speaker, store })
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
        let spec = op::spec_from(req.get_ref())?;
        let peer = op::peer_from(spec.clone(), "AddPeer")?;
        self.speaker.check_peer(&peer)?;
        let address = peer.peer_address;
        let taken = {
            let state = self.speaker.lock();
            // A file peer deleted here for now is still the file's address.
            state.peers.contains_key(&address) || state.peer_source(&address) == "file"
        };
        if taken {
            return Err(SpeakerError::PeerExists(address).into());
        }
        let revision = self
            .store
            .put(vec![op::peer_entry(&peer, &spec)], true)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::AlreadyExists => Status::already_exists(format!(
                    "{address} is already a peer, added through the API (on this replica or another); DeletePeer it first to change it"
                )),
                _ => s,
            })?;
        self.speaker.wait_applied(revision, APPLY_WAIT).await?;
        self.get_peer(Request::new(pb::GetPeerRequest {
            peer_address: address.to_string(),
        }))
        .await
    }

    async fn delete_peer(
        &self,
        req: Request<pb::DeletePeerRequest>,
    ) -> Result<Response<pb::DeletePeerResponse>, Status> {
        let address = op::parse_ip("peerAddress", &req.get_ref().peer_address)?;
        if self.speaker.is_file_peer(&address) {
            self.speaker.delete_peer(address)?;
        } else {
            let deleted = self
                .store
                .delete(op::PEER_KIND, vec![address.to_string()])
                .await?;
            let revision = deleted.ok_or_else(|| self.speaker.no_such_peer(address))?;
            self.speaker.wait_applied(revision, APPLY_WAIT).await?;
        }
        Ok(Response::new(pb::DeletePeerResponse {}))
    }

    async fn announce_path(
        &self,
        req: Request<pb::AnnouncePathRequest>,
    ) -> Result<Response<pb::AnnouncePathResponse>, Status> {
        let (prefix, _) = op::path_from(req.get_ref())?;
        op::allowed(&prefix, &self.speaker.announce_allow())?;
        let entry = op::path_entry(&prefix, req.get_ref());
        let revision = self.store.put(vec![entry], false).await?;
        self.speaker.wait_applied(revision, APPLY_WAIT).await?;
        Ok(Response::new(pb::AnnouncePathResponse {}))
    }

    async fn announce_paths(
        &self,
        req: Request<tonic::Streaming<pb::AnnouncePathRequest>>,
    ) -> Result<Response<pb::AnnouncePathsResponse>, Status> {
        // Checked whole before anything is stored: a bad item leaves nothing half-announced. A
        // prefix given twice keeps its last item, as two AnnouncePath calls would.
        let allow = self.speaker.announce_allow();
        let mut stream = req.into_inner();
        let mut entries = Vec::new();
        let mut at: std::collections::HashMap<Cidr, usize> = std::collections::HashMap::new();
        let mut index = 0usize;
        while let Some(item) = stream.message().await? {
            let (prefix, _) = op::path_from(&item)
                .map_err(|s| Status::invalid_argument(format!("item {index}: {}", s.message())))?;
            op::allowed(&prefix, &allow)
                .map_err(|s| Status::new(s.code(), format!("item {index}: {}", s.message())))?;
            let entry = op::path_entry(&prefix, &item);
            match at.get(&prefix) {
                Some(&i) => entries[i] = entry,
                None => {
                    at.insert(prefix, entries.len());
                    entries.push(entry);
                }
            }
            index += 1;
        }
        let (mut stored, mut revision) = (0usize, None);
        for chunk in entries.chunks(op::BATCH) {
            let r = self.store.put(chunk.to_vec(), false).await.map_err(|s| {
                Status::new(
                    s.code(),
                    format!(
                        "{} of {} paths were stored (and are announced) before this failed: {}",
                        stored,
                        entries.len(),
                        s.message()
                    ),
                )
            })?;
            stored += chunk.len();
            revision = Some(r);
        }
        if let Some(r) = revision {
            self.speaker.wait_applied(r, APPLY_WAIT_STREAM).await?;
        }
        Ok(Response::new(pb::AnnouncePathsResponse {
            accepted: index as u64,
        }))
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
        let deleted = self
            .store
            .delete(op::PATH_KIND, vec![prefix.to_string()])
            .await?;
        if let Some(revision) = deleted {
            self.speaker.wait_applied(revision, APPLY_WAIT).await?;
        }
        Ok(Response::new(pb::WithdrawPathResponse {
            withdrawn: deleted.is_some(),
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
