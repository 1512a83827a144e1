//! This node's place in the cluster: registering with routeplane-ipam, keeping the node alive (its
//! heartbeat, `heartbeat.rs`), and the allocation IPAM answers with — checked before it is used,
//! cached on disk so that an agent restarting while IPAM is down serves its pods at once, and
//! published to the agent's loop.
//!
//! Contract: an allocation is published only when every pod CIDR parses, has the router IP its
//! first usable address (as IPAM says too), lies inside a pool IPAM lists (ListPools), holds one
//! CIDR per family, and overlaps no subnet this node is connected to. When IPAM answers with other
//! CIDRs than the ones served (the node was deleted and registered again, IPAM's state was lost),
//! the new ones are published and the old ones dropped: a CIDR IPAM gave to another node is never
//! served on. Registration is retried until IPAM answers, again when IPAM no longer knows the node
//! (a heartbeat or KeepAlive: NOT_FOUND), when the labels change, and when asked
//! ([`Registration::again`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use routeplane_api::ipam::v1 as pb;
use routeplane_net::Cidr;
use routeplane_runtime::backoff::Backoff;
use routeplane_runtime::link::Link;
use routeplane_runtime::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::desired::Connected;
use crate::heartbeat::Ended;
use crate::kernel::Kernel;
use crate::pods::allocator::router_ip;

/// What IPAM gave this node, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAllocation {
    pub node: String,
    pub pod_cidrs: Vec<Cidr>,
    pub router_ips: Vec<IpAddr>,
}

/// The cache file's form (text, so that an operator can read it).
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    node: String,
    pod_cidrs: Vec<String>,
    router_ips: Vec<String>,
}

impl NodeAllocation {
    /// Checks IPAM's answer on its own terms: CIDRs that parse, one per family, router IPs that
    /// are their first usable addresses.
    pub fn from_ipam(
        node: &str,
        cidrs: &[String],
        routers: &[String],
    ) -> Result<NodeAllocation, String> {
        let mut pod_cidrs = Vec::new();
        let mut router_ips = Vec::new();
        for (i, text) in cidrs.iter().enumerate() {
            let cidr: Cidr = text
                .parse()
                .map_err(|e| format!("pod CIDR {text:?} from IPAM is not a CIDR: {e}"))?;
            if pod_cidrs.iter().any(|c: &Cidr| c.family() == cidr.family()) {
                return Err(format!(
                    "IPAM gave node {node} two {} pod CIDRs ({}): one per family",
                    cidr.family(),
                    cidrs.join(", ")
                ));
            }
            let router = router_ip(&cidr)
                .filter(|_| cidr.size() >= 4)
                .ok_or_else(|| {
                    format!("pod CIDR {cidr} from IPAM is too small for a router IP and pods")
                })?;
            match routers.get(i).map(|r| r.parse::<IpAddr>()) {
                Some(Ok(r)) if r == router => {}
                other => {
                    return Err(format!(
                        "IPAM says the router IP of {cidr} is {other:?}, not its first usable address {router}"
                    ));
                }
            }
            pod_cidrs.push(cidr);
            router_ips.push(router);
        }
        Ok(NodeAllocation {
            node: node.to_string(),
            pod_cidrs,
            router_ips,
        })
    }

    /// Checks it against this node and the cluster: inside a pool IPAM lists, overlapping no
    /// subnet the node is connected to.
    pub fn check(&self, pools: &[Cidr], connected: &[Connected]) -> Result<(), String> {
        for cidr in &self.pod_cidrs {
            if !pools
                .iter()
                .any(|p| p.overlaps(cidr) && p.prefix_len() <= cidr.prefix_len())
            {
                let listed: Vec<String> = pools.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "pod CIDR {cidr} of node {} lies in none of the pools IPAM lists ({}): refused",
                    self.node,
                    listed.join(", ")
                ));
            }
            if let Some(c) = connected
                .iter()
                .find(|c| c.ifname != Kernel::ROUTER_LINK && c.subnet.overlaps(cidr))
            {
                return Err(format!(
                    "pod CIDR {cidr} of node {} overlaps {} on {}, a subnet this node is connected to: routing it to pods would cut the node off; refused",
                    self.node, c.subnet, c.ifname
                ));
            }
        }
        Ok(())
    }

    fn cached(path: &Path) -> Option<NodeAllocation> {
        let bytes = std::fs::read(path).ok()?;
        let c: Cached = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the cached allocation does not parse: ignored");
                return None;
            }
        };
        match NodeAllocation::from_ipam(&c.node, &c.pod_cidrs, &c.router_ips) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the cached allocation is not valid: ignored");
                None
            }
        }
    }

    fn cache(&self, path: &Path) {
        let c = Cached {
            node: self.node.clone(),
            pod_cidrs: self.pod_cidrs.iter().map(ToString::to_string).collect(),
            router_ips: self.router_ips.iter().map(ToString::to_string).collect(),
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&c)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the allocation");
        }
    }
}

