//! Scale: N simulated nodes (`sim.rs`: registration, pod IPs, heartbeats, Watch streams) against
//! real routeplane-ipam and routeplane-bgp peered with a real BIRD 2 standing in for the ToR, for
//! each N asked (100, 1,000, 5,000 by default). Per N it prints: the time for all N to be
//! registered and advertised at the ToR; pod IPs allocated per second; IPAM's and routeplane-bgp's
//! CPU (percent of one core) and RSS in steady state (heartbeats and open Watch streams; then with
//! pod churn besides);
//! Watch fan-out latency from a change to every watcher (p50/p99) and IPAM's CPU per event sent;
//! the same fan-out timed to each watcher's connection by its packets, with IPAM first on the CPU
//! (`capture.rs`: the simulated watchers share IPAM's cores, real agents do not);
//! the time until every watcher has a burst of changes made at once (`--burst`, as a rack of nodes
//! dying) and IPAM's CPU for it; a rack dying (`rack.rs`: a tenth of the nodes stop beating),
//! until IPAM has declared it dead and until the ToR has withdrawn it, twice; nodes IPAM declared
//! dead over the run besides; the time for the ToR to reflect a change made after an IPAM
//! restart, after a routeplane-bgp restart, and after a cold start of both;
//! and a route agent's time from a cold start to routing N−1 remote nodes (`agent_e2e.rs`).
//!
//! By default the simulated nodes share plaintext connections (50 to one); `--tls` makes each dial
//! as a real agent does — mutual TLS, one connection for its calls, heartbeat and Watch (5,000
//! TLS connections at 5,000 nodes) — with routeplane-bgp on TLS too, so that the
//! per-connection and decryption costs a real cluster pays are in IPAM's CPU figures.
//!
//! Everything runs in two network namespaces the benchmark creates — `cp` (IPAM, routeplane-bgp,
//! the simulated nodes, on loopback and 192.168.0.10) and `tor` (BIRD, 192.168.0.1) — and removes.
//! Run it through `bench/run-scale`.
#![forbid(unsafe_code)]

mod capture;
mod plane;
mod rack;
mod sim;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::Parser;
use plane::Plane;
use routeplane_bench::{cpu_seconds, percentile};
use routeplane_testkit::{metric_sample, scrape};

#[derive(Debug, Parser)]
#[command(about = "Scale: N simulated nodes against routeplane-ipam, routeplane-bgp and BIRD")]
struct Args {
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    nodes: Vec<usize>,
    /// Pod IPs allocated on each node (5,000 × 30 = Kubernetes' 150,000 pods).
    #[arg(long, default_value_t = 30)]
    pods_per_node: usize,
    /// Steady-state window in which CPU is measured.
    #[arg(long, default_value_t = 10.0)]
    steady_seconds: f64,
    /// Pod churn during the window: pods released and allocated again per second.
    #[arg(long, default_value_t = 50)]
    churn: u32,
    /// Changes timed for the Watch fan-out.
    #[arg(long, default_value_t = 20)]
    fan_out_changes: usize,
    /// Changes made at once for the burst (as a rack of nodes dying): the time until every
    /// watcher has them all.
    #[arg(long, default_value_t = 500)]
    burst: usize,
    /// Fail (exit 1) when a convergence takes longer than this many seconds (the smoke run's bound).
    #[arg(long)]
    max_converge_seconds: Option<f64>,
    /// Fail (exit 1) when the Watch fan-out's p99 is above this many milliseconds.
    #[arg(long)]
    max_fan_out_p99_ms: Option<f64>,
    /// Mutual TLS and connections of their own, as real agents: each simulated node dials one
    /// (calls, heartbeat and Watch) with an operator certificate, routeplane-bgp dials IPAM over
    /// TLS, and IPAM runs with --rate-limit 0 (real agents have an identity each, so no one
    /// identity's limit would be shared by all).
    #[arg(long)]
    tls: bool,
    /// Keep every routeplane-ipam and routeplane-bgp process's log (warnings, and the runtime's
    /// connection lines) in this directory, a file per process started, named by cluster size,
    /// service and start; without it they are dropped with the run.
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
}

