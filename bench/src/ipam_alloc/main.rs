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
//! `--etcd` adds routeplane-ipam on a three-member etcd cluster (`etcd.rs`) and etcd's own
//! single-key puts of the same size, the ceiling IPAM on etcd is held against.
//!
//! Run it through `bench/run-ipam`, which builds in release mode and installs host-local.
#![forbid(unsafe_code)]

mod cells;
mod etcd;
mod failover;
mod host_local;
mod server;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use routeplane_testkit::certs::Certs;

use cells::{Call, Cell, NO_OP, measured, medians, run_ipam_cell};
use host_local::run_host_local_cell;
use server::{connection_cost, register_nodes, start_server};

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
    /// Also measure routeplane-ipam on etcd (a three-member etcd cluster the bench starts on
    /// loopback, Debian's etcd-server) and etcd's own single-key puts of the same size beside it.
    /// With --only, name "routeplane-ipam on etcd" and "etcd put (same size)" or leave them out.
    #[arg(long)]
    etcd: bool,
    /// Instead of the table: allocate and release pod IPs at full load (128 callers) on
    /// routeplane-ipam durable for this many seconds, printing every 30 s the log's size on disk,
    /// the longest time without a checkpoint and the server's RSS (the log must stay bounded).
    #[arg(long)]
    soak: Option<u64>,
    /// Instead of the table: the failover figures on etcd — two replicas on three members, 128
    /// callers, the leading replica, the etcd leader, then everything SIGKILLed (about 30 s).
    #[arg(long)]
    failover: bool,
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

    if args.failover {
        // The replicas are the routeplane-ipam built beside this benchmark.
        return failover::run(base.path(), 128).await;
    }
    if let Some(seconds) = args.soak {
        let data = base.path().join("soak");
        let server = start_server(&bin, &data, &config, "flush", None, &[]);
        return soak::soak(&server, &data, Duration::from_secs(seconds)).await;
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
        let server = start_server(&bin, &data, &config, durability, tls, &[]);
        register_nodes(&server).await;
        servers.push((mode, server));
    }
    let on_etcd = args.etcd && measured(&args.only, etcd::ON_ETCD);
    let etcd_put = args.etcd && measured(&args.only, etcd::ETCD_PUT);
    let cluster = (on_etcd || etcd_put).then(|| etcd::start_cluster(&base.path().join("etcd")));
    let endpoints: Vec<String> = cluster
        .iter()
        .flat_map(|c| c.members.iter().map(|m| m.endpoint()))
        .collect();
    if let Some(cluster) = cluster.as_ref().filter(|_| on_etcd) {
        let flags = [
            "--store".to_string(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            cluster.endpoints(),
        ];
        let data = base.path().join("on-etcd");
        let server = start_server(&bin, &data, &config, "flush", None, &flags);
        register_nodes(&server).await;
        servers.push((etcd::ON_ETCD, server));
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
            if etcd_put {
                runs.push(etcd::run_put_cell(&endpoints, conc, args.seconds, round).await);
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
            if let (Some((ds, dc)), Some((ns, nc))) = (d.cpu_us, n.cpu_us) {
                println!(
                    "                     CPU per call: server {ds:.1} vs {ns:.1} us, client {dc:.1} vs {nc:.1} us; (server+client) {:.2}x",
                    (ns + nc) / (ds + dc)
                );
            }
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
    if cluster.is_some() {
        println!(
            "\nrouteplane-ipam on etcd (3 members on this machine's disk) against etcd's own single-key puts of the same size, and against sled (issue #14: within 2x of etcd's puts/s):"
        );
        for &conc in &args.concurrency {
            if let (Some(e), Some(p)) = (find(etcd::ON_ETCD, conc), find(etcd::ETCD_PUT, conc)) {
                let sled = find("routeplane-ipam durable", conc).map_or(String::new(), |s| {
                    format!(", {:.2}x sled's {:.0}/s", e.rate / s.rate, s.rate)
                });
                println!(
                    "  concurrency {conc:>4}: {:>8.0} allocations/s vs {:>8.0} puts/s ({:.2}x), p99 {:.2} vs {:.2} ms{sled}",
                    e.rate,
                    p.rate,
                    e.rate / p.rate,
                    e.p99,
                    p.p99
                );
            }
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
