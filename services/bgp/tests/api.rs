//! routeplane-bgp without root: its API and its startup checks. The one peer configured here is
//! 127.0.0.2 on a closed port, so nothing leaves the machine and the session stays down.

use std::process::Command;
use std::time::Duration;

use routeplane_testkit::Service;

const BIN: &str = env!("CARGO_BIN_EXE_routeplane-bgp");
const CONFIG: &str = "peers:\n  - peer-address: 127.0.0.2\n    peer-port: 1790\n    peer-asn: 64524\n    my-asn: 64513\n";

struct Server {
    _process: Service,
    grpc: String,
}

fn command(dir: &std::path::Path, config: &str, extra: &[&str]) -> Command {
    let path = dir.join("bgp-config.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--bgp-config",
        path.to_str().unwrap(),
        "--bgp-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    // Nothing listens there: the feed keeps retrying, which these tests do not need.
    .args(["--ipam", "http://127.0.0.1:9"])
    .args(extra)
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd
}

fn start(dir: &std::path::Path) -> Server {
    start_with(
        dir,
        &[
            "--router-id",
            "10.0.0.1",
            "--connect-retry",
            "1s",
            "--announce-allow",
            "192.0.2.0/24,198.51.100.0/24,203.0.113.0/24",
        ],
    )
}

fn start_with(dir: &std::path::Path, args: &[&str]) -> Server {
    let mut process = Service::start("routeplane-bgp", command(dir, CONFIG, args));
    let grpc = process.listen_addr("gRPC").to_string();
    Server {
        _process: process,
        grpc,
    }
}

fn grpcurl(server: &Server, method: &str, body: &str) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-max-time",
            "10",
            "-d",
            body,
            &server.grpc,
            method,
        ])
        .output()
        .expect("grpcurl is not installed: run scripts/test, which installs it");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn peers_are_listed_with_their_state_and_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    routeplane_testkit::wait_until(
        "the connect error is reported",
        Duration::from_secs(15),
        || {
            let (ok, out) = grpcurl(&server, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
            assert!(ok, "{out}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let peer = &v["peers"][0];
            assert_eq!(
                (
                    peer["peerAddress"].as_str(),
                    peer["localAsn"].as_u64(),
                    peer["peerAsn"].as_u64()
                ),
                (Some("127.0.0.2"), Some(64513), Some(64524))
            );
            assert_ne!(peer["sessionState"], "established");
            if peer["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("connect to 127.0.0.2:1790"))
            {
                Ok(())
            } else {
                Err(format!("no connect error reported: {v}"))
            }
        },
    );
}

#[test]
fn errors_name_the_value_and_what_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (ok, out) = grpcurl(
        &server,
        "routeplane.bgp.v1.Bgp/GetPeer",
        r#"{"peerAddress": "10.9.9.9"}"#,
    );
    assert!(
        !ok && out.contains("NotFound")
            && out.contains("10.9.9.9 is not a configured peer; peers are: 127.0.0.2"),
        "{out}"
    );
    let (ok, out) = grpcurl(
        &server,
        "routeplane.bgp.v1.Bgp/ListAdvertised",
        r#"{"peerAddress": "peer-one"}"#,
    );
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("\"peer-one\" is not an IP address"),
        "{out}"
    );
    let (ok, out) = grpcurl(
        &server,
        "routeplane.bgp.v1.Bgp/ExplainPrefix",
        r#"{"prefix": "10.5.112.0/33"}"#,
    );
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("prefix length 33"),
        "{out}"
    );
    let (ok, out) = grpcurl(
        &server,
        "routeplane.bgp.v1.Bgp/ExplainPrefix",
        r#"{"prefix": "10.5.112.0/24"}"#,
    );
    assert!(
        !ok && out.contains("NotFound") && out.contains("neither a node's pod CIDR"),
        "{out}"
    );
    let list = Command::new("grpcurl")
        .args(["-plaintext", &server.grpc, "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.lines().any(|l| l == "routeplane.bgp.v1.Bgp")
            && list.lines().any(|l| l == "grpc.health.v1.Health"),
        "{list}"
    );
}