const IPAM: &str = "127.0.0.1:50051";
const IPAM_METRICS: &str = "127.0.0.1:9951";
const LIMIT: Duration = Duration::from_secs(600);

/// One row of the table.
#[derive(Debug, Default)]
struct Row {
    nodes: usize,
    registered: f64,
    advertised: f64,
    pods_per_second: f64,
    ipam_idle_cpu: f64,
    ipam_cpu: f64,
    ipam_rss: f64,
    bgp_cpu: f64,
    bgp_rss: f64,
    fan_p50: f64,
    fan_p99: f64,
    fan_missing: usize,
    /// IPAM's CPU per event delivered to a watcher during the fan-out, microseconds.
    fan_cpu_us: f64,
    /// The fan-out to each watcher's connection, IPAM first on the CPU (`capture.rs`): p50, p99
    /// ms (NaN when no connection was timed).
    socket_p50: f64,
    socket_p99: f64,
    /// Seconds until every watcher had a burst of changes made at once (None: not in 120 s), and
    /// IPAM's CPU seconds meanwhile.
    burst: Option<f64>,
    burst_cpu: f64,
    /// A rack dying (`rack.rs`): sharing the cores, then the control plane first.
    racks: [rack::RackDeath; 2],
    /// Packets the capture of the socket fan-out dropped (a dropped last packet of a delivery
    /// makes it look earlier: the run fails its bounds).
    socket_dropped: u64,
    /// Nodes IPAM declared dead over the whole run, besides the racks' (none of them stopped
    /// beating).
    deaths: f64,
    after_ipam: f64,
    kept_ipam: usize,
    after_bgp: f64,
    after_cold: f64,
    agent: f64,
}

