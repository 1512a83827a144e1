//! routeplanectl against a real routeplane-ipam and routeplane-bgp on loopback (the one BGP peer,
//! 127.0.0.2 on a closed port, stays down: nothing leaves the machine): each command's table and
//! JSON/YAML, a drain seen in IPAM and in the feed, and the one-line errors — nothing listening, a
//! port that is not gRPC, a server of another kind, a refusal, bad arguments.

use std::net::SocketAddr;
use std::process::Command;

use routeplane_testkit::Service;
use routeplane_testkit::ipam::{VALUES, free_port, start_bgp, start_ipam};

const CTL: &str = env!("CARGO_BIN_EXE_routeplanectl");
const CONFIG: &str = "peers:\n  - peer-address: 127.0.0.2\n    peer-port: 1790\n    peer-asn: 64524\n    my-asn: 64513\n";

struct Stack {
    _dir: tempfile::TempDir,
    _ipam: Service,
    _bgp: Service,
    ipam: SocketAddr,
    bgp: SocketAddr,
    ipam_metrics: SocketAddr,
}

fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let (mut ipam_service, ipam) = start_ipam(dir.path(), VALUES, "127.0.0.1:0", &[]);
    let ipam_metrics = ipam_service.listen_addr("metrics");
    let (bgp_service, bgp, _) = start_bgp(
        dir.path(),
        CONFIG,
        &format!("http://{ipam}"),
        &["--router-id", "10.0.0.1", "--connect-retry", "1s"],
    );
    Stack {
        _dir: dir,
        _ipam: ipam_service,
        _bgp: bgp_service,
        ipam,
        bgp,
        ipam_metrics,
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(s: &Stack, args: &[&str]) -> Out {
    // The stack's addresses from the environment, so that a test's flag overrides them.
    let out = Command::new(CTL)
        .env("ROUTEPLANECTL_IPAM", format!("http://{}", s.ipam))
        .env("ROUTEPLANECTL_BGP", format!("http://{}", s.bgp))
        .args(args)
        .env_remove("ROUTEPLANECTL_CONFIG")
        .output()
        .expect("routeplanectl runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(s: &Stack, args: &[&str]) -> String {
    let out = ctl(s, args);
    assert_eq!(out.code, 0, "{args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
}

fn json(s: &Stack, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(s, &all)).expect("JSON")
}

/// A failure: non-zero, nothing on stdout, exactly one line on stderr; that line.
fn fails(s: &Stack, args: &[&str], code: i32) -> String {
    let out = ctl(s, args);
    assert_eq!(out.code, code, "{args:?}: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{args:?}: {}",
        out.stderr
    );
    out.stderr
}

fn grpc(s: &Stack, method: &str, body: &str) -> serde_json::Value {
    routeplane_testkit::grpcurl(
        None,
        &s.ipam.to_string(),
        &format!("routeplane.ipam.v1.Ipam/{method}"),
        body,
    )
    .unwrap_or_else(|e| panic!("{method}: {e}"))
}

#[test]
fn every_command_prints_a_table_and_json_against_real_services() {
    let s = stack();
    grpc(
        &s,
        "RegisterNode",
        r#"{"name": "n1", "addresses": ["10.4.94.11"]}"#,
    );
    grpc(
        &s,
        "RegisterNode",
        r#"{"name": "n2", "addresses": ["10.4.94.12"], "labels": {"kubernetes/route": "bgp-peer-83"}}"#,
    );
    for owner in ["a", "b", "c"] {
        grpc(
            &s,
            "AllocatePodIP",
            &format!(r#"{{"node": "n1", "owner": "default/{owner}"}}"#),
        );
    }

    // nodes
    let table = ok(&s, &["nodes"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("n1")
            && table.contains("n2")
            && table.contains("kubernetes/route=bgp-peer-83"),
        "{table}"
    );
    let nodes = json(&s, &["nodes"]);
    let n1 = &nodes["nodes"][0];
    assert_eq!(
        (n1["name"].as_str(), n1["ready"].as_bool()),
        (Some("n1"), Some(true)),
        "{nodes}"
    );
    let n1_cidr = n1["pod_cidrs"][0].as_str().unwrap().to_string();

    // ipam show: the pool's and each node's usage
    let usage = json(&s, &["ipam", "show"]);
    assert_eq!(usage["pod_pools"][0]["cidr"], "172.20.0.0/14", "{usage}");
    assert_eq!(usage["pod_pools"][0]["node_cidrs_used"], 2, "{usage}");
    assert_eq!(usage["pod_pools"][0]["node_cidrs_total"], 1024, "{usage}");
    assert_eq!(usage["nodes"][0]["pod_ips_used"], 3, "{usage}");
    assert_eq!(
        (
            &usage["nodes"][1]["node"],
            &usage["nodes"][1]["pod_ips_used"]
        ),
        (&serde_json::json!("n2"), &serde_json::json!(0)),
        "{usage}"
    );
    assert_eq!(
        usage["nodes"][0]["pod_ips_capacity"], 253,
        "a /24 less network, router, broadcast"
    );
    let table = ok(&s, &["ipam", "show"]);
    assert!(
        table.contains("2/1024") && table.contains("3/253 (1%)"),
        "{table}"
    );

    // drain, in IPAM, in the table, in YAML, in the feed
    // The current revision, from the feed's snapshot.
    let snapshot = ok(&s, &["watch", "--count", "1", "-o", "json"]);
    let snapshot: serde_json::Value = serde_json::from_str(snapshot.trim()).expect("one JSON line");
    assert_eq!(snapshot["kind"], "snapshot", "{snapshot}");
    let before = snapshot["revision"].to_string();
    let out = ctl(&s, &["drain", "n1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Draining"), "{}", out.stdout);
    assert!(out.stderr.contains("GRACEFUL_SHUTDOWN"), "{}", out.stderr);
    assert_eq!(grpc(&s, "GetNode", r#"{"name": "n1"}"#)["draining"], true);
    let yaml = ok(&s, &["nodes", "-o", "yaml"]);
    assert!(yaml.contains("draining: true"), "{yaml}");
    let fed = ok(
        &s,
        &[
            "watch",
            "--from-revision",
            &before,
            "--count",
            "1",
            "-o",
            "json",
        ],
    );
    let event: serde_json::Value = serde_json::from_str(fed.trim()).expect("one JSON line");
    assert_eq!(
        (event["kind"].as_str(), event["node"]["draining"].as_bool()),
        (Some("node-updated"), Some(true)),
        "{fed}"
    );
    let snapshot = ok(&s, &["watch", "--count", "1"]);
    assert!(
        snapshot.contains("snapshot") && snapshot.contains("2 nodes"),
        "{snapshot}"
    );
    ok(&s, &["drain", "n1", "--cancel"]);
    assert_eq!(
        grpc(&s, "GetNode", r#"{"name": "n1"}"#)["draining"],
        serde_json::Value::Null,
        "false is left out"
    );

    // BGP: the peer, its (empty) routes, why n1's CIDR is not sent
    let peers = json(&s, &["peers"]);
    assert_eq!(peers["peers"][0]["peer"], "127.0.0.2", "{peers}");
    assert_ne!(peers["peers"][0]["state"], "established");
    let table = ok(&s, &["peers"]);
    assert!(
        table.starts_with("PEER") && table.contains("64524"),
        "{table}"
    );
    let routes = json(&s, &["routes", "advertised"]);
    assert_eq!(routes["routes"], serde_json::json!([]), "{routes}");
    let received = ctl(&s, &["routes", "received"]);
    assert_eq!(received.code, 0, "{}", received.stderr);
    assert!(
        received.stderr.contains("note: 127.0.0.2") && received.stderr.contains("keep-received"),
        "{}",
        received.stderr
    );
    let why = ok(&s, &["explain", &n1_cidr]);
    assert!(
        why.contains("of node n1") && why.contains("127.0.0.2") && why.contains("not established"),
        "{why}"
    );
}

#[test]
fn failures_are_one_line_naming_the_endpoint_and_what_was_wrong() {
    let s = stack();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let line = fails(&s, &["--ipam", &closed, "nodes"], 1);
    assert!(
        line.contains("cannot reach routeplane-ipam at")
            && line.contains(&closed)
            && line.contains("refused"),
        "{line}"
    );

    let http = format!("http://{}", s.ipam_metrics);
    let line = fails(&s, &["--ipam", &http, "nodes"], 1);
    assert!(
        line.contains(&http) && line.contains("gRPC"),
        "a port that is not gRPC: {line}"
    );

    let other = format!("http://{}", s.bgp);
    let line = fails(&s, &["--ipam", &other, "nodes"], 1);
    assert!(
        line.contains("is not routeplane-ipam") && line.contains("routeplane-bgp"),
        "{line}"
    );
    let line = fails(&s, &["--bgp", &format!("http://{}", s.ipam), "peers"], 1);
    assert!(
        line.contains("is not routeplane-bgp") && line.contains("routeplane-ipam"),
        "{line}"
    );

    let line = fails(&s, &["drain", "n9"], 1);
    assert!(line.contains("NotFound") && line.contains("n9"), "{line}");
    let line = fails(&s, &["routes", "received", "--peer", "127.0.0.2"], 1);
    assert!(line.contains("FailedPrecondition"), "{line}");

    let line = fails(&s, &["--ipam", "http://192.0.2.1:50051", "nodes"], 2);
    assert!(
        line.contains("TLS") || line.contains("insecure"),
        "plaintext off loopback: {line}"
    );
    let out = ctl(&s, &["-o", "xml", "nodes"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("xml"), "{}", out.stderr);
}
