//! Mutual TLS for routeplane's gRPC listeners and clients: PEM files in, rustls configurations out,
//! re-read while the process runs.
//!
//! One set of files serves both directions: `--tls-cert`/`--tls-key` are what a service presents as
//! a server and as a client (routeplane-bgp and the agents dial IPAM), `--tls-ca` is the bundle both
//! the clients' and the servers' certificates are checked against. TLS 1.3 only, ALPN `h2` (grpc-go,
//! hence grpcurl, insists on it). A server asks for a client certificate but lets a client without
//! one finish the handshake: such a caller is anonymous and may use health and reflection only
//! (see [`crate::authz`]).
//!
//! The files are read again every [`RELOAD_INTERVAL`] and, when their bytes changed, checked and
//! swapped in for new connections: cert-manager and Kubernetes Secrets rotate them in place (a
//! Secret volume swaps a symlink, so the bytes are compared, not modification times). Files caught
//! mid-rotation (a new certificate beside the old key) fail the check; the previous configuration
//! stays and the next poll tries again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ClientConfig;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{RootCertStore, crypto::CryptoProvider};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::shutdown::Shutdown;

/// How often the PEM files are read again to notice a rotation.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The flags every routeplane service takes for its gRPC security (TLS and the per-identity call
/// limit), the same on all three.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM bundle of the CA(s) that issue routeplane's certificates: clients' certificates are
    /// checked against it when serving, servers' when dialling. With --tls-cert and --tls-key, gRPC
    /// is served and dialled with mutual TLS 1.3 (`scripts/certs` makes a CA and the certificates).
    #[arg(long, env = "ROUTEPLANE_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) this service presents, as a server and as a client. Its URI SAN
    /// spiffe://<trust domain>/<role>/<name> is its identity.
    #[arg(long, env = "ROUTEPLANE_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ROUTEPLANE_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// The trust domain of callers' SPIFFE IDs: a client certificate whose URI SAN names another
    /// domain has no role here.
    #[arg(
        long,
        env = "ROUTEPLANE_TLS_TRUST_DOMAIN",
        default_value = crate::authz::DEFAULT_TRUST_DOMAIN
    )]
    pub trust_domain: String,
    /// Serve gRPC without TLS on an address other machines can reach, and dial without TLS: anyone
    /// who reaches the port may then do anything. Logged as a warning at every start. Without it,
    /// plaintext is served on loopback only.
    #[arg(long, env = "ROUTEPLANE_INSECURE", conflicts_with = "tls_cert")]
    pub insecure: bool,
    /// Calls a second one client identity (its certificate; callers without one share a limit)
    /// may make, with bursts of twice as many; past it calls get RESOURCE_EXHAUSTED. 0: no limit.
    /// Plaintext listeners are not limited (they cannot tell callers apart).
    #[arg(long, env = "ROUTEPLANE_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,
}

/// Far above what an agent (a few calls a second) or an operator needs, well below what one
/// server can answer, so that one identity cannot starve the others.
pub const DEFAULT_RATE_LIMIT: u32 = 1000;

/// Why the TLS files could not be used; each names the file and the flag that gave it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {} ({flag}): {source}", path.display())]
    Read {
        what: &'static str,
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} ({flag}) holds no PEM {expected}", path.display())]
    NoPem {
        what: &'static str,
        flag: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("certificate {} (--tls-cert) {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("key {} (--tls-key) does not fit certificate {}: {reason}", key.display(), cert.display())]
    Key {
        key: PathBuf,
        cert: PathBuf,
        reason: String,
    },
    #[error("CA bundle {} (--tls-ca) cannot be used: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error(
        "refusing to serve gRPC without TLS on {addr}, which other machines can reach: give --tls-ca, \
         --tls-cert and --tls-key (scripts/certs makes them), listen on 127.0.0.1, or pass --insecure"
    )]
    PlaintextExposed { addr: SocketAddr },
    #[error(
        "refusing to dial {url} without TLS: use an https:// address with --tls-ca, --tls-cert and \
         --tls-key, dial a loopback address, or pass --insecure"
    )]
    PlaintextDial { url: String },
    #[error("{url} is https:// but no --tls-ca, --tls-cert and --tls-key were given")]
    NoClientTls { url: String },
    #[error("{url} is not a valid address to dial: {reason}")]
    Url { url: String, reason: String },
}

/// The three files, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsArgs {
    /// The files when TLS was asked for.
    pub fn files(&self) -> Option<TlsFiles> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// Loads the files (when given) and starts re-reading them until shutdown: the security both
    /// the listener and the clients of this process use. Fails naming the file that is missing,
    /// unreadable, expired or not issued by the CA.
    pub fn load(&self, shutdown: &Shutdown) -> Result<Security, TlsError> {
        let Some(files) = self.files() else {
            return Ok(Security::Plaintext {
                insecure: self.insecure,
            });
        };
        let tls = Arc::new(Tls::load(files)?);
        tls.spawn_reloader(shutdown.clone());
        Ok(Security::Tls(tls))
    }
}

/// How this process serves and dials gRPC.
#[derive(Clone)]
pub enum Security {
    Tls(Arc<Tls>),
    /// No TLS: allowed on loopback, and elsewhere with `--insecure`.
    Plaintext {
        insecure: bool,
    },
}

impl Security {
    /// Plaintext on loopback, for tests and tools that dial a local server.
    pub fn loopback_only() -> Security {
        Security::Plaintext { insecure: false }
    }

