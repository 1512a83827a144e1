//! Serving a service's gRPC routes with the extras every routeplane server has: grpc.health.v1
//! (SERVING for the service and for "" while up, NOT_SERVING while draining) and reflection v1 and
//! v1alpha over routeplane's descriptors and health's — on a TCP listener ([`GrpcServer::serve`]),
//! with mutual TLS when the process has certificates, or a Unix socket ([`serve_unix`], the route
//! agent's socket for routeplane-cni). Every call passes the [`Gate`] first.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::service::Routes;

use crate::RuntimeError;
use crate::authz::{Gate, Policy, Refusals};
use crate::ratelimit::RateLimiter;
use crate::shutdown::Shutdown;
use crate::tls::{Security, Tls};

/// How long in-flight calls and streams get to finish after shutdown fires. HTTP/2's graceful close
/// waits for every client to acknowledge it, so a client that stopped reading would otherwise hold
/// the process forever.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 PINGs from every client, this often while its connection is idle...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection is closed when one is not answered within this: a server gone silently
/// (a partition, a host powered off, a process stopped) is noticed within about 20 s instead of
/// never, so a Watch consumer resumes elsewhere or later. Servers close on the same timeout.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers PING a connection that sent them no data for this long: a client gone silently is
/// noticed within about 40 s and what it held (its Watch stream, its heartbeat session) freed.
/// Longer than the clients' interval because routeplane's own clients PING every 10 s anyway
/// (and the server does not count their PINGs as traffic): at 5,000 agents' idle connections a
/// server PING every 10 s as well was ~1,000 frames a second to write and read back, a tenth of
/// IPAM's idle CPU. gRPC's own servers wait two hours.
pub const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// The most streams (calls in progress) one HTTP/2 connection may have open at once, as nginx's
/// `http2_max_concurrent_streams`: a client past it waits for one of its calls to end (HTTP/2
/// clients queue them, RFC 9113 §5.1.2), so one connection cannot hold an unbounded number of
/// Watch streams and their tasks. Each agent and routeplane-bgp uses a handful.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How long a client has to finish its TLS handshake before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once. Past it the listener stops accepting until one ends: a herd of
/// clients (every agent back to a restarted IPAM) waits in the kernel's accept queue and is served
/// in turn — closed at once, each would come back at once, a retry storm that held 5,000 nodes'
/// agents off a cold-started IPAM for 105 s — and a flood of idle connections costs bounded memory.
pub const MAX_HANDSHAKES: usize = 256;

/// One service's gRPC listener: what it serves, who may call what, and how it is secured.
pub struct GrpcServer {
    /// The fully qualified gRPC service name health reports on (e.g. "routeplane.ipam.v1.Ipam").
    pub service: &'static str,
    /// Its methods' access.
    pub policy: Policy,
    pub security: Security,
    /// Of callers' SPIFFE IDs.
    pub trust_domain: String,
    /// Where refusals are counted (registered in the service's metrics).
    pub refusals: Refusals,
    /// Calls per second per identity (`--rate-limit`).
    pub limiter: Option<Arc<RateLimiter>>,
    /// Further health service names and whether each is serving (e.g. IPAM's writes).
    pub health: Vec<(&'static str, watch::Receiver<bool>)>,
}

impl GrpcServer {
    /// A server for `service`, its refusals registered in the service's metrics `registry`.
    pub fn new(
        service: &'static str,
        policy: Policy,
        security: Security,
        tls: &crate::tls::TlsArgs,
        registry: &mut prometheus_client::registry::Registry,
    ) -> GrpcServer {
        let refusals = Refusals::default();
        refusals.register(registry);
        GrpcServer {
            service,
            policy,
            security,
            trust_domain: tls.trust_domain.clone(),
            refusals,
            limiter: RateLimiter::new(tls.rate_limit).map(Arc::new),
            health: Vec::new(),
        }
    }

    /// Reports `name` on grpc.health.v1 as SERVING while `serving` is true (NOT_SERVING otherwise,
    /// and once shutdown begins), beside the service's own status.
    pub fn report_health(mut self, name: &'static str, serving: watch::Receiver<bool>) -> Self {
        self.health.push((name, serving));
        self
    }

    /// Runs `routes` on `listener` until shutdown: mutual TLS when the security has certificates;
    /// plaintext only where [`Security::check_listen`] allows it.
    pub async fn serve(
        self,
        listener: TcpListener,
        routes: Routes,
        shutdown: Shutdown,
    ) -> Result<(), RuntimeError> {
        let addr = listener.local_addr().map_err(RuntimeError::Listener)?;
        self.security.check_listen(addr)?;
        let plaintext = !matches!(self.security, Security::Tls(_));
        tracing::info!(%addr, service = self.service, tls = !plaintext, "gRPC listening");
        let gate = Gate::new(
            self.service,
            self.policy,
            &self.trust_domain,
            plaintext,
            self.refusals,
            self.limiter,
        );
        match self.security {
            Security::Tls(tls) => {
                let incoming = tls_incoming(listener, tls, shutdown.clone());
                serve_incoming(incoming, self.service, self.health, routes, gate, shutdown).await
            }
            Security::Plaintext { .. } => {
                // Small responses must not wait for Nagle's algorithm to meet the peer's delayed
                // ACK (40 ms).
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                serve_incoming(incoming, self.service, self.health, routes, gate, shutdown).await
            }
        }
    }
}

/// Keeps `name`'s health status in step with `serving` until shutdown, then NOT_SERVING.
async fn follow_health(
    health: tonic_health::server::HealthReporter,
    name: &'static str,
    mut serving: watch::Receiver<bool>,
    shutdown: Shutdown,
) {
    loop {
        let status = if *serving.borrow_and_update() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status(name, status).await;
        tokio::select! {
            changed = serving.changed() => if changed.is_err() { break },
            () = shutdown.wait() => break,
        }
    }
    health
        .set_service_status(name, tonic_health::ServingStatus::NotServing)
        .await;
}

/// TLS handshakes done apart from the accept loop (a slow client does not hold up the next one),
/// bounded in number and time; finished streams go to the server.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    shutdown: Shutdown,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>,
> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                () = shutdown.wait() => return,
                permit = pending.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = shutdown.wait() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => {
                        tracing::debug!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}: closed")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// `routes` on a Unix socket (its path logged as `gRPC listening on socket`): plaintext, every
/// caller trusted, since the socket's permissions decide who connects.
pub async fn serve_unix(
    listener: UnixListener,
    service: &'static str,
    policy: Policy,
    routes: Routes,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(socket = ?addr.as_pathname(), service, "gRPC listening on socket");
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let gate = Gate::new(service, policy, "", true, Refusals::default(), None);
    serve_incoming(incoming, service, Vec::new(), routes, gate, shutdown).await
}

async fn serve_incoming<I, IO, IE>(
    incoming: I,
    service_name: &'static str,
    extra_health: Vec<(&'static str, watch::Receiver<bool>)>,
    routes: Routes,
    gate: Gate,
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
    for (name, serving) in extra_health {
        tokio::spawn(follow_health(
            health.clone(),
            name,
            serving,
            shutdown.clone(),
        ));
    }

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
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(gate)
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