fn run(n: usize, args: &Args) -> Row {
    let mut plane = Plane::new(args.tls, n, args.logs.clone());
    // From here this thread, and the runtime's threads it starts, live in `cp`.
    let netns = std::fs::File::open(format!("/var/run/netns/{}", plane.cp.name()))
        .expect("the namespace's file");
    nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("entering the benchmark's namespace");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut row = Row {
        nodes: n,
        ..Row::default()
    };
    let mut sim = rt.block_on(sim::Sim::connect(&plane.ipam_url(), n, plane.dialer()));

    let start = Instant::now();
    rt.block_on(sim.register(64));
    row.registered = start.elapsed().as_secs_f64();
    rt.block_on(async { sim.start_heartbeats() });
    row.advertised = plane
        .until("all nodes at the ToR", start, |p| p.imported() >= n)
        .0
        .as_secs_f64();

    let start = Instant::now();
    let pods = rt.block_on(sim.allocate_pods(args.pods_per_node, 128));
    row.pods_per_second = pods as f64 / start.elapsed().as_secs_f64();

    let revision = metric_sample(
        &scrape(None, IPAM_METRICS).unwrap_or_default(),
        "routeplane_ipam_revision",
    )
    .unwrap_or(0.0) as u64;
    rt.block_on(async {
        sim.start_watches(revision);
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    let cpu = |p: &Plane| {
        (
            cpu_seconds(Plane::pid(&p.ipam)).unwrap_or(0.0),
            cpu_seconds(Plane::pid(&p.bgp)).unwrap_or(0.0),
        )
    };
    // Idle: heartbeats and open Watch streams only; then with pod churn besides.
    let (ipam0, _) = cpu(&plane);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.steady_seconds));
    let (ipam1, bgp1) = cpu(&plane);
    row.ipam_idle_cpu = (ipam1 - ipam0) / window.elapsed().as_secs_f64() * 100.0;
    let window = Instant::now();
    rt.block_on(sim.churn(args.steady_seconds, args.churn));
    let seconds = window.elapsed().as_secs_f64();
    let (ipam2, bgp2) = cpu(&plane);
    row.ipam_cpu = (ipam2 - ipam1) / seconds * 100.0;
    row.bgp_cpu = (bgp2 - bgp1) / seconds * 100.0;
    row.ipam_rss = Plane::rss_mb(&plane.ipam);
    row.bgp_rss = Plane::rss_mb(&plane.bgp);

    // CPU per event delivered, IPAM's beside the simulated watchers' own (all on this machine's
    // cores: what a change costs the two ends), less what IPAM spends idle meanwhile.
    let (ipam0, sim0, window) = (
        cpu(&plane).0,
        cpu_seconds(std::process::id()).unwrap_or(0.0),
        Instant::now(),
    );
    let (latencies, missing) =
        rt.block_on(sim.fan_out(args.fan_out_changes, Duration::from_millis(250)));
    let delivered = latencies.len().max(1) as f64;
    let idle = row.ipam_idle_cpu / 100.0 * window.elapsed().as_secs_f64();
    row.fan_cpu_us = (cpu(&plane).0 - ipam0 - idle).max(0.0) / delivered * 1e6;
    eprintln!(
        "fan-out: CPU per event delivered: IPAM {:.1} µs, simulated watchers {:.1} µs",
        row.fan_cpu_us,
        (cpu_seconds(std::process::id()).unwrap_or(0.0) - sim0) / delivered * 1e6
    );
    row.fan_missing = missing;
    if !latencies.is_empty() {
        row.fan_p50 = percentile(latencies.clone(), 50.0);
        row.fan_p99 = percentile(latencies, 99.0);
    }
    (row.socket_p50, row.socket_p99, row.socket_dropped) = socket_fan_out(
        &rt,
        &mut sim,
        &plane,
        args.fan_out_changes,
        row.ipam_idle_cpu,
    );
    // Before the burst: its registrations give the nodes they touch a lease of the full TTL, and
    // a rack of those would be declared dead only when that ran out.
    let racks = rack::racks(n);
    for (k, nodes) in racks.iter().enumerate() {
        row.racks[k] = rack::dies(&rt, &mut sim, &plane, nodes.clone(), k == 1);
    }
    let ipam0 = cpu(&plane).0;
    let (took, have) = rt.block_on(sim.burst(args.burst, Duration::from_secs(120)));
    row.burst = took;
    row.burst_cpu = cpu(&plane).0 - ipam0;
    if took.is_none() {
        eprintln!("burst: {have} of {n} watchers had its last change within 120 s");
    }

    // IPAM restarted: a node registered after it reaches the ToR, and no route left meanwhile.
    let start = Instant::now();
    plane.stop_ipam();
    plane.start_ipam();
    let cidr = rt.block_on(sim.register_extra(n, LIMIT));
    let (took, fewest) = plane.until("a new node at the ToR after IPAM's restart", start, |p| {
        p.has(&cidr)
    });
    row.after_ipam = took.as_secs_f64();
    row.kept_ipam = fewest;

    // routeplane-bgp restarted (graceful restart off: the ToR drops every route), timed from the
    // new process's start.
    plane.stop(false);
    let start = Instant::now();
    plane.start_bgp();
    row.after_bgp = plane
        .until(
            "every route back after routeplane-bgp's restart",
            start,
            |p| p.imported() > n,
        )
        .0
        .as_secs_f64();

    // Both stopped, both started: the whole control plane cold, timed from IPAM's start.
    plane.stop(true);
    let start = Instant::now();
    plane.start_ipam();
    plane.start_bgp();
    let cidr = rt.block_on(sim.register_extra(n + 1, LIMIT));
    row.after_cold = plane
        .until(
            "every route and a new node after a cold start",
            start,
            |p| p.imported() > n + 1 && p.has(&cidr),
        )
        .0
        .as_secs_f64();
    sim.stop();
    drop(rt);
    plane.stop(true);
    row.deaths = plane.deaths - racks.iter().map(|r| r.len() as f64).sum::<f64>();
    drop(plane);

    let cluster = routeplane_bench::agent_e2e::Cluster::new(n.saturating_sub(1) as u32);
    row.agent = cluster.kernel_routes().as_secs_f64();
    row
}

