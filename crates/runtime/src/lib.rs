//! How every routeplane service starts and stops.
//!
//! Contract: [`telemetry::init`] installs logging (readable text, or JSON by flag) and, only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry export — nothing is dialled otherwise.
//! [`grpc::serve`] runs a service's tonic routes beside `grpc.health.v1` and server reflection (v1 and
//! v1alpha, since grpcurl 1.8 asks v1alpha), and [`metrics::serve`] exposes a Prometheus registry on
//! `/metrics`. [`tls`] loads the certificates of mutual TLS and re-reads them; [`authz`] decides
//! from the caller's certificate who may call what; [`dial`] makes the clients' channels the same
//! way, and [`link`] shares one of them between a process's callers, which retry with
//! [`backoff`]'s jittered pauses; [`heartbeat_datagram`] is the agents' authenticated UDP beat; [`limits`] raises the open-files limit a server of thousands of clients needs. Both servers stop cleanly when the [`shutdown::Shutdown`] token fires, which SIGTERM and SIGINT do.
#![forbid(unsafe_code)]

pub mod authz;
pub mod backoff;
pub mod dial;
pub mod flags;
pub mod grpc;
pub mod heartbeat_datagram;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod probe;
pub mod ratelimit;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;

/// Errors while starting a service's shared machinery.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("gRPC listener has no address: {0}")]
    Listener(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("metrics server failed: {0}")]
    Metrics(std::io::Error),
    #[error(
        "log filter {filter:?} is not valid: {reason} (try \"info\" or \"routeplane_ipam=debug,info\")"
    )]
    LogFilter { filter: String, reason: String },
    #[error("OpenTelemetry exporter setup failed: {0}")]
    Otel(String),
    #[error("logging was already initialised")]
    LoggingTwice,
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, RuntimeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Bind { addr, source })
}