/// The registration task's handle: the current allocation, and a way to ask for registration again.
#[derive(Clone)]
pub struct Registration {
    pub allocation: watch::Receiver<Option<NodeAllocation>>,
    again: Arc<Notify>,
}

impl Registration {
    /// Registers again (the feed shows another node holding a CIDR of ours, say).
    pub fn again(&self) {
        self.again.notify_one();
    }
}

/// Everything registration needs.
pub struct Identity {
    /// The agent's one connection to IPAM, shared with its Watch and pod reports.
    pub ipam: Arc<Link>,
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: watch::Receiver<BTreeMap<String, String>>,
    pub cache_dir: PathBuf,
}

/// Publishes the cached allocation at once (serving while IPAM is down), then registers, keeps
/// the lease, and registers again when needed — until shutdown.
pub fn start(id: Identity, kernel: Arc<Kernel>, shutdown: Shutdown) -> Registration {
    let cache = id.cache_dir.join("allocation.json");
    let cached = NodeAllocation::cached(&cache).filter(|a| a.node == id.name);
    if let Some(a) = &cached {
        tracing::info!(pod_cidrs = ?a.pod_cidrs, "serving with the cached allocation until IPAM answers");
    }
    let (tx, rx) = watch::channel(cached);
    let again = Arc::new(Notify::new());
    tokio::spawn(run(id, kernel, tx, again.clone(), cache, shutdown));
    Registration {
        allocation: rx,
        again,
    }
}

/// How long SIGTERM waits for IPAM to take the drain: an unreachable IPAM does not hold the exit.
const SHUTDOWN_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// On SIGTERM: drains the node until this agent registers again (RFC 8326 at the ToRs, see
/// `--drain-on-shutdown`). Bounded by SHUTDOWN_DRAIN_TIMEOUT.
pub async fn drain_for_shutdown(ipam: &Link, name: &str) -> Result<(), String> {
    let call = async {
        ipam.call(|channel| async move {
            pb::ipam_client::IpamClient::new(channel)
                .drain_node(pb::DrainNodeRequest {
                    name: name.to_string(),
                    cancel: false,
                    until_registered: true,
                })
                .await
        })
        .await
        .map_err(|s| s.message().to_string())?;
        Ok(())
    };
    tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, call)
        .await
        .map_err(|_| format!("IPAM did not answer within {SHUTDOWN_DRAIN_TIMEOUT:?}"))?
}

async fn register_once(id: &Identity, kernel: &Kernel) -> Result<NodeAllocation, String> {
    let labels = id.labels.borrow().clone();
    let request = pb::RegisterNodeRequest {
        name: id.name.clone(),
        addresses: id.addresses.iter().map(ToString::to_string).collect(),
        labels: labels.into_iter().collect::<HashMap<_, _>>(),
    };
    let (node, pools) = id
        .ipam
        .call(|channel| async move {
            let mut c = pb::ipam_client::IpamClient::new(channel)
                .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES);
            let node = c.register_node(request).await?.into_inner();
            let pools = c.list_pools(pb::ListPoolsRequest {}).await?.into_inner();
            Ok((node, pools))
        })
        .await
        .map_err(|s| format!("registering with IPAM: {}", s.message()))?;
    let alloc = NodeAllocation::from_ipam(&node.name, &node.pod_cidrs, &node.router_ips)?;
    let pools: Vec<Cidr> = pools
        .pod_pools
        .iter()
        .filter_map(|p| p.cidr.parse().ok())
        .collect();
    let connected = kernel
        .connected()
        .await
        .map_err(|e| format!("reading this node's subnets: {e}"))?;
    alloc.check(&pools, &connected)?;
    Ok(alloc)
}

