//! routeplane.agent.v1.Cni over tonic, on the agent's Unix socket: each handler turns the request
//! into a validated one, makes one call on [`PodNetwork`] and converts the answer back. The status
//! codes are the ones routeplane-cni maps to CNI error codes (cni.proto says which).

use std::collections::BTreeSet;
use std::sync::Arc;

use routeplane_api::agent::v1 as pb;
use tonic::{Request, Response, Status};

use super::{AddRequest, AttachmentKey, Outcome, PodError, PodNetwork};
use crate::pods::wiring::mac_text;

pub struct CniGrpc {
    pods: Arc<PodNetwork>,
}

impl CniGrpc {
    pub fn new(pods: Arc<PodNetwork>) -> pb::cni_server::CniServer<CniGrpc> {
        pb::cni_server::CniServer::new(CniGrpc { pods })
            .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES)
    }
}

impl From<PodError> for Status {
    fn from(e: PodError) -> Status {
        let text = e.to_string();
        match e {
            PodError::Invalid(_) => Status::invalid_argument(text),
            PodError::NotReady(_) => Status::unavailable(text),
            PodError::Full(_) => Status::resource_exhausted(text),
            PodError::Unknown(_) => Status::not_found(text),
            PodError::Mismatch(_) => Status::failed_precondition(text),
            PodError::Store(_) | PodError::Wiring(_) | PodError::Kernel(_) => {
                Status::internal(text)
            }
        }
    }
}

fn key(r: &pb::CniRequest) -> Result<AttachmentKey, Status> {
    Ok(AttachmentKey::new(&r.container_id, &r.ifname)?)
}

/// "namespace/name" from the Kubernetes CNI_ARGS, when both are given.
fn pod_name(r: &pb::CniRequest) -> String {
    match (r.args.get("K8S_POD_NAMESPACE"), r.args.get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => String::new(),
    }
}

fn result(o: Outcome) -> pb::CniResult {
    let a = o.attachment;
    let gateway_of = |ip: &std::net::IpAddr| {
        o.gateways
            .iter()
            .find(|g| g.is_ipv4() == ip.is_ipv4())
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    pb::CniResult {
        interfaces: vec![
            pb::CniInterface {
                name: a.host_veth.clone(),
                mac: mac_text(&o.host_mac),
                sandbox: String::new(),
            },
            pb::CniInterface {
                name: a.ifname.clone(),
                mac: mac_text(&o.pod_mac),
                sandbox: a.netns.clone(),
            },
        ],
        ips: a
            .ips
            .iter()
            .map(|ip| pb::CniIp {
                address: format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
                gateway: gateway_of(ip),
                interface: 1,
            })
            .collect(),
        routes: o
            .gateways
            .iter()
            .map(|g| pb::CniRoute {
                dst: if g.is_ipv4() { "0.0.0.0/0" } else { "::/0" }.into(),
                gw: g.to_string(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::cni_server::Cni for CniGrpc {
    async fn add(&self, req: Request<pb::CniRequest>) -> Result<Response<pb::CniResult>, Status> {
        let r = req.into_inner();
        let outcome = self
            .pods
            .add(AddRequest {
                key: key(&r)?,
                netns: r.netns.clone(),
                pod: pod_name(&r),
            })
            .await?;
        Ok(Response::new(result(outcome)))
    }

    async fn del(
        &self,
        req: Request<pb::CniRequest>,
    ) -> Result<Response<pb::CniDelResponse>, Status> {
        let released = self.pods.del(&key(req.get_ref())?).await?;
        Ok(Response::new(pb::CniDelResponse {
            released: released.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn check(
        &self,
        req: Request<pb::CniRequest>,
    ) -> Result<Response<pb::CniCheckResponse>, Status> {
        let r = req.get_ref();
        self.pods.check(&key(r)?, &r.netns).await?;
        Ok(Response::new(pb::CniCheckResponse {}))
    }

    async fn gc(
        &self,
        req: Request<pb::CniGcRequest>,
    ) -> Result<Response<pb::CniGcResponse>, Status> {
        let valid = req
            .into_inner()
            .valid_attachments
            .iter()
            .map(|a| AttachmentKey::new(&a.container_id, &a.ifname))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let released = self.pods.gc(&valid).await?;
        Ok(Response::new(pb::CniGcResponse {
            released: released.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn status(
        &self,
        _: Request<pb::CniStatusRequest>,
    ) -> Result<Response<pb::CniStatusResponse>, Status> {
        self.pods.status()?;
        Ok(Response::new(pb::CniStatusResponse {}))
    }

    async fn list_attachments(
        &self,
        _: Request<pb::ListAttachmentsRequest>,
    ) -> Result<Response<pb::ListAttachmentsResponse>, Status> {
        let (reported_generation, report_pending) = self.pods.reported();
        let attachments = self
            .pods
            .attachments()
            .into_iter()
            .map(|a| pb::Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
                pod: a.pod,
                netns: a.netns,
                ips: a.ips.iter().map(ToString::to_string).collect(),
                host_interface: a.host_veth,
            })
            .collect();
        Ok(Response::new(pb::ListAttachmentsResponse {
            attachments,
            reported_generation,
            report_pending,
        }))
    }
}
