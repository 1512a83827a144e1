//! Pod-IP allocation throughput and latency of routeplane-ipam, durable and with flushing off, and
//! durable over mutual TLS 1.3 (certificates from scripts/certs), at several concurrencies, beside
//! the CNI host-local IPAM plugin (what a plain-CNI cluster uses for per-node pod IPs) doing the
//! same allocations in the same run, and the ceiling they are measured against (issue #14): a
//! unary call that does nothing — grpc.health.v1 Check — through the same server, client and
//! concurrency; and the cost of a new connection with and without TLS. Each
//! round measures every tool at every concurrency in turn, each cell after the same 300 ms of
//! unmeasured warm-up and after the previous routeplane cell's sled caught up with its log (timed:
//! the "sled after s" column); the table shows each cell's median over the rounds. Prints a table;
//! asserts nothing. `--soak` runs a long load instead and prints the log's size as it goes.
//!
//! Run it through `bench/run-ipam`, which builds in release mode and installs host-local.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_bench::median;
use routeplane_runtime::dial::Dialer;
use routeplane_runtime::tls::{Security, Tls, TlsFiles};
use routeplane_testkit::Service;
use routeplane_testkit::certs::Certs;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
#[command(
    about = "Pod-IP allocations/s and latency: routeplane-ipam (durable, flush off) vs CNI host-local"
)]
struct Args {
    /// routeplane-ipam binary (default: next to this one).
    #[arg(long)]
    ipam_bin: Option<PathBuf>,
    /// Directory for the servers' sled data and host-local's files (default: a temporary directory
    /// under target/). Must be on a real disk: on tmpfs a flush is free and the figures mean nothing.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run even if the data directory is on tmpfs.
    #[arg(long)]
    allow_tmpfs: bool,
    /// Concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    concurrency: Vec<usize>,
    /// Measured seconds per cell (after a short warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds; the tools take turns within each, and the figures are medians over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CNI host-local plugin (skipped, and said so, when absent).
    #[arg(long, default_value = "/usr/lib/cni/host-local")]
    host_local: PathBuf,
    /// Measure only these tools, named as in the table (e.g. --only "routeplane-ipam durable mTLS"
    /// to profile one server); all of them when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of the table: allocate and release pod IPs at full load (128 callers) on
    /// routeplane-ipam durable for this many seconds, printing every 30 s the log's size on disk,
    /// the longest time without a checkpoint and the server's RSS (the log must stay bounded).
    #[arg(long)]
    soak: Option<u64>,
}

const NODES: usize = 64;

/// What the callers of a cell call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// AllocatePodIp: the figure.
    Allocate,
    /// grpc.health.v1 Check on the same server, through the same layers (authorization, rate
    /// limit, tracing): the most unary calls the stack answers when the call itself costs nothing.
    NoOp,
}

/// The ceiling's row in the table.
const NO_OP: &str = "no-op unary (health Check)";

struct Cell {
    tool: String,
    concurrency: usize,
    ops: u64,
    seconds: f64,
    latencies: Vec<Duration>,
    flushes: Option<f64>,
    /// Seconds after the cell until sled had applied everything the cell acknowledged.
    catch_up: Option<f64>,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1e3
    }
}

struct Server {
    process: Service,
    metrics: SocketAddr,
    /// How clients reach it: http:// on loopback, or https:// with the bench's certificate.
    url: String,
    dialer: Dialer,
}

/// `tls`: the certificates to serve with (the bench dials as operator/bench).
fn start_server(
    bin: &Path,
    data: &Path,
    config: &Path,
    durability: &str,
    tls: Option<&Certs>,
) -> Server {
    let mut command = Command::new(bin);
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
        url,
        dialer,
    }
}

impl Server {
    async fn channel(&self) -> Channel {
        self.dialer.connect(&self.url).await.expect("connect")
    }
}

