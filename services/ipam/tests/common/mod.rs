//! Test harness: a real routeplane-ipam process on ephemeral loopback ports, and gRPC clients to it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use routeplane_testkit::Service;

use routeplane_api::ipam::v1::ipam_client::IpamClient;
use tonic::transport::Channel;

pub type Client = IpamClient<Channel>;

pub const BIN: &str = env!("CARGO_BIN_EXE_routeplane-ipam");

/// The seed's files, verbatim, and routeplane's default bgp-config.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// routeplane-ipam on `data_dir`, on ephemeral loopback ports (gRPC's unless `extra` gives
/// --grpc-listen), stderr piped, no OTLP export.
pub fn command(data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--data-dir", data_dir.to_str().unwrap()]);
    // A test may listen elsewhere (on every address, with --insecure).
    if !extra.contains(&"--grpc-listen") {
        cmd.args(["--grpc-listen", "127.0.0.1:0"]);
    }
    cmd.args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a command to completion: whether it succeeded, and stdout then stderr as text.
pub fn output_text(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub struct Server {
    process: Service,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts the server on `data_dir` with extra flags; panics with its log if it does not come up.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let mut process = Service::start("routeplane-ipam", command(data_dir, extra));
        let grpc = process.listen_addr("gRPC");
        let metrics = process.listen_addr("metrics");
        Server {
            process,
            grpc,
            metrics,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("connect to routeplane-ipam")
    }

    pub async fn client(&self) -> IpamClient<Channel> {
        IpamClient::new(self.channel().await)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.process.rss_kib()
    }

    /// Sends a signal (`"-STOP"`, `"-CONT"`…).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(mut self) {
        self.process.kill9();
    }

    /// The exit status once it has exited by itself; fails with its log after `limit`.
    pub fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        self.process.wait_exit(limit)
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(mut self) -> ExitStatus {
        self.process.terminate()
    }

    /// GET /metrics over plain HTTP/1.0.
    pub fn scrape(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "{body}"
        );
        body
    }

    /// The value of one sample line of /metrics, e.g. `routeplane_ipam_flushes_total`.
    pub fn metric(&self, sample: &str) -> f64 {
        let body = self.scrape();
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// A client-side handle to a server started elsewhere (it owns no process).
pub struct Attached {
    endpoint: String,
}

impl Server {
    pub fn attach(endpoint: &str) -> Attached {
        Attached {
            endpoint: endpoint.to_string(),
        }
    }
}

impl Attached {
    pub async fn client(&self) -> IpamClient<Channel> {
        IpamClient::new(
            Channel::from_shared(self.endpoint.clone())
                .unwrap()
                .connect()
                .await
                .expect("connect"),
        )
    }
}

/// Runs the binary to completion (for configs that must be refused), bounded in time.
pub fn run_to_exit(data_dir: &Path, extra: &[&str]) -> (ExitStatus, String) {
    let mut child = command(data_dir, extra).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("routeplane-ipam kept running with a config it should refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A values.yaml with the given cluster pool, IPv4 only.
pub fn values_file(dir: &Path, pool: &str, mask: u8) -> PathBuf {
    let path = dir.join("values.yaml");
    std::fs::write(
        &path,
        format!("ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: {pool}\n    clusterPoolIPv4MaskSize: {mask}\nipv4:\n  enabled: true\n"),
    )
    .unwrap();
    path
}

/// A store to run a behaviour test on, with the flags that select it: sled (embedded), or a real
/// one-member etcd on loopback (`routeplane_testkit::etcd`) that lives as long as this value.
pub enum Store {
    Sled,
    Etcd(routeplane_testkit::etcd::EtcdCluster),
}

impl Store {
    /// A one-member etcd cluster with its data in `dir`.
    pub fn etcd(dir: &Path) -> Store {
        Store::Etcd(routeplane_testkit::etcd::EtcdCluster::start(dir, 1, &[]))
    }

    fn args(&self) -> Vec<String> {
        match self {
            Store::Sled => vec![],
            Store::Etcd(cluster) => cluster.ipam_flags("/routeplane/ipam/"),
        }
    }

    /// The server on this store, its sled data (unused on etcd) in `data_dir`, with `extra` flags.
    pub fn start(&self, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args = self.args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(data_dir, &refs)
    }
}

/// Opens a Heartbeat stream for `name` with its first beat sent: the sender for more beats
/// (dropping it ends the stream) and the server's answers, none read yet.
pub async fn open_heartbeat(
    c: &mut Client,
    name: &str,
) -> (
    tokio::sync::mpsc::Sender<routeplane_api::ipam::v1::HeartbeatRequest>,
    tonic::Streaming<routeplane_api::ipam::v1::HeartbeatResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(routeplane_api::ipam::v1::HeartbeatRequest { name: name.into() })
        .await
        .expect("the beat channel is open: its receiver is the request stream");
    let answers = c
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("Heartbeat for {name} refused: {e:?}"))
        .into_inner();
    (tx, answers)
}
