//! Node failover: how long a ToR keeps routing to a dead node. routeplane (route agents beating on
//! IPAM's Heartbeat stream, routeplane-ipam and routeplane-bgp beside it, both ToRs BIRD 2) against
//! what a user would otherwise run, in the same lab and the same run: the node speaking BGP to the
//! ToR itself, as Cilium's BGP control plane does (hold time 9 s, the lowest Cilium's docs suggest
//! tuning to; its default is 90 s), and the same with BFD at 3 × 300 ms, as MetalLB's FRR mode
//! offers. Each node is failed three ways — its speaker SIGKILLed, the node frozen (SIGSTOP, as
//! `docker pause`), its cable pulled — and the ToR polled until the node's prefix is gone; the
//! figures are p50, p99 and the worst over the trials. Needs root (namespaces; nothing leaves
//! them). Run it through `bench/run-failover`.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use clap::Parser;
use routeplane_bench::percentile;
use routeplane_testkit::lab::NodeLab;

#[derive(Debug, Parser)]
#[command(about = "Node failover at the ToR: routeplane heartbeats vs BGP hold time vs BFD")]
struct Args {
    /// Trials per system and failure.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// routeplane-ipam's --heartbeat-interval.
    #[arg(long, default_value = "750ms")]
    heartbeat_interval: String,
    /// routeplane-ipam's --heartbeat-detect-multiplier.
    #[arg(long, default_value_t = 3)]
    detect_multiplier: u32,
}

/// A way for a node to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Killed,
    Frozen,
    CablePulled,
}

impl Failure {
    const ALL: [Failure; 3] = [Failure::Killed, Failure::Frozen, Failure::CablePulled];

    fn label(self) -> &'static str {
        match self {
            Failure::Killed => "speaker SIGKILLed",
            Failure::Frozen => "node frozen (SIGSTOP)",
            Failure::CablePulled => "cable pulled",
        }
    }
}

/// One system under test: a node, the ToR protocol that carries its prefix, and its process.
struct System<'a> {
    label: &'a str,
    node: usize,
    /// The BIRD protocol on r94 that has the node's prefix.
    protocol: &'static str,
    prefix: String,
    /// The node's speaker: its agent (routeplane) or its BIRD.
    process: String,
}

const LIMIT: Duration = Duration::from_secs(60);

