//! The agent's life: register the node (`registration`), own its pods (`pods`), follow the IPAM
//! Watch feed, and reconcile the kernel's routes and the eBPF maps with what the feed and the pods
//! say — on every change, at start and every `--reconcile-interval`. On shutdown routes, maps and
//! pods' wiring stay: a restarting agent drops no traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use routeplane_runtime::shutdown::Shutdown;
use routeplane_watch::{FeedEvent, FeedNode};
use tokio::sync::watch;

use crate::desired::{Connected, PeerNode, Route, desired};
use crate::ebpf::{Counters, Datapath, SharedDatapath, Side};
use crate::kernel::{Kernel, KernelError};
use crate::pods::PodNetwork;
use crate::reconcile::plan;
use crate::registration::{Identity, NodeAllocation, Registration};
use crate::settings::{Cli, DatapathKind};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Runtime(#[from] routeplane_runtime::RuntimeError),
    #[error("{0}")]
    Start(String),
}

/// What the API shows; the agent's loop keeps it current.
#[derive(Debug, Default)]
pub struct AgentState {
    pub node: String,
    pub remote_gateways: Vec<IpAddr>,
    pub addresses: Vec<IpAddr>,
    pub alloc: Option<NodeAllocation>,
    pub nodes: BTreeMap<String, FeedNode>,
    pub ipam_connected: bool,
    /// Since when the IPAM feed is lost (or was never had), while it is.
    pub ipam_disconnected_since: Option<std::time::SystemTime>,
    /// How many times a connected IPAM feed was lost.
    pub ipam_disconnects: u64,
    pub synced: bool,
    pub installed: Vec<Route>,
    pub connected: Vec<Connected>,
    /// Default gateway per family (IPv4, IPv6), with the interface name.
    pub default_gateway: [Option<(IpAddr, String)>; 2],
    pub last_reconcile: Option<std::time::SystemTime>,
    pub last_error: String,
    /// Reconcile passes, those that failed, and the time they took.
    pub reconciles: u64,
    /// The eBPF programs' counters, when they run.
    pub ebpf_counters: Option<Counters>,
    /// Whether the remote pod CIDRs go to the eBPF maps (else kernel routes).
    pub ebpf_routes_on: bool,
    /// The eBPF map's entries, as of the last reconcile.
    pub ebpf_routes: Vec<Route>,
    /// Interfaces carrying the hop rule's uplink program.
    pub uplinks: Vec<String>,
    pub reconcile_errors: u64,
    pub reconcile_seconds: f64,
}

pub type Shared = Arc<std::sync::Mutex<AgentState>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, AgentState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The feed connected or lost: a partition shows as the time it began and a count, besides the
/// flag. The watch crate reports every failed attempt as lost; only the first counts.
fn feed_connected(s: &mut AgentState, connected: bool, now: std::time::SystemTime) {
    if connected {
        s.ipam_disconnected_since = None;
    } else {
        if s.ipam_connected {
            s.ipam_disconnects += 1;
            tracing::warn!("the IPAM feed is lost: routes stay as they are until it is back");
        }
        s.ipam_disconnected_since.get_or_insert(now);
    }
    s.ipam_connected = connected;
}

fn peer(n: &FeedNode) -> PeerNode {
    PeerNode {
        name: n.name.clone(),
        addresses: n.addresses.clone(),
        pod_cidrs: n.pod_cidrs.clone(),
    }
}

/// Everything a reconcile pass works with.
pub struct Machinery {
    pub kernel: Arc<Kernel>,
    pub pods: Arc<PodNetwork>,
    pub datapath: Option<SharedDatapath>,
    /// Whether remote pod CIDRs go to the eBPF maps.
    pub ebpf_routes: bool,
    /// --uplink-interface, or empty for the interfaces carrying the node's addresses.
    pub uplinks: Vec<String>,
    /// What following the IPAM feed met (for the metrics).
    pub feed: Arc<routeplane_watch::FeedStats>,
    /// The agent's one connection to IPAM (mutual TLS or not): registration, heartbeat, Watch
    /// and pod reports share it.
    pub ipam: Arc<routeplane_runtime::link::Link>,
}