    /// Whether a listener on `addr` may start: TLS, loopback, or `--insecure` (warned about).
    pub fn check_listen(&self, addr: SocketAddr) -> Result<(), TlsError> {
        match self {
            Security::Tls(_) => Ok(()),
            Security::Plaintext { .. } if addr.ip().is_loopback() => Ok(()),
            Security::Plaintext { insecure: true } => {
                tracing::warn!(
                    %addr,
                    "--insecure: gRPC served without TLS or authorization on an address other machines can reach; anyone who reaches it may change the network"
                );
                Ok(())
            }
            Security::Plaintext { insecure: false } => Err(TlsError::PlaintextExposed { addr }),
        }
    }
}

/// What one reading of the files gave.
struct Material {
    files_bytes: [Vec<u8>; 3],
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// Our certificate's URI SANs, for the log.
    identity: Vec<String>,
}

/// The current TLS configurations, swapped whole when the files change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads and checks the files once.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let material = Material::read(&files)?;
        tracing::info!(cert = %files.cert.display(), identity = ?material.identity, "TLS certificate loaded");
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(material)),
        })
    }

    /// For new connections accepted.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.material().server.clone()
    }

    /// For new connections dialled.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.material().client.clone()
    }

    fn material(&self) -> Arc<Material> {
        match self.current.read() {
            Ok(m) => m.clone(),
            // A panic while swapping left a whole Arc behind: still a consistent configuration.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; swaps them in when they changed and pass every check. Ok(true) when
    /// a new configuration took effect.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = read_all(&self.files)?;
        if bytes == self.material().files_bytes {
            return Ok(false);
        }
        let material = Material::from_bytes(&self.files, bytes)?;
        let identity = material.identity.clone();
        match self.current.write() {
            Ok(mut m) => *m = Arc::new(material),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(material),
        }
        tracing::info!(cert = %self.files.cert.display(), ?identity, "TLS files changed: new connections use them");
        Ok(true)
    }

    fn spawn_reloader(self: &Arc<Self>, shutdown: Shutdown) {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = shutdown.wait() => return,
                    _ = tick.tick() => {}
                }
                let Some(tls) = tls.upgrade() else { return };
                match tls.reload() {
                    Ok(_) => failing = false,
                    // Logged once per failure streak: a file mid-rotation fixes itself next poll.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "TLS files changed but cannot be used: keeping the previous ones");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

fn read_all(files: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    let read = |what, flag, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            flag,
            path: path.to_path_buf(),
            source,
        })
    };
    Ok([
        read("CA bundle", "--tls-ca", &files.ca)?,
        read("certificate", "--tls-cert", &files.cert)?,
        read("key", "--tls-key", &files.key)?,
    ])
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Material, TlsError> {
        Material::from_bytes(files, read_all(files)?)
    }

    fn from_bytes(files: &TlsFiles, bytes: [Vec<u8>; 3]) -> Result<Material, TlsError> {
        let [ca_pem, cert_pem, key_pem] = &bytes;
        let no_pem = |what, flag, path: &Path, expected| TlsError::NoPem {
            what,
            flag,
            path: path.to_path_buf(),
            expected,
        };
        let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Ca {
                path: files.ca.clone(),
                reason: format!("bad PEM: {e}"),
            })?;
        if ca.is_empty() {
            return Err(no_pem("CA bundle", "--tls-ca", &files.ca, "CERTIFICATE"));
        }
        let mut roots = RootCertStore::empty();
        for cert in &ca {
            roots.add(cert.clone()).map_err(|e| TlsError::Ca {
                path: files.ca.clone(),
                reason: e.to_string(),
            })?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate {
                path: files.cert.clone(),
                reason: format!("is not valid PEM: {e}"),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(no_pem(
                "certificate",
                "--tls-cert",
                &files.cert,
                "CERTIFICATE",
            ));
        };
        let identity =
            check_own(leaf, &chain[1..], &roots).map_err(|reason| TlsError::Certificate {
                path: files.cert.clone(),
                reason,
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
            no_pem(
                "key",
                "--tls-key",
                &files.key,
                "PRIVATE KEY (PKCS#8, RSA or EC)",
            )
        })?;
        let key_error = |e: rustls::Error| TlsError::Key {
            key: files.key.clone(),
            cert: files.cert.clone(),
            reason: e.to_string(),
        };
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            // A caller without a certificate is anonymous: health and reflection only.
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Ca {
                path: files.ca.clone(),
                reason: e.to_string(),
            })?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(key_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_error)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(key_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(key_error)?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Material {
            files_bytes: bytes,
            server: Arc::new(server),
            client: Arc::new(client),
            identity,
        })
    }
}

/// Our own certificate must be valid now, issued (through `intermediates`) by a CA of the bundle,
/// and usable both to serve and to dial. Returns its URI SANs.
fn check_own(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("does not parse: {e}"))?;
    let now = UnixTime::now();
    for (usage, name) in [
        (webpki::KeyUsage::server_auth(), "serverAuth"),
        (webpki::KeyUsage::client_auth(), "clientAuth"),
    ] {
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &roots.roots,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { not_after, .. } => format!(
                "expired at {}",
                rfc3339(not_after)
            ),
            webpki::Error::CertNotValidYet { not_before, .. } => format!(
                "is not valid before {}",
                rfc3339(not_before)
            ),
            // Unknown by name, or a CA of the same name that holds another key.
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                "is not issued by a CA of --tls-ca (the CA bundle must hold the CA that issued it)"
                    .to_string()
            }
            webpki::Error::RequiredEkuNotFoundContext(_) => {
                format!(
                    "lacks extended key usage {name}: routeplane's certificates serve and dial, so they need serverAuth and clientAuth"
                )
            }
            webpki::Error::InvalidCertValidity => {
                "has a validity period that ends before it starts".to_string()
            }
            other => format!("does not verify against --tls-ca: {other}"),
        })?;
    }
    Ok(cert.valid_uri_names().map(str::to_string).collect())
}

fn rfc3339(t: UnixTime) -> String {
    crate::time::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs()))
}
