//! The command line of routeplane-bgp (every flag also a ROUTEPLANE_* variable).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use routeplane_net::Cidr;
use routeplane_runtime::flags;
use routeplane_runtime::telemetry::TelemetryArgs;

use crate::policy::Announce;
use crate::speaker::SpeakerSettings;

/// routeplane BGP: BGP-4 sessions with the ToR routers, announcing each node's pod CIDRs and the
/// LoadBalancer IPs from the IPAM feed (routeplane.bgp.v1 over gRPC).
///
/// Peers come from bgp-config (MetalLB's legacy format, the seed's verbatim); values.yaml's
/// bgp.announce.podCIDR and bgp.announce.loadbalancerIP switch the two kinds of announcement.
#[derive(Debug, Parser)]
#[command(name = "routeplane-bgp", version)]
pub struct Cli {
    /// Cilium Helm values.yaml (bgp.announce.* is read).
    #[arg(long, env = "ROUTEPLANE_VALUES")]
    pub values: Option<PathBuf>,
    /// MetalLB bgp-config, as a file or as the ConfigMap: peers and address-pools.
    #[arg(long, env = "ROUTEPLANE_BGP_CONFIG")]
    pub bgp_config: Option<PathBuf>,
    /// The IPAM service to follow: https://host:port with --tls-ca/--tls-cert/--tls-key (mutual
    /// TLS), or http:// to a loopback address (or anywhere with --insecure). Several replicas:
    /// their URLs separated by commas; the one that accepts a connection (the leader) is used,
    /// and the Watch resumes by revision on the next when it goes.
    #[arg(
        long,
        env = "ROUTEPLANE_IPAM",
        default_value = "http://127.0.0.1:50051"
    )]
    pub ipam: String,
    /// BGP identifier for peers without a router-id in bgp-config. Default: the IPv4 address this
    /// host uses toward the first configured peer it has one toward (logged at start).
    #[arg(long, env = "ROUTEPLANE_ROUTER_ID")]
    pub router_id: Option<Ipv4Addr>,
    /// Where to accept BGP connections from peers (repeat for several).
    #[arg(
        long,
        env = "ROUTEPLANE_BGP_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:179"
    )]
    pub bgp_listen: Vec<SocketAddr>,
    /// gRPC listen address. Loopback unless --tls-ca, --tls-cert and --tls-key are given (or
    /// --insecure): gRPC without TLS is served on loopback only.
    #[arg(
        long,
        env = "ROUTEPLANE_GRPC_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub grpc_listen: SocketAddr,
    /// Check this service's grpc.health.v1 on the --grpc-listen port (loopback for 0.0.0.0) and
    /// exit: 0 when SERVING, else 1 with the reason. For Kubernetes exec probes.
    #[arg(long)]
    pub probe: bool,
    /// Prometheus /metrics listen address.
    #[arg(
        long,
        env = "ROUTEPLANE_METRICS_LISTEN",
        default_value = "0.0.0.0:9952"
    )]
    pub metrics_listen: SocketAddr,
    /// How long a NotReady node's prefixes stay announced before they are withdrawn. 0s: at once —
    /// IPAM declares a node dead only after its heartbeats stopped for the dead interval (2 s), never
    /// for a stall of its own, and holds down a node that flaps, so its NotReady is already the
    /// considered verdict. A longer grace trades failover time for tolerance of what IPAM cannot
    /// see (an agent restart slower than the lease, say).
    #[arg(long, env = "ROUTEPLANE_WITHDRAW_GRACE", default_value = "0s", value_parser = flags::duration)]
    pub withdraw_grace: Duration,
    /// How long a drained node's prefixes (IPAM's DrainNode, a cordoned Kubernetes node) stay
    /// announced with RFC 8326's GRACEFUL_SHUTDOWN community before they are withdrawn: the time
    /// routers get to move traffic to other paths.
    #[arg(long, env = "ROUTEPLANE_DRAIN_DELAY", default_value = "30s", value_parser = flags::duration)]
    pub drain_delay: Duration,
    /// On SIGTERM, re-announce every path with RFC 8326's GRACEFUL_SHUTDOWN community and wait
    /// this long before ending the sessions, so that routers move traffic to other paths first
    /// (another replica's, another node's). 0s ends them at once. Kubernetes'
    /// terminationGracePeriodSeconds must leave room for it.
    #[arg(long, env = "ROUTEPLANE_SHUTDOWN_DRAIN", default_value = "0s", value_parser = flags::duration)]
    pub shutdown_drain: Duration,
    /// First connect retry after a failed attempt; doubles up to 60s.
    #[arg(long, env = "ROUTEPLANE_CONNECT_RETRY", default_value = "5s", value_parser = flags::duration)]
    pub connect_retry: Duration,
    /// Graceful restart (RFC 4724): how long routers should keep our routes while routeplane-bgp
    /// restarts. 0s turns it off (routers then drop our routes when we stop).
    #[arg(long, env = "ROUTEPLANE_GRACEFUL_RESTART_TIME", default_value = "120s", value_parser = flags::duration)]
    pub graceful_restart_time: Duration,
    /// Ranges operators may announce through AnnouncePath(s) (comma-separated CIDRs; a path's
    /// prefix must lie inside one). Without any, AnnouncePath is off: a caller with an operator
    /// certificate could otherwise steer the ToRs' traffic for any prefix.
    #[arg(long, env = "ROUTEPLANE_ANNOUNCE_ALLOW", value_delimiter = ',')]
    pub announce_allow: Vec<Cidr>,
    #[command(flatten)]
    pub tls: routeplane_runtime::tls::TlsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Cli {
    pub fn load(&self) -> Result<(SpeakerSettings, Vec<String>), routeplane_config::ConfigError> {
        let (values, bgp) = routeplane_config::load_or_embedded(
            self.values.as_deref(),
            self.bgp_config.as_deref(),
        )?;
        let mut notes = values.notes.clone();
        if !values.bgp_enabled {
            notes.push(
                "values.yaml has bgp.enabled: false — routeplane-bgp runs all the same, as asked"
                    .into(),
            );
        }
        let router_id = self.router_id.or_else(|| {
            let (id, peer) = crate::router_id::toward_peers(&bgp.peers)?;
            notes.push(format!(
                "router ID {id}: no --router-id given, so the IPv4 address this host uses toward peer {peer} (as BIRD and MetalLB do); set --router-id, or router-id per peer in bgp-config, to choose another"
            ));
            Some(id)
        });
        let settings = SpeakerSettings {
            router_id,
            grace: self.withdraw_grace,
            drain_delay: self.drain_delay,
            shutdown_drain: self.shutdown_drain,
            announce: Announce {
                pod_cidr: values.bgp_announce.pod_cidr,
                loadbalancer_ip: values.bgp_announce.loadbalancer_ip,
            },
            pools: bgp.address_pools,
            peers: bgp.peers,
            connect_retry: self.connect_retry,
            connect_retry_max: Duration::from_secs(60).max(self.connect_retry),
            graceful_restart: self.graceful_restart_time,
            announce_allow: self.announce_allow.clone(),
        };
        Ok((settings, notes))
    }
}
