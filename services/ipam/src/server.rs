//! Startup and shutdown of routeplane-ipam: read the files, open sled, rebuild the state, then serve
//! gRPC and /metrics until SIGTERM/SIGINT (or a storage failure) stops both.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use routeplane_runtime::grpc::GrpcServer;
use routeplane_runtime::shutdown::Shutdown;
use routeplane_runtime::{RuntimeError, bind, metrics};
use tokio::sync::watch;

use crate::engine::StorageConfig;
use crate::error::IpamError;
use crate::etcd::EtcdSettings;
use crate::etcd::election::{self, Leadership};
use crate::grpc::IpamGrpc;
use crate::ipam::Ipam;
use crate::settings::Cli;
use crate::store::filesystem_type;

/// Why the server did not start, or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] routeplane_config::ConfigError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Kubernetes mode without API credentials; the message says which were looked for.
    #[error("{0}")]
    Kubernetes(String),
}

/// Creates sled's data directory and says what it sits on.
fn prepare_data_dir(data_dir: &Path, cli: &Cli) -> Result<(), IpamError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        IpamError::Storage(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let fs = filesystem_type(data_dir).unwrap_or_else(|| "unknown".into());
    tracing::info!(data_dir = %data_dir.display(), filesystem = %fs, durability = ?cli.durability, "opening state");
    if fs == "tmpfs" || fs == "ramfs" {
        tracing::warn!(
            "the data directory is on {fs}: flushes cost nothing and nothing survives a reboot"
        );
    }
    Ok(())
}

