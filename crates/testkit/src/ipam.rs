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
    let mut ipam = Service::spawn("routeplane-ipam", None, &bin("routeplane-ipam"), &args);
    let addr = ipam.listen_addr("gRPC");
    (ipam, addr)
}
