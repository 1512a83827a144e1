//! The agent's listeners: its API (routeplane.agent.v1.Agent) on --grpc-listen, Prometheus on
//! --metrics-listen, and routeplane-cni's Unix socket (routeplane.agent.v1.Cni) on --cni-socket —
//! created with mode 0600 (only root, as the container runtime runs, may attach pods), a stale
//! socket of an earlier run replaced. With --install-cni the plugin goes into place first and its
//! conflist only once the socket serves.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use routeplane_runtime::shutdown::Shutdown;

use crate::agent::{AgentError, Shared};
use crate::cni_install;
use crate::pods::PodNetwork;
use crate::settings::Cli;

pub struct Servers {
    tasks: Vec<tokio::task::JoinHandle<Result<(), routeplane_runtime::RuntimeError>>>,
}

fn start_error(e: impl std::fmt::Display) -> AgentError {
    AgentError::Start(e.to_string())
}

/// Binds the CNI socket: its directory created, a stale socket removed, mode 0600.
fn bind_cni_socket(cli: &Cli) -> Result<tokio::net::UnixListener, AgentError> {
    let path = &cli.cni_socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| start_error(format!("creating {}: {e}", dir.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "replaced the socket of an earlier run"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(start_error(format!("removing {}: {e}", path.display()))),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| start_error(format!("--cni-socket {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| start_error(format!("chmod {}: {e}", path.display())))?;
    Ok(listener)
}

pub async fn start(
    cli: &Cli,
    shared: Shared,
    pods: Arc<PodNetwork>,
    feed: Arc<routeplane_watch::FeedStats>,
    security: routeplane_runtime::tls::Security,
    shutdown: Shutdown,
) -> Result<Servers, AgentError> {
    let mut tasks = Vec::new();
    let metrics = routeplane_runtime::bind(cli.metrics_listen).await?;
    let mut registry = crate::metrics::registry(shared.clone(), pods.clone(), feed);
    let server = routeplane_runtime::grpc::GrpcServer::new(
        crate::GRPC_SERVICE,
        // Status, routes and their explanation: reads, for any identity.
        |_| routeplane_runtime::authz::Access::Read,
        security,
        &cli.tls,
        &mut registry,
    );
    let registry = Arc::new(registry);
    tokio::spawn(routeplane_runtime::metrics::serve(
        metrics,
        registry,
        shutdown.clone(),
    ));
    let listener = routeplane_runtime::bind(cli.grpc_listen).await?;
    let routes = tonic::service::Routes::new(crate::grpc::AgentGrpc::new(shared, pods.clone()));
    tasks.push(tokio::spawn(server.serve(
        listener,
        routes,
        shutdown.clone(),
    )));
    if cli.install_cni {
        let plugin = match &cli.cni_plugin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(start_error)?
                .with_file_name(cni_install::PLUGIN),
        };
        let at = cni_install::install_plugin(&plugin, &cli.cni_bin_dir).map_err(start_error)?;
        tracing::info!(plugin = %at.display(), "CNI plugin installed");
    }
    let socket = bind_cni_socket(cli)?;
    let routes = tonic::service::Routes::new(crate::pods::cni::CniGrpc::new(pods));
    tasks.push(tokio::spawn(routeplane_runtime::grpc::serve_unix(
        socket,
        crate::CNI_SERVICE,
        // The socket is root's only (0600): whoever reaches it runs the node's pods anyway.
        |_| routeplane_runtime::authz::Access::Open,
        routes,
        shutdown,
    )));
    if cli.install_cni {
        let at = cni_install::install_conflist(&cli.cni_conf_dir, &cli.cni_socket)
            .map_err(start_error)?;
        tracing::info!(conflist = %at.display(), "CNI conflist installed: runtimes may attach pods here");
    }
    Ok(Servers { tasks })
}

impl Servers {
    /// After shutdown: the servers drained, and in Kubernetes mode the conflist removed when the
    /// agent's DaemonSet is going away.
    pub async fn stop(self, cli: &Cli) {
        for task in self.tasks {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "a server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "a server task failed"),
                Ok(Ok(())) => {}
            }
        }
        let _ = std::fs::remove_file(&cli.cni_socket);
        let (true, Some(ds)) = (cli.kubernetes && cli.install_cni, &cli.daemonset) else {
            return;
        };
        let going = match routeplane_kubernetes::client().await {
            Ok(client) => cni_install::daemonset_going(&client, &cli.namespace, ds).await,
            Err(e) => Err(e),
        };
        match going {
            Ok(true) => match cni_install::uninstall(&cli.cni_conf_dir, &cli.cni_bin_dir) {
                Ok(removed) => {
                    tracing::info!(?removed, daemonset = %ds, "DaemonSet going away: CNI conflist and plugin removed")
                }
                Err(e) => tracing::warn!(error = %e, "removing the CNI conflist failed"),
            },
            Ok(false) => {
                tracing::info!(daemonset = %ds, "DaemonSet stays (a restart or an update): the CNI conflist stays")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether the DaemonSet is going away: the CNI conflist stays")
            }
        }
    }
}
