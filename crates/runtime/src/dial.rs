//! Dialling another routeplane service (the agents and routeplane-bgp dial IPAM) as the process's
//! [`Security`] says: `https://` with mutual TLS, the certificate re-read on every new connection;
//! `http://` only to loopback or with `--insecure`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{Security, Tls, TlsError};

/// How long a TCP connect and TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a dial did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Refused(#[from] TlsError),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Makes channels to other services; cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    security: Security,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = matches!(self.security, Security::Tls(_));
        f.debug_struct("Dialer").field("tls", &tls).finish()
    }
}

/// A URL checked against the security: where to connect, with TLS or not.
struct Target {
    /// `http://host:port`: TLS, when used, is ours, under tonic's plaintext HTTP/2.
    endpoint: String,
    host: String,
    tls: Option<Arc<Tls>>,
}

impl Dialer {
    pub fn new(security: Security) -> Dialer {
        Dialer { security }
    }

    /// Plaintext to loopback only: for tests and local tools.
    pub fn loopback_only() -> Dialer {
        Dialer::new(Security::loopback_only())
    }

    fn target(&self, url: &str) -> Result<Target, TlsError> {
        let bad = |reason: &str| TlsError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let authority = uri
            .authority()
            .ok_or_else(|| bad("it has no host:port (e.g. https://ipam:50051)"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let endpoint = format!("http://{authority}");
        match (uri.scheme_str(), &self.security) {
            (Some("https"), Security::Tls(tls)) => Ok(Target {
                endpoint,
                host: host.to_string(),
                tls: Some(tls.clone()),
            }),
            (Some("https"), Security::Plaintext { .. }) => Err(TlsError::NoClientTls {
                url: url.to_string(),
            }),
            (Some("http"), security) => {
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                match security {
                    _ if loopback => {}
                    Security::Plaintext { insecure: true } => {}
                    _ => {
                        return Err(TlsError::PlaintextDial {
                            url: url.to_string(),
                        });
                    }
                }
                Ok(Target {
                    endpoint,
                    host: host.to_string(),
                    tls: None,
                })
            }
            _ => Err(bad("the scheme must be https:// or http://")),
        }
    }

    /// Checks `url` without dialling: for start-up, so a wrong flag stops the process at once.
    pub fn check(&self, url: &str) -> Result<(), TlsError> {
        self.target(url).map(|_| ())
    }

    /// A channel to `url`, connected before it returns (as tonic's `connect`); it reconnects by
    /// itself, each time with the TLS files as they are then.
    pub async fn connect(&self, url: &str) -> Result<Channel, DialError> {
        let target = self.target(url)?;
        let endpoint = Endpoint::from_shared(target.endpoint.clone())
            .map_err(|e| TlsError::Url {
                url: url.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(crate::grpc::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(crate::grpc::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let connected = match target.tls {
            None => endpoint.connect().await,
            Some(tls) => {
                let host = target.host;
                let connector = tower::service_fn(move |uri: Uri| {
                    let tls = tls.clone();
                    let host = host.clone();
                    async move { handshake(&uri, &host, &tls).await }
                });
                endpoint.connect_with_connector(connector).await
            }
        };
        connected.map_err(|source| DialError::Connect {
            url: url.to_string(),
            source,
        })
    }
}

async fn handshake(
    uri: &Uri,
    host: &str,
    tls: &Tls,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(format!("{uri} has no host:port")))?;
    let port = authority.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| invalid(format!("{host} is not a server name: {e}")))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
        })??;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    Ok(TokioIo::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_dialled_to_loopback_only_unless_insecure() {
        let local = Dialer::loopback_only();
        assert!(local.check("http://127.0.0.1:50051").is_ok());
        assert!(local.check("http://[::1]:50051").is_ok());
        assert!(local.check("http://localhost:50051").is_ok());
        let refused = local
            .check("http://10.4.36.5:50051")
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("http://10.4.36.5:50051") && refused.contains("--insecure"),
            "{refused}"
        );
        let https = local.check("https://ipam:50051").unwrap_err().to_string();
        assert!(https.contains("--tls-ca"), "{https}");
        let insecure = Dialer::new(Security::Plaintext { insecure: true });
        assert!(insecure.check("http://10.4.36.5:50051").is_ok());
        for bad in ["ipam:50051", "ftp://ipam:50051", "http://", "http://a b"] {
            assert!(local.check(bad).is_err(), "{bad}");
        }
    }
}
