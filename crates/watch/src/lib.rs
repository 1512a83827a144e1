//! The IPAM Watch feed as IPAM's consumers (the BGP speaker, the route agent) follow it.
//!
//! Contract: [`run`] delivers a [`FeedEvent::Snapshot`] with the whole state (however many chunks
//! IPAM sends it in), then each change, and after any disconnect — IPAM ending the stream, cutting
//! off a watcher that fell behind (ABORTED), stopping (UNAVAILABLE), the connection dropping —
//! resumes from the last revision it delivered (IPAM answers with a fresh snapshot when it cannot
//! replay), until shutdown. Nothing is skipped silently: an entry that does not parse (an address,
//! a CIDR, a Service IP) is logged with what it was and counted in [`FeedStats`]. The stream rides
//! the process's shared [`Link`] to IPAM (the agent's one connection); reconnects back off from
//! 200 ms to 5 s, jittered, and start again from 200 ms once a connection has delivered an event.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::watch_event::Event as E;
use routeplane_net::Cidr;
use routeplane_runtime::backoff::Backoff;
use routeplane_runtime::link::Link;
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
    /// Drained: announced with GRACEFUL_SHUTDOWN, then withdrawn (IPAM's DrainNode).
    pub draining: bool,
    /// NotReady because it flapped: IPAM holds it down until its damping penalty decays.
    pub held_down: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedService {
    pub service: String,
    pub ip: IpAddr,
    pub pool: String,
}

/// Another service's operator state kept by IPAM (only for followers that ask for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOperatorEntry {
    pub kind: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// The whole state as of `revision`: replace what was known.
    Snapshot {
        revision: u64,
        nodes: Vec<FeedNode>,
        services: Vec<FeedService>,
        operator: Vec<FeedOperatorEntry>,
    },
    /// One write or delete of operator entries, at `revision`; `deleted` as (kind, key).
    Operator {
        revision: u64,
        put: Vec<FeedOperatorEntry>,
        deleted: Vec<(String, String)>,
    },
    Node(FeedNode),
    NodeDeleted(String),
    ServiceAssigned(FeedService),
    ServiceReleased(String),
    /// Connection state, for the API.
    Connected(bool),
}

/// What following the feed has met, for the consumers' metrics.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Entries of the feed that did not parse and were left out (each logged).
    pub skipped: AtomicU64,
    /// Connections made (the first included).
    pub connects: AtomicU64,
}

impl FeedStats {
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    fn skip(&self, what: std::fmt::Arguments<'_>) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("IPAM feed: {what} does not parse: left out");
    }
}

/// A node, its unparsable addresses and CIDRs left out (and counted).
fn node(n: &pb::Node, stats: &FeedStats) -> FeedNode {
    let mut addresses = Vec::new();
    for a in &n.addresses {
        match a.parse() {
            Ok(ip) => addresses.push(ip),
            Err(_) => stats.skip(format_args!("address {a:?} of node {}", n.name)),
        }
    }
    let mut pod_cidrs = Vec::new();
    for c in &n.pod_cidrs {
        match c.parse() {
            Ok(cidr) => pod_cidrs.push(cidr),
            Err(_) => stats.skip(format_args!("pod CIDR {c:?} of node {}", n.name)),
        }
    }
    FeedNode {
        name: n.name.clone(),
        addresses,
        labels: n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pod_cidrs,
        ready: n.ready,
        draining: n.draining,
        held_down: n.held_down,
    }
}

/// A Service IP, or None (counted) when its address does not parse.
fn service(s: &pb::ServiceIp, stats: &FeedStats) -> Option<FeedService> {
    match s.ip.parse() {
        Ok(ip) => Some(FeedService {
            service: s.service.clone(),
            ip,
            pool: s.pool.clone(),
        }),
        Err(_) => {
            stats.skip(format_args!(
                "LoadBalancer IP {:?} of Service {}",
                s.ip, s.service
            ));
            None
        }
    }
}

/// The first pause before reconnecting, and the longest.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
pub const BACKOFF_MOST: Duration = Duration::from_secs(5);

fn operator_entry(e: pb::OperatorEntry) -> FeedOperatorEntry {
    FeedOperatorEntry {
        kind: e.kind,
        key: e.key,
        value: e.value,
    }
}

/// What to follow besides nodes and Service IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Nodes and Service IPs: what the route agent needs.
    Allocations,
    /// Operator entries too (routeplane-bgp's peers and paths; IPAM allows it to routeplane-bgp
    /// and operators only).
    WithOperatorEntries,
}

