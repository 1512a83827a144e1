//! The agent's command line (and its `ROUTEPLANE_*` environment), as `routeplane-agent --help`
//! shows it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use routeplane_runtime::flags;
use routeplane_runtime::telemetry::TelemetryArgs;

/// routeplane route agent: registers this node with routeplane-ipam and keeps it alive (a heartbeat
/// every interval IPAM asks for), owns the node's pod IPs (routeplane-cni asks it over --cni-socket
/// to attach containers), and installs kernel routes (protocol 194) or eBPF map entries to the pod
/// CIDRs of nodes on directly connected segments.
#[derive(Debug, Parser)]
#[command(name = "routeplane-agent", version)]
pub struct Cli {
    /// The IPAM service: https://host:port with --tls-ca/--tls-cert/--tls-key (mutual TLS), or
    /// http:// to a loopback address (or anywhere with --insecure). Several replicas: their URLs
    /// separated by commas; the one that accepts a connection (the leader) is used, and every
    /// call and the Watch move on to the next when it goes.
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
    /// Where the node's allocation (allocation.json), its pods' attachments (pods/) and its
    /// reports to IPAM (report.json) are kept.
    #[arg(
        long,
        env = "ROUTEPLANE_CACHE_DIR",
        default_value = "/var/lib/routeplane/agent"
    )]
    pub cache_dir: PathBuf,
    /// How often routes are checked against the kernel even without a change (repairs drift).
    #[arg(long, env = "ROUTEPLANE_RECONCILE_INTERVAL", default_value = "10s", value_parser = flags::duration_at_least(Duration::from_millis(1)))]
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
    /// classifier on the pods' interfaces forwards with, no kernel route needed. Either way the
    /// classifiers keep the hop rule of the seed's traceroutes where eBPF can be loaded (with
    /// `kernel`, a node without bpffs runs without it and says so).
    #[arg(long, env = "ROUTEPLANE_DATAPATH", value_enum, default_value_t = DatapathKind::Kernel)]
    pub datapath: DatapathKind,
    /// Further pod-facing interfaces to attach the pod classifier to (repeat for several); pods
    /// attached through routeplane-cni get it on their veth anyway.
    #[arg(
        long = "pod-interface",
        env = "ROUTEPLANE_POD_INTERFACES",
        value_delimiter = ','
    )]
    pub pod_interfaces: Vec<String>,
    /// The node's own interfaces, where traffic into its pod CIDR arrives (repeat for several);
    /// default: those carrying the node's addresses.
    #[arg(
        long = "uplink-interface",
        env = "ROUTEPLANE_UPLINK_INTERFACES",
        value_delimiter = ','
    )]
    pub uplink_interfaces: Vec<String>,
    /// bpffs directory holding the eBPF maps and the classifier's links; they outlive the agent,
    /// so pods' packets keep flowing while it restarts.
    #[arg(
        long,
        env = "ROUTEPLANE_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/routeplane"
    )]
    pub bpf_pin_dir: PathBuf,
    /// On SIGTERM, drain this node in IPAM until the agent registers again (DrainNode with
    /// until_registered): routeplane-bgp re-announces its prefixes with RFC 8326's
    /// GRACEFUL_SHUTDOWN and moves its LoadBalancer IPs to other nodes, and withdraws them only if
    /// the agent stays away past --drain-delay. Routes stay in the kernel either way.
    #[arg(long, env = "ROUTEPLANE_DRAIN_ON_SHUTDOWN", default_value_t = true, action = clap::ArgAction::Set)]
    pub drain_on_shutdown: bool,
    /// Remove the eBPF datapath (links and maps under --bpf-pin-dir), then exit.
    #[arg(long)]
    pub uninstall_ebpf: bool,
    /// The Unix socket routeplane-cni asks this agent on (the conflist's `agentSocket`).
    #[arg(
        long,
        env = "ROUTEPLANE_CNI_SOCKET",
        default_value = "/var/run/routeplane/agent.sock"
    )]
    pub cni_socket: PathBuf,
    /// Install the CNI plugin on start: routeplane-cni (--cni-plugin) into --cni-bin-dir, and,
    /// once this agent serves its socket, its conflist (05-routeplane.conflist) into
    /// --cni-conf-dir, as Cilium's install-cni does.
    #[arg(long, env = "ROUTEPLANE_INSTALL_CNI")]
    pub install_cni: bool,
    /// Remove the conflist and the plugin from --cni-conf-dir and --cni-bin-dir, then exit.
    #[arg(long)]
    pub uninstall_cni: bool,
    /// The routeplane-cni binary to install; default: beside this one.
    #[arg(long, env = "ROUTEPLANE_CNI_PLUGIN")]
    pub cni_plugin: Option<PathBuf>,
    #[arg(long, env = "ROUTEPLANE_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    #[arg(
        long,
        env = "ROUTEPLANE_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    pub cni_conf_dir: PathBuf,
    /// Kubernetes mode: this agent's DaemonSet and namespace. On shutdown, when the DaemonSet is
    /// gone or being deleted (routeplane is being removed, not restarted), the conflist is
    /// removed, so that no new pod is given to a network without its agent.
    #[arg(long, env = "ROUTEPLANE_DAEMONSET")]
    pub daemonset: Option<String>,
    #[arg(long, env = "ROUTEPLANE_NAMESPACE", default_value = "routeplane")]
    pub namespace: String,
    /// Prometheus /metrics listen address.
    #[arg(
        long,
        env = "ROUTEPLANE_METRICS_LISTEN",
        default_value = "0.0.0.0:9953"
    )]
    pub metrics_listen: std::net::SocketAddr,
    /// gRPC listen address (routeplane.agent.v1). Loopback unless --tls-ca, --tls-cert and
    /// --tls-key are given (or --insecure): gRPC without TLS is served on loopback only.
    #[arg(
        long,
        env = "ROUTEPLANE_GRPC_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    pub grpc_listen: std::net::SocketAddr,
    /// Check this service's grpc.health.v1 on the --grpc-listen port (loopback for 0.0.0.0) and
    /// exit: 0 when SERVING, else 1 with the reason. For Kubernetes exec probes.
    #[arg(long)]
    pub probe: bool,
    #[command(flatten)]
    pub tls: routeplane_runtime::tls::TlsArgs,
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
