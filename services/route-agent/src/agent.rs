//! The agent's life: register the node with IPAM (and keep a copy of the allocation on disk, so a
//! node whose agent restarts while IPAM is down keeps its CIDR), renew the lease, follow the Watch
//! feed, and reconcile the kernel's routes with what the feed says — on every change, at start and
//! every `--reconcile-interval`. On shutdown the routes stay: a restarting agent drops no traffic.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::shutdown::Shutdown;
use routeplane_runtime::telemetry::TelemetryArgs;
use routeplane_watch::{FeedEvent, FeedNode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::desired::{PeerNode, desired};
use crate::kernel::{Kernel, KernelError};
use crate::reconcile::plan;

/// routeplane route agent: registers this node with routeplane-ipam, keeps its lease, and installs
/// kernel routes (protocol 194) to the pod CIDRs of nodes on directly connected segments.
#[derive(Debug, Parser)]
#[command(name = "routeplane-agent", version)]
pub struct Cli {
    /// The IPAM service.
    #[arg(
        long,
        env = "ROUTEPLANE_IPAM",
        default_value = "http://127.0.0.1:50051"
    )]
    pub ipam: String,
    /// This node's name (Kubernetes: the downward API's spec.nodeName); default: the hostname.
    #[arg(long, env = "ROUTEPLANE_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's addresses (repeat for several); default: its global addresses.
    #[arg(
        long = "address",
        env = "ROUTEPLANE_NODE_ADDRESSES",
        value_delimiter = ','
    )]
    pub addresses: Vec<IpAddr>,
    /// Node labels as KEY=VALUE (repeat for several), e.g. kubernetes/route=bgp-peer-83.
    #[arg(long = "label", env = "ROUTEPLANE_NODE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Kubernetes mode: take the labels from this node's Node object (and follow their changes),
    /// and its addresses unless --address is given, with the in-cluster credentials or KUBECONFIG;
    /// --label flags apply on top.
    #[arg(long, env = "ROUTEPLANE_KUBERNETES")]
    pub kubernetes: bool,
    /// Where the node's allocation is cached.
    #[arg(
        long,
        env = "ROUTEPLANE_CACHE_DIR",
        default_value = "/var/lib/routeplane/agent"
    )]
    pub cache_dir: PathBuf,
    /// How often routes are checked against the kernel even without a change (repairs drift).
    #[arg(long, env = "ROUTEPLANE_RECONCILE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// Route other segments' pod CIDRs through this gateway instead of leaving them to the default
    /// route (one per family; it must be on a connected subnet).
    #[arg(
        long = "remote-gateway",
        env = "ROUTEPLANE_REMOTE_GATEWAYS",
        value_delimiter = ','
    )]
    pub remote_gateways: Vec<IpAddr>,
    /// Where remote pod CIDRs go: kernel routes, or the eBPF maps (IPv4 and IPv6) that the
    /// classifier on the pod interfaces forwards with, no kernel route needed.
    #[arg(long, env = "ROUTEPLANE_DATAPATH", value_enum, default_value_t = DatapathKind::Kernel)]
    pub datapath: DatapathKind,
    /// Pod-facing interfaces to attach the eBPF classifier to (repeat for several).
    #[arg(
        long = "pod-interface",
        env = "ROUTEPLANE_POD_INTERFACES",
        value_delimiter = ','
    )]
    pub pod_interfaces: Vec<String>,
    /// bpffs directory holding the eBPF maps and the classifier's links; they outlive the agent,
    /// so pods' packets keep flowing while it restarts.
    #[arg(
        long,
        env = "ROUTEPLANE_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/routeplane"
    )]
    pub bpf_pin_dir: PathBuf,
    /// Remove the eBPF datapath (links and maps under --bpf-pin-dir), then exit.
    #[arg(long)]
    pub uninstall_ebpf: bool,
    /// Prometheus /metrics listen address.
    #[arg(
        long,
        env = "ROUTEPLANE_METRICS_LISTEN",
        default_value = "0.0.0.0:9953"
    )]
    pub metrics_listen: std::net::SocketAddr,
    /// gRPC listen address (routeplane.agent.v1).
    #[arg(long, env = "ROUTEPLANE_GRPC_LISTEN", default_value = "0.0.0.0:50053")]
    pub grpc_listen: std::net::SocketAddr,
    /// Check this service's grpc.health.v1 on the --grpc-listen port (loopback for 0.0.0.0) and
    /// exit: 0 when SERVING, else 1 with the reason. For Kubernetes exec probes.
    #[arg(long)]
    pub probe: bool,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathKind {
    Kernel,
    Ebpf,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| {
            format!("label {text:?} is not KEY=VALUE, e.g. kubernetes/route=bgp-peer-83")
        })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    routeplane_config::parse_go_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration such as 10s or 1m"))
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Runtime(#[from] routeplane_runtime::RuntimeError),
    #[error("{0}")]
    Start(String),
}

