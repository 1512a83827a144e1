//! Dialling another routeplane service (the agents and routeplane-bgp dial IPAM) as the process's
//! [`Security`] says: `https://` with mutual TLS, the certificate re-read on every new connection;
//! `http://` only to loopback or with `--insecure`.
//!
//! A service with several replicas is named by its URLs separated by commas
//! (`https://ipam-0:50051,https://ipam-1:50051`): a connection goes to the first that accepts
//! one, starting from the one that accepted the last (IPAM's standbys do not listen, so that is
//! its leader). The callers retry with their own backoff, each retry a new round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
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
    #[error("cannot connect to any of {urls}: {failures}")]
    NoneAnswered { urls: String, failures: String },
}

/// Makes channels to other services; cheap to clone (clones share which replica answered last).
#[derive(Clone)]
pub struct Dialer {
    security: Security,
    /// Per list of URLs, the index of the one that accepted the last connection.
    answered: Arc<Mutex<HashMap<String, usize>>>,
}

/// The URLs of a list: one, or several separated by commas.
fn urls(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
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
        Dialer {
            security,
            answered: Arc::default(),
        }
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

    /// Checks a URL, or each of a comma-separated list, without dialling: for start-up, so a
    /// wrong flag stops the process at once.
    pub fn check(&self, list: &str) -> Result<(), TlsError> {
        let urls = urls(list);
        if urls.is_empty() {
            return Err(TlsError::Url {
                url: list.to_string(),
                reason: "it names no URL (e.g. https://ipam:50051, or several separated by commas)"
                    .into(),
            });
        }
        urls.into_iter()
            .try_for_each(|u| self.target(u).map(|_| ()))
    }

    /// A channel to `list` — one URL, or the first of several (comma-separated) that accepts a
    /// connection, starting from the one that accepted the last — connected before it returns
    /// (as tonic's `connect`). It reconnects by itself to the same URL, each time with the TLS
    /// files as they are then; a caller whose calls fail UNAVAILABLE connects again to move on.
    pub async fn connect(&self, list: &str) -> Result<Channel, DialError> {
        self.connect_peer(list).await.map(|(channel, _)| channel)
    }

    /// [`Dialer::connect`], and the address its connection reached — whichever replica accepted,
    /// whatever a name resolved to; updated when the channel reconnects by itself: where a route
    /// agent sends its heartbeat datagrams.
    pub async fn connect_peer(&self, list: &str) -> Result<(Channel, Peer), DialError> {
        let urls = urls(list);
        let first = match urls.as_slice() {
            [] => return self.connect_one(list).await,
            [one] => return self.connect_one(one).await,
            _ => self.lock_answered().get(list).copied().unwrap_or(0),
        };
        let mut failures = Vec::new();
        for i in 0..urls.len() {
            let at = (first + i) % urls.len();
            let Some(url) = urls.get(at) else { continue };
            match self.connect_one(url).await {
                Ok(connected) => {
                    self.lock_answered().insert(list.to_string(), at);
                    return Ok(connected);
                }
                // A URL this process may not dial is a configuration error, not a replica down.
                Err(DialError::Refused(e)) => return Err(DialError::Refused(e)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(DialError::NoneAnswered {
            urls: list.to_string(),
            failures: failures.join("; "),
        })
    }

    fn lock_answered(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // A map of hints: whatever a panicked holder left is still a usable hint.
        self.answered.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn connect_one(&self, url: &str) -> Result<(Channel, Peer), DialError> {
        let target = self.target(url)?;
        let peer = Peer::default();
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
        let host = target.host;
        let tls = target.tls;
        let reached = peer.clone();
        // Our own connector, TLS or not: it records the address each connection reached.
        let connector = tower::service_fn(move |uri: Uri| {
            let (tls, host, reached) = (tls.clone(), host.clone(), reached.clone());
            async move {
                let tcp = tcp_connect(&uri, &host).await?;
                reached.set(tcp.peer_addr().ok());
                let io: Box<dyn Stream> = match tls {
                    Some(tls) => Box::new(handshake(tcp, &host, &tls).await?),
                    None => Box::new(tcp),
                };
                Ok::<_, std::io::Error>(TokioIo::new(io))
            }
        });
        let connected = endpoint.connect_with_connector(connector).await;
        connected
            .map(|channel| (channel, peer))
            .map_err(|source| DialError::Connect {
                url: url.to_string(),
                source,
            })
    }
}

async fn tcp_connect(uri: &Uri, host: &str) -> std::io::Result<TcpStream> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(format!("{uri} has no host:port")))?;
    let port = authority.port_u16().unwrap_or(443);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
        })??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn handshake(
    tcp: TcpStream,
    host: &str,
    tls: &Tls,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host} is not a server name: {e}"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    Ok(stream)
}

/// The address a channel's connection reached (the last one, when it reconnected).
#[derive(Clone, Debug, Default)]
pub struct Peer(Arc<Mutex<Option<std::net::SocketAddr>>>);

impl Peer {
    fn set(&self, addr: Option<std::net::SocketAddr>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    pub fn get(&self) -> Option<std::net::SocketAddr> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection, with or without TLS: one type for tonic's connector.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

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
        for bad in [
            "ipam:50051",
            "ftp://ipam:50051",
            "http://",
            "http://a b",
            " , ",
        ] {
            assert!(local.check(bad).is_err(), "{bad}");
        }
        assert!(
            local
                .check("http://127.0.0.1:50051, http://127.0.0.2:50051")
                .is_ok()
        );
        let one_bad = local
            .check("http://127.0.0.1:50051,http://10.4.36.5:50051")
            .unwrap_err()
            .to_string();
        assert!(one_bad.contains("http://10.4.36.5:50051"), "{one_bad}");
    }

    /// Several URLs: the first that accepts is used and tried first next time; none accepting
    /// names every URL with its failure.
    #[tokio::test]
    async fn a_list_connects_to_the_replica_that_listens_and_remembers_it() {
        let closed = |l: std::net::TcpListener| l.local_addr().unwrap().port();
        let down = closed(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap().port();
        // Accepts and keeps connections open: enough for tonic's connect.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let dialer = Dialer::loopback_only();
        let list = format!("http://127.0.0.1:{down},http://127.0.0.1:{up}");
        dialer.connect(&list).await.unwrap();
        assert_eq!(dialer.lock_answered().get(&list), Some(&1));
        let shared = dialer.clone();
        shared.connect(&list).await.unwrap();
        // One URL with a stray comma is still that URL.
        dialer
            .connect(&format!("http://127.0.0.1:{up},"))
            .await
            .unwrap();
        let none = format!("http://127.0.0.1:{down},http://127.0.0.1:{down}");
        let e = dialer.connect(&none).await.unwrap_err().to_string();
        assert!(
            e.contains("any of") && e.matches(&format!(":{down}")).count() >= 3,
            "{e}"
        );
    }
}