/// The fan-out timed to each watcher's connection with IPAM's threads first on the CPU
/// (`capture.rs`): `changes` changes, each once every watcher has read the one before. p50 and
/// p99 in milliseconds, and the packets the capture dropped.
fn socket_fan_out(
    rt: &tokio::runtime::Runtime,
    sim: &mut sim::Sim,
    plane: &Plane,
    changes: usize,
    idle_percent: f64,
) -> (f64, f64, u64) {
    let ipam = Plane::pid(&plane.ipam);
    let port = IPAM
        .parse::<std::net::SocketAddr>()
        .expect("IPAM is an address")
        .port();
    let capture = capture::Capture::start(port).unwrap_or_else(|e| panic!("{e}"));
    capture::renice(ipam, -19);
    // When each change began, and when the simulated watchers read it (beside).
    let (mut starts, mut read, mut late) = (Vec::new(), Vec::new(), 0);
    let (cpu0, window) = (cpu_seconds(ipam).unwrap_or(0.0), Instant::now());
    for k in 0..changes {
        let began = std::time::SystemTime::now();
        let (revision, start) = rt.block_on(sim.change("fan-out-sockets", k));
        let have =
            rt.block_on(sim.until_every_watcher_has(revision, start + Duration::from_secs(10)));
        late += sim.nodes - have.len();
        read.extend(
            have.iter()
                .map(|at| at.duration_since(start).as_secs_f64() * 1e3),
        );
        starts.push(began);
    }
    capture::renice(ipam, 0);
    // IPAM's CPU over the phase, less its idle, per connection written: here each write also
    // wakes a simulated watcher that is waiting its turn.
    let busy = cpu_seconds(ipam).unwrap_or(0.0)
        - cpu0
        - idle_percent / 100.0 * window.elapsed().as_secs_f64();
    // tcpdump reads what the kernel holds for it before it is stopped (a stop drops the rest).
    std::thread::sleep(Duration::from_secs(1));
    let (packets, dropped) = capture.stop().unwrap_or_else(|e| panic!("{e}"));
    let (mut latencies, mut sent, mut counts) = (Vec::new(), 0, Vec::new());
    for (k, start) in starts.iter().enumerate() {
        let end = starts
            .get(k + 1)
            .copied()
            .unwrap_or(std::time::SystemTime::now());
        let (l, s) = capture::arrivals(&packets, port, *start, end);
        counts.push(l.len());
        latencies.extend(l);
        sent += s;
    }
    eprintln!(
        "fan-out to the sockets: {} connections timed over {} changes to {} watchers; left out {sent} connections that sent after a change; {dropped} packets dropped by the capture; {late} watcher reads over 10 s; connections per change {counts:?}",
        latencies.len(),
        changes,
        sim.nodes
    );
    if latencies.is_empty() || read.is_empty() {
        return (f64::NAN, f64::NAN, dropped);
    }
    eprintln!(
        "fan-out to the sockets: read by the simulated watchers (IPAM first) p50 {:.1} ms, p99 {:.1} ms; IPAM CPU per connection written {:.1} µs",
        percentile(read.clone(), 50.0),
        percentile(read, 99.0),
        busy.max(0.0) / (latencies.len() + sent) as f64 * 1e6
    );
    (
        percentile(latencies.clone(), 50.0),
        percentile(latencies, 99.0),
        dropped,
    )
}

