//! The command line and the optional config file: where the three APIs are, how to reach them,
//! how to print. Flags win over the file, the file over the defaults (the services' own loopback
//! defaults, so that it works as-is on a machine running `scripts/run`).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::connect::CtlError;

pub const DEFAULT_IPAM: &str = "http://127.0.0.1:50051";
pub const DEFAULT_BGP: &str = "http://127.0.0.1:50052";

#[derive(Debug, Parser)]
#[command(
    name = "routeplanectl",
    version,
    about = "The operator's view of routeplane: BGP peers and routes, nodes, IPAM usage, why a prefix is (not) announced, node drains, the IPAM change feed",
    after_help = "Endpoints come from the flags, else from --config (YAML: ipam, bgp, tls-ca, tls-cert, tls-key, insecure), else the loopback defaults. Against the compose stack: --ipam https://10.4.36.5:50051 --bgp https://10.4.36.10:50052 with certs/ca.crt and an operator certificate."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    /// routeplane-ipam's URL(s), comma-separated for replicas [default: http://127.0.0.1:50051]
    #[arg(long, global = true, env = "ROUTEPLANECTL_IPAM")]
    pub ipam: Option<String>,
    /// routeplane-bgp's URL [default: http://127.0.0.1:50052]
    #[arg(long, global = true, env = "ROUTEPLANECTL_BGP")]
    pub bgp: Option<String>,
    /// A YAML file with any of: ipam, bgp, tls-ca, tls-cert, tls-key, insecure.
    #[arg(long, global = true, env = "ROUTEPLANECTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output: a table, or every field as JSON or YAML.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// CA bundle that issued the servers' certificates (mutual TLS, with --tls-cert/--tls-key).
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate: an operator's (spiffe://routeplane/operator/NAME) may do everything.
    #[arg(long, global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, global = true)]
    pub tls_key: Option<PathBuf>,
    /// Dial plaintext to addresses other than loopback.
    #[arg(long, global = true)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// BGP sessions: state, uptime, prefixes each way, last error (cilium bgp peers).
    Peers,
    /// What each peer was sent, or sent us (cilium bgp routes).
    Routes {
        #[arg(value_enum)]
        direction: Direction,
        /// Only this peer (default: every peer).
        #[arg(long)]
        peer: Option<String>,
    },
    /// IPAM's nodes: addresses, pod CIDRs, Ready, drained.
    Nodes,
    /// IPAM usage.
    Ipam {
        #[command(subcommand)]
        what: IpamCommand,
    },
    /// Where a prefix comes from and, per peer, what is sent or why not.
    Explain { prefix: String },
    /// Drain a node (RFC 8326: GRACEFUL_SHUTDOWN, then withdrawn after routeplane-bgp's
    /// --drain-delay), or end its drain with --cancel.
    Drain {
        node: String,
        #[arg(long)]
        cancel: bool,
    },
    /// Follow IPAM's change feed (nodes, LoadBalancer IPs) from now, or from a revision.
    Watch {
        /// Resume after this revision (0: a snapshot first).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        /// Stop after this many events (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Advertised,
    Received,
}

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Pod CIDR usage per pool and per node, LoadBalancer IPs per pool (calicoctl ipam show).
    Show,
}

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    ipam: Option<String>,
    bgp: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
}

/// Where to connect and how, flags and file merged.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub ipam: String,
    pub bgp: String,
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    pub insecure: bool,
}

impl Args {
    pub fn endpoints(&self) -> Result<Endpoints, CtlError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        // The file's certificate paths are relative to the file, so that it works from anywhere.
        let beside = |p: Option<PathBuf>| {
            let base = self.config.as_deref().and_then(Path::parent);
            p.map(|p| match base {
                Some(base) if p.is_relative() => base.join(p),
                _ => p,
            })
        };
        let file = File {
            tls_ca: beside(file.tls_ca),
            tls_cert: beside(file.tls_cert),
            tls_key: beside(file.tls_key),
            ..file
        };
        let tls = (
            self.tls_ca.clone().or(file.tls_ca),
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
        );
        let tls = match tls {
            (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
            (None, None, None) => None,
            _ => {
                return Err(CtlError::Usage(
                    "mutual TLS needs all three of --tls-ca, --tls-cert and --tls-key (or tls-ca, tls-cert, tls-key in --config)".into(),
                ));
            }
        };
        Ok(Endpoints {
            ipam: self
                .ipam
                .clone()
                .or(file.ipam)
                .unwrap_or_else(|| DEFAULT_IPAM.into()),
            bgp: self
                .bgp
                .clone()
                .or(file.bgp)
                .unwrap_or_else(|| DEFAULT_BGP.into()),
            tls,
            insecure: self.insecure || file.insecure,
        })
    }
}

fn read_file(path: &Path) -> Result<File, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::Usage(format!("cannot read --config {}: {e}", path.display())))?;
    serde_yaml::from_str(&text).map_err(|e| {
        CtlError::Usage(format!(
            "--config {}: {e} (keys: ipam, bgp, tls-ca, tls-cert, tls-key, insecure)",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("routeplanectl").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ctl.yaml");
        std::fs::write(&file, "ipam: http://127.0.0.1:1\nbgp: http://127.0.0.1:2\n").unwrap();
        let f = file.to_str().unwrap();
        let e = parse(&["--config", f, "--bgp", "http://127.0.0.1:3", "peers"])
            .endpoints()
            .unwrap();
        assert_eq!(
            (e.ipam.as_str(), e.bgp.as_str()),
            ("http://127.0.0.1:1", "http://127.0.0.1:3")
        );
        let e = parse(&["nodes"]).endpoints().unwrap();
        assert_eq!(
            (e.ipam.as_str(), e.bgp.as_str()),
            (DEFAULT_IPAM, DEFAULT_BGP)
        );
        std::fs::write(
            &file,
            "tls-ca: certs/ca.crt\ntls-cert: /abs/op.crt\ntls-key: op.key\n",
        )
        .unwrap();
        let e = parse(&["--config", f, "nodes"]).endpoints().unwrap();
        let (ca, cert, key) = e.tls.unwrap();
        assert_eq!(ca, dir.path().join("certs/ca.crt"), "relative to the file");
        assert_eq!(cert, PathBuf::from("/abs/op.crt"));
        assert_eq!(key, dir.path().join("op.key"));
    }

    #[test]
    fn a_bad_config_file_or_half_a_tls_setup_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ctl.yaml");
        std::fs::write(&file, "ipam: x\nipam-url: y\n").unwrap();
        let e = parse(&["--config", file.to_str().unwrap(), "nodes"])
            .endpoints()
            .unwrap_err();
        assert!(matches!(e, CtlError::Usage(_)));
        assert!(e.to_string().contains("ipam-url"), "{e}");
        let e = parse(&["--tls-ca", "ca.crt", "nodes"])
            .endpoints()
            .unwrap_err();
        assert!(e.to_string().contains("--tls-cert"), "{e}");
        let missing = dir.path().join("none.yaml");
        let e = parse(&["--config", missing.to_str().unwrap(), "nodes"])
            .endpoints()
            .unwrap_err();
        assert!(e.to_string().contains("none.yaml"), "{e}");
    }
}
