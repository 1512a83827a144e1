//! `routeplane-ipam --probe`, as the Kubernetes exec probes in k8s/ run it: exit 0 while the server
//! on that port answers grpc.health.v1 SERVING, 1 with the reason when nothing listens there.

mod common;

use std::process::Command;

use common::Server;

fn probe(port: u16) -> (bool, String) {
    common::output_text(
        Command::new(common::BIN)
            .args(["--probe", "--grpc-listen", &format!("0.0.0.0:{port}")])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
}

#[test]
fn the_probe_passes_against_a_serving_server_and_fails_once_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let port = server.grpc.port();
    let (ok, text) = probe(port);
    assert!(ok, "probe of a serving IPAM failed: {text}");
    server.terminate();
    let (ok, text) = probe(port);
    assert!(!ok, "probe passed with no server");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "the failure names the address: {text}"
    );
}