async fn run(
    mut id: Identity,
    kernel: Arc<Kernel>,
    tx: watch::Sender<Option<NodeAllocation>>,
    again: Arc<Notify>,
    cache: PathBuf,
    shutdown: Shutdown,
) {
    let _ = std::fs::create_dir_all(&id.cache_dir);
    let mut warned = false;
    'register: while !shutdown.is_triggered() {
        match register_once(&id, &kernel).await {
            Ok(alloc) => {
                let before = tx.borrow().clone();
                if before
                    .as_ref()
                    .is_some_and(|b| b.pod_cidrs != alloc.pod_cidrs)
                {
                    tracing::warn!(was = ?before.map(|b| b.pod_cidrs), now = ?alloc.pod_cidrs, "IPAM gave this node other pod CIDRs: adopting them, dropping the old");
                }
                tracing::info!(pod_cidrs = ?alloc.pod_cidrs, router_ips = ?alloc.router_ips, "registered with IPAM");
                alloc.cache(&cache);
                tx.send_replace(Some(alloc));
                warned = false;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "registration failed; retrying about every second");
                    warned = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(routeplane_runtime::backoff::jitter(Duration::from_secs(1))) => continue 'register,
                    () = again.notified() => continue 'register,
                    () = shutdown.wait() => return,
                }
            }
        }
        match keep_lease(&mut id, &again, &shutdown).await {
            Next::Register => continue 'register,
            Next::Shutdown => return,
        }
    }
}

/// What ends keeping the lease.
enum Next {
    Register,
    Shutdown,
}

/// How soon a heartbeat stream that failed is opened again: the first retry well within IPAM's
/// dead interval (a stream lost while IPAM lives), then backing off to a few seconds while IPAM is
/// away (a restarted IPAM gives every node its lease TTL before judging it) — jittered, so that
/// thousands of agents do not come back to a restarted IPAM in the same instant.
pub const HEARTBEAT_RETRY_FIRST: Duration = Duration::from_millis(500);
pub const HEARTBEAT_RETRY_MOST: Duration = Duration::from_secs(4);

/// Keeps this node alive in IPAM: beats on the Heartbeat stream (`heartbeat.rs`), or — with an
/// IPAM that has none — renews with KeepAlive a few times per lease TTL. Returns when the node must
/// register again (IPAM forgot it, the labels changed, asked to) or on shutdown.
async fn keep_lease(id: &mut Identity, again: &Notify, shutdown: &Shutdown) -> Next {
    let mut heartbeats = true;
    let mut period = Duration::from_secs(5);
    let mut outage = crate::heartbeat::Outage::default();
    let mut retry = Backoff::new(HEARTBEAT_RETRY_FIRST, HEARTBEAT_RETRY_MOST);
    loop {
        let mut labels = id.labels.clone();
        let interrupted = async {
            tokio::select! {
                () = again.notified() => Next::Register,
                // IPAM keeps the node's CIDR; only its labels (and so its BGP peers) change.
                Ok(()) = labels.changed() => Next::Register,
                () = shutdown.wait() => Next::Shutdown,
            }
        };
        let step = async {
            if heartbeats {
                let ended = crate::heartbeat::run(id).await;
                match &ended {
                    Ended::NotRegistered => return Some(Next::Register),
                    Ended::Unsupported => {
                        tracing::warn!(
                            "IPAM has no Heartbeat stream (an older routeplane-ipam): renewing the lease with KeepAlive instead, so a failure of this node is seen only when the lease runs out"
                        );
                        heartbeats = false;
                    }
                    Ended::Lost(e) | Ended::Failed(e) => {
                        if outage.warn(&ended) {
                            let what = if matches!(ended, Ended::Lost(_)) {
                                "was lost"
                            } else {
                                "could not be opened"
                            };
                            tracing::warn!(error = %e, "the heartbeat stream to IPAM {what}; retrying after {HEARTBEAT_RETRY_FIRST:?} to {HEARTBEAT_RETRY_MOST:?} (said once per outage)");
                        }
                        let lost = matches!(ended, Ended::Lost(_));
                        tokio::time::sleep(retry.after(lost)).await;
                    }
                }
                return None;
            }
            tokio::time::sleep(period).await;
            match keep_alive(id).await {
                Ok(r) => {
                    period = Duration::from_secs(u64::from(r.lease_ttl_seconds))
                        .div_f64(3.0)
                        .max(Duration::from_millis(300));
                }
                Err(s) if s.code() == tonic::Code::NotFound => return Some(Next::Register),
                Err(s) => tracing::warn!(error = %s.message(), "lease renewal failed; retrying"),
            }
            None
        };
        let next = tokio::select! {
            next = interrupted => Some(next),
            next = step => next,
        };
        if let Some(next) = next {
            if matches!(next, Next::Register) {
                id.labels.borrow_and_update();
                tracing::warn!("registering with IPAM again");
            }
            return next;
        }
    }
}

