//! Filling the eBPF LPM map with N entries: routeplane-agent's datapath (its `sync`, as a start or
//! a big feed change runs it) vs `bpftool batch file` of the same updates, on the same pinned map
//! in a bpffs the benchmark mounts and unmounts (root needed; no traffic, no interface); and the
//! agent end to end (agent_e2e) with --datapath=ebpf: started cold beside an IPAM holding N nodes,
//! until all N are in its map. Alternating runs; medians and their ratios. Run it through
//! `bench/run-lpm`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use routeplane_agent::desired::Route;
use routeplane_agent::ebpf::Datapath;
use routeplane_bench::{median, sh, slash28};
use routeplane_net::Cidr;

#[derive(Debug, Parser)]
#[command(about = "eBPF LPM map fill: routeplane-agent's datapath vs bpftool batch")]
struct Args {
    /// Entry counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    entries: Vec<u32>,
    /// Runs per tool and count (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The end-to-end column only up to this many entries (IPAM registers that many nodes first).
    #[arg(long, default_value_t = 100_000)]
    e2e_max: u32,
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 2);
const IFINDEX: u32 = 1;

fn routes(n: u32) -> BTreeMap<Cidr, Route> {
    (0..n)
        .map(slash28)
        .map(|destination| {
            let route = Route {
                destination,
                gateway: Some(IpAddr::V4(GATEWAY)),
                ifindex: IFINDEX,
            };
            (destination, route)
        })
        .collect()
}

/// A datapath as a starting agent has it: the pinned map read afresh.
fn datapath(pins: &Path) -> Datapath {
    Datapath::attach(&[], pins).unwrap_or_else(|e| panic!("{e}"))
}

/// The map emptied (outside any timing) and checked.
fn clear(pins: &Path) {
    datapath(pins).sync(BTreeMap::new()).unwrap();
    assert!(
        datapath(pins).entries().expect("the map reads").is_empty(),
        "read back from the map"
    );
}

fn agent(pins: &Path, want: &BTreeMap<Cidr, Route>) -> Duration {
    let mut dp = datapath(pins);
    // The agent hands its freshly computed desired routes over; bpftool's file is written
    // before its clock starts too.
    let routes = want.clone();
    let started = Instant::now();
    let (written, _) = dp.sync(routes).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(written, want.len());
    // A fresh handle reads the map itself, not the agent's mirror of it.
    assert_eq!(
        datapath(pins).entries().expect("the map reads").len(),
        want.len(),
        "the agent filled the map"
    );
    elapsed
}

/// The same updates as `bpftool batch file`: key `struct lpm_v4`, value `struct nexthop_v4`,
/// byte by byte (x86: little-endian u32s).
fn bpftool(pins: &Path, n: u32, dir: &Path) -> Duration {
    let map = pins.join("rp_routes_v4");
    let file = dir.join(format!("fill-{n}.batch"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let [g0, g1, g2, g3] = GATEWAY.octets();
    let [i0, i1, i2, i3] = IFINDEX.to_le_bytes();
    for i in 0..n {
        let cidr = slash28(i);
        let IpAddr::V4(net) = cidr.network() else {
            unreachable!("slash28 is IPv4")
        };
        let [a, b, c, d] = net.octets();
        writeln!(
            f,
            "map update pinned {} key {} 0 0 0 {a} {b} {c} {d} value {i0} {i1} {i2} {i3} {g0} {g1} {g2} {g3}",
            map.display(),
            cidr.prefix_len()
        )
        .unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let started = Instant::now();
    sh(&["bpftool", "batch", "file", file.to_str().unwrap()]);
    let elapsed = started.elapsed();
    let dp = datapath(pins);
    assert_eq!(
        dp.entries().expect("the map reads").len(),
        n as usize,
        "bpftool filled the map"
    );
    elapsed
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let bpffs = dir.path().join("bpffs");
    std::fs::create_dir(&bpffs).unwrap();
    sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().unwrap()]);
    let pins = bpffs.join("routeplane");
    println!(
        "LPM trie rp_routes_v4 (pinned in {}), /28 keys; {} runs per tool, alternating",
        bpffs.display(),
        args.rounds
    );
    println!(
        "end to end: routeplane-agent --datapath=ebpf started cold in a namespace of its own, with routeplane-ipam holding N nodes, until its metrics show N map entries; up to {} entries",
        args.e2e_max
    );
    println!(
        "\n{:>8} {:>10} {:>14} {:>14} {:>8} {:>10}",
        "entries", "agent s", "agent e2e s", "bpftool s", "ratio", "e2e ratio"
    );
    for &n in &args.entries {
        let want = routes(n);
        let cluster = (n <= args.e2e_max).then(|| routeplane_bench::agent_e2e::Cluster::new(n));
        let (mut ours, mut theirs, mut e2e) = (vec![], vec![], vec![]);
        for _ in 0..args.rounds {
            clear(&pins);
            ours.push(agent(&pins, &want).as_secs_f64());
            clear(&pins);
            theirs.push(bpftool(&pins, n, dir.path()).as_secs_f64());
            if let Some(c) = &cluster {
                e2e.push(c.ebpf_routes().as_secs_f64());
            }
        }
        let (a, b) = (median(ours), median(theirs));
        let (e2e, e2e_ratio) = if e2e.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let e = median(e2e);
            (format!("{e:.3}"), format!("{:.2}x", e / b))
        };
        println!(
            "{n:>8} {a:>10.3} {e2e:>14} {b:>14.3} {:>7.2}x {e2e_ratio:>10}",
            a / b
        );
    }
    println!("\ntarget (issue #4): agent <= 0.2x bpftool batch");
    let _ = Command::new("umount").arg(&bpffs).output();
}
