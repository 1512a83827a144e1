//! routeplane-ipam on a real etcd (Debian's etcd 3.4 on loopback, started by
//! `routeplane_testkit::etcd`): what it refuses to start on, what it waits for, and what happens
//! to writes when etcd is full, loses its leader, or another writer shares the prefix.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Server, run_to_exit};
use routeplane_api::ipam::v1 as pb;
use routeplane_testkit::certs::Certs;
use routeplane_testkit::etcd::{EtcdCluster, EtcdTls};
use routeplane_testkit::{Service, wait_for};
use tonic::Code;

fn etcd_args(cluster: &EtcdCluster, prefix: &str) -> Vec<String> {
    cluster.ipam_flags(prefix)
}

fn start(dir: &std::path::Path, args: &[String]) -> Server {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&dir.join("data"), &refs)
}

fn refused(dir: &std::path::Path, args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, err) = run_to_exit(&dir.join("data"), &refs);
    assert!(!status.success(), "started anyway:\n{err}");
    err
}

async fn register(c: &mut common::Client, name: &str) {
    c.register_node(pb::RegisterNodeRequest {
        name: name.into(),
        addresses: vec!["10.4.94.10".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn allocate(
    c: &mut common::Client,
    node: &str,
    owner: &str,
) -> Result<Vec<String>, tonic::Status> {
    c.allocate_pod_ip(pb::AllocatePodIpRequest {
        node: node.into(),
        owner: owner.into(),
        family: 0,
    })
    .await
    .map(|r| r.into_inner().ips)
}

/// Every pod IP record under `prefix` as etcd holds it: (key, value).
fn stored_pods(cluster: &EtcdCluster, prefix: &str) -> Vec<(String, String)> {
    cluster.get_prefix(&format!("{prefix}p/"))
}

#[test]
fn what_etcd_holds_that_is_not_ours_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);

    cluster.etcdctl(&["put", "/foreign/config", "x"]);
    let e = refused(dir.path(), &etcd_args(&cluster, "/foreign/"));
    assert!(
        e.contains("/foreign/config") && e.contains("--etcd-prefix"),
        "{e}"
    );

    cluster.etcdctl(&[
        "put",
        "/newer/schema",
        r#"{"layout":9,"cluster":"default"}"#,
    ]);
    let e = refused(dir.path(), &etcd_args(&cluster, "/newer/"));
    assert!(e.contains("layout 9") && e.contains("newer"), "{e}");

    cluster.etcdctl(&["put", "/garbled/schema", "hello"]);
    let e = refused(dir.path(), &etcd_args(&cluster, "/garbled/"));
    assert!(e.contains("hello"), "{e}");

    // Two routeplane clusters on one prefix: the second is refused.
    let mut east = etcd_args(&cluster, "/shared/");
    east.extend(["--etcd-cluster-name".into(), "east".into()]);
    start(dir.path(), &east).terminate();
    let mut west = etcd_args(&cluster, "/shared/");
    west.extend(["--etcd-cluster-name".into(), "west".into()]);
    let e = refused(dir.path(), &west);
    assert!(
        e.contains("\"east\"") && e.contains("\"west\"") && e.contains("--etcd-prefix"),
        "{e}"
    );

    // Settings that can never work are refused before dialling anything.
    let mut bad = etcd_args(&cluster, "/x/");
    bad[3] = "127.0.0.1:2379".into();
    let e = refused(dir.path(), &bad);
    assert!(e.contains("127.0.0.1:2379") && e.contains("http://"), "{e}");
    let e = refused(dir.path(), &etcd_args(&cluster, "no-slash"));
    assert!(e.contains("no-slash") && e.contains("'/'"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_that_does_not_answer_yet_is_waited_for_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 1, &[]);
    cluster.kill(0);
    let args = etcd_args(&cluster, "/late/");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ipam = Service::start(
        "routeplane-ipam",
        common::command(&dir.path().join("data"), &refs),
    );
    let endpoint = cluster.members[0].endpoint();
    wait_for(
        "a line saying it waits for etcd",
        Duration::from_secs(30),
        || {
            let log = ipam.log();
            log.contains("waiting for etcd") && log.contains(&endpoint)
        },
    );
    assert!(!ipam.exited(), "it waits, it does not give up");
    cluster.restart(0);
    let grpc = ipam.listen_addr("gRPC");
    let mut c = Server::attach(&format!("http://{grpc}")).client().await;
    register(&mut c, "n1").await;
    assert_eq!(allocate(&mut c, "n1", "default/a").await.unwrap().len(), 1);
}

/// etcd out of space (its NOSPACE alarm): writes refused with RESOURCE_EXHAUSTED naming it, reads
/// served, nothing acknowledged lost; once an operator makes room and disarms the alarm, writes
/// resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_out_of_space_refuses_writes_keeps_reads_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &["--quota-backend-bytes=4194304"]);
    let server = start(dir.path(), &etcd_args(&cluster, "/full/"));
    let mut c = server.client().await;
    register(&mut c, "n1").await;
    let mut acknowledged = BTreeSet::new();
    for i in 0..20 {
        let ips = allocate(&mut c, "n1", &format!("default/p{i}"))
            .await
            .unwrap();
        acknowledged.insert((format!("default/p{i}"), ips));
    }
    // History fills etcd while live data stays small: 50 entries of 16 KiB put and deleted,
    // again and again, until etcd refuses.
    let value = "x".repeat(16 * 1024);
    let mut full = None;
    for round in 0..40 {
        let entries = (0..50)
            .map(|i| pb::OperatorEntry {
                kind: "bgp-path".into(),
                key: format!("10.9.{round}.{i}/32"),
                value: value.clone(),
            })
            .collect();
        let put = c
            .put_operator_entries(pb::PutOperatorEntriesRequest {
                entries,
                create_only: false,
            })
            .await;
        if let Err(e) = put {
            full = Some(e);
            break;
        }
        let keys = (0..50).map(|i| format!("10.9.{round}.{i}/32")).collect();
        if let Err(e) = c
            .delete_operator_entries(pb::DeleteOperatorEntriesRequest {
                kind: "bgp-path".into(),
                keys,
            })
            .await
        {
            full = Some(e);
            break;
        }
    }
    let full = full.expect("etcd with a 4 MiB quota fills within 40 rounds of 0.8 MB");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("NOSPACE"), "{}", full.message());
    let refused = allocate(&mut c, "n1", "default/late").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("NOSPACE"),
        "{}",
        refused.message()
    );
    // Reads go on, with everything acknowledged.
    let listed = c
        .list_pod_i_ps(pb::ListPodIPsRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    let held: BTreeSet<(String, Vec<String>)> = listed
        .allocations
        .into_iter()
        .map(|a| (a.owner, a.ips))
        .collect();
    assert_eq!(held, acknowledged);

    // The operator's fix: compact the history, defragment, disarm.
    let status = cluster.etcdctl(&["endpoint", "status", "-w", "json"]);
    let revision = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]
        ["header"]["revision"]
        .as_i64()
        .unwrap();
    cluster.etcdctl(&["compact", &revision.to_string()]);
    cluster.etcdctl(&["defrag"]);
    cluster.etcdctl(&["alarm", "disarm"]);
    let started = Instant::now();
    let ips = loop {
        match allocate(&mut c, "n1", "default/after").await {
            Ok(ips) => break ips,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(20),
                "writes did not resume: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let taken: BTreeSet<String> = acknowledged
        .iter()
        .flat_map(|(_, ips)| ips.clone())
        .collect();
    assert!(!taken.contains(&ips[0]), "{ips:?} was held already");
    // And in etcd itself: every acknowledged record, once.
    let stored = stored_pods(&cluster, "/full/");
    for (owner, ips) in &acknowledged {
        let key = format!("/full/p/n1\0{owner}");
        let found: Vec<_> = stored.iter().filter(|(k, _)| *k == key).collect();
        assert_eq!(found.len(), 1, "{owner}: {stored:?}");
        assert!(found[0].1.contains(&ips[0]), "{found:?}");
    }
}

/// Two replicas on one prefix: one leads and listens, the other stands by without listening. The
/// leader paused (SIGSTOP) past its lease: the standby takes over and serves what was
/// acknowledged; the old leader, resumed, cannot write (every write compares the leader key it
/// won) and stops — never two owners of an address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_cannot_write_when_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let args = etcd_args(&cluster, "/replicas/");
    let a = start(&dir.path().join("a"), &args);
    let mut ca = a.client().await;
    register(&mut ca, "n1").await;
    let first = allocate(&mut ca, "n1", "default/one").await.unwrap();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Service::start(
        "routeplane-ipam standby",
        common::command(&dir.path().join("b").join("data"), &refs),
    );
    let leader = a.grpc.to_string();
    wait_for("B standing by, naming A", Duration::from_secs(20), || {
        let log = b.log();
        log.contains("standby") && log.contains(&leader)
    });
    assert!(
        !b.log().contains("gRPC listening"),
        "a standby does not listen"
    );
    a.signal("-STOP");
    let paused = Instant::now();
    let grpc = b.listen_addr("gRPC");
    println!("B took over {:?} after A was paused", paused.elapsed());
    let mut cb = Server::attach(&format!("http://{grpc}")).client().await;
    let listed = cb
        .list_pod_i_ps(pb::ListPodIPsRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.allocations.len(), 1);
    assert_eq!(listed.allocations[0].ips, first);
    let second = allocate(&mut cb, "n1", "default/two").await.unwrap();
    assert_ne!(first, second);
    a.signal("-CONT");
    // A's view is stale: whatever it tries to write is refused, and it stops.
    if let Ok(ips) = allocate(&mut ca, "n1", "default/three").await {
        panic!("the deposed leader wrote {ips:?}");
    }
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "{status:?}");
    let stored = stored_pods(&cluster, "/replicas/");
    assert_eq!(stored.len(), 2, "{stored:?}");
    let mut ips: Vec<&String> = stored.iter().map(|(_, v)| v).collect();
    ips.dedup();
    assert_eq!(ips.len(), 2, "no address twice: {stored:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let mut made = None;
    let cluster = EtcdCluster::start_tls(dir.path(), 1, |ips| {
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        let server = format!("ipam/etcd@{}", sans.join(","));
        let certs = Certs::new(&certs_dir, &[&server, "ipam/ipam"]);
        let (cert, key) = certs.pair("ipam/etcd");
        let tls = EtcdTls {
            ca: certs.ca(),
            cert,
            key,
            client: certs.pair("ipam/ipam"),
        };
        made = Some(certs);
        tls
    });
    let certs = made.unwrap();
    let (cert, key) = certs.pair("ipam/ipam");
    let mut args = etcd_args(&cluster, "/tls/");
    assert!(args[3].starts_with("https://"), "{args:?}");
    args.extend([
        "--etcd-ca".into(),
        certs.ca().display().to_string(),
        "--etcd-cert".into(),
        cert.display().to_string(),
        "--etcd-key".into(),
        key.display().to_string(),
    ]);
    let server = start(dir.path(), &args);
    let mut c = server.client().await;
    register(&mut c, "n1").await;
    allocate(&mut c, "n1", "default/a").await.unwrap();
    assert_eq!(stored_pods(&cluster, "/tls/").len(), 1);
    server.terminate();
    // Without a client certificate etcd refuses the connection: IPAM says so and waits.
    let no_cert = &args[..args.len() - 4];
    let refs: Vec<&str> = no_cert.iter().map(String::as_str).collect();
    let ipam = Service::start(
        "routeplane-ipam",
        common::command(&dir.path().join("data"), &refs),
    );
    wait_for(
        "a line saying it waits for etcd",
        Duration::from_secs(30),
        || ipam.log().contains("waiting for etcd"),
    );
}

/// etcd gone while running: the write in flight is refused, and the replica, unable to renew its
/// leadership lease, stops rather than serve a state another replica may be changing; restarted,
/// it waits for etcd and then serves everything acknowledged, nothing refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_gone_while_running_refuses_writes_and_the_replica_steps_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let args = etcd_args(&cluster, "/gone/");
    let server = start(dir.path(), &args);
    let mut c = server.client().await;
    register(&mut c, "n1").await;
    let kept = allocate(&mut c, "n1", "default/kept").await.unwrap();
    cluster.kill(0);
    let started = Instant::now();
    let e = allocate(&mut c, "n1", "default/lost").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    println!("the write was refused after {:?}", started.elapsed());
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "it steps down with an error: {status:?}");
    println!("the replica stopped {:?} after etcd", started.elapsed());
    cluster.restart(0);
    let server = start(dir.path(), &args);
    let mut c = server.client().await;
    let listed = c
        .list_pod_i_ps(pb::ListPodIPsRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.allocations.len(), 1, "kept, not the refused one");
    assert_eq!(listed.allocations[0].ips, kept);
    let ips = allocate(&mut c, "n1", "default/after").await.unwrap();
    assert_ne!(ips, kept);
    assert_eq!(stored_pods(&cluster, "/gone/").len(), 2);
}

