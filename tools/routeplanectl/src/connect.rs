//! Reaching a service and saying, in one line, what went wrong: nothing listening, something that
//! is not a gRPC server (a wrong port), a gRPC server of another kind (routeplane-bgp's address
//! given for IPAM), or the service's own refusal with its reason.

use std::time::Duration;

use routeplane_runtime::dial::Dialer;
use routeplane_runtime::shutdown::Shutdown;
use routeplane_runtime::tls::TlsArgs;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cli::Endpoints;

/// How long one call may take before it is given up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What routeplanectl reports; each is one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {service} at {url}: {reason}")]
    Unreachable {
        service: &'static str,
        url: String,
        reason: String,
    },
    #[error("{url} is not {service}: {detail}")]
    NotThatService {
        service: &'static str,
        url: String,
        detail: String,
    },
    #[error("{service} at {url}: {code:?}: {message}")]
    Refused {
        service: &'static str,
        url: String,
        code: Code,
        message: String,
    },
    #[error("{0}")]
    Output(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// One of the services, by what it is called and the gRPC service it serves.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub name: &'static str,
    pub grpc: &'static str,
}

pub const IPAM: Kind = Kind {
    name: "routeplane-ipam",
    grpc: "routeplane.ipam.v1.Ipam",
};
pub const BGP: Kind = Kind {
    name: "routeplane-bgp",
    grpc: "routeplane.bgp.v1.Bgp",
};
const AGENT: Kind = Kind {
    name: "routeplane-agent",
    grpc: "routeplane.agent.v1.Agent",
};

/// A connected service: its channel, and what to say when a call fails.
#[derive(Clone)]
pub struct Conn {
    pub channel: Channel,
    pub kind: Kind,
    pub url: String,
}

pub fn dialer(endpoints: &Endpoints) -> Result<Dialer, CtlError> {
    let (tls_ca, tls_cert, tls_key) = match endpoints.tls.clone() {
        Some((ca, cert, key)) => (Some(ca), Some(cert), Some(key)),
        None => (None, None, None),
    };
    let args = TlsArgs {
        tls_ca,
        tls_cert,
        tls_key,
        insecure: endpoints.insecure,
        ..TlsArgs::default()
    };
    let security = args
        .load(&Shutdown::new())
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    Ok(Dialer::new(security))
}

pub async fn connect(dialer: &Dialer, kind: Kind, url: &str) -> Result<Conn, CtlError> {
    dialer
        .check(url)
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    let channel = dialer
        .connect(url)
        .await
        .map_err(|e| CtlError::Unreachable {
            service: kind.name,
            url: url.to_string(),
            reason: causes(&e),
        })?;
    Ok(Conn {
        channel,
        kind,
        url: url.to_string(),
    })
}

/// A request with routeplanectl's deadline.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl Conn {
    /// A call's message, or the line saying why there is none (see [`Conn::error`]).
    pub async fn answer<T>(
        &self,
        called: Result<tonic::Response<T>, Status>,
    ) -> Result<T, CtlError> {
        match called {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.error(s).await),
        }
    }

    /// Turns a failed call into the line to print: a server of another kind is named (asked
    /// through grpc.health.v1, which all three serve), a transport failure said as such.
    pub async fn error(&self, status: Status) -> CtlError {
        let (service, url) = (self.kind.name, self.url.clone());
        match status.code() {
            // tonic's reading of an HTTP answer without gRPC in it (a 404 of a web server).
            _ if status.message().contains("grpc-status header missing") => CtlError::Unreachable {
                service,
                url,
                reason: format!(
                    "it did not answer as a gRPC server ({}): a wrong port? ({service}'s gRPC is :{} by default)",
                    status.message(),
                    default_port(service)
                ),
            },
            Code::Unimplemented => {
                let detail = match self.identify().await {
                    Some(other) => format!(
                        "it serves {} (is it {other}? {service} listens on :{} by default)",
                        other_grpc(other),
                        default_port(service)
                    ),
                    None => format!("it does not serve {}", self.kind.grpc),
                };
                CtlError::NotThatService {
                    service,
                    url,
                    detail,
                }
            }
            // tonic's own errors (the connection, HTTP/2) carry their cause; a server's answer
            // does not, whatever its code says.
            Code::Unavailable | Code::Unknown | Code::Internal
                if std::error::Error::source(&status).is_some() =>
            {
                CtlError::Unreachable {
                    service,
                    url,
                    reason: format!(
                        "it did not answer as a gRPC server ({}): a wrong port?",
                        status.message()
                    ),
                }
            }
            Code::DeadlineExceeded => CtlError::Unreachable {
                service,
                url,
                reason: format!("no answer within {CALL_TIMEOUT:?}"),
            },
            code => CtlError::Refused {
                service,
                url,
                code,
                message: status.message().to_string(),
            },
        }
    }

    /// Which routeplane service answers here, by grpc.health.v1 (NOT_FOUND for the ones it is not).
    async fn identify(&self) -> Option<&'static str> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let mut client = HealthClient::new(self.channel.clone());
        for kind in [IPAM, BGP, AGENT] {
            let asked = client
                .check(request(HealthCheckRequest {
                    service: kind.grpc.into(),
                }))
                .await;
            if asked.is_ok() {
                return Some(kind.name);
            }
        }
        None
    }
}

fn other_grpc(name: &str) -> &'static str {
    [IPAM, BGP, AGENT]
        .iter()
        .find(|k| k.name == name)
        .map_or("another API", |k| k.grpc)
}

fn default_port(service: &str) -> u16 {
    match service {
        "routeplane-ipam" => 50051,
        "routeplane-bgp" => 50052,
        _ => 50053,
    }
}

/// An error and its sources, most specific last ("… transport error: tcp connect error:
/// Connection refused"), each said once: tonic's own Display stops at "transport error".
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}
