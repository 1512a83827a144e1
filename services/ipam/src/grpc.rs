//! routeplane.ipam.v1 over tonic. Each handler parses its request into domain values, makes one
//! call on [`Ipam`], and converts the answer back; the one mapping from [`IpamError`] to a status
//! code is `From<IpamError> for Status` below. Who may call what is [`policy`]; the handlers that
//! act for one node check the caller against that node's name first.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use routeplane_api::ipam::v1 as pb;
use routeplane_net::{Cidr, Family};
use routeplane_runtime::authz::{Access, Caller};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::IpamError;
use crate::heartbeat_datagrams::Sessions;
use crate::ipam::{Ipam, WatchItem};
use crate::model::{Drain, Event, Node, OperatorEntry, RevisionedEvent, ServiceIp};
use crate::state::{PodIps, ReportedPod};
use crate::watch_wire::{EncodedEvents, EncodedStream, WatchOnce};

pub struct IpamGrpc {
    ipam: Arc<Ipam>,
    /// Heartbeat datagram sessions, unless --heartbeat-datagrams=off.
    datagrams: Option<Arc<Sessions>>,
    /// Live events encoded once for every watcher (`watch_wire.rs`).
    encoded: EncodedEvents,
}

impl IpamGrpc {
    /// The service: the generated server, with Watch served by [`IpamGrpc::watch_encoded`].
    pub fn service(ipam: Arc<Ipam>, datagrams: Option<Arc<Sessions>>) -> WatchOnce {
        WatchOnce::new(IpamGrpc {
            ipam,
            datagrams,
            encoded: EncodedEvents::default(),
        })
    }

