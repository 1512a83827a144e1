//! Attaching pods: routeplane-cni (asking a real routeplane-agent, with routeplane-ipam beside it)
//! against the CNI project's reference plugins, `bridge` with `host-local` (Debian's
//! containernetworking-plugins), doing the same on the same machine: N pods added then deleted on
//! one node, one at a time and C at once, each plugin executed as a runtime executes it (`ip
//! netns exec NODE plugin`, CNI_* in the environment, the configuration on stdin). Rounds alternate
//! the tools, each with the same warm-up; figures are medians over rounds. Then 1,000 pods on one
//! node with each tool: the ADD latency of the first and the last hundred (flat per-pod cost means
//! the node does not slow down as it fills), and the agent's RSS growth per 1,000 pods. Needs root
//! (namespaces; nothing leaves them). Run it through `bench/run-cni`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use routeplane_bench::median;
use routeplane_testkit::Netns;
use routeplane_testkit::lab::NodeLab;

#[derive(Debug, Parser)]
#[command(about = "Pod attach: routeplane-cni vs bridge + host-local")]
struct Args {
    /// Pods per run.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Pods attached at once in the concurrent runs.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// Runs per tool and mode (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pods of the scale run (per-pod cost and RSS as the node fills); 0 leaves it out.
    #[arg(long, default_value_t = 1000)]
    scale: usize,
    /// The reference plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    reference_dir: PathBuf,
    /// Run the agent without its eBPF classifiers (kernel datapath, no bpffs): what a pod's ADD
    /// and DEL cost without the TC attach and its RCU grace period.
    #[arg(long)]
    no_classifiers: bool,
}

/// A tool: how to execute its plugin with a verb for a pod.
struct Tool {
    name: &'static str,
    plugin: PathBuf,
    cni_path: String,
    conf: String,
}

/// /21 per node: 2,045 pod addresses, room for the scale run.
const VALUES: &str = "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 10.6.0.0/20\n    clusterPoolIPv4MaskSize: 21\nipv4:\n  enabled: true\n";

fn call(node: &Netns, tool: &Tool, verb: &str, pod: &Netns, id: &str) -> Duration {
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", node.name()])
        .arg(&tool.plugin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/var/run/netns/{}", pod.name()))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &tool.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the plugin runs");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(tool.conf.as_bytes());
    }
    let out = child.wait_with_output().expect("the plugin ends");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{} {verb} {id}: {}{}",
        tool.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Runs `verb` for every pod, `concurrency` at a time; per-call latencies and the total.