/// Opens the state and starts the core — on etcd once this replica leads (`etcd/election.rs`:
/// until then it stands by, not listening). etcd that does not answer yet (not started, no
/// quorum) is waited for, saying so, with backoff up to ETCD_RETRY_MAX; what etcd holds that must
/// be refused (another cluster's state, a newer layout, foreign keys) stops the start.
async fn start_ipam(
    core: &crate::state::CoreConfig,
    storage: StorageConfig,
    cli: &Cli,
    shutdown: &Shutdown,
) -> Result<(Arc<Ipam>, Vec<String>, Option<Leadership>), IpamError> {
    let mut wait = Duration::from_millis(250);
    loop {
        let started = match &storage {
            StorageConfig::Etcd(settings) => lead_and_start(core, settings, cli, shutdown).await,
            StorageConfig::Sled(_) => Ipam::start(
                core.clone(),
                storage.clone(),
                cli.options(),
                shutdown.clone(),
            )
            .await
            .map(|(ipam, warnings)| (ipam, warnings, None)),
        };
        match started {
            Err(IpamError::Storage(why)) if matches!(storage, StorageConfig::Etcd(_)) => {
                tracing::warn!(retry_in = ?wait, "{why}; waiting for etcd");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.wait() => return Err(IpamError::Storage(format!("stopped while waiting for etcd: {why}"))),
                }
                wait = (wait * 2).min(ETCD_RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// Campaigns, then opens etcd with the leadership it won fencing every write; a lost lease fails
/// the service (it exits and, restarted, stands by).
async fn lead_and_start(
    core: &crate::state::CoreConfig,
    settings: &EtcdSettings,
    cli: &Cli,
    shutdown: &Shutdown,
) -> Result<(Arc<Ipam>, Vec<String>, Option<Leadership>), IpamError> {
    let me = cli
        .etcd_advertise
        .clone()
        .unwrap_or_else(|| cli.grpc_listen.to_string());
    let leadership = election::campaign(settings, &me, cli.etcd_lease_ttl, shutdown).await?;
    let mut settings = settings.clone();
    settings.leader = Some(leadership.create_revision);
    let storage = StorageConfig::Etcd(settings);
    let (ipam, warnings) =
        match Ipam::start(core.clone(), storage, cli.options(), shutdown.clone()).await {
            Ok(started) => started,
            Err(e) => {
                leadership.resign().await;
                return Err(e);
            }
        };
    let mut lost = leadership.lost.clone();
    let watched = Arc::downgrade(&ipam);
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        // Not once shutdown began: resigning at the end gives the lease up on purpose.
        tokio::select! {
            lost = lost.wait_for(|lost| *lost) => {
                if lost.is_ok() && !stopping.is_triggered() && let Some(ipam) = watched.upgrade() {
                    ipam.fail(&IpamError::Storage(
                        "this replica lost its leadership lease (etcd unreachable or the process paused past the TTL)".into(),
                    ));
                }
            }
            () = stopping.wait() => {}
        }
    });
    Ok((ipam, warnings, Some(leadership)))
}

/// The longest wait between attempts to reach etcd at startup.
const ETCD_RETRY_MAX: Duration = Duration::from_secs(5);

pub async fn run(cli: Cli) -> Result<(), ServeError> {
    let _telemetry = routeplane_runtime::telemetry::init("routeplane-ipam", &cli.telemetry)?;
    routeplane_runtime::limits::raise_open_files_logged();
    let loaded = cli.load()?;
    let shutdown = Shutdown::on_signals();
    // Certificates and the listen address are checked before any state is opened.
    let security = cli.tls.load(&shutdown).map_err(RuntimeError::from)?;
    security
        .check_listen(cli.grpc_listen)
        .map_err(RuntimeError::from)?;
    for note in &loaded.notes {
        tracing::info!("{note}");
    }
    let storage = cli.storage()?;
    if let StorageConfig::Sled(data_dir) = &storage {
        prepare_data_dir(data_dir, &cli)?;
    }
    // Metrics and /healthz answer from the start, a standby's too (`routeplane_ipam_leader` 0):
    // what Kubernetes probes, so that standbys count as running (rollouts, disruption budgets)
    // while gRPC, where clients and the Service look, is the leader's alone.
    let metrics_listener = bind(cli.metrics_listen).await?;
    let (registries, registry) = watch::channel(Arc::new(crate::metrics::standby_registry()));
    let metrics_task = tokio::spawn(metrics::serve_switching(
        metrics_listener,
        registry,
        shutdown.clone(),
    ));
    let (ipam, warnings, mut leadership) =
        match start_ipam(&loaded.core, storage, &cli, &shutdown).await {
            // SIGTERM while standing by or waiting for etcd: a clean stop.
            Err(_) if shutdown.is_triggered() => {
                tracing::info!("stopped before serving");
                return Ok(());
            }
            started => started?,
        };
    for w in warnings {
        tracing::warn!("{w}");
    }
    {
        let (pods, lbs) = ipam.pools();
        for p in pods {
            tracing::info!(pool = %p.cidr, mask = p.mask, used = %p.used, total = %p.total, source = %p.source, "pod CIDR pool");
        }
        for (c, total, used) in lbs {
            let ranges: Vec<String> = c.addresses.iter().map(ToString::to_string).collect();
            tracing::info!(pool = %c.name, addresses = %ranges.join(" "), %used, %total, "LoadBalancer pool");
        }
    }
    let grpc_listener = bind(cli.grpc_listen).await?;
    // Without --etcd-advertise, the address bound (a port 0 becomes the kernel's choice).
    if let (Some(leadership), Ok(addr), None) = (
        leadership.as_mut(),
        grpc_listener.local_addr(),
        &cli.etcd_advertise,
    ) {
        leadership.announce(&addr.to_string()).await;
    }
    let datagrams = match (cli.heartbeat_datagrams, grpc_listener.local_addr()) {
        (true, Ok(addr)) => {
            let socket = crate::heartbeat_datagrams::bind(addr)?;
            let sessions = Arc::new(crate::heartbeat_datagrams::Sessions::new(
                addr.port(),
                ipam.liveness().heartbeat_interval,
            ));
            tracing::info!(udp = %addr, "taking heartbeat datagrams");
            crate::heartbeat_datagrams::start(socket, sessions.clone(), ipam.clone())?;
            Some(sessions)
        }
        _ => None,
    };
    let mut registry = crate::metrics::registry(ipam.clone(), datagrams.clone());
    let server = GrpcServer::new(
        crate::GRPC_SERVICE,
        crate::grpc::policy,
        security,
        &cli.tls,
        &mut registry,
    )
    .report_health(crate::WRITES_HEALTH, ipam.writable());
    // Fails only once the metrics server has stopped: nothing left to show it to.
    let _ = registries.send(Arc::new(registry));
    if cli.kubernetes {
        let client = routeplane_kubernetes::client()
            .await
            .map_err(ServeError::Kubernetes)?;
        tracing::info!(release_grace = ?cli.node_release_grace, "Kubernetes mode: following Nodes and LoadBalancer Services");
        tokio::spawn(crate::kubernetes::run(
            client,
            ipam.clone(),
            cli.node_release_grace,
            shutdown.clone(),
        ));
    }
    let routes = tonic::service::Routes::new(IpamGrpc::service(ipam.clone(), datagrams));
    let served = server.serve(grpc_listener, routes, shutdown.clone()).await;
    shutdown.trigger();
    if let Ok(Err(e)) = metrics_task.await {
        tracing::warn!(error = %e, "metrics server stopped with an error");
    }
    if let Some(leadership) = leadership {
        // A standby takes over now rather than when the lease runs out.
        leadership.resign().await;
    }
    served?;
    if ipam.has_failed() {
        return Err(IpamError::Storage(
            "stopped after a storage failure; restart to reload state from disk".into(),
        )
        .into());
    }
    tracing::info!("stopped");
    Ok(())
}