/// SIGTERM to the leader: it gives its lease up on the way out (exit 0) and the standby leads at
/// once rather than after the TTL; SIGTERM to a standby is a clean stop too. Standbys answer on
/// their metrics port (`routeplane_ipam_leader` 0, `/healthz`) and swap in the leader's metrics
/// when they take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_hands_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let mut args = etcd_args(&cluster, "/handover/");
    args.extend(["--etcd-lease-ttl".into(), "10s".into()]);
    let mut a_args = args.clone();
    a_args.extend(["--etcd-advertise".into(), "ipam-a.example:50051".into()]);
    let a = start(&dir.path().join("a"), &a_args);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Service::start(
        "routeplane-ipam standby",
        common::command(&dir.path().join("b").join("data"), &refs),
    );
    let mut c = Service::start(
        "routeplane-ipam second standby",
        common::command(&dir.path().join("c").join("data"), &refs),
    );
    wait_for("both standing by", Duration::from_secs(20), || {
        b.log().contains("standby") && c.log().contains("standby")
    });
    // They name the leader by what it advertises, not its 127.0.0.1:0 listen address.
    assert!(
        b.log().contains("leader=ipam-a.example:50051"),
        "{}",
        b.log()
    );
    // A standby answers probes on its metrics port (Kubernetes counts it as running) and says it
    // stands by; the leader says it leads.
    let leader_says = |addr: std::net::SocketAddr| {
        let m = routeplane_testkit::scrape(None, &addr.to_string()).unwrap();
        routeplane_testkit::metric_sample(&m, "routeplane_ipam_leader").unwrap()
    };
    let b_metrics = b.listen_addr("metrics");
    assert_eq!(leader_says(b_metrics), 0.0);
    assert!(
        routeplane_testkit::http_get(None, &b_metrics.to_string(), "/healthz")
            .unwrap()
            .ends_with("ok\n")
    );
    assert_eq!(leader_says(a.metrics), 1.0);
    let stopped = Instant::now();
    assert!(
        a.terminate().success(),
        "a leader's SIGTERM is a clean stop"
    );
    let taken = loop {
        if b.log().contains("gRPC listening") {
            break b.listen_addr("gRPC");
        }
        if c.log().contains("gRPC listening") {
            break c.listen_addr("gRPC");
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "no standby took over well before the 10 s lease ran out"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "a standby led {:?} after the leader's SIGTERM",
        stopped.elapsed()
    );
    let mut client = Server::attach(&format!("http://{taken}")).client().await;
    register(&mut client, "n1").await;
    let new_leader = if b.log().contains("gRPC listening") {
        &mut b
    } else {
        &mut c
    };
    assert_eq!(
        leader_says(new_leader.listen_addr("metrics")),
        1.0,
        "the same metrics port, now showing the leader's registry"
    );
    let standby = if b.log().contains("gRPC listening") {
        &mut c
    } else {
        &mut b
    };
    assert!(
        standby.terminate().success(),
        "a standby's SIGTERM is a clean stop"
    );
}