/// The node's own pod CIDR routes: `<pod CIDR> dev rp_host`, so that what is not a pod's /32 goes
/// to the router interface (and is dropped there) instead of back out by the default route.
fn own_routes(alloc: &NodeAllocation, router_index: u32) -> Vec<Route> {
    alloc
        .pod_cidrs
        .iter()
        .map(|c| Route {
            destination: *c,
            gateway: None,
            ifindex: router_index,
        })
        .collect()
}

/// One reconcile pass: the router interface, then desired routes (other nodes' from the feed,
/// this node's pod CIDRs and its pods') against the kernel's and the eBPF maps', applying the
/// difference. Pods' wiring waits meanwhile (`kernel_lock`).
async fn reconcile(m: &Machinery, shared: &Shared) -> Result<(), KernelError> {
    let _exclusive = m.pods.kernel_lock.write().await;
    let (me, alloc, peers, gateways, addresses) = {
        let s = lock(shared);
        (
            s.node.clone(),
            s.alloc.clone(),
            s.nodes.values().map(peer).collect::<Vec<PeerNode>>(),
            s.remote_gateways.clone(),
            s.addresses.clone(),
        )
    };
    let mut failures = Vec::new();
    let connected = m.kernel.connected().await?;
    let mut want = desired(&me, &peers, &connected, &gateways);
    let links = m.kernel.links().await?;
    let mut uplinks = Vec::new();
    if let Some(dp) = &m.datapath {
        let mut dp = crate::ebpf::lock(dp);
        if m.ebpf_routes {
            // Remote pod CIDRs go to the eBPF maps, and the kernel loses its routes of ours for
            // them. Only a next hop of another family than its CIDR has no place in the maps.
            let leftover: BTreeMap<_, _> = want
                .iter()
                .filter(|(c, r)| !crate::lpm::fits(c, r))
                .map(|(c, r)| (*c, *r))
                .collect();
            match dp.sync(std::mem::replace(&mut want, leftover)) {
                Ok((0, 0)) => {}
                Ok((changed, removed)) => tracing::info!(changed, removed, "eBPF routes updated"),
                Err(e) => failures.push(format!("eBPF routes not updated: {e}")),
            }
        }
        let local: Vec<_> = alloc
            .iter()
            .flat_map(|a| {
                a.pod_cidrs
                    .iter()
                    .copied()
                    .zip(a.router_ips.iter().copied())
            })
            .collect();
        if let Err(e) = dp.set_local(&local) {
            failures.push(format!("eBPF local CIDRs not updated: {e}"));
        }
        uplinks = if m.uplinks.is_empty() {
            uplinks_of(&connected, &addresses)
        } else {
            m.uplinks.clone()
        };
        for iface in &uplinks {
            if let Err(e) = dp.attach_to(iface, Side::Uplink) {
                failures.push(format!("uplink classifier on {iface}: {e}"));
            }
        }
        failures.extend(m.pods.attach_missing(&mut dp, &links));
    }
    if let Some(alloc) = &alloc {
        let router = m.kernel.ensure_router(&alloc.router_ips).await?;
        for r in own_routes(alloc, router) {
            want.insert(r.destination, r);
        }
    }
    for r in m.pods.host_routes(&links) {
        want.insert(r.destination, r);
    }
    let actions = plan(&want, &m.kernel.our_routes().await?);
    if !actions.is_empty() {
        tracing::info!(changes = actions.len(), "reconciling routes");
        for (action, error) in m.kernel.apply(&actions).await {
            tracing::warn!(?action, %error, "route change failed; the next reconcile retries");
            failures.push(format!("{action:?}: {error}"));
        }
    }
    let name_of = |index: u32| {
        connected
            .iter()
            .find(|c| c.ifindex == index)
            .map(|c| c.ifname.clone())
            .unwrap_or_default()
    };
    let mut default_gateway = [None, None];
    for (slot, v6) in default_gateway.iter_mut().zip([false, true]) {
        *slot = m
            .kernel
            .default_gateway(v6)
            .await?
            .map(|(gw, index)| (gw, name_of(index)));
    }
    let installed = m.kernel.our_routes().await?;
    let (counters, ebpf_routes) = match &m.datapath {
        Some(dp) => {
            let dp = crate::ebpf::lock(dp);
            let counters = dp
                .counters()
                .map_err(|e| failures.push(format!("eBPF counters: {e}")))
                .ok();
            let entries = if m.ebpf_routes {
                dp.entries()
                    .map_err(|e| failures.push(format!("eBPF map entries: {e}")))
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            (counters, entries)
        }
        None => (None, Vec::new()),
    };
    let mut s = lock(shared);
    s.ebpf_counters = counters;
    s.ebpf_routes = ebpf_routes;
    s.uplinks = uplinks;
    s.installed = installed;
    s.connected = connected;
    s.default_gateway = default_gateway;
    s.last_reconcile = Some(std::time::SystemTime::now());
    s.last_error = failures.join("; ");
    Ok(())
}

/// The interfaces carrying one of the node's addresses.
fn uplinks_of(connected: &[Connected], addresses: &[IpAddr]) -> Vec<String> {
    let set: BTreeSet<String> = connected
        .iter()
        .filter(|c| c.ifname != Kernel::ROUTER_LINK)
        .filter(|c| addresses.iter().any(|a| c.subnet.contains_addr(*a)))
        .map(|c| c.ifname.clone())
        .collect();
    set.into_iter().collect()
}

/// The labels to register with — the flags; in Kubernetes mode the Node's too, followed from then
/// on — and in Kubernetes mode the Node's addresses.
async fn from_node_object(
    cli: &Cli,
    name: &str,
    shutdown: &Shutdown,
) -> Result<(watch::Receiver<BTreeMap<String, String>>, Vec<IpAddr>), AgentError> {
    let flags: BTreeMap<String, String> = cli.labels.iter().cloned().collect();
    if !cli.kubernetes {
        return Ok((watch::channel(flags).1, Vec::new()));
    }
    let client = routeplane_kubernetes::client()
        .await
        .map_err(AgentError::Start)?;
    let (node_labels, addresses) = crate::node_object::fetch(&client, name)
        .await
        .map_err(|e| AgentError::Start(format!("--kubernetes: cannot read Node {name}: {e}")))?;
    let (tx, rx) = watch::channel(crate::node_object::effective(&node_labels, &cli.labels));
    tracing::info!(labels = ?*rx.borrow(), ?addresses, "labels and addresses from the Node object");
    tokio::spawn(crate::node_object::follow(
        client,
        name.to_string(),
        cli.labels.clone(),
        tx,
        shutdown.clone(),
    ));
    Ok((rx, addresses))
}

/// The datapath the flags ask for: with `ebpf` it must load; with `kernel` it runs when it can
/// (the hop rule of the seed's traceroutes), and its absence is said once.
fn datapath(cli: &Cli) -> Result<Option<SharedDatapath>, AgentError> {
    let loaded = Datapath::attach(&cli.pod_interfaces, &cli.bpf_pin_dir);
    match (cli.datapath, loaded) {
        (_, Ok(dp)) => {
            tracing::info!(pod_interfaces = ?cli.pod_interfaces, pins = %cli.bpf_pin_dir.display(), "eBPF classifiers loaded");
            Ok(Some(Arc::new(std::sync::Mutex::new(dp))))
        }
        (DatapathKind::Ebpf, Err(e)) => Err(AgentError::Start(e.to_string())),
        (DatapathKind::Kernel, Err(e)) => {
            tracing::warn!(error = %e, "kernel datapath without the eBPF classifiers: nodes answer traceroutes as ordinary routers do (the seed's hop rule needs eBPF)");
            Ok(None)
        }
    }
}

/// Forwarding on: the node routes its pods' packets. Best effort (a container may not allow it;
/// its runtime then has to).
fn enable_forwarding() {
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        if let Err(e) = std::fs::write(path, "1") {
            tracing::warn!(path, error = %e, "cannot enable forwarding: pods' packets will not be routed");
        }
    }
}

