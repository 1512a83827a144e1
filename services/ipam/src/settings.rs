//! The command line of routeplane-ipam (every flag also a ROUTEPLANE_* variable) and how the seed's
//! files become the core's configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use routeplane_net::Family;
use routeplane_runtime::flags;
use routeplane_runtime::telemetry::TelemetryArgs;

use crate::engine::StorageConfig;
use crate::etcd::{EtcdSettings, EtcdTls};
use crate::ipam::IpamOptions;
use crate::state::{CoreConfig, LivenessConfig};

/// routeplane IPAM: cluster-pool pod CIDRs for nodes, pod IPs, and LoadBalancer IPs, kept in sled
/// (embedded, the default) or etcd v3 (--store etcd) and published on a revisioned Watch feed
/// (routeplane.ipam.v1 over gRPC).
///
/// With no files it runs on its embedded defaults: the seed's values.yaml (pool 10.5.112.0/21,
/// /24 per node) and the seed's bgp-config with its LoadBalancer pool moved to 10.5.120.0/21.
#[derive(Debug, Parser)]
#[command(name = "routeplane-ipam", version)]
pub struct Cli {
    /// Cilium Helm values.yaml: ipam.*, ipv4.enabled and ipv6.enabled are read, other keys are listed as ignored.
    #[arg(long, env = "ROUTEPLANE_VALUES")]
    pub values: Option<PathBuf>,
    /// MetalLB bgp-config (the file, or the ConfigMap as `kubectl get cm bgp-config -oyaml` prints it): its address-pools are the LoadBalancer pools.
    #[arg(long, env = "ROUTEPLANE_BGP_CONFIG")]
    pub bgp_config: Option<PathBuf>,
    /// Where the allocation state is kept: sled, embedded, in --data-dir; or etcd v3
    /// (--etcd-endpoints), a replicated store outside the process.
    #[arg(long, env = "ROUTEPLANE_STORE", value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,
    /// --store etcd: the members' client URLs, comma-separated (http://HOST:2379 or https://…).
    #[arg(long, env = "ROUTEPLANE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// --store etcd: the key prefix holding this cluster's state (one prefix per routeplane
    /// cluster; starts and ends with '/').
    #[arg(
        long,
        env = "ROUTEPLANE_ETCD_PREFIX",
        default_value = "/routeplane/ipam/"
    )]
    pub etcd_prefix: String,
    /// --store etcd: this routeplane cluster's name, recorded under the prefix: a replica of
    /// another cluster pointed at the same prefix is refused.
    #[arg(long, env = "ROUTEPLANE_ETCD_CLUSTER_NAME", default_value = "default")]
    pub etcd_cluster_name: String,
    /// --store etcd: one replica serves a prefix at a time, under an etcd lease of this TTL; the
    /// others stand by (not listening) and take over when it ends — at once when the leader
    /// stops, after the TTL when it dies (etcd rounds a TTL up to its minimum, about 1.5 s with
    /// its default timings).
    #[arg(long, env = "ROUTEPLANE_ETCD_LEASE_TTL", default_value = "2s", value_parser = flags::duration_within(Duration::from_secs(1), Duration::from_secs(60)))]
    pub etcd_lease_ttl: Duration,
    /// --store etcd: how this replica is shown to the others while it leads (standbys log it):
    /// HOST:PORT reaching its gRPC, e.g. `$(POD_IP):50051` in Kubernetes. Default: the address
    /// gRPC listens on, which says little when that is 0.0.0.0.
    #[arg(long, env = "ROUTEPLANE_ETCD_ADVERTISE", value_parser = host_port)]
    pub etcd_advertise: Option<String>,
    /// --store etcd over TLS: the CA that signed etcd's server certificate (PEM).
    #[arg(long, env = "ROUTEPLANE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// --store etcd over TLS: a client certificate (PEM), for etcd's --client-cert-auth.
    #[arg(
        long,
        env = "ROUTEPLANE_ETCD_CERT",
        requires = "etcd_key",
        requires = "etcd_ca"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// --store etcd over TLS: the client certificate's key (PEM).
    #[arg(long, env = "ROUTEPLANE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Where sled keeps the allocation state (--store sled).
    #[arg(
        long,
        env = "ROUTEPLANE_DATA_DIR",
        default_value = "/var/lib/routeplane/ipam"
    )]
    pub data_dir: PathBuf,
    /// gRPC listen address. Loopback unless --tls-ca, --tls-cert and --tls-key are given (or
    /// --insecure): gRPC without TLS is served on loopback only.
    #[arg(
        long,
        env = "ROUTEPLANE_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: SocketAddr,
    /// Check this service's grpc.health.v1 on the --grpc-listen port (loopback for 0.0.0.0) and
    /// exit: 0 when SERVING, else 1 with the reason. For Kubernetes exec probes.
    #[arg(long)]
    pub probe: bool,
    /// Read --data-dir (sled's revision, every log segment) without changing the log, print what
    /// a start would replay, cut or refuse, and exit: 0 when a start would go ahead, 1 when it
    /// would refuse (a corrupt log, a lost segment), 2 when the directory cannot be read (missing,
    /// or in use by a running routeplane-ipam).
    #[arg(long)]
    pub check_store: bool,
    /// Copy the allocation state from one store into an empty other — sled in --data-dir, etcd
    /// at --etcd-endpoints/--etcd-prefix — read the copy back, compare every record with the
    /// source, and exit: 0 when equal, 1 otherwise. routeplane-ipam must be stopped; the source
    /// is left as it was (copy the other way to go back).
    #[arg(long, value_enum)]
    pub copy_store: Option<crate::migrate::Direction>,
    /// Prometheus /metrics listen address.
    #[arg(
        long,
        env = "ROUTEPLANE_METRICS_LISTEN",
        default_value = "0.0.0.0:9951"
    )]
    pub metrics_listen: SocketAddr,
    /// The most pods (owners of pod IPs) one node may have, whatever the size of its pod CIDR.
    #[arg(long, env = "ROUTEPLANE_MAX_PODS_PER_NODE", default_value_t = crate::state::DEFAULT_MAX_PODS_PER_NODE, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pods_per_node: u32,
    /// The most operator entries (routeplane-bgp's API peers and paths) IPAM keeps.
    #[arg(long, env = "ROUTEPLANE_MAX_OPERATOR_ENTRIES", default_value_t = crate::state::DEFAULT_MAX_OPERATOR_ENTRIES as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_operator_entries: u32,
    /// How long a node stays Ready without a KeepAlive from its agent (e.g. 20s, 1m).
    #[arg(long, env = "ROUTEPLANE_LEASE_TTL", default_value = "20s", value_parser = flags::duration_at_least(Duration::from_secs(1)))]
    pub lease_ttl: Duration,
    /// How often each route agent's Heartbeat stream beats (fast failure detection).
    #[arg(long, env = "ROUTEPLANE_HEARTBEAT_INTERVAL", default_value = "750ms", value_parser = flags::duration_within(Duration::from_millis(50), Duration::from_secs(10)))]
    pub heartbeat_interval: Duration,
    /// Take agents' beats as authenticated UDP datagrams on the gRPC listener's address and port
    /// (ipam.proto, Heartbeat): a datagram costs IPAM a fraction of a message on the stream, which
    /// stays the fallback. false: beats come on the stream only (no UDP port opened).
    #[arg(long, env = "ROUTEPLANE_HEARTBEAT_DATAGRAMS", default_value_t = true, action = clap::ArgAction::Set)]
    pub heartbeat_datagrams: bool,
    /// Beats a node may miss in a row before it is declared dead (NotReady at once; its prefixes
    /// withdrawn): with the interval, 3 × 750ms = 2.25s by default.
    #[arg(long, env = "ROUTEPLANE_HEARTBEAT_DETECT_MULTIPLIER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub heartbeat_detect_multiplier: u32,
    /// Flap damping: a node's penalty (1,000 per death) halves every this long; above 2,000 the
    /// node is held down until it is below 750. 0s turns damping off.
    #[arg(long, env = "ROUTEPLANE_FLAP_HALF_LIFE", default_value = "60s", value_parser = flags::duration)]
    pub flap_half_life: Duration,
    /// flush: acknowledge a change only once it is on disk (concurrent changes share flushes).
    /// none: acknowledge before the flush — for benchmarks only; a crash may lose acknowledged changes.
    #[arg(long, env = "ROUTEPLANE_DURABILITY", value_enum, default_value_t = Durability::Flush)]
    pub durability: Durability,
    /// How often sled is checkpointed, after which the log it covers is deleted: what a restart
    /// replays is at most this much (e.g. 5s, 500ms).
    #[arg(long, env = "ROUTEPLANE_CHECKPOINT_INTERVAL", default_value = "5s", value_parser = flags::duration_within(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub checkpoint_interval: Duration,
    /// sled is also checkpointed after this many changes, before the interval is up: the log left
    /// to replay stays bounded in size under any load.
    #[arg(long, env = "ROUTEPLANE_CHECKPOINT_CHANGES", default_value_t = crate::materialize::CHECKPOINT_CHANGES, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_changes: u64,
    /// Write-ahead log segments roll over past this size (e.g. 16MiB, 256KiB); a checkpoint
    /// deletes whole segments.
    #[arg(long, env = "ROUTEPLANE_LOG_SEGMENT_SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub log_segment_size: u64,
    /// Events kept so that a watcher can resume without a new snapshot: in memory, and on --store
    /// etcd also in etcd (the events of this many revisions), so that a resume at another replica
    /// or after a restart replays them.
    #[arg(long, env = "ROUTEPLANE_WATCH_HISTORY", default_value_t = 10_000)]
    pub watch_history: usize,
    /// Events a watcher may fall behind before it is cut off (and told where to resume).
    #[arg(long, env = "ROUTEPLANE_WATCH_BUFFER", default_value_t = 4096)]
    pub watch_buffer: usize,
    /// A watcher that takes no message for this long (its buffers full) is cut off with ABORTED
    /// naming the revision to resume from (e.g. 30s, 2m).
    #[arg(long, env = "ROUTEPLANE_WATCH_SEND_DEADLINE", default_value = "30s", value_parser = flags::duration_within(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub watch_send_deadline: Duration,
    /// Kubernetes mode: follow the cluster's Nodes (pod CIDRs, written back to each Node) and
    /// LoadBalancer Services (status.loadBalancer.ingress), with the in-cluster credentials or
    /// KUBECONFIG. Without it, nodes register themselves through their route agents.
    #[arg(long, env = "ROUTEPLANE_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubernetes mode: how long a deleted Node's pod CIDRs wait before release, in case it returns.
    #[arg(long, env = "ROUTEPLANE_NODE_RELEASE_GRACE", default_value = "5m", value_parser = flags::duration_at_least(Duration::from_secs(1)))]
    pub node_release_grace: Duration,
    #[command(flatten)]
    pub tls: routeplane_runtime::tls::TlsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sled,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    Flush,
    None,
}

