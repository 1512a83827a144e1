//! The routeplane-ipam servers the benchmark measures: started with its flags, dialled
//! plaintext or with mutual TLS, their /metrics read, and waited on until sled caught up.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_bench::median;
use routeplane_runtime::dial::Dialer;
use routeplane_runtime::tls::{Security, Tls, TlsFiles};
use routeplane_testkit::Service;
use routeplane_testkit::certs::Certs;
use tonic::transport::Channel;

pub(crate) const NODES: usize = 64;

pub(crate) struct Server {
    pub(crate) process: Service,
    pub(crate) metrics: SocketAddr,
    /// sled is written behind the log (to wait for between cells); false on etcd.
    pub(crate) materialized: bool,
    /// How clients reach it: http:// on loopback, or https:// with the bench's certificate.
    url: String,
    dialer: Dialer,
}

/// `tls`: the certificates to serve with (the bench dials as operator/bench).
pub(crate) fn start_server(
    bin: &Path,
    data: &Path,
    config: &Path,
    durability: &str,
    tls: Option<&Certs>,
    extra: &[String],
) -> Server {
    let mut command = Command::new(bin);
    command.args(extra);
    command
        .args(["--data-dir", data.to_str().unwrap()])
        .args([
            "--values",
            config.join("values.yaml").to_str().unwrap(),
            "--bgp-config",
            config.join("bgp-config.yaml").to_str().unwrap(),
        ])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--durability",
            durability,
            // Millions of allocations over 64 nodes: far past the default cap of pods per node.
            "--max-pods-per-node",
            "100000000",
            "--log",
            "warn,routeplane_runtime=info",
        ]);
    if let Some(certs) = tls {
        // The transport is measured, not the per-identity limit.
        command
            .args(certs.service_flags("ipam/ipam"))
            .args(["--rate-limit", "0"]);
    }
    let mut process = Service::start("routeplane-ipam", command);
    let grpc = process.listen_addr("gRPC");
    let metrics = process.listen_addr("metrics");
    let (url, dialer) = match tls {
        Some(certs) => {
            let (cert, key) = certs.pair("operator/bench");
            let files = TlsFiles {
                ca: certs.ca(),
                cert,
                key,
            };
            let tls = Tls::load(files).expect("the bench's certificates");
            (
                format!("https://{grpc}"),
                Dialer::new(Security::Tls(Arc::new(tls))),
            )
        }
        None => (format!("http://{grpc}"), Dialer::loopback_only()),
    };
    Server {
        process,
        metrics,
        materialized: extra.is_empty(),
        url,
        dialer,
    }
}

impl Server {
    pub(crate) async fn channel(&self) -> Channel {
        self.dialer.connect(&self.url).await.expect("connect")
    }
}

/// Median time to open a new connection and complete one call on it (the TLS handshake, when
/// there is one, included), over `n` connections.
pub(crate) async fn connection_cost(server: &Server, n: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let mut c = IpamClient::new(server.channel().await);
        c.list_pools(pb::ListPoolsRequest {}).await.expect("a call");
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

pub(crate) fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until sled has applied every acknowledged change (routeplane_ipam_materialized_revision
/// reaches routeplane_ipam_revision: the time returned) and checkpointed it (at the next tick of
/// `--checkpoint-interval`, 5 s by default). sled is written behind the log: left running, one
/// cell's backlog and its checkpoint, a flush of everything the cell changed, landed in the next
/// cell on the same two cores, and whichever tool came second in a round lost a quarter to a third
/// of its rate to the one before it.
pub(crate) async fn quiesce(server: &Server) -> f64 {
    let started = Instant::now();
    let mut applied = None;
    // Bounded: a backlog that does not drain in a minute is reported, not waited for.
    while started.elapsed() < Duration::from_secs(60) {
        let done = metric(server.metrics, "routeplane_ipam_revision");
        if applied.is_none()
            && metric(server.metrics, "routeplane_ipam_materialized_revision") >= done
        {
            applied = Some(started.elapsed().as_secs_f64());
        }
        if let Some(applied) = applied
            && metric(server.metrics, "routeplane_ipam_checkpoint_revision") >= done
        {
            return applied;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("sled not caught up with the log after 60 s: the next cells pay for it");
    applied.unwrap_or(f64::NAN)
}

/// The NODES nodes every allocation goes to.
pub(crate) async fn register_nodes(server: &Server) {
    let mut c = IpamClient::new(server.channel().await);
    for n in 0..NODES {
        let req = pb::RegisterNodeRequest {
            name: format!("node-{n}"),
            addresses: vec![format!("10.255.{}.{}", n / 200, n % 200 + 1)],
            labels: HashMap::new(),
        };
        c.register_node(req).await.expect("register");
    }
}