fn run(
    node: &Netns,
    tool: &Tool,
    verb: &str,
    pods: &[Netns],
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let latencies = std::sync::Mutex::new(Vec::with_capacity(pods.len()));
    std::thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(pod) = pods.get(i) else { break };
                    let took = call(node, tool, verb, pod, &format!("bench{i}"));
                    latencies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(took);
                }
            });
        }
    });
    let mut l = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    l.sort();
    (l, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[derive(Default)]
struct Cell {
    add_p50: Vec<f64>,
    add_p99: Vec<f64>,
    add_total: Vec<f64>,
    del_p50: Vec<f64>,
    del_p99: Vec<f64>,
    del_total: Vec<f64>,
}

fn main() {
    let args = Args::parse();
    routeplane_testkit::privileged::require(&["ip"]);
    let reference = args.reference_dir.join("bridge");
    assert!(
        reference.exists() && args.reference_dir.join("host-local").exists(),
        "{} and host-local are missing (Debian's containernetworking-plugins; bench/run-cni installs it)",
        reference.display()
    );
    let mut lab = NodeLab::new();
    lab.start_ipam_with(VALUES);
    lab.add_node("n1", 94, 11);
    // The defaults a node runs with (the lab's tests reconcile every second).
    let nobpf = std::env::var("NOBPF").is_ok();
    if nobpf {
        lab.start_agent(
            0,
            &[
                "--datapath",
                "kernel",
                "--reconcile-interval",
                "10s",
                "--bpf-pin-dir",
                "/tmp/not-a-bpffs/x",
            ],
        );
    } else {
        lab.start_agent(0, &["--datapath", "ebpf", "--reconcile-interval", "10s"]);
    }
    lab.wait_agent_ready(0);
    let host_local_dir = lab.path("host-local");
    let tools = [
        Tool {
            name: "routeplane-cni",
            plugin: routeplane_testkit::bin("routeplane-cni"),
            cni_path: String::new(),
            conf: serde_json::json!({"cniVersion": "1.0.0", "name": "routeplane", "type": "routeplane-cni",
                "agentSocket": lab.nodes[0].socket}).to_string(),
        },
        Tool {
            name: "bridge+host-local",
            plugin: reference,
            cni_path: args.reference_dir.display().to_string(),
            conf: serde_json::json!({"cniVersion": "1.0.0", "name": "reference", "type": "bridge",
                "bridge": "refbr0", "isGateway": true,
                "ipam": {"type": "host-local", "subnet": "10.99.0.0/21", "dataDir": host_local_dir}})
            .to_string(),
        },
    ];
    let node = &lab.nodes[0].ns;
    let count = args.pods.max(args.scale);
    let pods: Vec<Netns> = (0..count)
        .map(|i| Netns::new(&lab.id, &format!("p{i}")))
        .collect();
    println!(
        "{} pods per run on one node, one at a time and {} at once; {} rounds per tool, alternating; plugins executed as a runtime does (ip netns exec NODE plugin); routeplane-agent {}",
        args.pods,
        args.concurrency,
        args.rounds,
        if args.no_classifiers {
            "on kernel routes without its eBPF classifiers"
        } else {
            "on the eBPF datapath (a classifier per pod)"
        }
    );
    // The same warm-up for each: a few pods added and deleted, unmeasured.
    for tool in &tools {
        run(node, tool, "ADD", &pods[..5], 1);
        run(node, tool, "DEL", &pods[..5], 1);
    }
    let mut cells: Vec<Vec<Cell>> = (0..tools.len())
        .map(|_| vec![Cell::default(), Cell::default()])
        .collect();
    for round in 0..args.rounds {
        for (t, tool) in tools.iter().enumerate() {
            for (m, concurrency) in [1, args.concurrency].into_iter().enumerate() {
                let (add, add_total) = run(node, tool, "ADD", &pods[..args.pods], concurrency);
                let (del, del_total) = run(node, tool, "DEL", &pods[..args.pods], concurrency);
                let c = &mut cells[t][m];
                c.add_p50.push(percentile(&add, 0.5));
                c.add_p99.push(percentile(&add, 0.99));
                c.add_total.push(add_total.as_secs_f64());
                c.del_p50.push(percentile(&del, 0.5));
                c.del_p99.push(percentile(&del, 0.99));
                c.del_total.push(del_total.as_secs_f64());
                println!(
                    "  round {round} {:<18} concurrency {concurrency:>3}: ADD p99 {:>7.2} ms, DEL p99 {:>7.2} ms",
                    tool.name,
                    percentile(&add, 0.99),
                    percentile(&del, 0.99)
                );
            }
        }
    }
    println!(
        "\n{:<18} {:>5} {:>5} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "tool (median)",
        "pods",
        "conc",
        "ADD p50 ms",
        "ADD p99 ms",
        "ADD total s",
        "DEL p50 ms",
        "DEL p99 ms",
        "DEL total s"
    );
    for (t, tool) in tools.iter().enumerate() {
        for (m, concurrency) in [1, args.concurrency].into_iter().enumerate() {
            let c = &cells[t][m];
            println!(
                "{:<18} {:>5} {:>5} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>11.2}",
                tool.name,
                args.pods,
                concurrency,
                median(c.add_p50.clone()),
                median(c.add_p99.clone()),
                median(c.add_total.clone()),
                median(c.del_p50.clone()),
                median(c.del_p99.clone()),
                median(c.del_total.clone())
            );
        }
    }
    println!("\ntarget (issue #11): routeplane-cni ADD p99 <= the reference's");
    for (m, concurrency) in [1, args.concurrency].into_iter().enumerate() {
        let ratio = median(cells[0][m].add_p99.clone()) / median(cells[1][m].add_p99.clone());
        println!("  concurrency {concurrency:>3}: ADD p99 ratio {ratio:.2}x");
    }
    if args.scale > 0 {
        scale(&lab, &tools, &pods[..args.scale]);
    }
}

/// `scale` pods added one at a time with each tool: ADD latency of the first and last hundred,
/// and the agent's RSS before and after.
fn scale(lab: &NodeLab, tools: &[Tool], pods: &[Netns]) {
    let node = &lab.nodes[0].ns;
    let n = pods.len();
    let window = (n / 10).clamp(1, 100);
    let agent = lab.service("n1").map(|s| s.pid()).unwrap_or(0);
    println!(
        "\n{n} pods on one node, added one at a time (ADD p50 / p99 ms of the first and the last {window}):"
    );
    for tool in tools {
        let before = rss_mb(agent);
        let mut latencies = Vec::with_capacity(n);
        for (i, pod) in pods.iter().enumerate() {
            latencies.push(call(node, tool, "ADD", pod, &format!("scale{i}")));
        }
        let after = rss_mb(agent);
        let stats = |part: &[Duration]| {
            let mut p = part.to_vec();
            p.sort();
            (percentile(&p, 0.5), percentile(&p, 0.99))
        };
        let (first, last) = (stats(&latencies[..window]), stats(&latencies[n - window..]));
        print!(
            "  {:<18} first {:>6.2} / {:>6.2}   last {:>6.2} / {:>6.2}   last/first p50 {:.2}x",
            tool.name,
            first.0,
            first.1,
            last.0,
            last.1,
            last.0 / first.0
        );
        if tool.name == "routeplane-cni" {
            println!(
                "   agent RSS {before:.1} -> {after:.1} MB: {:.1} MB per 1,000 pods",
                (after - before) * 1000.0 / n as f64
            );
        } else {
            println!();
        }
        for (i, pod) in pods.iter().enumerate() {
            call(node, tool, "DEL", pod, &format!("scale{i}"));
        }
    }
}