/// Follows IPAM until shutdown, reconnecting with backoff.
pub async fn run(
    link: Arc<Link>,
    follow_what: Follow,
    tx: mpsc::UnboundedSender<FeedEvent>,
    stats: Arc<FeedStats>,
    shutdown: Shutdown,
) {
    let endpoint = link.list().to_string();
    let mut revision = 0;
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MOST);
    while !shutdown.is_triggered() {
        let mut delivered = false;
        let result = tokio::select! {
            // On the link's connection: a failure that may be the connection's makes the next
            // attempt dial again.
            r = link.call(|channel| stream(channel, follow_what, &mut revision, &tx, &stats, &mut delivered)) => r,
            () = shutdown.wait() => return,
        };
        let _ = tx.send(FeedEvent::Connected(false));
        match result {
            Ok(()) => tracing::warn!(%endpoint, revision, "IPAM ended the Watch stream; resuming"),
            Err(e) => {
                tracing::warn!(%endpoint, revision, error = %e.message(), code = ?e.code(), "IPAM Watch interrupted; resuming")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.after(delivered)) => {}
            () = shutdown.wait() => return,
        }
    }
}

/// One Watch stream, delivering until it ends.
async fn stream(
    channel: tonic::transport::Channel,
    follow_what: Follow,
    revision: &mut u64,
    tx: &mpsc::UnboundedSender<FeedEvent>,
    stats: &FeedStats,
    delivered: &mut bool,
) -> Result<(), tonic::Status> {
    let mut client = pb::ipam_client::IpamClient::new(channel)
        .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES);
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision: *revision,
            operator_entries: follow_what == Follow::WithOperatorEntries,
        })
        .await?
        .into_inner();
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let _ = tx.send(FeedEvent::Connected(true));
    let (mut nodes, mut services, mut operator) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(ev) = stream.message().await? {
        let event = match ev.event {
            Some(E::Snapshot(s)) => {
                if s.first {
                    nodes.clear();
                    services.clear();
                    operator.clear();
                }
                nodes.extend(s.nodes.iter().map(|n| node(n, stats)));
                services.extend(s.service_ips.iter().filter_map(|x| service(x, stats)));
                operator.extend(s.operator_entries.into_iter().map(operator_entry));
                if !s.last {
                    continue;
                }
                FeedEvent::Snapshot {
                    revision: ev.revision,
                    nodes: std::mem::take(&mut nodes),
                    services: std::mem::take(&mut services),
                    operator: std::mem::take(&mut operator),
                }
            }
            Some(E::OperatorEntries(o)) => FeedEvent::Operator {
                revision: ev.revision,
                put: o.put.into_iter().map(operator_entry).collect(),
                deleted: o.deleted.into_iter().map(|e| (e.kind, e.key)).collect(),
            },
            Some(E::NodeUpdated(n)) => FeedEvent::Node(node(&n, stats)),
            Some(E::NodeDeleted(d)) => FeedEvent::NodeDeleted(d.name),
            Some(E::ServiceIpAssigned(s)) => match service(&s, stats) {
                Some(s) => FeedEvent::ServiceAssigned(s),
                // Its revision is still seen: resuming replays after it, not it again.
                None => {
                    *revision = ev.revision;
                    continue;
                }
            },
            Some(E::ServiceIpReleased(s)) => FeedEvent::ServiceReleased(s.service),
            // A bookmark: resume from here (IPAM's shutdown), nothing to deliver.
            Some(E::Progress(_)) => {
                *revision = ev.revision;
                *delivered = true;
                continue;
            }
            None => {
                stats.skip(format_args!(
                    "an event of revision {} (of no kind this client knows)",
                    ev.revision
                ));
                *revision = ev.revision;
                continue;
            }
        };
        *revision = ev.revision;
        *delivered = true;
        if tx.send(event).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparsable_entries_are_left_out_counted_and_the_rest_kept() {
        let stats = FeedStats::default();
        let n = pb::Node {
            name: "n1".into(),
            addresses: vec!["10.4.94.11".into(), "10.4.94.999".into()],
            pod_cidrs: vec!["10.5.112.0/24".into(), "fd00::/200".into()],
            ready: true,
            ..Default::default()
        };
        let fed = node(&n, &stats);
        assert_eq!(fed.addresses, vec!["10.4.94.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            fed.pod_cidrs,
            vec!["10.5.112.0/24".parse::<Cidr>().unwrap()]
        );
        assert_eq!(stats.skipped(), 2);
        let bad = pb::ServiceIp {
            service: "default/web".into(),
            ip: "ten".into(),
            pool: "default".into(),
        };
        assert_eq!(service(&bad, &stats), None);
        assert_eq!(stats.skipped(), 3);
    }
}
