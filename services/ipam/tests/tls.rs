//! routeplane-ipam with mutual TLS and authorization, against the real grpcurl and certificates
//! made by scripts/certs: who may call what, what a refusal says, files rotated while it runs, and
//! the start-up errors of missing, expired, foreign or mismatched files.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{Server, repo_file, run_to_exit};
use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::dial::Dialer;
use routeplane_runtime::tls::{Security, Tls, TlsFiles};
use routeplane_testkit::certs::Certs;
use routeplane_testkit::{grpcurl_with, wait_for};

const IDS: [&str; 5] = [
    "ipam/ipam",
    "agent/node-1",
    "bgp/bgp",
    "operator/admin",
    "reader/dashboard",
];

fn start(certs: &Certs, data: &Path) -> Server {
    start_with(certs, data, &[])
}

fn start_with(certs: &Certs, data: &Path, extra: &[&str]) -> Server {
    let values = repo_file("examples/seed/values.yaml");
    let mut args = vec!["--values".to_string(), values.display().to_string()];
    args.extend(certs.service_flags("ipam/ipam"));
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(data, &args)
}

/// grpcurl as `id` (None: with the CA only, no client certificate).
fn call(
    certs: &Certs,
    id: Option<&str>,
    addr: SocketAddr,
    method: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    let flags = match id {
        Some(id) => certs.grpcurl_flags(id),
        None => vec!["-cacert".into(), certs.ca().display().to_string()],
    };
    grpcurl_with(None, &flags, &addr.to_string(), method, body)
}

fn ipam(method: &str) -> String {
    format!("routeplane.ipam.v1.Ipam/{method}")
}