fn one_shots(cli: &Cli) -> Option<Result<(), AgentError>> {
    if cli.uninstall_ebpf {
        return Some(
            crate::ebpf::uninstall(&cli.bpf_pin_dir)
                .map(|removed| {
                    tracing::info!(dir = %cli.bpf_pin_dir.display(), ?removed, "eBPF datapath removed")
                })
                .map_err(|e| AgentError::Start(e.to_string())),
        );
    }
    if cli.uninstall_cni {
        return Some(
            crate::cni_install::uninstall(&cli.cni_conf_dir, &cli.cni_bin_dir)
                .map(|removed| tracing::info!(?removed, "CNI plugin and conflist removed"))
                .map_err(|e| AgentError::Start(e.to_string())),
        );
    }
    None
}

pub async fn run(cli: Cli) -> Result<(), AgentError> {
    let _telemetry = routeplane_runtime::telemetry::init("routeplane-agent", &cli.telemetry)?;
    routeplane_runtime::limits::raise_open_files_logged();
    if let Some(done) = one_shots(&cli) {
        return done;
    }
    let shutdown = Shutdown::on_signals();
    let security = cli
        .tls
        .load(&shutdown)
        .map_err(routeplane_runtime::RuntimeError::from)?;
    security
        .check_listen(cli.grpc_listen)
        .map_err(routeplane_runtime::RuntimeError::from)?;
    let dialer = routeplane_runtime::dial::Dialer::new(security.clone());
    dialer
        .check(&cli.ipam)
        .map_err(routeplane_runtime::RuntimeError::from)?;
    let ipam = Arc::new(routeplane_runtime::link::Link::new(dialer, &cli.ipam));
    let kernel = Arc::new(Kernel::connect()?);
    let name = match &cli.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| AgentError::Start(format!("no --node-name and no hostname: {e}")))?,
    };
    let (labels, node_addresses) = from_node_object(&cli, &name, &shutdown).await?;
    let addresses = if !cli.addresses.is_empty() {
        cli.addresses.clone()
    } else if !node_addresses.is_empty() {
        node_addresses
    } else {
        kernel.addresses().await?
    };
    if addresses.is_empty() {
        return Err(AgentError::Start(
            "this node has no global address: give one with --address".into(),
        ));
    }
    tracing::info!(node = %name, ?addresses, "starting");
    enable_forwarding();
    let datapath = datapath(&cli)?;
    let pods = Arc::new(
        PodNetwork::open(
            &cli.cache_dir,
            kernel.clone(),
            crate::pods::wiring::Wiring::start().map_err(KernelError::Socket)?,
            datapath.clone(),
        )
        .map_err(|e| AgentError::Start(e.to_string()))?,
    );
    let registration = crate::registration::start(
        Identity {
            ipam: ipam.clone(),
            name: name.clone(),
            addresses: addresses.clone(),
            labels,
            cache_dir: cli.cache_dir.clone(),
        },
        kernel.clone(),
        shutdown.clone(),
    );
    let shared: Shared = Arc::new(std::sync::Mutex::new(AgentState {
        node: name.clone(),
        remote_gateways: cli.remote_gateways.clone(),
        addresses: addresses.clone(),
        ebpf_routes_on: cli.datapath == DatapathKind::Ebpf,
        ..AgentState::default()
    }));
    let feed = Arc::new(routeplane_watch::FeedStats::default());
    let servers = crate::server::start(
        &cli,
        shared.clone(),
        pods.clone(),
        feed.clone(),
        security,
        shutdown.clone(),
    )
    .await?;
    tokio::spawn(crate::pods::report::run(
        pods.clone(),
        ipam.clone(),
        shutdown.clone(),
    ));
    let machinery = Machinery {
        kernel,
        pods: pods.clone(),
        datapath,
        ebpf_routes: cli.datapath == DatapathKind::Ebpf,
        uplinks: cli.uplink_interfaces.clone(),
        feed,
        ipam,
    };
    follow(&cli, &machinery, &shared, registration, &shutdown).await;
    if cli.drain_on_shutdown {
        match crate::registration::drain_for_shutdown(&machinery.ipam, &name).await {
            Ok(()) => tracing::info!(
                "node drained until this agent registers again: its prefixes go with GRACEFUL_SHUTDOWN"
            ),
            Err(e) => tracing::warn!(error = %e, "could not drain the node on shutdown"),
        }
    }
    servers.stop(&cli).await;
    Ok(())
}

