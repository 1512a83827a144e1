//! Serving a service's gRPC routes with the extras every routeplane server has: grpc.health.v1
//! (SERVING for the service and for "" while up, NOT_SERVING while draining) and reflection v1 and
//! v1alpha over routeplane's descriptors and health's.

use tokio::net::TcpListener;
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

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, service = service_name, "gRPC listening");
    }
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
        // Small responses must not wait for Nagle's algorithm to meet the peer's delayed ACK (40 ms).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            drain,
        );
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