fn main() {
    let args = Args::parse();
    // 5,000 connections under --tls at 5,000 nodes: past a soft limit of 1,024.
    routeplane_runtime::limits::raise_open_files()
        .unwrap_or_else(|e| panic!("raising the open-files limit: {e}"));
    let mut rows = Vec::new();
    for &n in &args.nodes {
        eprintln!("--> {n} simulated nodes");
        let row = run(n, &args);
        eprintln!("{row:?}");
        rows.push(row);
    }
    println!(
        "\nScale: simulated nodes against routeplane-ipam + routeplane-bgp + BIRD ({} pods per node, {} pods/s churn; {})\n",
        args.pods_per_node,
        args.churn,
        if args.tls {
            "mutual TLS, one connection per node, as agents"
        } else {
            "plaintext, 50 nodes per connection"
        }
    );
    println!(
        "| nodes | registered s | at ToR s | pod IPs/s | IPAM CPU % idle | with churn | IPAM RSS MB | BGP CPU % | BGP RSS MB | fan-out p50 ms | fan-out p99 ms | to the sockets, IPAM first, p50 ms | p99 ms | IPAM CPU µs per event sent | burst to every watcher s | its IPAM CPU s | a tenth dies: declared dead s | withdrawn at the ToR s | the same, control plane first: declared s | withdrawn s | ToR after IPAM restart s | after BGP restart s | after cold start s | nodes declared dead | agent, N−1 routes s |"
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.3} |",
            r.nodes,
            r.registered,
            r.advertised,
            r.pods_per_second,
            r.ipam_idle_cpu,
            r.ipam_cpu,
            r.ipam_rss,
            r.bgp_cpu,
            r.bgp_rss,
            r.fan_p50,
            r.fan_p99,
            r.socket_p50,
            r.socket_p99,
            r.fan_cpu_us,
            r.burst
                .map_or_else(|| "over 120".to_string(), |s| format!("{s:.2}")),
            r.burst_cpu,
            r.racks[0].declared,
            r.racks[0].withdrawn,
            r.racks[1].declared,
            r.racks[1].withdrawn,
            r.after_ipam,
            r.after_bgp,
            r.after_cold,
            r.deaths,
            r.agent
        );
    }
    for r in &rows {
        if r.kept_ipam < r.nodes {
            println!(
                "\n{} nodes: the ToR had only {} routes at one point during IPAM's restart",
                r.nodes, r.kept_ipam
            );
        }
        if r.fan_missing > 0 {
            println!(
                "\n{} nodes: {} fan-out arrivals missing",
                r.nodes, r.fan_missing
            );
        }
    }
    if let Some(max) = args.max_fan_out_p99_ms
        && let Some(r) = rows.iter().find(|r| r.fan_p99 > max)
    {
        eprintln!(
            "bench/run-scale: Watch fan-out p99 {:.1} ms at {} nodes, above its bound of {max} ms",
            r.fan_p99, r.nodes
        );
        std::process::exit(1);
    }
    if let Some(max) = args.max_converge_seconds {
        let worst = rows
            .iter()
            .flat_map(|r| {
                [
                    r.advertised,
                    r.racks[0].withdrawn,
                    r.racks[1].withdrawn,
                    r.after_ipam,
                    r.after_bgp,
                    r.after_cold,
                ]
            })
            .fold(0.0, f64::max);
        if worst > max
            || rows.iter().any(|r| {
                r.fan_missing > 0
                    || r.kept_ipam < r.nodes
                    || r.burst.is_none()
                    || r.socket_p99.is_nan()
                    || r.socket_dropped > 0
            })
        {
            eprintln!(
                "bench/run-scale: over its bounds (worst convergence {worst:.2} s, bound {max} s; or a fan-out arrival missing, no connection timed by the packet capture or packets it dropped, a watcher without the burst's last change in 120 s, or routes lost in IPAM's restart)"
            );
            std::process::exit(1);
        }
    }
}
