//! Certificates for mutual TLS in tests, made by the project's own tool (`scripts/certs`, openssl)
//! exactly as a user makes them, and the flags that hand them to a service or to grpcurl.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and the certificates made under it, in one directory.
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
}

/// The repository's `scripts/certs`.
pub fn tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/certs")
}

impl Certs {
    /// A new CA in `dir` (made if missing) and a certificate for each `ROLE/NAME[@SAN,...]`.
    pub fn new(dir: &Path, specs: &[&str]) -> Certs {
        let certs = Certs {
            dir: dir.to_path_buf(),
        };
        certs.make(specs, None);
        certs
    }

    /// Certificates made earlier in `dir` (docker/build-images makes the compose stack's).
    pub fn at(dir: &Path) -> Certs {
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    /// More certificates under the same CA; `days` (negative: already expired) when given.
    pub fn make(&self, specs: &[&str], days: Option<i32>) {
        let mut cmd = Command::new(tool());
        cmd.arg(&self.dir).args(specs);
        if let Some(d) = days {
            cmd.env("CERT_DAYS", d.to_string());
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("scripts/certs (needs openssl): {e}"));
        assert!(
            out.status.success(),
            "scripts/certs {specs:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `ROLE/NAME`'s certificate and key.
    pub fn pair(&self, id: &str) -> (PathBuf, PathBuf) {
        let base = id.replacen('/', "-", 1);
        (
            self.dir.join(format!("{base}.crt")),
            self.dir.join(format!("{base}.key")),
        )
    }

    /// `--tls-ca --tls-cert --tls-key` for a service running as `ROLE/NAME`.
    pub fn service_flags(&self, id: &str) -> Vec<String> {
        let (cert, key) = self.pair(id);
        [
            "--tls-ca".to_string(),
            self.ca().display().to_string(),
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".to_string(),
            key.display().to_string(),
        ]
        .to_vec()
    }

    /// `-cacert -cert -key` for grpcurl calling as `ROLE/NAME`.
    pub fn grpcurl_flags(&self, id: &str) -> Vec<String> {
        let (cert, key) = self.pair(id);
        [
            "-cacert".to_string(),
            self.ca().display().to_string(),
            "-cert".to_string(),
            cert.display().to_string(),
            "-key".to_string(),
            key.display().to_string(),
        ]
        .to_vec()
    }
}