/// What IPAM gave this node, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub node: String,
    pub pod_cidrs: Vec<String>,
    pub router_ips: Vec<String>,
}

/// What the API shows; the agent's loop keeps it current.
#[derive(Debug, Default)]
pub struct AgentState {
    pub node: String,
    pub remote_gateways: Vec<IpAddr>,
    pub addresses: Vec<IpAddr>,
    pub alloc: Option<Allocation>,
    pub nodes: BTreeMap<String, FeedNode>,
    pub ipam_connected: bool,
    pub synced: bool,
    pub installed: Vec<crate::desired::Route>,
    pub connected: Vec<crate::desired::Connected>,
    /// Default gateway per family (IPv4, IPv6), with the interface name.
    pub default_gateway: [Option<(IpAddr, String)>; 2],
    pub last_reconcile: Option<std::time::SystemTime>,
    pub last_error: String,
    /// Reconcile passes, those that failed, and the time they took.
    pub reconciles: u64,
    /// eBPF packets forwarded and passed, when that datapath runs.
    pub ebpf_counters: Option<(u64, u64)>,
    /// The eBPF map's entries, as of the last reconcile.
    pub ebpf_routes: Vec<crate::desired::Route>,
    pub reconcile_errors: u64,
    pub reconcile_seconds: f64,
}

pub type Shared = std::sync::Arc<std::sync::Mutex<AgentState>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, AgentState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn peer(n: &FeedNode) -> PeerNode {
    PeerNode {
        name: n.name.clone(),
        addresses: n.addresses.clone(),
        pod_cidrs: n.pod_cidrs.clone(),
    }
}

/// This node's (pod CIDR, router IP) pairs.
fn owned(alloc: &Allocation) -> Vec<(routeplane_net::Cidr, IpAddr)> {
    alloc
        .pod_cidrs
        .iter()
        .zip(&alloc.router_ips)
        .filter_map(|(c, r)| Some((c.parse().ok()?, r.parse().ok()?)))
        .collect()
}