/// A size in bytes, KiB, MiB or GiB, from 4KiB to 1GiB.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .into_iter()
        .find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|n| (n, unit)))
        .unwrap_or((t, 1));
    let bytes = number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is not a size: write it as 16MiB, 256KiB or 65536"))?;
    if !((4 << 10)..=(1 << 30)).contains(&bytes) {
        return Err(format!("{text} is out of range: from 4KiB to 1GiB"));
    }
    Ok(bytes)
}

/// The files as read, with what to tell the operator once at startup.
pub struct Loaded {
    pub core: CoreConfig,
    pub notes: Vec<String>,
}

impl Cli {
    /// The etcd settings the flags name, checked.
    pub fn etcd_settings(&self) -> Result<EtcdSettings, crate::error::IpamError> {
        let settings = EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            cluster: self.etcd_cluster_name.clone(),
            tls: self.etcd_ca.clone().map(|ca| EtcdTls {
                ca,
                identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
            }),
            leader: None,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The store the flags name, checked (endpoints with a scheme, a usable prefix).
    pub fn storage(&self) -> Result<StorageConfig, crate::error::IpamError> {
        match self.store {
            StoreKind::Sled => Ok(StorageConfig::Sled(self.data_dir.clone())),
            StoreKind::Etcd => Ok(StorageConfig::Etcd(self.etcd_settings()?)),
        }
    }

    pub fn options(&self) -> IpamOptions {
        IpamOptions {
            durable: self.durability == Durability::Flush,
            watch_history: self.watch_history,
            watch_buffer: self.watch_buffer,
            watch_send_deadline: self.watch_send_deadline,
            checkpoints: crate::materialize::Checkpoints {
                every: self.checkpoint_interval,
                changes: self.checkpoint_changes,
                ..crate::materialize::Checkpoints::default()
            },
            log_segment_bytes: self.log_segment_size,
            ..IpamOptions::default()
        }
    }

    pub fn load(&self) -> Result<Loaded, routeplane_config::ConfigError> {
        let (values, bgp) = routeplane_config::load_or_embedded(
            self.values.as_deref(),
            self.bgp_config.as_deref(),
        )?;
        let mut notes = values.notes.clone();
        notes.push(format!(
            "values.yaml: {}",
            match (&self.values, values.ignored.is_empty()) {
                (None, _) => "embedded default (the seed's)".to_string(),
                (Some(p), true) => p.display().to_string(),
                (Some(p), false) => format!(
                    "{} — keys routeplane-ipam does not act on: {}",
                    p.display(),
                    values.ignored.join(", ")
                ),
            }
        ));
        let default_masks = BTreeMap::from([
            (Family::V4, values.ipv4_pool.mask_size),
            (Family::V6, values.ipv6_pool.mask_size),
        ]);
        Ok(Loaded {
            core: CoreConfig {
                pod_pools: values.enabled_pools().into_iter().cloned().collect(),
                default_masks,
                service_pools: bgp.address_pools,
                lease_ttl: self.lease_ttl,
                liveness: LivenessConfig {
                    heartbeat_interval: self.heartbeat_interval,
                    detect_multiplier: self.heartbeat_detect_multiplier,
                    flap_half_life: Some(self.flap_half_life).filter(|h| !h.is_zero()),
                },
                max_pods_per_node: usize::try_from(self.max_pods_per_node).unwrap_or(usize::MAX),
                max_operator_entries: usize::try_from(self.max_operator_entries)
                    .unwrap_or(usize::MAX),
            },
            notes,
        })
    }
}

/// HOST:PORT, as --etcd-advertise takes it.
fn host_port(value: &str) -> Result<String, String> {
    let valid = value.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p != 0)
            && !host.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if valid && value.len() <= 255 {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not HOST:PORT (e.g. 10.4.36.5:50051 or ipam-0.ipam:50051)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertised_address_is_host_and_port() {
        assert_eq!(
            host_port("10.4.36.5:50051").as_deref(),
            Ok("10.4.36.5:50051")
        );
        assert!(host_port("ipam-0.ipam:50051").is_ok());
        assert!(host_port("[fd00::5]:50051").is_ok());
        for bad in ["10.4.36.5", ":50051", "ipam:0", "ipam:http", "ip am:50051"] {
            let e = host_port(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn sizes_and_intervals_parse_or_say_what_would_be_valid() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(
            parse_size("1KiB")
                .unwrap_err()
                .contains("from 4KiB to 1GiB")
        );
        assert!(parse_size("16MB").unwrap_err().contains("16MiB, 256KiB"));
        assert!(
            parse_size("99999999999GiB").is_err(),
            "overflow is an error"
        );
    }
}
