//! routeplane-bgp without root: its API and its startup checks, with a real routeplane-ipam on
//! loopback keeping the peers and paths added through the API — shared by two replicas and kept
//! across restarts. The one peer configured here is 127.0.0.2 on a closed port, and the peers
//! added are 127.0.0.x too, so nothing leaves the machine and the sessions stay down.

use std::process::Command;
use std::time::Duration;

use routeplane_testkit::Service;

const CONFIG: &str = "peers:\n  - peer-address: 127.0.0.2\n    peer-port: 1790\n    peer-asn: 64524\n    my-asn: 64513\n";

struct Server {
    process: Service,
    grpc: String,
    metrics: String,
    /// The IPAM this server started for itself, if it did.
    _ipam: Option<Service>,
}

fn command(dir: &std::path::Path, config: &str, ipam: &str, extra: &[&str]) -> Command {
    let path = dir.join("bgp-config.yaml");
    std::fs::write(&path, config).unwrap();
    routeplane_testkit::ipam::bgp_command(&path, ipam, extra)
}

const ARGS: [&str; 6] = [
    "--router-id",
    "10.0.0.1",
    "--connect-retry",
    "1s",
    "--announce-allow",
    "192.0.2.0/24,198.51.100.0/24,203.0.113.0/24",
];

fn start(dir: &std::path::Path) -> Server {
    start_with(dir, &ARGS)
}

/// routeplane-bgp with an IPAM of its own.
fn start_with(dir: &std::path::Path, args: &[&str]) -> Server {
    let (ipam, addr) = start_ipam(dir, "127.0.0.1:0");
    let mut server = start_on(dir, &format!("http://{addr}"), args);
    server._ipam = Some(ipam);
    server
}

fn start_ipam(dir: &std::path::Path, listen: &str) -> (Service, std::net::SocketAddr) {
    let dir = dir.join("ipam");
    std::fs::create_dir_all(&dir).unwrap();
    routeplane_testkit::ipam::start_ipam(&dir, routeplane_testkit::ipam::VALUES, listen, &[])
}

