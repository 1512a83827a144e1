//! How fast one BIRD learns N IPv4 prefixes from routeplane-bgp, loaded through its AnnouncePaths
//! stream (plaintext, and over mutual TLS 1.3 with scripts/certs' certificates), beside gobgpd,
//! loaded through its AddPathStream API — same BIRD, same namespaces, alternating runs, every
//! sender loaded before BIRD's session is enabled. Prints, per sender, the
//! median time from enabling the session to Established, from Established to all N imported
//! (BIRD's "Routes: N imported" counter), and the sender's peak RSS — alone, and with what it
//! needs to run (routeplane-bgp takes its routes from routeplane-ipam). Needs root (it builds its own
//! network namespaces; nothing leaves them). Run it through `bench/run-bgp`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use routeplane_api::bgp::v1 as pb;
use routeplane_bench::{median, sh};
use routeplane_runtime::dial::Dialer;
use routeplane_runtime::tls::{Security, Tls, TlsFiles};
use routeplane_testkit::Service;
use routeplane_testkit::certs::Certs;

#[derive(Debug, Parser)]
#[command(about = "BGP convergence: routeplane-bgp vs gobgpd into one BIRD")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Prefixes per run.
    #[arg(long, default_value_t = 100_000)]
    prefixes: u32,
    /// Runs per sender (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (Inside the routeplane namespace) stream N paths into routeplane-bgp's AnnouncePaths.
    Load {
        #[arg(long)]
        grpc: String,
        #[arg(long)]
        prefixes: u32,
        #[arg(long)]
        next_hop: String,
        /// Certificates (scripts/certs' layout) to dial https:// with, as operator/bench.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
    },
}

/// The senders, in the order each round runs them.
const SENDERS: [&str; 3] = ["routeplane-bgp", "routeplane-bgp mTLS", "gobgpd"];

const NS_BIRD: &str = "rpbench-bird";
const NS_RP: &str = "rpbench-rp";
const NS_GO: &str = "rpbench-gobgp";

fn topology() {
    for ns in [NS_BIRD, NS_RP, NS_GO] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    sh(&["ip", "-n", NS_BIRD, "link", "add", "core", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        NS_BIRD,
        "addr",
        "add",
        "10.4.36.239/24",
        "dev",
        "core",
    ]);
    sh(&["ip", "-n", NS_BIRD, "link", "set", "core", "up"]);
    for (ns, ip, n) in [(NS_RP, "10.4.36.10", "1"), (NS_GO, "10.4.36.20", "2")] {
        let (a, b) = (format!("rpbx{n}"), format!("rpby{n}"));
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        sh(&["ip", "link", "set", &a, "netns", ns]);
        sh(&["ip", "link", "set", &b, "netns", NS_BIRD]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &a,
        ]);
        sh(&["ip", "-n", ns, "link", "set", &a, "up"]);
        sh(&[
            "ip", "-n", NS_BIRD, "link", "set", &b, "master", "core", "up",
        ]);
    }
}