/// r94's side of the two BGP-on-the-node peers.
const TOR_PEERS: &str = "
protocol bfd { interface \"*\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }; }
protocol bgp holdtime { local 10.4.94.1 as 64524; neighbor 10.4.94.14 as 64513; hold time 9; keepalive time 3; connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }
protocol bgp withbfd { local 10.4.94.1 as 64524; neighbor 10.4.94.15 as 64513; bfd on; connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }
";

/// A node's own BGP speaker announcing `prefix` to r94 (with BFD when `bfd`).
fn node_bird(host: u8, prefix: &str, bfd: bool) -> String {
    let (session, bfd_protocol) = if bfd {
        (
            "bfd on;",
            "protocol bfd { interface \"*\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }; }\n",
        )
    } else {
        ("hold time 9; keepalive time 3;", "")
    };
    format!(
        "log stderr all;\nrouter id 10.4.94.{host};\nprotocol device {{}}\n{bfd_protocol}\
         protocol static {{ ipv4; route {prefix} blackhole; }}\n\
         protocol bgp tor {{ local 10.4.94.{host} as 64513; neighbor 10.4.94.1 as 64524; {session} connect retry time 1; error wait time 1, 5; ipv4 {{ import none; export all; }}; }}\n"
    )
}

fn main() {
    let args = Args::parse();
    let mut lab = NodeLab::new().with_routers();
    lab.add_node("n1", 94, 11);
    lab.add_node("n4", 94, 14);
    lab.add_node("n5", 94, 15);
    // Damping off: n1 dies over and over here, which damping would (rightly) hold down.
    let values = include_str!("../../examples/seed/values.yaml");
    let multiplier = args.detect_multiplier.to_string();
    lab.start_ipam_args(
        values,
        &[
            "--flap-half-life",
            "0s",
            "--heartbeat-interval",
            &args.heartbeat_interval,
            "--heartbeat-detect-multiplier",
            &multiplier,
        ],
    );
    lab.start_tors_with(&[], [TOR_PEERS, ""]);
    lab.start_agent(0, &[]);
    lab.wait("n1 registered", LIMIT, || {
        lab.ipam("GetNode", r#"{"name": "n1"}"#).is_ok()
    });
    let n1 = lab.node_allocation("n1").0[0].clone();
    lab.start_node_bird(1, &node_bird(14, "10.9.14.0/24", false));
    lab.start_node_bird(2, &node_bird(15, "10.9.15.0/24", true));
    let routeplane = format!(
        "routeplane: heartbeat {} × {}",
        args.heartbeat_interval, args.detect_multiplier
    );
    let systems = [
        System {
            label: &routeplane,
            node: 0,
            protocol: "routeplane",
            prefix: n1,
            process: "n1".into(),
        },
        System {
            label: "BGP on the node, hold time 9 s (Cilium tuned)",
            node: 1,
            protocol: "holdtime",
            prefix: "10.9.14.0/24".into(),
            process: "bird-n4".into(),
        },
        System {
            label: "BGP on the node + BFD 3 × 300 ms (MetalLB FRR)",
            node: 2,
            protocol: "withbfd",
            prefix: "10.9.15.0/24".into(),
            process: "bird-n5".into(),
        },
    ];
    for s in &systems {
        wait_present(&lab, s);
    }
    println!(
        "Node failover: time until ToR r94 stops routing to a failed node ({} trials each; routeplane's ToR r83 alike)\n",
        args.trials
    );
    println!(
        "{:<48} {:<22} {:>8} {:>8} {:>8}",
        "system", "failure", "p50", "p99", "worst"
    );
    for failure in Failure::ALL {
        for s in &systems {
            let mut times = Vec::new();
            for _ in 0..args.trials {
                times.push(trial(&mut lab, s, failure).as_secs_f64());
            }
            println!(
                "{:<48} {:<22} {:>7.2}s {:>7.2}s {:>7.2}s",
                s.label,
                failure.label(),
                percentile(times.clone(), 50.0),
                percentile(times.clone(), 99.0),
                percentile(times, 100.0)
            );
        }
    }
    println!(
        "\nNot measured here (their defaults take minutes per trial): Cilium's default hold time 90 s; Kubernetes' node-monitor-grace-period 40 s before a node is NotReady."
    );
}

fn has(lab: &NodeLab, s: &System) -> bool {
    lab.tor_prefixes_from(0, s.protocol).contains(&s.prefix)
}

fn wait_present(lab: &NodeLab, s: &System) {
    lab.wait(&format!("{} at r94 ({})", s.prefix, s.label), LIMIT, || {
        has(lab, s) && (s.protocol != "routeplane" || lab.tor_has(1, &s.prefix))
    });
}

/// Fails the system's node, measures until r94 (and for routeplane r83) lost its prefix, undoes
/// the failure and waits until the prefix is back.
fn trial(lab: &mut NodeLab, s: &System, failure: Failure) -> Duration {
    let start = Instant::now();
    match failure {
        Failure::Killed => lab.kill9(&s.process),
        Failure::Frozen => signal(lab, &s.process, "-STOP"),
        Failure::CablePulled => lab.cut(s.node, true),
    }
    let mut gone = None;
    while gone.is_none() && start.elapsed() < LIMIT {
        let routeplane_r83 = s.protocol != "routeplane" || !lab.tor_has(1, &s.prefix);
        if !has(lab, s) && routeplane_r83 {
            gone = Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took =
        gone.unwrap_or_else(|| panic!("{} still routed after {LIMIT:?}\n{}", s.label, lab.logs()));
    match failure {
        Failure::Killed if s.protocol == "routeplane" => lab.start_agent(s.node, &[]),
        Failure::Killed => {
            let host = if s.node == 1 { 14 } else { 15 };
            lab.start_node_bird(s.node, &node_bird(host, &s.prefix, s.protocol == "withbfd"));
        }
        Failure::Frozen => signal(lab, &s.process, "-CONT"),
        Failure::CablePulled => lab.cut(s.node, false),
    }
    wait_present(lab, s);
    took
}

fn signal(lab: &NodeLab, process: &str, signal: &str) {
    lab.service(process)
        .unwrap_or_else(|| panic!("{process} is not running"))
        .signal(signal);
}