/// The loop: allocations from registration, the feed's events and the tick each lead to a
/// reconcile pass, once the feed's first snapshot and the node's allocation are in.
async fn follow(
    cli: &Cli,
    m: &Machinery,
    shared: &Shared,
    registration: Registration,
    shutdown: &Shutdown,
) {
    let (tx, mut feed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(routeplane_watch::run(
        m.ipam.clone(),
        routeplane_watch::Follow::Allocations,
        tx,
        m.feed.clone(),
        shutdown.clone(),
    ));
    let mut tick = tokio::time::interval(cli.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alloc_changes = registration.allocation.clone();
    // A cached allocation is there before the first change.
    alloc_changes.mark_changed();
    loop {
        tokio::select! {
            Ok(()) = alloc_changes.changed() => {
                let alloc = alloc_changes.borrow_and_update().clone();
                if let Some(a) = &alloc {
                    m.pods.set_node(a).await;
                }
                lock(shared).alloc = alloc;
            }
            ev = feed.recv() => {
                let mut s = lock(shared);
                match ev {
                    Some(FeedEvent::Snapshot { nodes: all, .. }) => {
                        s.nodes = all.into_iter().map(|n| (n.name.clone(), n)).collect();
                        s.synced = true;
                    }
                    Some(FeedEvent::Node(n)) => {
                        s.nodes.insert(n.name.clone(), n);
                    }
                    Some(FeedEvent::NodeDeleted(n)) => {
                        s.nodes.remove(&n);
                    }
                    Some(FeedEvent::Connected(c)) => {
                        feed_connected(&mut s, c, std::time::SystemTime::now());
                        continue;
                    }
                    Some(_) => continue,
                    None => break,
                }
                if let Some(other) = claimed_elsewhere(&s) {
                    tracing::error!(%other, "another node holds a pod CIDR this node serves: registering again to learn this node's");
                    registration.again();
                }
            }
            _ = tick.tick() => {}
            () = shutdown.wait() => {
                tracing::info!("stopping; routes, maps and pods' wiring stay");
                break;
            }
        }
        // Before the feed's first snapshot an empty node list would look like "delete everything",
        // and before the node's allocation is known its own routes would look stale.
        let ready = {
            let s = lock(shared);
            s.synced && s.alloc.is_some()
        };
        if ready {
            let started = std::time::Instant::now();
            let result = reconcile(m, shared).await;
            let mut s = lock(shared);
            s.reconciles += 1;
            s.reconcile_seconds += started.elapsed().as_secs_f64();
            if let Err(e) = result {
                tracing::warn!(error = %e, "reconcile failed; retrying at the next tick");
                s.reconcile_errors += 1;
                s.last_error = e.to_string();
            }
        }
    }
    // Keep the registration alive until here: its receiver was cloned.
    drop(registration);
}

/// Another node of the feed holding one of this node's pod CIDRs, by name.
fn claimed_elsewhere(s: &AgentState) -> Option<String> {
    let mine = s.alloc.as_ref()?;
    s.nodes
        .values()
        .filter(|n| n.name != s.node)
        .find(|n| n.pod_cidrs.iter().any(|c| mine.pod_cidrs.contains(c)))
        .map(|n| n.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_lost_feed_is_reported_from_when_it_went_and_counted_once() {
        let mut s = AgentState::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        feed_connected(&mut s, false, t0);
        assert_eq!(
            (s.ipam_disconnected_since, s.ipam_disconnects),
            (Some(t0), 0),
            "never had"
        );
        feed_connected(&mut s, true, t0 + Duration::from_secs(1));
        assert_eq!((s.ipam_connected, s.ipam_disconnected_since), (true, None));
        let lost = t0 + Duration::from_secs(10);
        for retry in 0..3 {
            feed_connected(&mut s, false, lost + Duration::from_secs(retry * 5));
        }
        assert_eq!(
            (s.ipam_disconnected_since, s.ipam_disconnects),
            (Some(lost), 1)
        );
        feed_connected(&mut s, true, lost + Duration::from_secs(60));
        feed_connected(&mut s, false, lost + Duration::from_secs(70));
        assert_eq!(s.ipam_disconnects, 2);
    }
}
