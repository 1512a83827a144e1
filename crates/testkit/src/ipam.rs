//! routeplane-ipam on loopback, for tests that need a real one but no namespace: the watch
//! crate's follower, routeplane-bgp's API (whose operator state IPAM keeps).

use std::net::SocketAddr;
use std::path::Path;

use crate::process::{Service, bin};

/// Room for 1,024 nodes: 172.20.0.0/14 cut into /24s.
pub const VALUES: &str = "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDRList: [\"172.20.0.0/14\"]\n    clusterPoolIPv4MaskSize: 24\n";

/// Starts routeplane-ipam on `values`, keeping its store in `dir/data` (the same store again when
/// started again on the same `dir`), its gRPC server on `listen` (`127.0.0.1:0` for any port);
/// returns it with the address it answers on.
pub fn start_ipam(dir: &Path, values: &str, listen: &str, extra: &[&str]) -> (Service, SocketAddr) {
    let mut ipam = spawn("routeplane-ipam", dir, values, listen, extra);
    let addr = ipam.listen_addr("gRPC");
    (ipam, addr)
}

fn spawn(name: &str, dir: &Path, values: &str, listen: &str, extra: &[&str]) -> Service {
    let values_path = dir.join("values.yaml");
    std::fs::write(&values_path, values).expect("values.yaml");
    let data = dir.join("data");
    let mut args = vec![
        "--data-dir",
        data.to_str().unwrap_or_default(),
        "--values",
        values_path.to_str().unwrap_or_default(),
        "--grpc-listen",
        listen,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Service::spawn(name, None, &bin("routeplane-ipam"), &args)
}

/// A port on 127.0.0.1 free a moment ago: for a server whose address must be known before it
/// listens (an IPAM standby listens only once it leads).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A routeplane-ipam replica on etcd (`endpoints`, `prefix`) with `values`, its data in
/// `dir/data`, serving on 127.0.0.1:`port` once it leads (a 1 s lease: a dead leader is replaced
/// within about a second); not waited for, since a standby logs no address.
pub fn spawn_etcd_replica(
    dir: &Path,
    values: &str,
    port: u16,
    endpoints: &str,
    prefix: &str,
    extra: &[&str],
) -> Service {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints,
        "--etcd-prefix",
        prefix,
        "--etcd-lease-ttl",
        "1s",
    ];
    args.extend_from_slice(extra);
    let name = format!("routeplane-ipam replica {port}");
    spawn(&name, dir, values, &listen, &args)
}

/// The command that starts routeplane-bgp on loopback with the bgp-config at `config`, following
/// the IPAM at `ipam_url`, with `extra` flags: BGP, gRPC and metrics on ephemeral loopback ports,
/// so nothing leaves the machine.
pub fn bgp_command(config: &Path, ipam_url: &str, extra: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(bin("routeplane-bgp"));
    command
        .args(["--bgp-config", config.to_str().unwrap_or_default()])
        .args([
            "--bgp-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--ipam", ipam_url])
        .args(extra)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    command
}

/// routeplane-bgp (see [`bgp_command`]) with `config` as its bgp-config, written to
/// `dir/bgp-config.yaml`; returns it with its gRPC and metrics addresses.
pub fn start_bgp(
    dir: &Path,
    config: &str,
    ipam_url: &str,
    extra: &[&str],
) -> (Service, SocketAddr, SocketAddr) {
    let path = dir.join("bgp-config.yaml");
    std::fs::write(&path, config).expect("bgp-config.yaml");
    let mut bgp = Service::start("routeplane-bgp", bgp_command(&path, ipam_url, extra));
    let grpc = bgp.listen_addr("gRPC");
    let metrics = bgp.listen_addr("metrics");
    (bgp, grpc, metrics)
}