/// routeplane-bgp following the IPAM at `ipam`, its files in `dir`.
fn start_on(dir: &std::path::Path, ipam: &str, args: &[&str]) -> Server {
    let mut process = Service::start("routeplane-bgp", command(dir, CONFIG, ipam, args));
    let grpc = process.listen_addr("gRPC").to_string();
    let metrics = process.listen_addr("metrics").to_string();
    Server {
        process,
        grpc,
        metrics,
        _ipam: None,
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
        // Refused before IPAM is dialled: nothing listens there.
        let out = command(dir.path(), config, "http://127.0.0.1:9", extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // No router ID and no IPv4 address toward any peer to take one from.
    let err = run(&CONFIG.replace("127.0.0.2", "::1"), &[]);
    assert!(
        err.contains("peer ::1: no BGP identifier") && err.contains("--router-id"),
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

/// Issue #15 part 5: the seed's bgp-config has no router ID; without --router-id routeplane-bgp
/// takes the IPv4 address it uses toward its peers, as BIRD and MetalLB do, and says so.
#[test]
fn without_a_router_id_the_address_toward_the_peers_is_taken_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), &ARGS[2..]);
    let (ok, out) = grpcurl(&server, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["peers"][0]["routerId"].as_str(),
        Some("127.0.0.1"),
        "{out}"
    );
    let log = server.process.log();
    assert!(
        log.contains("router ID 127.0.0.1") && log.contains("toward peer 127.0.0.2"),
        "{log}"
    );
    // A reload whose first peer would give another address keeps the identity it started with.
    let first = "peers:\n  - peer-address: 127.0.0.3\n    peer-port: 1790\n    peer-asn: 64524\n    my-asn: 64513\n    source-address: 127.0.0.9\n";
    let config = format!("{first}{}", CONFIG.trim_start_matches("peers:\n"));
    std::fs::write(dir.path().join("bgp-config.yaml"), config).unwrap();
    server.process.signal("-HUP");
    let (ids, _) =
        routeplane_testkit::wait_until("the reloaded peer listed", Duration::from_secs(15), || {
            let (ok, out) = grpcurl(&server, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
            let peers = v["peers"].as_array().cloned().unwrap_or_default();
            if ok && peers.len() == 2 {
                Ok(peers
                    .iter()
                    .map(|p| p["routerId"].as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>())
            } else {
                Err(out)
            }
        });
    assert_eq!(ids, ["127.0.0.1", "127.0.0.1"]);
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

/// Issue #13 part 6: two replicas on one IPAM. A peer added and a path announced on one are on
/// both; a replica restarted, or IPAM restarted under them, still has them; deleted on the other
/// replica, they leave both. A replica whose --announce-allow is narrower leaves out a path it may
/// not announce, and counts it.
#[test]
fn operator_state_is_shared_by_replicas_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ipam, ipam_addr) = start_ipam(dir.path(), "127.0.0.1:0");
    let endpoint = format!("http://{ipam_addr}");
    let (dir_a, dir_b, dir_c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for d in [&dir_a, &dir_b, &dir_c] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut a = start_on(&dir_a, &endpoint, &ARGS);
    let b = start_on(&dir_b, &endpoint, &ARGS);
    let call = |server: &Server, method: &str, body: &str| {
        grpcurl(server, &format!("routeplane.bgp.v1.Bgp/{method}"), body)
    };
    let source_of = |server: &Server, peer: &str| -> Option<String> {
        let (ok, out) = call(server, "ListPeers", "{}");
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peerAddress"] == peer)
            .map(|p| p["source"].as_str().unwrap_or_default().to_string())
    };
    let explains = |server: &Server, prefix: &str| {
        let (ok, out) = call(
            server,
            "ExplainPrefix",
            &format!(r#"{{"prefix": "{prefix}"}}"#),
        );
        ok && out.contains("operator path")
    };
    let limit = Duration::from_secs(15);

    let (ok, out) = call(
        &a,
        "AddPeer",
        r#"{"peerAddress": "127.0.0.5", "peerPort": 1791, "peerAsn": 64600, "myAsn": 64513, "password": "s3cret"}"#,
    );
    assert!(ok && out.contains("\"source\": \"api\""), "{out}");
    // AddPeer answers once the replica it was sent to has applied it; the other follows the feed.
    assert_eq!(source_of(&a, "127.0.0.5").as_deref(), Some("api"));
    routeplane_testkit::wait_for("replica B has the peer added on A", limit, || {
        source_of(&b, "127.0.0.5").as_deref() == Some("api")
    });
    let (ok, out) = call(
        &b,
        "AddPeer",
        r#"{"peerAddress": "127.0.0.5", "peerAsn": 64601, "myAsn": 64513}"#,
    );
    assert!(
        !ok && out.contains("AlreadyExists") && out.contains("127.0.0.5 is already a peer"),
        "the same address added on the other replica: {out}"
    );
    let (ok, out) = call(
        &a,
        "AnnouncePath",
        r#"{"prefix": "192.0.2.0/24", "nextHop": "10.4.36.11", "communities": ["64512:7"]}"#,
    );
    assert!(ok, "{out}");
    assert!(explains(&a, "192.0.2.0/24"), "applied on A when answered");
    routeplane_testkit::wait_for("replica B announces the path from A", limit, || {
        explains(&b, "192.0.2.0/24")
    });

    // A replica restarted takes its operator state back from IPAM.
    a.process.terminate();
    drop(a);
    let a = start_on(&dir_a, &endpoint, &ARGS);
    routeplane_testkit::wait_for(
        "restarted replica A has the peer and the path",
        limit,
        || source_of(&a, "127.0.0.5").as_deref() == Some("api") && explains(&a, "192.0.2.0/24"),
    );
    let (ok, out) = call(&a, "GetPeer", r#"{"peerAddress": "127.0.0.5"}"#);
    assert!(
        ok && out.contains("\"tcpMd5\": true") && out.contains("64600"),
        "the peer as it was added, password included: {out}"
    );

    // A replica that may announce less leaves out what it may not, and says so.
    let narrow = [
        "--router-id",
        "10.0.0.1",
        "--announce-allow",
        "203.0.113.0/24",
    ];
    let c = start_on(&dir_c, &endpoint, &narrow);
    routeplane_testkit::wait_for("replica C has the peer but not the path", limit, || {
        source_of(&c, "127.0.0.5").is_some()
    });
    assert!(
        !explains(&c, "192.0.2.0/24"),
        "outside C's --announce-allow"
    );
    let metrics = routeplane_testkit::scrape(None, &c.metrics).unwrap();
    assert_eq!(
        routeplane_testkit::metric_sample(
            &metrics,
            "routeplane_bgp_operator_entries_refused_total"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        c.process
            .log()
            .contains("192.0.2.0/24 is outside the ranges operators may announce"),
        "{}",
        c.process.log()
    );

    // IPAM restarted on the same store and address: the replicas follow it again, nothing lost.
    ipam.terminate();
    drop(ipam);
    let (_ipam, again) = start_ipam(dir.path(), &ipam_addr.to_string());
    assert_eq!(again, ipam_addr);
    routeplane_testkit::wait_for("every replica follows IPAM again", limit, || {
        [&a, &b, &c].iter().all(|s| {
            routeplane_testkit::scrape(None, &s.metrics).is_ok_and(|m| {
                routeplane_testkit::metric_sample(&m, "routeplane_bgp_ipam_connected") == Some(1.0)
            })
        })
    });
    assert!(explains(&b, "192.0.2.0/24"), "kept across IPAM's restart");
    let (ok, out) = call(&b, "WithdrawPath", r#"{"prefix": "192.0.2.0/24"}"#);
    assert!(ok && out.contains("\"withdrawn\": true"), "{out}");
    let (ok, out) = call(&b, "DeletePeer", r#"{"peerAddress": "127.0.0.5"}"#);
    assert!(ok, "{out}");
    routeplane_testkit::wait_for(
        "both replicas let go of the peer and the path",
        limit,
        || {
            [&a, &b, &c]
                .iter()
                .all(|s| source_of(s, "127.0.0.5").is_none())
                && !explains(&a, "192.0.2.0/24")
        },
    );
    let (ok, out) = call(&a, "DeletePeer", r#"{"peerAddress": "127.0.0.5"}"#);
    assert!(!ok && out.contains("NotFound"), "deleted already: {out}");
    // The file's peer stays on every replica.
    assert_eq!(source_of(&a, "127.0.0.2").as_deref(), Some("file"));
}

/// Issue #14: routeplane-bgp given two IPAM replicas on etcd (`--ipam A,B`). The leading replica
/// killed, AddPeer reaches the one that took over, and the peer added before is still applied
/// (the feed resumed there by revision, from the history in etcd).
#[test]
fn operator_calls_and_the_feed_move_to_the_ipam_replica_that_took_over() {
    use routeplane_testkit::etcd::EtcdCluster;
    use routeplane_testkit::ipam::{VALUES, free_port, spawn_etcd_replica};
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let (pa, pb) = (free_port(), free_port());
    let replica = |name: &str, port| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        spawn_etcd_replica(&d, VALUES, port, &cluster.endpoints(), "/bgp/", &[])
    };
    let mut a = replica("ipam-a", pa);
    a.listen_addr("gRPC");
    let mut b = replica("ipam-b", pb);
    routeplane_testkit::wait_for("b standing by", Duration::from_secs(20), || {
        b.log().contains("standby")
    });
    let bgp_dir = dir.path().join("bgp");
    std::fs::create_dir_all(&bgp_dir).unwrap();
    let ipam = format!("http://127.0.0.1:{pa},http://127.0.0.1:{pb}");
    let server = start_on(&bgp_dir, &ipam, &ARGS);
    let add = |peer: &str| {
        let body = format!(
            r#"{{"peerAddress": "{peer}", "peerPort": 1791, "peerAsn": 64600, "myAsn": 64513}}"#
        );
        grpcurl(&server, "routeplane.bgp.v1.Bgp/AddPeer", &body)
    };
    let (ok, out) = add("127.0.0.5");
    assert!(ok, "{out}");

    a.kill9();
    b.listen_addr("gRPC");
    // The first call after the kill may meet the broken connection: it is retried once on a new
    // one; a caller that still sees UNAVAILABLE tries again.
    let (_, took) = routeplane_testkit::wait_until(
        "AddPeer stored through the replica that took over",
        Duration::from_secs(15),
        || match add("127.0.0.6") {
            (true, _) => Ok(()),
            (false, out) if out.contains("Unavailable") => Err(out),
            (false, out) => panic!("refused for another reason: {out}"),
        },
    );
    println!("AddPeer stored through the new IPAM leader {took:?} after it led");
    let (ok, out) = grpcurl(&server, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
    assert!(ok, "{out}");
    for peer in ["127.0.0.5", "127.0.0.6"] {
        assert!(out.contains(peer), "{peer} missing: {out}");
    }
    let stored = cluster.get_prefix("/bgp/o/");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(b.log().contains("leading:"), "{}", b.log());
}