#[test]
fn startup_refuses_what_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str, extra: &[&str]| {
        let out = command(dir.path(), config, extra).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(CONFIG, &[]);
    assert!(
        err.contains("peer 127.0.0.2: no BGP identifier") && err.contains("--router-id"),
        "{err}"
    );
    let err = run(
        &CONFIG.replace("peer-asn", "peer-as"),
        &["--router-id", "10.0.0.1"],
    );
    assert!(err.contains("unknown field `peer-as`"), "{err}");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "bgp:\n  announce:\n    podCIDR: maybe\n").unwrap();
    let err = run(
        CONFIG,
        &[
            "--router-id",
            "10.0.0.1",
            "--values",
            values.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("bgp.announce.podCIDR: maybe is not valid: true or false"),
        "{err}"
    );
}

#[test]
fn peers_and_paths_can_be_added_and_removed_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let call = |method: &str, body: &str| {
        grpcurl(&server, &format!("routeplane.bgp.v1.Bgp/{method}"), body)
    };

    let (ok, out) = call(
        "AddPeer",
        r#"{"peerAddress": "127.0.0.5", "peerPort": 1791, "peerAsn": 64600, "myAsn": 64513, "holdTime": "30s"}"#,
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["peerAddress"].as_str(), v["peerAsn"].as_u64()),
        (Some("127.0.0.5"), Some(64600))
    );
    // Where each peer comes from.
    assert_eq!(v["source"], "api", "{out}");
    let (ok, out) = call("ListPeers", "{}");
    assert!(ok, "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sources: Vec<(&str, &str)> = listed["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["peerAddress"].as_str().unwrap(),
                p["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [("127.0.0.2", "file"), ("127.0.0.5", "api")],
        "{out}"
    );
    let (ok, out) = call(
        "AddPeer",
        r#"{"peerAddress": "127.0.0.5", "peerAsn": 64600, "myAsn": 64513}"#,
    );
    assert!(
        !ok && out.contains("AlreadyExists") && out.contains("127.0.0.5 is already a peer"),
        "{out}"
    );
    let (ok, out) = call(
        "AddPeer",
        r#"{"peerAddress": "127.0.0.6", "peerAsn": 0, "myAsn": 64513}"#,
    );
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("peer-asn: 0 is not valid"),
        "{out}"
    );
    let (ok, out) = call(
        "AddPeer",
        r#"{"peerAddress": "127.0.0.6", "peerAsn": 1, "myAsn": 2, "holdTime": "2s"}"#,
    );
    assert!(!ok && out.contains("hold-time"), "{out}");
    // routeplane's own keys, checked by the same code as the file's.
    let (ok, out) = call(
        "AddPeer",
        r#"{"peerAddress": "127.0.0.6", "peerAsn": 1, "myAsn": 2, "ttlSecurity": true, "ebgpMultihop": true}"#,
    );
    assert!(
        !ok && out.contains("ttl-security: true is not valid: false when ebgp-multihop is true"),
        "{out}"
    );
    let (ok, out) = call(
        "AddPeer",
        r#"{"peerAddress": "127.0.0.6", "peerAsn": 1, "myAsn": 2, "maxPrefixes": 5, "ttlSecurity": true}"#,
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["maxPrefixes"].as_u64(), v["ttlSecurity"].as_bool()),
        (Some(5), Some(true)),
        "{out}"
    );
    let (ok, out) = call("DeletePeer", r#"{"peerAddress": "127.0.0.6"}"#);
    assert!(ok, "{out}");
    let (ok, out) = call("ListPeers", "{}");
    assert!(ok && out.contains("127.0.0.5"), "{out}");
    let (ok, out) = call("DeletePeer", r#"{"peerAddress": "127.0.0.5"}"#);
    assert!(ok, "{out}");
    let (ok, out) = call("DeletePeer", r#"{"peerAddress": "127.0.0.5"}"#);
    assert!(
        !ok && out.contains("NotFound") && out.contains("peers are: 127.0.0.2"),
        "{out}"
    );

    let (ok, out) = call(
        "AnnouncePath",
        r#"{"prefix": "192.0.2.0/24", "nextHop": "fd00::1"}"#,
    );
    assert!(!ok && out.contains("different families"), "{out}");
    let (ok, out) = call(
        "AnnouncePath",
        r#"{"prefix": "192.0.2.0/24", "nextHop": "10.4.36.11", "communities": ["64512:x"]}"#,
    );
    assert!(!ok && out.contains("community \"64512:x\""), "{out}");
    let (ok, out) = call(
        "AnnouncePath",
        r#"{"prefix": "0.0.0.0/0", "nextHop": "10.4.36.11"}"#,
    );
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("0.0.0.0/0 is a default route"),
        "{out}"
    );
    let (ok, out) = call(
        "AnnouncePath",
        r#"{"prefix": "192.0.2.0/24", "nextHop": "127.0.0.1"}"#,
    );
    assert!(
        !ok && out.contains("nextHop 127.0.0.1 is not an address routers can forward to"),
        "{out}"
    );
    // --announce-allow: inside one of its ranges or not at all, in a stream too.
    let (ok, out) = call(
        "AnnouncePath",
        r#"{"prefix": "10.5.112.0/24", "nextHop": "10.4.36.11"}"#,
    );
    assert!(
        !ok && out.contains("PermissionDenied")
            && out.contains("prefix 10.5.112.0/24 is outside the ranges operators may announce (--announce-allow 192.0.2.0/24,198.51.100.0/24,203.0.113.0/24)"),
        "{out}"
    );
    let (ok, out) = call(
        "AnnouncePath",
        r#"{"prefix": "192.0.0.0/16", "nextHop": "10.4.36.11"}"#,
    );
    assert!(
        !ok && out.contains("outside the ranges"),
        "wider than its range: {out}"
    );
    let (ok, out) = call(
        "AnnouncePaths",
        r#"{"prefix": "198.51.100.0/24", "nextHop": "10.4.36.11"} {"prefix": "10.0.0.0/8", "nextHop": "10.4.36.11"}"#,
    );
    assert!(
        !ok && out.contains("item 1: prefix 10.0.0.0/8 is outside"),
        "{out}"
    );
    let (ok, out) = call(
        "AnnouncePath",
        r#"{"prefix": "192.0.2.0/24", "nextHop": "10.4.36.11"}"#,
    );
    assert!(ok, "{out}");
    let (ok, out) = call("ExplainPrefix", r#"{"prefix": "192.0.2.0/24"}"#);
    assert!(
        ok && out.contains("operator path") && out.contains("not established"),
        "{out}"
    );
    // A client stream of three paths, one of them bad: nothing is applied.
    let (ok, out) = call(
        "AnnouncePaths",
        r#"{"prefix": "198.51.100.0/24", "nextHop": "10.4.36.11"} {"prefix": "banana", "nextHop": "10.4.36.11"}"#,
    );
    assert!(!ok && out.contains("item 1: prefix"), "{out}");
    let (ok, out) = call("WithdrawPath", r#"{"prefix": "198.51.100.0/24"}"#);
    assert!(
        ok && !out.contains("true"),
        "the bad stream applied nothing: {out}"
    );
    let (ok, out) = call(
        "AnnouncePaths",
        r#"{"prefix": "198.51.100.0/24", "nextHop": "10.4.36.11"} {"prefix": "203.0.113.0/24", "nextHop": "10.4.36.12"}"#,
    );
    assert!(ok && out.contains("\"accepted\": \"2\""), "{out}");
    let (ok, out) = call("WithdrawPath", r#"{"prefix": "192.0.2.0/24"}"#);
    assert!(ok && out.contains("\"withdrawn\": true"), "{out}");
    let (ok, out) = call("WithdrawPath", r#"{"prefix": "192.0.2.0/24"}"#);
    assert!(ok && !out.contains("true"), "{out}");
}

/// Without --announce-allow, operator paths are off, and the error says how to turn them on.
#[test]
fn announce_path_is_off_without_an_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), &["--router-id", "10.0.0.1"]);
    let (ok, out) = grpcurl(
        &server,
        "routeplane.bgp.v1.Bgp/AnnouncePath",
        r#"{"prefix": "192.0.2.0/24", "nextHop": "10.4.36.11"}"#,
    );
    assert!(
        !ok && out.contains("FailedPrecondition") && out.contains("start it with the ranges operators may announce, e.g. --announce-allow 192.0.2.0/24"),
        "{out}"
    );
}
