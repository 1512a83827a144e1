//! Startup and shutdown of routeplane-bgp: read the files, follow IPAM, run the speaker, serve gRPC
//! and /metrics until SIGTERM/SIGINT; on the way out every session gets Cease.

use std::sync::Arc;

use routeplane_runtime::dial::Dialer;
use routeplane_runtime::grpc::GrpcServer;
use routeplane_runtime::shutdown::Shutdown;
use routeplane_runtime::{RuntimeError, bind, metrics};

use crate::grpc::BgpGrpc;
use crate::settings::Cli;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] routeplane_config::ConfigError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Peers(String),
}

pub async fn run(cli: Cli) -> Result<(), ServeError> {
    let cli = std::sync::Arc::new(cli);
    let _telemetry = routeplane_runtime::telemetry::init("routeplane-bgp", &cli.telemetry)?;
    routeplane_runtime::limits::raise_open_files_logged();
    let (settings, notes) = cli.load()?;
    for note in notes {
        tracing::info!("{note}");
    }
    for p in &settings.peers {
        tracing::info!(peer = %p.peer_address, my_asn = p.my_asn, peer_asn = p.peer_asn, selectors = p.node_selectors.len(), "peer");
    }
    let shutdown = Shutdown::on_signals();
    let security = cli.tls.load(&shutdown).map_err(RuntimeError::from)?;
    security
        .check_listen(cli.grpc_listen)
        .map_err(RuntimeError::from)?;
    let dialer = Dialer::new(security.clone());
    dialer.check(&cli.ipam).map_err(RuntimeError::from)?;
    let mut listeners = Vec::new();
    for addr in &cli.bgp_listen {
        let l = bind(*addr).await?;
        // The bound address: with port 0 the kernel's choice.
        let addr = l.local_addr().unwrap_or(*addr);
        tracing::info!(%addr, "BGP listening");
        listeners.push(l);
    }
    let (feed_tx, feed_rx) = tokio::sync::mpsc::unbounded_channel();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::reload::run(
        cli.clone(),
        settings.router_id,
        reload_tx,
        shutdown.clone(),
    ));
    let feed_stats = Arc::new(routeplane_watch::FeedStats::default());
    tokio::spawn(routeplane_watch::run(
        Arc::new(routeplane_runtime::link::Link::new(
            dialer.clone(),
            &cli.ipam,
        )),
        routeplane_watch::Follow::WithOperatorEntries,
        feed_tx,
        feed_stats.clone(),
        shutdown.clone(),
    ));
    let (speaker, speaker_task) =
        crate::speaker::start(settings, listeners, feed_rx, reload_rx, shutdown.clone())
            .map_err(ServeError::Peers)?;
    let grpc_listener = bind(cli.grpc_listen).await?;
    let metrics_listener = bind(cli.metrics_listen).await?;
    let mut registry = crate::metrics::registry(speaker.clone(), feed_stats);
    let server = GrpcServer::new(
        crate::GRPC_SERVICE,
        crate::grpc::policy,
        security,
        &cli.tls,
        &mut registry,
    );
    let registry = Arc::new(registry);
    let metrics_task = tokio::spawn(metrics::serve(metrics_listener, registry, shutdown.clone()));
    let store = Arc::new(crate::operator::OperatorStore::new(
        cli.ipam.clone(),
        dialer,
    ));
    let routes = tonic::service::Routes::new(BgpGrpc::new(speaker, store));
    let served = server.serve(grpc_listener, routes, shutdown.clone()).await;
    shutdown.trigger();
    let _ = metrics_task.await;
    // Every session sends its Cease (or closes for graceful restart) before the runtime goes,
    // after the --shutdown-drain announced GRACEFUL_SHUTDOWN.
    if tokio::time::timeout(
        cli.shutdown_drain + std::time::Duration::from_secs(5),
        speaker_task,
    )
    .await
    .is_err()
    {
        tracing::warn!("sessions did not all stop within 5 s");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}
