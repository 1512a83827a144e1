//! Installing and deleting N kernel routes: the route agent's reconciler (pipelined netlink) vs
//! `ip -batch` of the same routes, in a network namespace the benchmark creates and removes
//! (root needed; routes only, no traffic); and the agent end to end (agent_e2e): started cold
//! beside an IPAM holding N nodes on its segment, until all N are routed, beside `ip -batch`
//! adding those same routes (one gateway per node, not the one shared gateway of the first
//! columns). Alternating runs; medians and their ratios. Run it through `bench/run-routes`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use routeplane_agent::desired::Route;
use routeplane_agent::kernel::{Kernel, PROTOCOL};
use routeplane_agent::reconcile::Action;
use routeplane_bench::{median, sh, slash28};

#[derive(Debug, Parser)]
#[command(about = "Route installs: routeplane-agent's reconciler vs ip -batch")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Route counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    routes: Vec<u32>,
    /// Runs per tool and count (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The end-to-end columns only up to this many routes (IPAM registers that many nodes
    /// first). Above it, N nodes on one segment are N kernel routes with N distinct gateways, which
    /// the kernel inserts in quadratic time whoever asks (its fib_info hash leaves the gateway
    /// out): minutes per run at 100,000, for ip -batch as for the agent.
    #[arg(long, default_value_t = 30_000)]
    e2e_max: u32,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (Inside the namespace) add or delete N routes through the agent's kernel seam; prints seconds.
    Agent {
        #[arg(long)]
        routes: u32,
        #[arg(long)]
        delete: bool,
    },
}

const NS: &str = "rpbench-routes";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 2);

fn setup() {
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
    sh(&["ip", "netns", "add", NS]);
    sh(&[
        "ip", "-n", NS, "link", "add", "rb0", "type", "veth", "peer", "name", "rb1",
    ]);
    sh(&[
        "ip",
        "-n",
        NS,
        "addr",
        "add",
        "192.168.250.1/24",
        "dev",
        "rb0",
    ]);
    sh(&["ip", "-n", NS, "link", "set", "rb0", "up"]);
    sh(&["ip", "-n", NS, "link", "set", "rb1", "up"]);
}

fn ifindex() -> u32 {
    std::fs::read_to_string("/sys/class/net/rb0/ifindex")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("rb0 (run inside the benchmark's namespace)")
}

/// `ip -batch` with the same routes; returns its wall time.
fn ip_batch(n: u32, verb: &str, dir: &std::path::Path) -> Duration {
    let file = dir.join(format!("{verb}-{n}.batch"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..n {
        writeln!(
            f,
            "route {verb} {} via {GATEWAY} dev rb0 proto {PROTOCOL}",
            slash28(i)
        )
        .unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let started = Instant::now();
    sh(&["ip", "-n", NS, "-batch", file.to_str().unwrap()]);
    started.elapsed()
}

fn agent(n: u32, delete: bool) -> Duration {
    let me = std::env::current_exe().unwrap();
    let mut args = vec!["agent".to_string(), "--routes".into(), n.to_string()];
    if delete {
        args.push("--delete".into());
    }
    let out = Command::new("ip")
        .args(["netns", "exec", NS])
        .arg(me)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent side: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Duration::from_secs_f64(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

fn count() -> usize {
    let out = Command::new("ip")
        .args(["-n", NS, "route", "show", "proto", &PROTOCOL.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(Cmd::Agent { routes, delete }) = args.command {
        let kernel = Kernel::connect().expect("netlink");
        let index = ifindex();
        let actions: Vec<Action> = (0..routes)
            .map(|i| Route {
                destination: slash28(i),
                gateway: Some(IpAddr::V4(GATEWAY)),
                ifindex: index,
            })
            .map(|r| {
                if delete {
                    Action::Delete(r)
                } else {
                    Action::Add(r)
                }
            })
            .collect();
        let started = Instant::now();
        let failed = kernel.apply(&actions).await;
        let elapsed = started.elapsed();
        assert!(
            failed.is_empty(),
            "{} of {routes} failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        println!("{}", elapsed.as_secs_f64());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    setup();
    println!(
        "routes via {GATEWAY} dev rb0 proto {PROTOCOL} in namespace {NS}; {} runs per tool, alternating",
        args.rounds
    );
    println!(
        "end to end: routeplane-agent started cold in a namespace of its own, with routeplane-ipam holding N nodes on its segment, until its metrics show N+1 routes (N nodes and its own pod CIDR), beside ip -batch adding those same N routes (one gateway per node); up to {} routes",
        args.e2e_max
    );
    println!(
        "\n{:>8} {:>10} {:>12} {:>12} {:>8} {:>12} {:>12} {:>10}",
        "routes",
        "operation",
        "agent s",
        "ip -batch s",
        "ratio",
        "agent e2e s",
        "ip same s",
        "e2e ratio"
    );
    for &n in &args.routes {
        let cluster = (n <= args.e2e_max).then(|| routeplane_bench::agent_e2e::Cluster::new(n));
        let (mut agent_add, mut ip_add, mut agent_del, mut ip_del, mut e2e, mut e2e_ip) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..args.rounds {
            agent_add.push(agent(n, false).as_secs_f64());
            assert_eq!(count(), n as usize, "the agent installed every route");
            agent_del.push(agent(n, true).as_secs_f64());
            assert_eq!(count(), 0);
            ip_add.push(ip_batch(n, "add", dir.path()).as_secs_f64());
            assert_eq!(count(), n as usize);
            ip_del.push(ip_batch(n, "del", dir.path()).as_secs_f64());
            assert_eq!(count(), 0);
            if let Some(c) = &cluster {
                e2e.push(c.kernel_routes().as_secs_f64());
                e2e_ip.push(c.ip_batch_same_routes().as_secs_f64());
            }
        }
        let (a, b) = (median(agent_add), median(ip_add));
        let (e2e, e2e_ip, e2e_ratio) = if e2e.is_empty() {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            let (e, i) = (median(e2e), median(e2e_ip));
            (
                format!("{e:.3}"),
                format!("{i:.3}"),
                format!("{:.2}x", e / i),
            )
        };
        println!(
            "{n:>8} {:>10} {a:>12.3} {b:>12.3} {:>7.2}x {e2e:>12} {e2e_ip:>12} {e2e_ratio:>10}",
            "add",
            a / b
        );
        let (a, b) = (median(agent_del), median(ip_del));
        println!(
            "{n:>8} {:>10} {a:>12.3} {b:>12.3} {:>7.2}x {:>12} {:>12} {:>10}",
            "delete",
            a / b,
            "-",
            "-",
            "-"
        );
    }
    println!("\ntarget (issue #4): agent <= 0.8x ip -batch");
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
}