/// Median time to open a new connection and complete one call on it (the TLS handshake, when
/// there is one, included), over `n` connections.
async fn connection_cost(server: &Server, n: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let mut c = IpamClient::new(server.channel().await);
        c.list_pools(pb::ListPoolsRequest {}).await.expect("a call");
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
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
async fn quiesce(server: &Server) -> f64 {
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
async fn register_nodes(server: &Server) {
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

/// Full load for `length`: 128 callers each allocating a pod IP and releasing it, over 16
/// connections; every 30 s a line with the log's size, the longest time so far without a
/// checkpoint and the server's RSS.
async fn soak(server: &Server, data: &Path, length: Duration) {
    register_nodes(server).await;
    let mut channels = Vec::new();
    for _ in 0..16 {
        channels.push(server.channel().await);
    }
    let deadline = Instant::now() + length;
    let load: Vec<_> = (0..128)
        .map(|t| {
            let mut client = IpamClient::new(channels[t % channels.len()].clone());
            tokio::spawn(async move {
                let node = format!("node-{}", t % NODES);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let owner = format!("soak-{t}-{i}");
                    let req = pb::AllocatePodIpRequest {
                        node: node.clone(),
                        owner: owner.clone(),
                        family: 0,
                    };
                    client.allocate_pod_ip(req).await.expect("allocation");
                    let req = pb::ReleasePodIpRequest {
                        node: node.clone(),
                        owner,
                    };
                    client.release_pod_ip(req).await.expect("release");
                    i += 1;
                }
                2 * i
            })
        })
        .collect();
    println!(
        "soak: 128 callers allocating and releasing for {length:?} on routeplane-ipam durable"
    );
    println!(
        "{:>8} {:>12} {:>14} {:>20} {:>10}",
        "seconds", "changes/s", "log bytes", "longest no-ckpt s", "RSS MiB"
    );
    let started = Instant::now();
    let mut checkpoint = (
        metric(server.metrics, "routeplane_ipam_checkpoint_revision"),
        started,
    );
    let (mut longest, mut largest, mut last_report) = (0f64, 0u64, started);
    let mut revision = metric(server.metrics, "routeplane_ipam_revision");
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = metric(server.metrics, "routeplane_ipam_checkpoint_revision");
        if now > checkpoint.0 {
            checkpoint = (now, Instant::now());
        }
        longest = longest.max(checkpoint.1.elapsed().as_secs_f64());
        let log: u64 = std::fs::read_dir(data.join("wal"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        largest = largest.max(log);
        if last_report.elapsed() >= Duration::from_secs(30) || Instant::now() >= deadline {
            let r = metric(server.metrics, "routeplane_ipam_revision");
            let rate = (r - revision) / last_report.elapsed().as_secs_f64();
            (revision, last_report) = (r, Instant::now());
            let rss = server.process.rss_kib() as f64;
            println!(
                "{:>8.0} {:>12.0} {:>14} {:>20.1} {:>10.1}",
                started.elapsed().as_secs_f64(),
                rate,
                log,
                longest,
                rss / 1024.0
            );
        }
    }
    let mut changes = 0;
    for l in load {
        changes += l.await.expect("a load task");
    }
    println!(
        "soak: {changes} changes acknowledged; the log at most {largest} bytes, at most {longest:.1} s without a checkpoint"
    );
}

fn measured(only: &[String], tool: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o == tool)
}

/// Per tool and concurrency, in the order first measured: a cell whose rate, p50, p99 and
/// flushes/alloc are each the median over the rounds.
fn medians(runs: &[Cell]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for r in runs {
        if out
            .iter()
            .any(|s| s.tool == r.tool && s.concurrency == r.concurrency)
        {
            continue;
        }
        let same: Vec<&Cell> = runs
            .iter()
            .filter(|c| c.tool == r.tool && c.concurrency == r.concurrency)
            .collect();
        let of = |f: &dyn Fn(&Cell) -> f64| median(same.iter().map(|c| f(c)).collect());
        out.push(Summary {
            tool: r.tool.clone(),
            concurrency: r.concurrency,
            rate: of(&|c| c.rate()),
            p50: of(&|c| c.percentile(0.5)),
            p99: of(&|c| c.percentile(0.99)),
            flushes: r.flushes.map(|_| of(&|c| c.flushes.unwrap_or(0.0))),
            catch_up: r.catch_up.map(|_| of(&|c| c.catch_up.unwrap_or(0.0))),
            rounds: same.len(),
        });
    }
    out
}

/// One row of the table: medians over the rounds.
struct Summary {
    tool: String,
    concurrency: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    flushes: Option<f64>,
    catch_up: Option<f64>,
    rounds: usize,
}

async fn run_ipam_cell(
    server: &Server,
    call: Call,
    concurrency: usize,
    seconds: f64,
    round: usize,
) -> Cell {
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..concurrency.min(16) {
            v.push(server.channel().await);
        }
        v
    };
    let run = |measure: Duration, tag: &'static str| {
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let channel = channels[t % channels.len()].clone();
                let mut client = IpamClient::new(channel.clone());
                let mut health = HealthClient::new(channel);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let deadline = Instant::now() + measure;
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        match call {
                            Call::Allocate => {
                                let req = pb::AllocatePodIpRequest {
                                    node: format!("node-{}", (t + i as usize) % NODES),
                                    owner: format!("{tag}{round}-{t}-{i}"),
                                    family: 0,
                                };
                                client.allocate_pod_ip(req).await.expect("allocation");
                            }
                            Call::NoOp => {
                                let req = HealthCheckRequest {
                                    service: routeplane_ipam::GRPC_SERVICE.into(),
                                };
                                health.check(req).await.expect("health check");
                            }
                        }
                        lat.push(started.elapsed());
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        }
    };
    run(Duration::from_millis(300), "warm").await;
    let (f0, c0) = (
        metric(server.metrics, "routeplane_ipam_flushes_total"),
        metric(server.metrics, "routeplane_ipam_commits_total"),
    );
    let started = Instant::now();
    let latencies = run(Duration::from_secs_f64(seconds), "m").await;
    let elapsed = started.elapsed().as_secs_f64();
    let (f1, c1) = (
        metric(server.metrics, "routeplane_ipam_flushes_total"),
        metric(server.metrics, "routeplane_ipam_commits_total"),
    );
    let catch_up = quiesce(server).await;
    Cell {
        tool: String::new(),
        concurrency,
        ops: latencies.len() as u64,
        seconds: elapsed,
        latencies,
        flushes: (call == Call::Allocate).then_some(if c1 > c0 {
            (f1 - f0) / (c1 - c0)
        } else {
            0.0
        }),
        catch_up: (call == Call::Allocate).then_some(catch_up),
    }
}

