//! The IPAM Watch feed as IPAM's consumers (the BGP speaker, the route agent) follow it.
//!
//! Contract: [`run`] delivers a [`FeedEvent::Snapshot`] with the whole state, then each change,
//! and after any disconnect resumes from the last revision it delivered (IPAM answers with a fresh
//! snapshot when it cannot replay), until shutdown. Nothing is skipped silently.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::watch_event::Event as E;
use routeplane_net::Cidr;
use routeplane_runtime::shutdown::Shutdown;
use tokio::sync::mpsc;

/// A node as the feed reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedNode {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub pod_cidrs: Vec<Cidr>,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedService {
    pub service: String,
    pub ip: IpAddr,
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// The whole state: replace what was known.
    Snapshot {
        nodes: Vec<FeedNode>,
        services: Vec<FeedService>,
    },
    Node(FeedNode),
    NodeDeleted(String),
    ServiceAssigned(FeedService),
    ServiceReleased(String),
    /// Connection state, for the API.
    Connected(bool),
}

fn node(n: &pb::Node) -> FeedNode {
    FeedNode {
        name: n.name.clone(),
        addresses: n.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pod_cidrs: n.pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
        ready: n.ready,
    }
}

fn service(s: &pb::ServiceIp) -> Option<FeedService> {
    Some(FeedService {
        service: s.service.clone(),
        ip: s.ip.parse().ok()?,
        pool: s.pool.clone(),
    })
}

/// Follows IPAM until shutdown, reconnecting with backoff.
pub async fn run(endpoint: String, tx: mpsc::UnboundedSender<FeedEvent>, shutdown: Shutdown) {
    let mut revision = 0;
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_triggered() {
        let result = tokio::select! {
            r = follow(&endpoint, &mut revision, &tx) => r,
            () = shutdown.wait() => return,
        };
        let _ = tx.send(FeedEvent::Connected(false));
        match result {
            Ok(()) => tracing::warn!(%endpoint, revision, "IPAM ended the Watch stream; resuming"),
            Err(e) => {
                tracing::warn!(%endpoint, revision, error = %e, "IPAM Watch interrupted; resuming")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow(
    endpoint: &str,
    revision: &mut u64,
    tx: &mpsc::UnboundedSender<FeedEvent>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut client = pb::ipam_client::IpamClient::connect(endpoint.to_string()).await?;
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision: *revision,
        })
        .await?
        .into_inner();
    let _ = tx.send(FeedEvent::Connected(true));
    let (mut nodes, mut services) = (Vec::new(), Vec::new());
    while let Some(ev) = stream.message().await? {
        let event = match ev.event {
            Some(E::Snapshot(s)) => {
                if s.first {
                    nodes.clear();
                    services.clear();
                }
                nodes.extend(s.nodes.iter().map(node));
                services.extend(s.service_ips.iter().filter_map(service));
                if !s.last {
                    continue;
                }
                FeedEvent::Snapshot {
                    nodes: std::mem::take(&mut nodes),
                    services: std::mem::take(&mut services),
                }
            }
            Some(E::NodeUpdated(n)) => FeedEvent::Node(node(&n)),
            Some(E::NodeDeleted(d)) => FeedEvent::NodeDeleted(d.name),
            Some(E::ServiceIpAssigned(s)) => match service(&s) {
                Some(s) => FeedEvent::ServiceAssigned(s),
                None => continue,
            },
            Some(E::ServiceIpReleased(s)) => FeedEvent::ServiceReleased(s.service),
            None => continue,
        };
        *revision = ev.revision;
        if tx.send(event).is_err() {
            return Ok(());
        }
    }
    Ok(())
}