fn teardown() {
    for ns in [NS_BIRD, NS_RP, NS_GO] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

/// birdc; a refused command (or a BIRD that does not answer) ends the benchmark.
fn birdc(ctl: &Path, cmd: &str) -> String {
    routeplane_testkit::bird::birdc(None, ctl, cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Polled every 2 ms (not the harness's backing-off wait): these times are the measurement.
fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct Run {
    sender: &'static str,
    load: Duration,
    to_established: Duration,
    to_imported: Duration,
    /// Peak RSS of the sender itself, and of everything a user runs for it (routeplane-bgp
    /// takes its routes from routeplane-ipam; gobgpd is alone).
    rss_mb: f64,
    total_rss_mb: f64,
}

/// One run: fresh sender, N paths loaded, BIRD's protocol enabled, timed until all are imported.
fn run_once(sender: &'static str, n: u32, dir: &Path, bins: &Path, ctl: &Path) -> Run {
    let mut children: Vec<Service> = Vec::new();
    let (protocol, load) = if sender.starts_with("routeplane-bgp") {
        // Over mutual TLS: its gRPC API served with bgp/bgp's certificate, dialled as operator/bench.
        let certs = sender
            .ends_with("mTLS")
            .then(|| Certs::at(&dir.join("tls")));
        let cfg = dir.join("bgp-config.yaml");
        let data = dir.join(format!("ipam-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let ipam = bins.join("routeplane-ipam");
        children.push(Service::spawn(
            "routeplane-ipam",
            Some(NS_RP),
            &ipam,
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--bgp-config",
                cfg.to_str().unwrap(),
                "--grpc-listen",
                "127.0.0.1:50051",
                "--metrics-listen",
                "127.0.0.1:9951",
                "--log",
                "warn",
            ],
        ));
        let tls_flags = certs
            .as_ref()
            .map(|c| c.service_flags("bgp/bgp"))
            .unwrap_or_default();
        let mut bgp_args = vec![
            "--bgp-config",
            cfg.to_str().unwrap(),
            "--router-id",
            "10.4.36.10",
            "--bgp-listen",
            "10.4.36.10:179",
            "--grpc-listen",
            "127.0.0.1:50052",
            "--metrics-listen",
            "127.0.0.1:9952",
            // Where load() puts its /32s.
            "--announce-allow",
            "100.64.0.0/10",
            "--log",
            "warn",
        ];
        bgp_args.extend(tls_flags.iter().map(String::as_str));
        let bgp = Service::spawn(
            "routeplane-bgp",
            Some(NS_RP),
            &bins.join("routeplane-bgp"),
            &bgp_args,
        );
        children.push(bgp);
        let (url, tls_dir) = match &certs {
            Some(c) => (
                "https://127.0.0.1:50052",
                vec!["--tls-dir".to_string(), c.dir().display().to_string()],
            ),
            None => ("http://127.0.0.1:50052", Vec::new()),
        };
        let me = std::env::current_exe().unwrap();
        let started = Instant::now();
        let mut loaded = false;
        wait(
            "routeplane-bgp takes the paths",
            Duration::from_secs(120),
            || {
                let out = Command::new("ip")
                    .args(["netns", "exec", NS_RP])
                    .arg(&me)
                    .args([
                        "load",
                        "--grpc",
                        url,
                        "--prefixes",
                        &n.to_string(),
                        "--next-hop",
                        "10.4.36.10",
                    ])
                    .args(&tls_dir)
                    .output()
                    .unwrap();
                loaded = out.status.success();
                loaded
            },
        );
        ("rp", started.elapsed())
    } else {
        let gobgpd = Service::spawn(
            "gobgpd",
            Some(NS_GO),
            Path::new("gobgpd"),
            &[
                "-f",
                dir.join("gobgpd.toml").to_str().unwrap(),
                "-t",
                "toml",
                "--api-hosts",
                "127.0.0.1:50151",
                "-l",
                "warn",
            ],
        );
        children.push(gobgpd);
        let loader = bins.join("gobgp-loader");
        let started = Instant::now();
        wait("gobgpd takes the paths", Duration::from_secs(120), || {
            Command::new("ip")
                .args(["netns", "exec", NS_GO])
                .arg(&loader)
                .args(["-n", &n.to_string(), "-next-hop", "10.4.36.20"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        ("gobgp", started.elapsed())
    };
    // Times of day, in seconds: BIRD stamps its state changes with milliseconds ("Since"), so
    // Established comes from BIRD itself; the import count is polled every few milliseconds.
    let enabled = seconds_of_day();
    birdc(ctl, &format!("enable {protocol}"));
    let want = format!("{n} imported");
    let mut imported = 0.0;
    wait("BIRD imports everything", Duration::from_secs(300), || {
        let text = birdc(ctl, &format!("show protocols all {protocol}"));
        imported = seconds_of_day();
        text.contains(&want)
    });
    let text = birdc(ctl, &format!("show protocols {protocol}"));
    let since = text
        .lines()
        .find(|l| l.starts_with(protocol))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(parse_time_of_day)
        .unwrap_or(enabled);
    let to_established = Duration::from_secs_f64((since - enabled).max(0.0));
    let to_imported = Duration::from_secs_f64((imported - since).max(0.0));
    // The sender is the last process started; `ip netns exec` execs it, so the pid is its own.
    let rss_mb = children.last().map_or(0.0, |c| peak_rss_mb(c.pid()));
    let total_rss_mb = children.iter().map(|c| peak_rss_mb(c.pid())).sum();
    birdc(ctl, &format!("disable {protocol}"));
    drop(children);
    Run {
        sender,
        load,
        to_established,
        to_imported,
        rss_mb,
        total_rss_mb,
    }
}

/// Seconds since midnight, UTC (BIRD prints times of day in the machine's zone, UTC here).
fn seconds_of_day() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64() % 86_400.0
}

/// "08:20:12.345" as seconds since midnight.
fn parse_time_of_day(t: &str) -> Option<f64> {
    let mut parts = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

async fn load(
    grpc: String,
    prefixes: u32,
    next_hop: String,
    tls_dir: Option<PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    let dialer = match tls_dir {
        Some(dir) => {
            let certs = Certs::at(&dir);
            let (cert, key) = certs.pair("operator/bench");
            let ca = certs.ca();
            let tls = Tls::load(TlsFiles { ca, cert, key })?;
            Dialer::new(Security::Tls(std::sync::Arc::new(tls)))
        }
        None => Dialer::loopback_only(),
    };
    let mut client = pb::bgp_client::BgpClient::new(dialer.connect(&grpc).await?);
    let base = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0));
    let paths = (0..prefixes).map(move |i| pb::AnnouncePathRequest {
        prefix: format!("{}/32", std::net::Ipv4Addr::from(base + i)),
        next_hop: next_hop.clone(),
        ..Default::default()
    });
    let accepted = client
        .announce_paths(tokio_stream::iter(paths))
        .await?
        .into_inner()
        .accepted;
    if accepted != u64::from(prefixes) {
        return Err(format!("accepted {accepted} of {prefixes}").into());
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(Cmd::Load {
        grpc,
        prefixes,
        next_hop,
        tls_dir,
    }) = args.command
    {
        if let Err(e) = load(grpc, prefixes, next_hop, tls_dir).await {
            eprintln!("load: {e}");
            std::process::exit(1);
        }
        return;
    }
    let bins: PathBuf = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    Certs::new(&dir.path().join("tls"), &["bgp/bgp", "operator/bench"]);
    topology();
    let ctl = dir.path().join("bird.ctl");
    let bird_conf = "router id 10.4.36.239;\nprotocol device {}\ntemplate bgp sender {\n  local 10.4.36.239 as 64524;\n  disabled;\n  connect delay time 0;\n  ipv4 { import all; export none; };\n}\nprotocol bgp rp from sender { neighbor 10.4.36.10 as 64513; }\nprotocol bgp gobgp from sender { neighbor 10.4.36.20 as 64513; }\n";
    std::fs::write(dir.path().join("bird.conf"), bird_conf).unwrap();
    std::fs::write(dir.path().join("bgp-config.yaml"), "peers:\n  - peer-address: 10.4.36.239\n    peer-asn: 64524\n    my-asn: 64513\naddress-pools:\n  - {name: default, protocol: bgp, addresses: [10.5.120.0/24]}\n").unwrap();
    std::fs::write(
        dir.path().join("gobgpd.toml"),
        "[global.config]\n  as = 64513\n  router-id = \"10.4.36.20\"\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.4.36.239\"\n    peer-as = 64524\n  [neighbors.transport.config]\n    passive-mode = true\n",
    )
    .unwrap();
    let bird = Service::spawn(
        "bird",
        Some(NS_BIRD),
        Path::new("bird"),
        &[
            "-f",
            "-c",
            dir.path().join("bird.conf").to_str().unwrap(),
            "-s",
            ctl.to_str().unwrap(),
        ],
    );
    wait("BIRD starts", Duration::from_secs(10), || {
        routeplane_testkit::bird::birdc(None, &ctl, "show status")
            .is_ok_and(|s| s.contains("Daemon is up"))
    });
    println!(
        "{} prefixes per run, {} runs per sender, alternating; BIRD 2 receives, BIRD dials both senders",
        args.prefixes, args.rounds
    );
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for sender in SENDERS {
            let r = run_once(sender, args.prefixes, dir.path(), &bins, &ctl);
            println!(
                "  round {round} {:<20} load {:>6.2} s   enable→Established {:>6.3} s   Established→all imported {:>6.3} s   peak RSS {:>6.1} MB (with what it needs {:>6.1} MB)",
                r.sender,
                r.load.as_secs_f64(),
                r.to_established.as_secs_f64(),
                r.to_imported.as_secs_f64(),
                r.rss_mb,
                r.total_rss_mb
            );
            runs.push(r);
        }
    }
    drop(bird);
    teardown();
    let pick = |s: &str, f: fn(&Run) -> f64| {
        median(runs.iter().filter(|r| r.sender == s).map(f).collect())
    };
    println!(
        "\n{:<20} {:>18} {:>26} {:>14} {:>22}",
        "sender (median)",
        "to Established s",
        "Established→imported s",
        "peak RSS MB",
        "with what it needs MB"
    );
    for s in SENDERS {
        println!(
            "{:<20} {:>18.3} {:>26.3} {:>14.1} {:>22.1}",
            s,
            pick(s, |r| r.to_established.as_secs_f64()),
            pick(s, |r| r.to_imported.as_secs_f64()),
            pick(s, |r| r.rss_mb),
            pick(s, |r| r.total_rss_mb)
        );
    }
    let ratio = |f: fn(&Run) -> f64| pick("routeplane-bgp", f) / pick("gobgpd", f);
    println!("\ntargets (issue #3), routeplane-bgp / gobgpd:");
    println!(
        "  Established→all imported  {:>6.2}x  (target <= 1.0)",
        ratio(|r| r.to_imported.as_secs_f64())
    );
    println!(
        "  enable→Established        {:>6.2}x  (target <= 1.0)",
        ratio(|r| r.to_established.as_secs_f64())
    );
    println!(
        "  peak RSS                  {:>6.2}x  (target <= 0.25)",
        ratio(|r| r.rss_mb)
    );
    println!(
        "  peak RSS, routeplane-bgp + routeplane-ipam vs gobgpd  {:>6.2}x",
        ratio(|r| r.total_rss_mb)
    );
    println!(
        "\nmutual TLS (issue #12): {} paths loaded through AnnouncePaths (start-up included) in {:.2} s over mTLS, {:.2} s plaintext",
        args.prefixes,
        pick("routeplane-bgp mTLS", |r| r.load.as_secs_f64()),
        pick("routeplane-bgp", |r| r.load.as_secs_f64())
    );
}