/// host-local after the same warm-up as routeplane-ipam's: 300 ms of allocations, unmeasured.
fn run_host_local_cell(plugin: &Path, dir: &Path, concurrency: usize, seconds: f64) -> Cell {
    run_host_local(plugin, &dir.join("warm"), concurrency, 0.3);
    run_host_local(plugin, &dir.join("m"), concurrency, seconds)
}

/// host-local: one exec per allocation (as the container runtime does), CNI ADD with a fresh
/// container ID, the plugin's own flock serialising them.
fn run_host_local(plugin: &Path, dir: &Path, concurrency: usize, seconds: f64) -> Cell {
    let conf = Arc::new(format!(
        r#"{{"cniVersion":"0.4.0","name":"bench","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.0.0.0/8"}}]],"dataDir":"{}"}}}}"#,
        dir.display()
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let (conf, plugin) = (conf.clone(), plugin.to_path_buf());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let mut child = Command::new(&plugin)
                        .env("CNI_COMMAND", "ADD")
                        .env("CNI_CONTAINERID", format!("c{t}-{i}"))
                        .env("CNI_NETNS", "/proc/self/ns/net")
                        .env("CNI_IFNAME", "eth0")
                        .env("CNI_PATH", plugin.parent().unwrap())
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("host-local");
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(conf.as_bytes())
                        .unwrap();
                    let out = child.wait_with_output().unwrap();
                    assert!(
                        out.status.success(),
                        "host-local failed: {}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                    lat.push(begun.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    Cell {
        tool: "CNI host-local".into(),
        concurrency,
        ops: latencies.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        latencies,
        flushes: None,
        catch_up: None,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bin = args.ipam_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .with_file_name("routeplane-ipam")
    });
    let base = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).unwrap();
            tempfile::tempdir_in(d).unwrap()
        }
        None => {
            let target = std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf();
            tempfile::tempdir_in(target).unwrap()
        }
    };
    let fs =
        routeplane_ipam::store::filesystem_type(base.path()).unwrap_or_else(|| "unknown".into());
    println!(
        "data directory: {} (filesystem: {fs})",
        base.path().display()
    );
    if matches!(fs.as_str(), "tmpfs" | "ramfs") {
        if !args.allow_tmpfs {
            eprintln!(
                "refusing to benchmark durability on {fs}: a flush there costs nothing. Pass --data-dir on a disk, or --allow-tmpfs to run anyway."
            );
            std::process::exit(2);
        }
        println!("WARNING: {fs} — the durable figures below do not reflect a disk");
    }
    // A /8 pod pool with /16 per node, so that no node fills up; the LoadBalancer pool is off it.
    let config = base.path().to_path_buf();
    std::fs::write(config.join("values.yaml"), "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 10.0.0.0/8\n    clusterPoolIPv4MaskSize: 16\n").unwrap();
    std::fs::write(
        config.join("bgp-config.yaml"),
        "address-pools:\n- {name: default, protocol: bgp, addresses: [172.31.0.0/24]}\n",
    )
    .unwrap();

    if let Some(seconds) = args.soak {
        let data = base.path().join("soak");
        let server = start_server(&bin, &data, &config, "flush", None);
        return soak(&server, &data, Duration::from_secs(seconds)).await;
    }
    let certs = Certs::new(&base.path().join("tls"), &["ipam/ipam", "operator/bench"]);
    let mut servers = Vec::new();
    for (mode, durability, tls) in [
        ("routeplane-ipam durable", "flush", None),
        ("routeplane-ipam flush off", "none", None),
        ("routeplane-ipam durable mTLS", "flush", Some(&certs)),
    ] {
        if !measured(&args.only, mode) {
            continue;
        }
        let data = base.path().join(format!(
            "{durability}{}",
            if tls.is_some() { "-tls" } else { "" }
        ));
        let server = start_server(&bin, &data, &config, durability, tls);
        register_nodes(&server).await;
        servers.push((mode, server));
    }
    let host_local = args.host_local.exists() && measured(&args.only, "CNI host-local");
    if !host_local {
        println!(
            "CNI host-local not found at {} (Debian: containernetworking-plugins): its rows are missing",
            args.host_local.display()
        );
    }
    println!(
        "{} rounds; in each, every tool at every concurrency in turn, {} s measured after 300 ms of warm-up; medians over the rounds",
        args.rounds, args.seconds
    );
    let mut runs: Vec<Cell> = Vec::new();
    let mut cell_index = 0;
    for round in 0..args.rounds.max(1) {
        for &conc in &args.concurrency {
            for (mode, server) in &servers {
                cell_index += 1;
                let mut cell =
                    run_ipam_cell(server, Call::Allocate, conc, args.seconds, cell_index).await;
                cell.tool = mode.to_string();
                runs.push(cell);
                // The ceiling, on the plaintext durable server between its allocation cells.
                if *mode == "routeplane-ipam durable" && measured(&args.only, NO_OP) {
                    cell_index += 1;
                    let mut cell =
                        run_ipam_cell(server, Call::NoOp, conc, args.seconds, cell_index).await;
                    cell.tool = NO_OP.to_string();
                    runs.push(cell);
                }
            }
            if host_local {
                let dir = base.path().join(format!("host-local-{round}-{conc}"));
                runs.push(run_host_local_cell(
                    &args.host_local,
                    &dir,
                    conc,
                    args.seconds,
                ));
            }
        }
    }
    let cells = medians(&runs);

    println!(
        "\n{:<28} {:>5} {:>12} {:>10} {:>10} {:>15} {:>13} {:>7}",
        "tool (median)",
        "conc",
        "allocs/s",
        "p50 ms",
        "p99 ms",
        "flushes/alloc",
        "sled after s",
        "rounds"
    );
    for c in &cells {
        let flushes = c.flushes.map_or("-".to_string(), |f| format!("{f:.3}"));
        let catch_up = c.catch_up.map_or("-".to_string(), |f| format!("{f:.2}"));
        println!(
            "{:<28} {:>5} {:>12.0} {:>10.2} {:>10.2} {:>15} {:>13} {:>7}",
            c.tool, c.concurrency, c.rate, c.p50, c.p99, flushes, catch_up, c.rounds
        );
    }
    let find = |tool: &str, conc: usize| {
        cells
            .iter()
            .find(|c| c.tool == tool && c.concurrency == conc)
    };
    if let (Some(d), Some(n)) = (
        find("routeplane-ipam durable", 128),
        find("routeplane-ipam flush off", 128),
    ) {
        println!("\ntargets at concurrency 128 (issue #2):");
        println!(
            "  durable allocations/s      {:>8.0}  (target >= 15000)",
            d.rate
        );
        println!(
            "  durable / flush off        {:>8.2}  (target >= 0.60)",
            d.rate / n.rate
        );
        println!(
            "  durable p99 ms             {:>8.2}  (target <= 20)",
            d.p99
        );
        if let Some(h) = find("CNI host-local", 128) {
            println!("  durable vs host-local      {:>8.1}x", d.rate / h.rate);
        }
    }
    println!(
        "\ndurable allocations against the no-op ceiling, same server and client (issue #14: >= 0.5x the calls/s, p99 <= 2x):"
    );
    for &conc in &args.concurrency {
        if let (Some(d), Some(n)) = (find("routeplane-ipam durable", conc), find(NO_OP, conc)) {
            println!(
                "  concurrency {conc:>4}: {:>8.0} vs {:>8.0} calls/s ({:.2}x), p99 {:.2} vs {:.2} ms ({:.2}x)",
                d.rate,
                n.rate,
                d.rate / n.rate,
                d.p99,
                n.p99,
                d.p99 / n.p99
            );
        }
    }
    println!(
        "\nmutual TLS 1.3 against plaintext, durable (issue #12: under 15 % fewer allocations/s):"
    );
    for &conc in &args.concurrency {
        if let (Some(p), Some(t)) = (
            find("routeplane-ipam durable", conc),
            find("routeplane-ipam durable mTLS", conc),
        ) {
            println!(
                "  concurrency {conc:>4}: {:>8.0} vs {:>8.0} allocations/s ({:+.1} %), p99 {:.2} vs {:.2} ms",
                t.rate,
                p.rate,
                (t.rate / p.rate - 1.0) * 100.0,
                t.p99,
                p.p99
            );
        }
    }
    // A new connection: TCP, HTTP/2 and (with TLS) the handshake, then one small call.
    let server = |name: &str| {
        servers
            .iter()
            .find(|(mode, _)| *mode == name)
            .map(|(_, s)| s)
    };
    if let (Some(plain), Some(tls)) = (
        server("routeplane-ipam durable"),
        server("routeplane-ipam durable mTLS"),
    ) {
        println!(
            "  a new connection and its first call: {:.2} ms with mutual TLS, {:.2} ms plaintext (median of 50)",
            connection_cost(tls, 50).await,
            connection_cost(plain, 50).await
        );
    }
}