/// One reconcile pass: the router interface, then desired routes from the feed's nodes against the
/// kernel's, applying the difference.
async fn reconcile(
    kernel: &Kernel,
    shared: &Shared,
    mut datapath: Option<&mut crate::ebpf::Datapath>,
) -> Result<(), KernelError> {
    let (me, alloc, peers, gateways) = {
        let s = lock(shared);
        (
            s.node.clone(),
            s.alloc.clone(),
            s.nodes.values().map(peer).collect::<Vec<PeerNode>>(),
            s.remote_gateways.clone(),
        )
    };
    if let Some(alloc) = &alloc {
        kernel.ensure_router(&owned(alloc)).await?;
    }
    let connected = kernel.connected().await?;
    let mut want = desired(&me, &peers, &connected, &gateways);
    if let Some(dp) = datapath.as_deref_mut() {
        // Remote pod CIDRs go to the eBPF maps, and the kernel loses its routes of ours for them.
        // Only a next hop of another family than its CIDR has no place in the maps.
        let leftover: BTreeMap<_, _> = want
            .iter()
            .filter(|(c, r)| !crate::lpm::fits(c, r))
            .map(|(c, r)| (*c, *r))
            .collect();
        match dp.sync(std::mem::replace(&mut want, leftover)) {
            Ok((0, 0)) => {}
            Ok((changed, removed)) => tracing::info!(changed, removed, "eBPF routes updated"),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF routes not updated; retrying at the next reconcile")
            }
        }
    }
    let actions = plan(&want, &kernel.our_routes().await?);
    let mut failures = Vec::new();
    if !actions.is_empty() {
        tracing::info!(changes = actions.len(), "reconciling routes");
        for (action, error) in kernel.apply(&actions).await {
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
    let mut gateways = [None, None];
    for (slot, v6) in gateways.iter_mut().zip([false, true]) {
        *slot = kernel
            .default_gateway(v6)
            .await?
            .map(|(gw, index)| (gw, name_of(index)));
    }
    let installed = kernel.our_routes().await?;
    let counters = datapath.as_deref().map(|dp| dp.counters());
    let ebpf_routes = datapath.map(|dp| dp.entries()).unwrap_or_default();
    let mut s = lock(shared);
    s.ebpf_counters = counters;
    s.ebpf_routes = ebpf_routes;
    s.installed = installed;
    s.connected = connected;
    s.default_gateway = gateways;
    s.last_reconcile = Some(std::time::SystemTime::now());
    s.last_error = failures.join("; ");
    Ok(())
}

/// Registers (retrying until IPAM answers, or falling back to the cached allocation).
async fn register(
    cli: &Cli,
    name: &str,
    addresses: &[IpAddr],
    labels: &BTreeMap<String, String>,
    shutdown: &Shutdown,
) -> Option<Allocation> {
    let cache = cli.cache_dir.join("allocation.json");
    let request = pb::RegisterNodeRequest {
        name: name.to_string(),
        addresses: addresses.iter().map(ToString::to_string).collect(),
        labels: labels.clone().into_iter().collect::<HashMap<_, _>>(),
    };
    let mut warned = false;
    while !shutdown.is_triggered() {
        let answer = async {
            let mut c = pb::ipam_client::IpamClient::connect(cli.ipam.clone())
                .await
                .map_err(|e| e.to_string())?;
            c.register_node(request.clone())
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        }
        .await;
        match answer {
            Ok(node) => {
                let alloc = Allocation {
                    node: node.name,
                    pod_cidrs: node.pod_cidrs,
                    router_ips: node.router_ips,
                };
                let _ = std::fs::create_dir_all(&cli.cache_dir);
                if let Err(e) = serde_json::to_vec(&alloc)
                    .map_err(std::io::Error::other)
                    .and_then(|b| std::fs::write(&cache, b))
                {
                    tracing::warn!(error = %e, path = %cache.display(), "cannot cache the allocation");
                }
                tracing::info!(pod_cidrs = ?alloc.pod_cidrs, router_ips = ?alloc.router_ips, "registered with IPAM");
                return Some(alloc);
            }
            Err(e) if !warned => {
                warned = true;
                let cached = std::fs::read(&cache)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Allocation>(&b).ok());
                match &cached {
                    Some(a) => {
                        tracing::warn!(error = %e, pod_cidrs = ?a.pod_cidrs, "IPAM unreachable: serving with the cached allocation while retrying")
                    }
                    None => {
                        tracing::warn!(error = %e, "IPAM unreachable and nothing cached yet: retrying")
                    }
                }
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.wait() => {}
        }
    }
    None
}

/// Renews the lease a few times per TTL; registers again if IPAM no longer knows the node.
async fn keep_alive(
    cli: &Cli,
    name: &str,
    addresses: &[IpAddr],
    labels: &watch::Receiver<BTreeMap<String, String>>,
    shutdown: &Shutdown,
) {
    let mut period = Duration::from_secs(5);
    while !shutdown.is_triggered() {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.wait() => return,
        }
        let answer = async {
            let mut c = pb::ipam_client::IpamClient::connect(cli.ipam.clone())
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            c.keep_alive(pb::KeepAliveRequest {
                name: name.to_string(),
            })
            .await
            .map(|r| r.into_inner())
        }
        .await;
        match answer {
            Ok(r) => {
                period = Duration::from_secs(u64::from(r.lease_ttl_seconds))
                    .div_f64(3.0)
                    .max(Duration::from_millis(300))
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                tracing::warn!("IPAM does not know this node any more: registering again");
                let current = labels.borrow().clone();
                register(cli, name, addresses, &current, shutdown).await;
            }
            Err(s) => tracing::warn!(error = %s.message(), "lease renewal failed; retrying"),
        }
    }
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

pub async fn run(cli: Cli) -> Result<(), AgentError> {
    let _telemetry = routeplane_runtime::telemetry::init("routeplane-agent", &cli.telemetry)?;
    if cli.uninstall_ebpf {
        let removed = crate::ebpf::uninstall(&cli.bpf_pin_dir)
            .map_err(|e| AgentError::Start(e.to_string()))?;
        tracing::info!(dir = %cli.bpf_pin_dir.display(), ?removed, "eBPF datapath removed");
        return Ok(());
    }
    let shutdown = Shutdown::on_signals();
    let kernel = Kernel::connect()?;
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
    // Routes left by a previous run are reconciled (and stale ones swept) once the first snapshot is in.
    let mut datapath = match cli.datapath {
        DatapathKind::Kernel => None,
        DatapathKind::Ebpf => {
            let dp = crate::ebpf::Datapath::attach(&cli.pod_interfaces, &cli.bpf_pin_dir)
                .map_err(|e| AgentError::Start(e.to_string()))?;
            tracing::info!(interfaces = ?cli.pod_interfaces, "eBPF datapath attached");
            Some(dp)
        }
    };
    let initial = labels.borrow().clone();
    let Some(alloc) = register(&cli, &name, &addresses, &initial, &shutdown).await else {
        return Ok(());
    };
    if let Err(e) = kernel.ensure_router(&owned(&alloc)).await {
        tracing::warn!(error = %e, "router interface setup failed; retrying at each reconcile");
    }
    let shared: Shared = std::sync::Arc::new(std::sync::Mutex::new(AgentState {
        node: name.clone(),
        remote_gateways: cli.remote_gateways.clone(),
        addresses: addresses.clone(),
        alloc: Some(alloc),
        // What a previous run left in the pinned maps shows until the first reconcile.
        ebpf_counters: datapath.as_ref().map(crate::ebpf::Datapath::counters),
        ebpf_routes: datapath
            .as_ref()
            .map(crate::ebpf::Datapath::entries)
            .unwrap_or_default(),
        ..AgentState::default()
    }));
    let metrics = routeplane_runtime::bind(cli.metrics_listen).await?;
    let registry = std::sync::Arc::new(crate::metrics::registry(shared.clone()));
    tokio::spawn(routeplane_runtime::metrics::serve(
        metrics,
        registry,
        shutdown.clone(),
    ));
    let listener = routeplane_runtime::bind(cli.grpc_listen).await?;
    let routes = tonic::service::Routes::new(crate::grpc::AgentGrpc::new(shared.clone()));
    let server = tokio::spawn(routeplane_runtime::grpc::serve(
        listener,
        crate::GRPC_SERVICE,
        routes,
        shutdown.clone(),
    ));
    let (tx, mut feed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(routeplane_watch::run(
        cli.ipam.clone(),
        tx,
        shutdown.clone(),
    ));
    let mut tick = tokio::time::interval(cli.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut label_changes = labels.clone();
    let keeper = keep_alive(&cli, &name, &addresses, &labels, &shutdown);
    tokio::pin!(keeper);
    loop {
        tokio::select! {
            () = &mut keeper => {}
            Ok(()) = label_changes.changed() => {
                // IPAM keeps the node's CIDR; only its labels (and so its BGP peers) change.
                let current = label_changes.borrow_and_update().clone();
                register(&cli, &name, &addresses, &current, &shutdown).await;
                continue;
            }
            ev = feed.recv() => {
                let mut s = lock(&shared);
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
                        s.ipam_connected = c;
                        continue;
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
            _ = tick.tick() => {}
            () = shutdown.wait() => {
                tracing::info!("stopping; routes stay installed");
                break;
            }
        }
        // Until the first snapshot, an empty node list would look like "delete everything".
        let synced = lock(&shared).synced;
        if synced {
            let started = std::time::Instant::now();
            let result = reconcile(&kernel, &shared, datapath.as_mut()).await;
            let mut s = lock(&shared);
            s.reconciles += 1;
            s.reconcile_seconds += started.elapsed().as_secs_f64();
            if let Err(e) = result {
                tracing::warn!(error = %e, "reconcile failed; retrying at the next tick");
                s.reconcile_errors += 1;
                s.last_error = e.to_string();
            }
        }
    }
    shutdown.trigger();
    let _ = server.await;
    Ok(())
}