    /// The change feed, each item encoded (a live event once for all watchers).
    pub fn watch_encoded(
        self: &Arc<Self>,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<EncodedStream>, Status> {
        let operator = req.get_ref().operator_entries;
        if operator {
            Caller::of(&req).for_control_plane("a Watch with operator entries")?;
        }
        let rx = self.ipam.watch(req.get_ref().from_revision, operator);
        let grpc = self.clone();
        // A batch becomes its events back to back, which the HTTP/2 stream takes in one write.
        let stream = futures::StreamExt::flat_map(ReceiverStream::new(rx), move |item| {
            futures::stream::iter(match item {
                Ok(item) => grpc.encoded.encode(item).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(Status::from(e))],
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Each method's access: reads for any identity, a node's own writes for its agent, operator
/// entries for routeplane-bgp, the pools, Service IPs and deletions for operators.
pub fn policy(method: &str) -> Access {
    match method {
        "GetNode" | "ListNodes" | "ListPodIPs" | "ListServiceIPs" | "ListPools" | "Watch" => {
            Access::Read
        }
        "RegisterNode" | "KeepAlive" | "Heartbeat" | "DrainNode" | "AllocatePodIP"
        | "ReleasePodIP" | "SyncPodIPs" => Access::Node,
        // A bgp-peer entry may hold a TCP-MD5 password.
        "PutOperatorEntries" | "DeleteOperatorEntries" | "ListOperatorEntries" => {
            Access::ControlPlane
        }
        _ => Access::Operator,
    }
}

impl From<IpamError> for Status {
    fn from(e: IpamError) -> Status {
        let msg = e.to_string();
        match e {
            IpamError::InvalidArgument(_) | IpamError::Config(_) => Status::invalid_argument(msg),
            IpamError::NotFound(_) => Status::not_found(msg),
            IpamError::AlreadyExists(_) => Status::already_exists(msg),
            IpamError::FailedPrecondition(_) => Status::failed_precondition(msg),
            IpamError::Exhausted(_) | IpamError::StorageFull(_) => Status::resource_exhausted(msg),
            IpamError::Aborted(_) => Status::aborted(msg),
            IpamError::Unavailable(_) | IpamError::Storage(_) => Status::unavailable(msg),
        }
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, Status> {
    text.trim().parse().map_err(|_| {
        Status::invalid_argument(format!(
            "{field} {text:?} is not an IP address: give one such as 10.4.94.12 or fd00::12"
        ))
    })
}

fn parse_cidr(field: &str, text: &str) -> Result<Cidr, Status> {
    text.parse()
        .map_err(|e: routeplane_net::NetError| Status::invalid_argument(format!("{field}: {e}")))
}

fn parse_family(value: i32) -> Result<Option<Family>, Status> {
    match pb::Family::try_from(value) {
        Ok(pb::Family::Unspecified) => Ok(None),
        Ok(pb::Family::Ipv4) => Ok(Some(Family::V4)),
        Ok(pb::Family::Ipv6) => Ok(Some(Family::V6)),
        Err(_) => Err(Status::invalid_argument(format!(
            "family {value} is not valid: use FAMILY_IPV4, FAMILY_IPV6 or leave it unset for every enabled family"
        ))),
    }
}

fn pb_family(f: Family) -> i32 {
    match f {
        Family::V4 => pb::Family::Ipv4 as i32,
        Family::V6 => pb::Family::Ipv6 as i32,
    }
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn saturating_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl From<&Node> for pb::Node {
    fn from(n: &Node) -> pb::Node {
        pb::Node {
            name: n.name.clone(),
            addresses: strings(&n.addresses),
            labels: n
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            pod_cidrs: strings(&n.pod_cidrs),
            router_ips: strings(&n.router_ips()),
            ready: n.ready,
            revision: n.revision,
            draining: n.draining,
            drain_ends_on_register: n.drain_ends_on_register,
            held_down: n.held_down,
        }
    }
}

impl From<&ServiceIp> for pb::ServiceIp {
    fn from(s: &ServiceIp) -> pb::ServiceIp {
        pb::ServiceIp {
            service: s.service.clone(),
            ip: s.ip.to_string(),
            pool: s.pool.clone(),
        }
    }
}

impl From<crate::state::PodPoolView> for pb::PodPool {
    fn from(p: crate::state::PodPoolView) -> pb::PodPool {
        pb::PodPool {
            cidr: p.cidr.to_string(),
            family: pb_family(p.cidr.family()),
            mask_size: p.mask.into(),
            node_cidrs_total: saturating_u64(p.total),
            node_cidrs_used: saturating_u64(p.used),
            node_cidrs_free: saturating_u64(p.total - p.used),
            pod_ips_used: p.pod_ips_used,
            pod_ips_capacity: saturating_u64(p.pod_ips_capacity),
            pod_ips_free: saturating_u64(p.pod_ips_capacity).saturating_sub(p.pod_ips_used),
            drained: p.drained,
            source: p.source,
        }
    }
}

fn pod_allocation(node: &str, owner: String, held: &PodIps) -> pb::PodIpAllocation {
    pb::PodIpAllocation {
        node: node.to_string(),
        owner,
        ips: strings(&held.ips),
        pod: held
            .agent
            .as_ref()
            .map(|a| a.pod.clone())
            .unwrap_or_default(),
        managed_by: if held.agent.is_some() {
            "agent"
        } else {
            "ipam"
        }
        .into(),
    }
}

impl From<OperatorEntry> for pb::OperatorEntry {
    fn from(e: OperatorEntry) -> pb::OperatorEntry {
        pb::OperatorEntry {
            kind: e.kind,
            key: e.key,
            value: e.value,
        }
    }
}

impl From<&OperatorEntry> for pb::OperatorEntry {
    fn from(e: &OperatorEntry) -> pb::OperatorEntry {
        e.clone().into()
    }
}

impl From<pb::OperatorEntry> for OperatorEntry {
    fn from(e: pb::OperatorEntry) -> OperatorEntry {
        OperatorEntry {
            kind: e.kind,
            key: e.key,
            value: e.value,
        }
    }
}

fn changed((revision, changed): (u64, u64)) -> Response<pb::OperatorEntriesChanged> {
    Response::new(pb::OperatorEntriesChanged { revision, changed })
}

/// The messages an item makes: one, or a batch's events one after another.
pub(crate) fn watch_messages(item: WatchItem) -> Vec<pb::WatchEvent> {
    use pb::watch_event::Event as E;
    match item {
        WatchItem::Snapshot {
            revision,
            nodes,
            services,
            operator,
            first,
            last,
        } => vec![pb::WatchEvent {
            revision,
            event: Some(E::Snapshot(pb::Snapshot {
                nodes: nodes.iter().map(Into::into).collect(),
                service_ips: services.iter().map(Into::into).collect(),
                first,
                last,
                operator_entries: operator.into_iter().map(Into::into).collect(),
            })),
        }],
        WatchItem::Progress(revision) => vec![pb::WatchEvent {
            revision,
            event: Some(E::Progress(pb::Progress {})),
        }],
        WatchItem::Event(e) => vec![event_message(&e)],
        WatchItem::Events(events) => events.iter().map(|e| event_message(e)).collect(),
    }
}

pub(crate) fn event_message(e: &RevisionedEvent) -> pb::WatchEvent {
    use pb::watch_event::Event as E;
    pb::WatchEvent {
        revision: e.revision,
        event: Some(match &e.event {
            Event::NodeUpdated(n) => E::NodeUpdated(n.into()),
            Event::NodeDeleted { name, pod_cidrs } => E::NodeDeleted(pb::NodeDeleted {
                name: name.clone(),
                pod_cidrs: pod_cidrs.clone(),
            }),
            Event::ServiceIpAssigned(s) => E::ServiceIpAssigned(s.into()),
            Event::ServiceIpReleased(s) => E::ServiceIpReleased(s.into()),
            Event::OperatorEntries { put, deleted } => E::OperatorEntries(pb::OperatorEntries {
                put: put.iter().map(Into::into).collect(),
                deleted: deleted
                    .iter()
                    .map(|k| pb::OperatorEntry {
                        kind: k.kind.clone(),
                        key: k.key.clone(),
                        value: String::new(),
                    })
                    .collect(),
            }),
        }),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::ipam_server::Ipam for IpamGrpc {
    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        Caller::of(&req).for_node(&req.get_ref().name)?;
        let r = req.into_inner();
        let addresses = r
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| parse_ip(&format!("addresses[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let node = self
            .ipam
            .register_node(
                required("name", &r.name)?,
                addresses,
                r.labels.into_iter().collect(),
            )
            .await?;
        Ok(Response::new((&node).into()))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let node = self.ipam.node(required("name", &req.get_ref().name)?)?;
        Ok(Response::new((&node).into()))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.ipam.nodes().iter().map(Into::into).collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn delete_node(
        &self,
        req: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let r = req.into_inner();
        let (node, released) = self
            .ipam
            .delete_node(required("name", &r.name)?, r.force)
            .await?;
        Ok(Response::new(pb::DeleteNodeResponse {
            released_pod_cidrs: strings(&node.pod_cidrs),
            released_pod_ips: released,
        }))
    }

    async fn keep_alive(
        &self,
        req: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        Caller::of(&req).for_node(&req.get_ref().name)?;
        let (ttl, became_ready) = self
            .ipam
            .keep_alive(required("name", &req.get_ref().name)?)
            .await?;
        Ok(Response::new(pb::KeepAliveResponse {
            lease_ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1),
            became_ready,
        }))
    }

    async fn drain_node(
        &self,
        req: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        Caller::of(&req).for_node(&req.get_ref().name)?;
        let r = req.get_ref();
        let drain = match (r.cancel, r.until_registered) {
            (true, true) => {
                return Err(Status::invalid_argument(
                    "cancel and until_registered together: cancel ends a drain, until_registered starts one",
                ));
            }
            (true, false) => Drain::End,
            (false, true) => Drain::UntilRegistered,
            (false, false) => Drain::Hold,
        };
        let node = self
            .ipam
            .drain_node(required("name", &r.name)?, drain)
            .await?;
        Ok(Response::new((&node).into()))
    }

    async fn allocate_pod_ip(
        &self,
        req: Request<pb::AllocatePodIpRequest>,
    ) -> Result<Response<pb::PodIpAllocation>, Status> {
        Caller::of(&req).for_node(&req.get_ref().node)?;
        let r = req.into_inner();
        let family = parse_family(r.family)?;
        let ips = self
            .ipam
            .allocate_pod_ip(
                required("node", &r.node)?,
                required("owner", &r.owner)?,
                family,
            )
            .await?;
        Ok(Response::new(pb::PodIpAllocation {
            node: r.node,
            owner: r.owner,
            ips: strings(&ips),
            pod: String::new(),
            managed_by: "ipam".into(),
        }))
    }

    async fn release_pod_ip(
        &self,
        req: Request<pb::ReleasePodIpRequest>,
    ) -> Result<Response<pb::ReleasePodIpResponse>, Status> {
        Caller::of(&req).for_node(&req.get_ref().node)?;
        let r = req.get_ref();
        let released = self
            .ipam
            .release_pod_ip(required("node", &r.node)?, required("owner", &r.owner)?)
            .await?;
        Ok(Response::new(pb::ReleasePodIpResponse {
            released: strings(&released),
        }))
    }

    async fn list_pod_i_ps(
        &self,
        req: Request<pb::ListPodIPsRequest>,
    ) -> Result<Response<pb::ListPodIPsResponse>, Status> {
        let node = required("node", &req.get_ref().node)?;
        let allocations = self
            .ipam
            .pod_ips(node)?
            .into_iter()
            .map(|(owner, held)| pod_allocation(node, owner, &held))
            .collect();
        Ok(Response::new(pb::ListPodIPsResponse { allocations }))
    }

    async fn sync_pod_i_ps(
        &self,
        req: Request<pb::SyncPodIPsRequest>,
    ) -> Result<Response<pb::SyncPodIPsResponse>, Status> {
        Caller::of(&req).for_node(&req.get_ref().node)?;
        let r = req.into_inner();
        let node = required("node", &r.node)?.to_string();
        let report = r
            .allocations
            .into_iter()
            .map(|a| {
                let ips = a
                    .ips
                    .iter()
                    .map(|ip| parse_ip(&format!("allocations[{}].ips", a.owner), ip))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ReportedPod {
                    owner: a.owner,
                    ips,
                    pod: a.pod,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let outcome = self.ipam.sync_pod_ips(&node, r.generation, report).await?;
        Ok(Response::new(pb::SyncPodIPsResponse {
            accepted: outcome.accepted,
            generation: outcome.generation,
            reserved: outcome
                .reserved
                .into_iter()
                .map(|(owner, ips)| pod_allocation(&node, owner, &PodIps { ips, agent: None }))
                .collect(),
        }))
    }

    async fn allocate_service_ip(
        &self,
        req: Request<pb::AllocateServiceIpRequest>,
    ) -> Result<Response<pb::ServiceIp>, Status> {
        let r = req.into_inner();
        let ip = if r.ip.is_empty() {
            None
        } else {
            Some(parse_ip("ip", &r.ip)?)
        };
        let pool = (!r.pool.is_empty()).then_some(r.pool.as_str());
        let assigned = self
            .ipam
            .allocate_service_ip(
                required("service", &r.service)?,
                pool,
                ip,
                parse_family(r.family)?,
            )
            .await?;
        Ok(Response::new((&assigned).into()))
    }

    async fn release_service_ip(
        &self,
        req: Request<pb::ReleaseServiceIpRequest>,
    ) -> Result<Response<pb::ReleaseServiceIpResponse>, Status> {
        let released = self
            .ipam
            .release_service_ip(required("service", &req.get_ref().service)?)
            .await?;
        Ok(Response::new(pb::ReleaseServiceIpResponse {
            released: released.map(|s| s.ip.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_service_i_ps(
        &self,
        _: Request<pb::ListServiceIPsRequest>,
    ) -> Result<Response<pb::ListServiceIPsResponse>, Status> {
        let service_ips = self.ipam.service_ips().iter().map(Into::into).collect();
        Ok(Response::new(pb::ListServiceIPsResponse { service_ips }))
    }

    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let (pods, services) = self.ipam.pools();
        Ok(Response::new(pb::ListPoolsResponse {
            pod_pools: pods.into_iter().map(Into::into).collect(),
            nodes: self
                .ipam
                .pod_ips_per_node()
                .into_iter()
                .map(|(node, pod_ips_used)| pb::NodePodIPs { node, pod_ips_used })
                .collect(),
            service_pools: services
                .into_iter()
                .map(|(c, total, used)| pb::ServicePool {
                    name: c.name,
                    addresses: strings(&c.addresses),
                    auto_assign: c.auto_assign,
                    avoid_buggy_ips: c.avoid_buggy_ips,
                    total: saturating_u64(total),
                    used: saturating_u64(used),
                    free: saturating_u64(total - used),
                })
                .collect(),
        }))
    }

    async fn add_pool_cidr(
        &self,
        req: Request<pb::AddPoolCidrRequest>,
    ) -> Result<Response<pb::PodPool>, Status> {
        let r = req.get_ref();
        let cidr = parse_cidr("cidr", required("cidr", &r.cidr)?)?;
        let mask = match r.mask_size {
            0 => None,
            m => Some(u8::try_from(m).map_err(|_| {
                Status::invalid_argument(format!("maskSize {m} is not a prefix length (1 to 128)"))
            })?),
        };
        Ok(Response::new(
            self.ipam.add_pool_cidr(cidr, mask).await?.into(),
        ))
    }

    async fn drain_pool_cidr(
        &self,
        req: Request<pb::DrainPoolCidrRequest>,
    ) -> Result<Response<pb::PodPool>, Status> {
        let r = req.get_ref();
        let cidr = parse_cidr("cidr", required("cidr", &r.cidr)?)?;
        Ok(Response::new(
            self.ipam.drain_pool_cidr(cidr, !r.undrain).await?.into(),
        ))
    }

    type WatchStream = WatchStream;

    async fn heartbeat(
        &self,
        req: Request<tonic::Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        crate::heartbeat::serve(self.ipam.clone(), self.datagrams.clone(), req).await
    }

    type HeartbeatStream = crate::heartbeat::HeartbeatStream;

    async fn put_operator_entries(
        &self,
        req: Request<pb::PutOperatorEntriesRequest>,
    ) -> Result<Response<pb::OperatorEntriesChanged>, Status> {
        let r = req.into_inner();
        let entries = r.entries.into_iter().map(Into::into).collect();
        Ok(changed(
            self.ipam
                .put_operator_entries(entries, r.create_only)
                .await?,
        ))
    }

    async fn delete_operator_entries(
        &self,
        req: Request<pb::DeleteOperatorEntriesRequest>,
    ) -> Result<Response<pb::OperatorEntriesChanged>, Status> {
        let r = req.into_inner();
        Ok(changed(
            self.ipam.delete_operator_entries(&r.kind, r.keys).await?,
        ))
    }

    async fn list_operator_entries(
        &self,
        req: Request<pb::ListOperatorEntriesRequest>,
    ) -> Result<Response<pb::ListOperatorEntriesResponse>, Status> {
        let entries = self.ipam.operator_entries(&req.get_ref().kind);
        Ok(Response::new(pb::ListOperatorEntriesResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }

    /// Never called: [`WatchOnce`] serves Watch (`watch_wire.rs`).
    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        Err(Status::internal(
            "Watch is served by watch_wire::WatchOnce, not the generated server",
        ))
    }
}