#[test]
fn each_identity_may_do_what_its_role_allows_and_a_refusal_names_it_and_the_method() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("tls"), &IDS);
    let server = start(&certs, &dir.path().join("data"));
    let addr = server.grpc;
    let register = |node: &str| {
        let host = node.trim_start_matches("node-");
        format!(r#"{{"name": "{node}", "addresses": ["10.4.94.1{host}"]}}"#)
    };

    // Health and reflection are open, even without a client certificate.
    let health = call(&certs, None, addr, "grpc.health.v1.Health/Check", "{}").unwrap();
    assert_eq!(health["status"], "SERVING");
    let refused = call(&certs, None, addr, &ipam("ListNodes"), "{}").unwrap_err();
    assert!(
        refused.contains("PermissionDenied")
            && refused.contains("a caller without a client certificate may not call /routeplane.ipam.v1.Ipam/ListNodes"),
        "{refused}"
    );
    // Plaintext does not reach a TLS listener at all.
    let plain = routeplane_testkit::grpcurl(None, &addr.to_string(), &ipam("ListNodes"), "{}");
    assert!(plain.is_err(), "{plain:?}");

    // An agent registers its own node, and no other.
    let node = call(
        &certs,
        Some("agent/node-1"),
        addr,
        &ipam("RegisterNode"),
        &register("node-1"),
    )
    .unwrap();
    assert_eq!(node["name"], "node-1");
    let other = call(
        &certs,
        Some("agent/node-1"),
        addr,
        &ipam("RegisterNode"),
        &register("node-2"),
    )
    .unwrap_err();
    assert!(
        other.contains("PermissionDenied")
            && other.contains("spiffe://routeplane/agent/node-1 may not call /routeplane.ipam.v1.Ipam/RegisterNode")
            && other.contains("\"node-2\""),
        "{other}"
    );
    // Its heartbeat beats for its own node only.
    let beat = call(
        &certs,
        Some("agent/node-1"),
        addr,
        &ipam("Heartbeat"),
        r#"{"name": "node-1"}"#,
    )
    .unwrap();
    assert_eq!(beat["ready"], true, "{beat}");
    let other_beat = call(
        &certs,
        Some("agent/node-1"),
        addr,
        &ipam("Heartbeat"),
        r#"{"name": "node-2"}"#,
    )
    .unwrap_err();
    assert!(
        other_beat.contains("PermissionDenied") && other_beat.contains("\"node-2\""),
        "{other_beat}"
    );
    let pool = r#"{"cidr": "10.6.0.0/16", "maskSize": 24}"#;
    let admin_only = call(
        &certs,
        Some("agent/node-1"),
        addr,
        &ipam("AddPoolCidr"),
        pool,
    )
    .unwrap_err();
    assert!(
        admin_only.contains("needs an operator identity"),
        "{admin_only}"
    );

    // routeplane-bgp and readers read; they change nothing.
    for reader in ["bgp/bgp", "reader/dashboard"] {
        let nodes = call(&certs, Some(reader), addr, &ipam("ListNodes"), "{}").unwrap();
        assert_eq!(nodes["nodes"][0]["name"], "node-1", "{reader}");
        let delete = call(
            &certs,
            Some(reader),
            addr,
            &ipam("DeleteNode"),
            r#"{"name": "node-1"}"#,
        )
        .unwrap_err();
        assert!(delete.contains("PermissionDenied"), "{reader}: {delete}");
        let keep = call(
            &certs,
            Some(reader),
            addr,
            &ipam("KeepAlive"),
            r#"{"name": "node-1"}"#,
        )
        .unwrap_err();
        assert!(keep.contains("PermissionDenied"), "{reader}: {keep}");
    }
    assert_eq!(
        call(
            &certs,
            Some("operator/admin"),
            addr,
            &ipam("ListNodes"),
            "{}"
        )
        .unwrap()["nodes"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // The operator may do everything, for any node.
    call(
        &certs,
        Some("operator/admin"),
        addr,
        &ipam("RegisterNode"),
        &register("node-2"),
    )
    .unwrap();
    call(
        &certs,
        Some("operator/admin"),
        addr,
        &ipam("DeleteNode"),
        r#"{"name": "node-2", "force": true}"#,
    )
    .unwrap();

    // Refusals are counted by method and role, and logged with the identity.
    assert_eq!(
        server.metric(r#"routeplane_grpc_refused_total{method="/routeplane.ipam.v1.Ipam/RegisterNode",role="agent"}"#),
        1.0
    );
    assert_eq!(
        server.metric(r#"routeplane_grpc_refused_total{method="/routeplane.ipam.v1.Ipam/DeleteNode",role="bgp"}"#),
        1.0
    );
    assert_eq!(
        server.metric(r#"routeplane_grpc_refused_total{method="/routeplane.ipam.v1.Ipam/ListNodes",role="anonymous"}"#),
        1.0
    );
    assert!(
        server
            .log()
            .contains("identity=spiffe://routeplane/agent/node-1"),
        "{}",
        server.log()
    );
}

/// Operator entries hold routeplane-bgp's API peers, TCP-MD5 passwords included: routeplane-bgp
/// and operators read and write them, no other identity sees them — not even on Watch.
#[test]
fn operator_entries_are_routeplane_bgps_and_the_operators_only() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("tls"), &IDS);
    let server = start(&certs, &dir.path().join("data"));
    let addr = server.grpc;
    let put = r#"{"entries": [{"kind": "bgp-peer", "key": "10.4.36.239", "value": "{\"password\": \"s3cret\"}"}], "createOnly": true}"#;
    let stored = call(
        &certs,
        Some("bgp/bgp"),
        addr,
        &ipam("PutOperatorEntries"),
        put,
    )
    .unwrap();
    assert_eq!(stored["changed"], "1", "{stored}");
    let again = call(
        &certs,
        Some("bgp/bgp"),
        addr,
        &ipam("PutOperatorEntries"),
        put,
    )
    .unwrap_err();
    assert!(
        again.contains("AlreadyExists") && again.contains("bgp-peer/10.4.36.239 already exists"),
        "{again}"
    );
    let listed = call(
        &certs,
        Some("operator/admin"),
        addr,
        &ipam("ListOperatorEntries"),
        r#"{"kind": "bgp-peer"}"#,
    )
    .unwrap();
    assert_eq!(listed["entries"][0]["key"], "10.4.36.239", "{listed}");
    for id in ["agent/node-1", "reader/dashboard", "ipam/ipam"] {
        for (method, body) in [
            ("ListOperatorEntries", "{}"),
            ("PutOperatorEntries", put),
            ("Watch", r#"{"operatorEntries": true}"#),
        ] {
            let refused = call(&certs, Some(id), addr, &ipam(method), body).unwrap_err();
            assert!(
                refused.contains("PermissionDenied")
                    && refused.contains("routeplane-bgp's identity (spiffe://<trust domain>/bgp/<name>) or an operator's"),
                "{id} {method}: {refused}"
            );
            // What the server said (the harness's message repeats the request).
            let said = refused.split("ERROR:").nth(1).unwrap_or(&refused);
            assert!(!said.contains("s3cret"), "{refused}");
        }
    }
}

#[test]
fn certificates_a_client_cannot_be_trusted_with_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("tls"), &IDS);
    certs.make(&["operator/expired"], Some(-1));
    let foreign = Certs::new(&dir.path().join("foreign"), &["operator/admin"]);
    let server = start(&certs, &dir.path().join("data"));
    for (what, flags) in [
        (
            "an expired certificate",
            certs.grpcurl_flags("operator/expired"),
        ),
        ("another CA's certificate", {
            let mut f = foreign.grpcurl_flags("operator/admin");
            f[1] = certs.ca().display().to_string();
            f
        }),
    ] {
        let out = grpcurl_with(
            None,
            &flags,
            &server.grpc.to_string(),
            &ipam("ListNodes"),
            "{}",
        );
        let err = out.expect_err(what);
        // Refused at the handshake, or (Go's client keeps back a certificate the server's list
        // of CAs does not name) served as a caller without one: never as the identity it names.
        assert!(
            !err.contains("spiffe://")
                && (!err.contains("PermissionDenied")
                    || err.contains("without a client certificate")),
            "{what} was taken for its identity: {err}"
        );
    }
    // The server's own certificate is checked by the client too: a client trusting another CA
    // does not talk to it.
    let mut wrong_ca = certs.grpcurl_flags("operator/admin");
    wrong_ca[1] = foreign.ca().display().to_string();
    assert!(
        grpcurl_with(
            None,
            &wrong_ca,
            &server.grpc.to_string(),
            &ipam("ListNodes"),
            "{}"
        )
        .is_err()
    );
}

#[test]
fn rotated_files_take_effect_without_a_restart_and_half_rotated_ones_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let live = Certs::new(&dir.path().join("tls"), &IDS);
    let server = start(&live, &dir.path().join("data"));
    let addr = server.grpc;
    let old = live.grpcurl_flags("operator/admin");
    // The old client's files, kept aside: the rotation below overwrites them in place.
    let kept = dir.path().join("old-client");
    std::fs::create_dir_all(&kept).unwrap();
    let mut old_client = Vec::new();
    for (i, f) in old.iter().enumerate() {
        if i % 2 == 1 {
            let to = kept.join(Path::new(f).file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            old_client.push(to.display().to_string());
        } else {
            old_client.push(f.clone());
        }
    }
    let list =
        |flags: &[String]| grpcurl_with(None, flags, &addr.to_string(), &ipam("ListNodes"), "{}");
    list(&old_client).expect("served before the rotation");

    // A new CA and new certificates, made beside the live ones.
    let next = Certs::new(&dir.path().join("next"), &IDS);
    let (cert, key) = live.pair("ipam/ipam");
    let (next_cert, next_key) = next.pair("ipam/ipam");
    // Half a rotation: the new CA and certificate, the old key. Refused; the old files stay in use.
    std::fs::copy(next.ca(), live.ca()).unwrap();
    std::fs::copy(&next_cert, &cert).unwrap();
    wait_for(
        "the half-rotated files to be refused",
        Duration::from_secs(10),
        || {
            server
                .log()
                .contains("TLS files changed but cannot be used")
        },
    );
    assert!(
        server.log().contains("does not fit certificate"),
        "{}",
        server.log()
    );
    list(&old_client).expect("the old files still serve while the new ones are half written");

    // The key arrives: the new CA's clients are served, the old CA's are not, with no restart.
    std::fs::copy(&next_key, &key).unwrap();
    wait_for(
        "the rotated files to take effect",
        Duration::from_secs(10),
        || list(&next.grpcurl_flags("operator/admin")).is_ok(),
    );
    assert!(
        list(&old_client).is_err(),
        "a client of the old CA is still served"
    );
    assert_eq!(
        server
            .log()
            .matches("TLS files changed: new connections use them")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_services_own_client_dials_with_mutual_tls_and_is_authorized_by_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("tls"), &IDS);
    let server = start(&certs, &dir.path().join("data"));
    let mut client = client_as(&certs, &server, "agent/node-1").await;
    let node = client
        .register_node(pb::RegisterNodeRequest {
            name: "node-1".into(),
            addresses: vec!["10.4.94.11".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.pod_cidrs.len(), 1, "{node:?}");
    let refused = client
        .keep_alive(pb::KeepAliveRequest {
            name: "node-9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Plaintext to a TLS server does not get an answer.
    let plain = Dialer::loopback_only()
        .connect(&format!("http://{}", server.grpc))
        .await;
    if let Ok(channel) = plain {
        let r = pb::ipam_client::IpamClient::new(channel)
            .list_nodes(pb::ListNodesRequest {})
            .await;
        assert!(r.is_err(), "{r:?}");
    }
}

/// Every agent back at once (a restarted IPAM, 5,000 nodes): more TLS handshakes at once than the
/// server does at a time (MAX_HANDSHAKES, 256) are queued and served in turn, none refused — a
/// client closed at once would come straight back, and thousands doing so kept a cold-started
/// control plane busy for 105 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_clients_past_the_handshake_limit_is_served_in_turn() {
    const HERD: usize = 600;
    routeplane_runtime::limits::raise_open_files().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("tls"), &IDS);
    let server = start_with(&certs, &dir.path().join("data"), &["--rate-limit", "0"]);
    let (cert, key) = certs.pair("operator/admin");
    let tls = std::sync::Arc::new(
        Tls::load(TlsFiles {
            ca: certs.ca(),
            cert,
            key,
        })
        .unwrap(),
    );
    let url = format!("https://{}", server.grpc);
    let answers = futures::future::join_all((0..HERD).map(|_| {
        let dialer = Dialer::new(Security::Tls(tls.clone()));
        let url = url.clone();
        async move {
            let channel = dialer.connect(&url).await.map_err(|e| e.to_string())?;
            let mut c = pb::ipam_client::IpamClient::new(channel);
            tokio::time::timeout(
                Duration::from_secs(30),
                c.list_pools(pb::ListPoolsRequest {}),
            )
            .await
            .map_err(|_| "no answer within 30 s".to_string())?
            .map_err(|s| s.to_string())?;
            // Held until all have answered: every connection open at once.
            Ok::<_, String>(c)
        }
    }))
    .await;
    let failed: Vec<&String> = answers.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {HERD} clients failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

/// A TLS client of the server as `id`.
async fn client_as(
    certs: &Certs,
    server: &Server,
    id: &str,
) -> pb::ipam_client::IpamClient<tonic::transport::Channel> {
    let (cert, key) = certs.pair(id);
    let tls = Tls::load(TlsFiles {
        ca: certs.ca(),
        cert,
        key,
    })
    .unwrap();
    let dialer = Dialer::new(Security::Tls(std::sync::Arc::new(tls)));
    let url = format!("https://{}", server.grpc);
    pb::ipam_client::IpamClient::new(dialer.connect(&url).await.unwrap())
}

/// --rate-limit: one identity calling as fast as it can gets RESOURCE_EXHAUSTED past its burst
/// and its rate, naming it; another identity is answered meanwhile; the refusals are counted.
#[tokio::test]
async fn an_identity_past_its_calls_per_second_is_slowed_and_the_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("tls"), &IDS);
    let server = start_with(&certs, &dir.path().join("data"), &["--rate-limit", "50"]);
    let mut noisy = client_as(&certs, &server, "agent/node-1").await;
    let mut quiet = client_as(&certs, &server, "reader/dashboard").await;
    let (mut ok, mut throttled) = (0, 0);
    for _ in 0..400 {
        match noisy.list_nodes(pb::ListNodesRequest {}).await {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains(
                        "spiffe://routeplane/agent/node-1 called faster than its limit of 50 calls/s"
                    ),
                    "{}",
                    s.message()
                );
                throttled += 1;
            }
        }
    }
    assert!(ok >= 100, "the burst (100) and the rate were served: {ok}");
    assert!(throttled > 0, "400 calls at once were never slowed");
    quiet
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("another identity is not slowed");
    let metrics = routeplane_testkit::scrape(None, &server.metrics.to_string()).unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("routeplane_grpc_throttled_total{") && l.contains("role=\"agent\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, f64::from(throttled), "{metrics}");
}

#[test]
fn start_up_names_the_file_that_is_missing_expired_foreign_or_mismatched() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("tls"), &IDS);
    certs.make(&["ipam/expired"], Some(-1));
    let foreign = Certs::new(&dir.path().join("foreign"), &["ipam/ipam"]);
    let data = dir.path().join("data");
    let (cert, key) = certs.pair("ipam/ipam");
    let (expired, expired_key) = certs.pair("ipam/expired");
    let (foreign_cert, foreign_key) = foreign.pair("ipam/ipam");
    let (_, agent_key) = certs.pair("agent/node-1");
    let missing = dir.path().join("nowhere.crt");
    let s = |p: &Path| p.display().to_string();
    let cases: [(&str, [String; 3], Vec<String>); 5] = [
        (
            "missing",
            [s(&certs.ca()), s(&missing), s(&key)],
            vec![s(&missing), "--tls-cert".into(), "No such file".into()],
        ),
        (
            "expired",
            [s(&certs.ca()), s(&expired), s(&expired_key)],
            vec![s(&expired), "expired at".into()],
        ),
        (
            "foreign",
            [s(&certs.ca()), s(&foreign_cert), s(&foreign_key)],
            vec![s(&foreign_cert), "not issued by a CA of --tls-ca".into()],
        ),
        (
            "mismatched",
            [s(&certs.ca()), s(&cert), s(&agent_key)],
            vec![s(&agent_key), "does not fit certificate".into()],
        ),
        (
            "not PEM",
            [s(&certs.ca()), s(&cert), s(&certs.ca())],
            vec![
                s(&certs.ca()),
                "--tls-key".into(),
                "no PEM PRIVATE KEY".into(),
            ],
        ),
    ];
    for (what, [ca, cert, key], expect) in cases {
        let (status, err) = run_to_exit(
            &data,
            &["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key],
        );
        assert!(!status.success(), "{what}: started");
        for e in expect {
            assert!(err.contains(&e), "{what}: no {e:?} in: {err}");
        }
    }
    let (status, err) = run_to_exit(&data, &["--tls-ca", &s(&certs.ca())]);
    assert!(!status.success() && err.contains("--tls-cert"), "{err}");
}

#[test]
fn plaintext_is_served_on_loopback_or_with_insecure_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (status, err) = run_to_exit(&data, &["--grpc-listen", "0.0.0.0:0"]);
    assert!(!status.success());
    assert!(
        err.contains("refusing to serve gRPC without TLS on 0.0.0.0:0")
            && err.contains("--tls-cert")
            && err.contains("--insecure"),
        "{err}"
    );
    let server = Server::start(&data, &["--grpc-listen", "0.0.0.0:0", "--insecure"]);
    assert!(
        server.log().contains("--insecure: gRPC served without TLS"),
        "{}",
        server.log()
    );
    let local = SocketAddr::from(([127, 0, 0, 1], server.grpc.port()));
    let nodes = routeplane_testkit::grpcurl(None, &local.to_string(), &ipam("ListNodes"), "{}");
    assert!(nodes.is_ok(), "{nodes:?}");
    // --insecure with certificates is a contradiction clap refuses.
    let certs = Certs::new(&dir.path().join("tls"), &["ipam/ipam"]);
    let mut args = certs.service_flags("ipam/ipam");
    args.push("--insecure".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, err) = run_to_exit(&data, &args);
    assert!(!status.success() && err.contains("--insecure"), "{err}");
}
