//! Serving a service's gRPC routes with the extras every routeplane server has: grpc.health.v1
//! (SERVING for the service and for "" while up, NOT_SERVING while draining) and reflection v1 and
//! v1alpha over routeplane's descriptors and health's — on a TCP listener ([`serve`]) or a Unix
//! socket ([`serve_unix`], the route agent's socket for routeplane-cni).

use tokio::net::{TcpListener, UnixListener};
use tonic::service::Routes;

use std::time::Duration;

use crate::RuntimeError;
use crate::shutdown::Shutdown;

/// How long in-flight calls and streams get to finish after shutdown fires. HTTP/2's graceful close
/// waits for every client to acknowledge it, so a client that stopped reading would otherwise hold
/// the process forever.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `routes` on `listener` until shutdown. `service_name` is the fully qualified gRPC service
/// name health reports on (e.g. "routeplane.ipam.v1.Ipam").
pub async fn serve(
    listener: TcpListener,
    service_name: &'static str,
    routes: Routes,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, service = service_name, "gRPC listening");
    }
    // Small responses must not wait for Nagle's algorithm to meet the peer's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    serve_incoming(incoming, service_name, routes, shutdown).await
}

/// As [`serve`], on a Unix socket (its path logged as `gRPC listening on socket`).
pub async fn serve_unix(
    listener: UnixListener,
    service_name: &'static str,
    routes: Routes,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(socket = ?addr.as_pathname(), service = service_name, "gRPC listening on socket");
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    serve_incoming(incoming, service_name, routes, shutdown).await
}

async fn serve_incoming<I, IO, IE>(
    incoming: I,
    service_name: &'static str,
    routes: Routes,
    shutdown: Shutdown,
) -> Result<(), RuntimeError>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service_name, tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(routeplane_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let stop = shutdown.clone();
    let drain = async move {
        shutdown.wait().await;
        health
            .set_service_status(service_name, tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    let server = tonic::transport::Server::builder()
        // One span per call, named after the method: what the logs nest under and OTLP exports.
        .trace_fn(|req| {
            let method = req.uri().path();
            tracing::info_span!("grpc", otel.name = %method, rpc.system = "grpc", rpc.method = %method)
        })
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, drain);
    let deadline = async move {
        stop.wait().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after shutdown began: closing them"),
    }
    Ok(())
}