async fn keep_alive(id: &Identity) -> Result<pb::KeepAliveResponse, tonic::Status> {
    let name = id.name.clone();
    id.ipam
        .call(|channel| async move {
            pb::ipam_client::IpamClient::new(channel)
                .keep_alive(pb::KeepAliveRequest { name })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(subnet: &str, ifname: &str) -> Connected {
        Connected {
            subnet: subnet.parse().unwrap(),
            ifindex: 2,
            ifname: ifname.into(),
        }
    }

    #[test]
    fn ipams_answer_is_checked_on_its_own_terms() {
        let ok = NodeAllocation::from_ipam(
            "n1",
            &["10.5.112.0/24".into(), "fd00::100/120".into()],
            &["10.5.112.1".into(), "fd00::101".into()],
        )
        .unwrap();
        assert_eq!(ok.router_ips[1].to_string(), "fd00::101");
        for (cidrs, routers, needle) in [
            (vec!["10.5.112.0/33"], vec!["10.5.112.1"], "is not a CIDR"),
            (
                vec!["10.5.112.0/24"],
                vec!["10.5.112.9"],
                "not its first usable address",
            ),
            (
                vec!["10.5.112.0/24"],
                vec![],
                "not its first usable address",
            ),
            (
                vec!["10.5.112.0/24", "10.5.113.0/24"],
                vec!["10.5.112.1", "10.5.113.1"],
                "two IPv4 pod CIDRs",
            ),
            (vec!["10.5.112.0/31"], vec!["10.5.112.1"], "too small"),
        ] {
            let cidrs: Vec<String> = cidrs.into_iter().map(String::from).collect();
            let routers: Vec<String> = routers.into_iter().map(String::from).collect();
            let e = NodeAllocation::from_ipam("n1", &cidrs, &routers).unwrap_err();
            assert!(e.contains(needle), "{cidrs:?}: {e}");
        }
    }

    #[test]
    fn a_cidr_outside_the_pools_or_on_a_connected_subnet_is_refused() {
        let a = NodeAllocation::from_ipam("n1", &["10.4.94.0/24".into()], &["10.4.94.1".into()])
            .unwrap();
        let pools: Vec<Cidr> = vec!["10.5.112.0/21".parse().unwrap()];
        let e = a.check(&pools, &[]).unwrap_err();
        assert!(
            e.contains("lies in none of the pools IPAM lists (10.5.112.0/21)"),
            "{e}"
        );
        let wide: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let e = a
            .check(&wide, &[connected("10.4.94.0/24", "eth0")])
            .unwrap_err();
        assert!(e.contains("overlaps 10.4.94.0/24 on eth0"), "{e}");
        assert!(
            a.check(&wide, &[connected("10.4.94.1/32", Kernel::ROUTER_LINK)])
                .is_ok(),
            "the router interface carries the pod CIDR's own router IP"
        );
    }

    #[test]
    fn the_cache_round_trips_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocation.json");
        let a = NodeAllocation::from_ipam("n1", &["10.5.112.0/24".into()], &["10.5.112.1".into()])
            .unwrap();
        a.cache(&path);
        assert_eq!(NodeAllocation::cached(&path), Some(a));
        std::fs::write(
            &path,
            br#"{"node": "n1", "pod_cidrs": ["10.5.112.0/24"], "router_ips": ["10.5.112.77"]}"#,
        )
        .unwrap();
        assert_eq!(NodeAllocation::cached(&path), None);
        std::fs::write(&path, b"{\"node").unwrap();
        assert_eq!(NodeAllocation::cached(&path), None);
    }
}
