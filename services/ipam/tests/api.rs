//! routeplane-ipam over real gRPC: a server process per test on loopback, tonic clients — each
//! behaviour test twice, on sled (`sled::`) and on a real etcd (`etcd::`, Debian's etcd 3.4 on
//! loopback): the allocation logic does not know which store it runs on.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{Store, repo_file, run_to_exit, values_file};
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::watch_event::Event as E;
use tonic::Code;

fn register(name: &str, addr: &str) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        name: name.into(),
        addresses: vec![addr.into()],
        labels: HashMap::new(),
    }
}

async fn next(stream: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch event within 10 s")
        .expect("watch stream healthy")
        .expect("watch stream open")
}

/// A heartbeat stream for `name`, its first beat sent and answered Ready: the sender for more
/// beats (dropping it ends the stream) and the answers.
async fn beating(
    c: &mut pb::ipam_client::IpamClient<tonic::transport::Channel>,
    name: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::HeartbeatRequest>,
    tonic::Streaming<pb::HeartbeatResponse>,
) {
    let (tx, mut answers) = common::open_heartbeat(c, name).await;
    assert!(answers.message().await.unwrap().unwrap().ready);
    (tx, answers)
}

async fn seed_pool_takes_eight_nodes_refuses_the_ninth_and_grows(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &[]);
    let mut c = server.client().await;
    for i in 0..8 {
        let n = c
            .register_node(register(
                &format!("node-{i}"),
                &format!("10.4.94.{}", 10 + i),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(n.pod_cidrs, vec![format!("10.5.{}.0/24", 112 + i)]);
        assert_eq!(n.router_ips, vec![format!("10.5.{}.1", 112 + i)]);
    }
    let err = c
        .register_node(register("node-8", "10.4.94.18"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("10.5.112.0/21 (/24 per node: 8 of 8 in use)"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("AddPoolCidr"),
        "the message says how to grow: {}",
        err.message()
    );

    let pool = c
        .add_pool_cidr(pb::AddPoolCidrRequest {
            cidr: "10.5.128.0/23".into(),
            mask_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (pool.mask_size, pool.node_cidrs_total, pool.source.as_str()),
        (24, 2, "AddPoolCidr")
    );
    let ninth = c
        .register_node(register("node-8", "10.4.94.18"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ninth.pod_cidrs, vec!["10.5.128.0/24"]);
    for owner in ["default/p", "default/q"] {
        c.allocate_pod_ip(pb::AllocatePodIpRequest {
            node: "node-3".into(),
            owner: owner.into(),
            family: 0,
        })
        .await
        .unwrap();
    }
    let pools = c
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    let seed = pools
        .pod_pools
        .iter()
        .find(|p| p.cidr == "10.5.112.0/21")
        .unwrap();
    assert_eq!((seed.node_cidrs_used, seed.node_cidrs_free), (8, 0));
    assert_eq!(
        (seed.pod_ips_capacity, seed.pod_ips_used, seed.pod_ips_free),
        (8 * 253, 2, 8 * 253 - 2)
    );
    // Each node's pod IPs, by name, in the same answer.
    let per_node: Vec<(String, u64)> = pools
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.pod_ips_used))
        .collect();
    let expected: Vec<(String, u64)> = (0..9)
        .map(|i| (format!("node-{i}"), if i == 3 { 2 } else { 0 }))
        .collect();
    assert_eq!(per_node, expected);
    assert_eq!(pools.service_pools[0].addresses, vec!["10.5.120.0/21"]);
}

async fn errors_carry_the_right_code_and_name_the_value(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &[]);
    let mut c = server.client().await;
    c.register_node(register("a", "10.4.94.10")).await.unwrap();
    c.allocate_pod_ip(pb::AllocatePodIpRequest {
        node: "a".into(),
        owner: "default/p".into(),
        family: 0,
    })
    .await
    .unwrap();

    let cases: Vec<(tonic::Status, Code, &str)> = vec![
        (
            c.add_pool_cidr(pb::AddPoolCidrRequest {
                cidr: "10.64.0.0/10".into(),
                mask_size: 2,
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "maskSize 2 is not a node CIDR size: give 16 to 28",
        ),
        (
            c.register_node(pb::RegisterNodeRequest {
                labels: (0..65).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..register("b", "10.4.94.11")
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "a node may carry at most 64 labels",
        ),
        (
            c.register_node(register("Bad_Name", "10.4.94.11"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "\"Bad_Name\"",
        ),
        (
            c.register_node(register("b", "10.4.94.300"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "\"10.4.94.300\" is not an IP address",
        ),
        (
            c.register_node(register("b", "10.4.94.10"))
                .await
                .unwrap_err(),
            Code::AlreadyExists,
            "already registered by node a",
        ),
        (
            c.get_node(pb::GetNodeRequest {
                name: "ghost".into(),
            })
            .await
            .unwrap_err(),
            Code::NotFound,
            "\"ghost\" is not registered",
        ),
        (
            c.delete_node(pb::DeleteNodeRequest {
                name: "a".into(),
                force: false,
            })
            .await
            .unwrap_err(),
            Code::FailedPrecondition,
            "1 pod IPs",
        ),
        (
            c.allocate_service_ip(pb::AllocateServiceIpRequest {
                service: "default/web".into(),
                pool: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            Code::NotFound,
            "address-pool \"nope\" does not exist; pools are: \"default\"",
        ),
        (
            c.allocate_service_ip(pb::AllocateServiceIpRequest {
                service: "web".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "\"namespace/name\"",
        ),
        (
            c.add_pool_cidr(pb::AddPoolCidrRequest {
                cidr: "10.5.112.1/21".into(),
                mask_size: 0,
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "network address of that prefix is 10.5.112.0/21",
        ),
        (
            c.add_pool_cidr(pb::AddPoolCidrRequest {
                cidr: "10.5.124.0/22".into(),
                mask_size: 0,
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "overlaps LoadBalancer address-pool \"default\"",
        ),
        (
            c.allocate_pod_ip(pb::AllocatePodIpRequest {
                node: "a".into(),
                owner: "x".into(),
                family: 7,
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "family 7 is not valid",
        ),
        (
            c.allocate_pod_ip(pb::AllocatePodIpRequest {
                node: "a".into(),
                owner: "x".into(),
                family: pb::Family::Ipv6 as i32,
            })
            .await
            .unwrap_err(),
            Code::FailedPrecondition,
            "no IPv6 pod CIDR",
        ),
        (
            c.keep_alive(pb::KeepAliveRequest {
                name: String::new(),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "name is required",
        ),
    ];
    for (status, code, needle) in cases {
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{:?} should contain {needle:?}",
            status.message()
        );
    }
    let forced = c
        .delete_node(pb::DeleteNodeRequest {
            name: "a".into(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (forced.released_pod_cidrs, forced.released_pod_ips),
        (vec!["10.5.112.0/24".to_string()], 1)
    );
}

async fn watch_snapshot_then_live_then_resume_replays_what_was_missed(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &[]);
    let mut c = server.client().await;
    c.register_node(register("a", "10.4.94.10")).await.unwrap();
    c.register_node(register("b", "10.4.94.11")).await.unwrap();

    let mut w = c
        .watch(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let snap = next(&mut w).await;
    let Some(E::Snapshot(s)) = snap.event else {
        panic!("first message is a snapshot: {snap:?}")
    };
    assert!(s.first && s.last);
    assert_eq!(
        s.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );

    // A pod IP advances the revision but is not published; the next node event follows it.
    c.allocate_pod_ip(pb::AllocatePodIpRequest {
        node: "a".into(),
        owner: "p".into(),
        family: 0,
    })
    .await
    .unwrap();
    let cn = c
        .register_node(register("c", "10.4.94.12"))
        .await
        .unwrap()
        .into_inner();
    let live = next(&mut w).await;
    assert_eq!(live.revision, cn.revision);
    assert!(live.revision > snap.revision + 1);
    assert!(
        matches!(live.event, Some(E::NodeUpdated(ref n)) if n.name == "c" && n.pod_cidrs == cn.pod_cidrs)
    );
    drop(w);

    // Missed while disconnected: a Service IP and a node deletion.
    let svc = c
        .allocate_service_ip(pb::AllocateServiceIpRequest {
            service: "default/web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    c.delete_node(pb::DeleteNodeRequest {
        name: "b".into(),
        force: false,
    })
    .await
    .unwrap();
    let mut w = c
        .watch(pb::WatchRequest {
            from_revision: live.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e1 = next(&mut w).await;
    assert!(
        matches!(e1.event, Some(E::ServiceIpAssigned(ref s)) if *s == svc),
        "{e1:?}"
    );
    let e2 = next(&mut w).await;
    assert!(
        matches!(e2.event, Some(E::NodeDeleted(ref d)) if d.name == "b" && d.pod_cidrs == ["10.5.113.0/24"]),
        "{e2:?}"
    );
    assert!(e2.revision > e1.revision && e1.revision > live.revision);

    // A revision the server never reached (e.g. its data was wiped) gets a fresh snapshot.
    let mut w = c
        .watch(pb::WatchRequest {
            from_revision: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(E::Snapshot(s)) = next(&mut w).await.event else {
        panic!("snapshot expected")
    };
    assert_eq!(
        s.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(s.service_ips, vec![svc]);
}

async fn a_watcher_that_falls_behind_is_cut_off_and_resumes_without_a_gap(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &["--watch-buffer", "4"]);
    let mut c = server.client().await;
    c.register_node(register("a", "10.4.94.10")).await.unwrap();
    // Its own connection with small HTTP/2 windows: once 64 KiB are unread, flow control stops the
    // server's sends, its stream buffer fills, and the feed's buffer of 4 events overflows.
    let small = tonic::transport::Endpoint::from_shared(server.endpoint())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut w = pb::ipam_client::IpamClient::new(small)
        .watch(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let start = next(&mut w).await.revision;

    let mut last = start;
    for round in 0..300 {
        let labels = (0..30)
            .map(|k| (format!("example.com/key-{k}"), format!("{round:0>60}")))
            .collect();
        let n = c
            .register_node(pb::RegisterNodeRequest {
                name: "a".into(),
                addresses: vec!["10.4.94.10".into()],
                labels,
            })
            .await
            .unwrap();
        last = n.into_inner().revision;
    }
    let mut seen = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("stream ends in time")
        {
            Ok(Some(e)) => seen.push(e.revision),
            Ok(None) => panic!("stream ended without telling the watcher to resume"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{}", status.message());
    let resume: u64 = status
        .message()
        .rsplit("fromRevision=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        Some(&resume),
        seen.last().or(Some(&start)),
        "resume point is the last revision delivered"
    );
    assert!(
        seen.len() < 300,
        "the watcher really fell behind ({} delivered)",
        seen.len()
    );

    let mut w = c
        .watch(pb::WatchRequest {
            from_revision: resume,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while seen.last() != Some(&last) {
        seen.push(next(&mut w).await.revision);
    }
    let expected: Vec<u64> = (start + 1..=last).collect();
    assert_eq!(seen, expected, "every revision exactly once, in order");
}

async fn lease_expiry_marks_not_ready_and_keepalive_revives(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &["--lease-ttl", "1s"]);
    let mut c = server.client().await;
    let n = c
        .register_node(register("a", "10.4.94.10"))
        .await
        .unwrap()
        .into_inner();
    let mut w = c
        .watch(pb::WatchRequest {
            from_revision: n.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let down = next(&mut w).await;
    assert!(
        matches!(down.event, Some(E::NodeUpdated(ref n)) if n.name == "a" && !n.ready),
        "{down:?}"
    );
    assert!(
        !c.get_node(pb::GetNodeRequest { name: "a".into() })
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ka = c
        .keep_alive(pb::KeepAliveRequest { name: "a".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(ka.became_ready);
    assert_eq!(ka.lease_ttl_seconds, 1);
    let up = next(&mut w).await;
    assert!(
        matches!(up.event, Some(E::NodeUpdated(ref n)) if n.ready),
        "{up:?}"
    );
    assert_eq!(server.metric("routeplane_ipam_nodes{ready=\"true\"}"), 1.0);
}

async fn heartbeats_keep_a_node_alive_and_refuse_what_is_not_theirs(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    // Beats every 100 ms, dead after 300 ms; the KeepAlive lease (20 s) would keep it far longer.
    let server = store.start(dir.path(), &["--heartbeat-interval", "100ms"]);
    let mut c = server.client().await;
    let beats = |names: Vec<&str>| {
        let items: Vec<pb::HeartbeatRequest> = names
            .into_iter()
            .map(|n| pb::HeartbeatRequest { name: n.into() })
            .collect();
        tokio_stream::iter(items)
    };

    // A node IPAM does not know: refused before any beat counts.
    let ghost = c.heartbeat(beats(vec!["ghost"])).await.unwrap_err();
    assert_eq!(ghost.code(), Code::NotFound);
    assert!(
        ghost.message().contains("\"ghost\"") && ghost.message().contains("RegisterNode"),
        "{}",
        ghost.message()
    );
    let nameless = c.heartbeat(beats(vec![""])).await.unwrap_err();
    assert_eq!(nameless.code(), Code::InvalidArgument, "{nameless:?}");
    let empty = c.heartbeat(beats(vec![])).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    assert!(
        empty.message().contains("first beat"),
        "{}",
        empty.message()
    );

    // A stream that never beats is closed, not kept.
    let (_silent, rx) = tokio::sync::mpsc::channel::<pb::HeartbeatRequest>(1);
    let opened = std::time::Instant::now();
    let mute = c
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(mute.code(), Code::DeadlineExceeded, "{mute:?}");
    assert!(opened.elapsed() < Duration::from_secs(8));

    c.register_node(register("a", "10.4.94.10")).await.unwrap();
    // A beat for another node on a's stream ends it.
    let mut mixed = c
        .heartbeat(beats(vec!["a", "b"]))
        .await
        .unwrap()
        .into_inner();
    let first = mixed.message().await.unwrap().unwrap();
    assert_eq!(
        (
            first.interval_ms,
            first.dead_after_ms,
            first.ready,
            first.held_down
        ),
        (100, 300, true, false)
    );
    let wrong = mixed.message().await.unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert!(wrong.message().contains("\"b\""), "{}", wrong.message());

    // Beating keeps a Ready for 1.5 s; silent, it is dead within a second.
    let (tx, _answers) = beating(&mut c, "a").await;
    assert_eq!(server.metric("routeplane_ipam_heartbeat_streams"), 1.0);
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(pb::HeartbeatRequest { name: "a".into() })
            .await
            .unwrap();
    }
    let ready = |c: &mut pb::ipam_client::IpamClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.get_node(pb::GetNodeRequest { name: "a".into() })
                .await
                .unwrap()
                .into_inner()
                .ready
        }
    };
    assert!(ready(&mut c).await, "beating: alive");
    assert_eq!(server.metric("routeplane_ipam_node_deaths_total"), 0.0);
    drop(tx);
    let silent = std::time::Instant::now();
    while ready(&mut c).await {
        assert!(silent.elapsed() < Duration::from_secs(3), "still Ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        silent.elapsed() < Duration::from_secs(1),
        "{:?}",
        silent.elapsed()
    );
    assert_eq!(server.metric("routeplane_ipam_node_deaths_total"), 1.0);
    assert_eq!(server.metric("routeplane_ipam_heartbeat_streams"), 0.0);
}

async fn health_reflection_v1_and_metrics(store: &Store) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };

    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &[]);
    let ch = server.channel().await;
    let health = HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "routeplane.ipam.v1.Ipam".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(ch.clone())
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("list services")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains("routeplane.ipam.v1.Ipam") && names.contains("grpc.health.v1.Health"),
        "{names:?}"
    );

    let mut c = server.client().await;
    c.register_node(register("a", "10.4.94.10")).await.unwrap();
    c.allocate_service_ip(pb::AllocateServiceIpRequest {
        service: "default/web".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for owner in ["default/p1", "default/p2"] {
        c.allocate_pod_ip(pb::AllocatePodIpRequest {
            node: "a".into(),
            owner: owner.into(),
            family: 0,
        })
        .await
        .unwrap();
    }
    let body = server.scrape();
    for line in [
        "routeplane_ipam_nodes{ready=\"true\"} 1",
        "routeplane_ipam_pod_cidrs_in_use{pool=\"10.5.112.0/21\"} 1",
        "routeplane_ipam_pod_cidrs_free{pool=\"10.5.112.0/21\"} 7",
        // One /24 handed out: 253 pod addresses, two of them taken.
        "routeplane_ipam_pod_ips_in_use{pool=\"10.5.112.0/21\"} 2",
        "routeplane_ipam_pod_ips_free{pool=\"10.5.112.0/21\"} 251",
        "routeplane_ipam_pool_drained{pool=\"10.5.112.0/21\"} 0",
        "routeplane_ipam_revision 4",
        "routeplane_ipam_lb_addresses_in_use_total{pool=\"default\"} 1",
        "routeplane_ipam_lb_addresses_total{pool=\"default\"} 2048",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
    assert_eq!(
        body.matches("# TYPE routeplane_ipam_nodes gauge").count(),
        1,
        "one header per family"
    );
    assert!(server.metric("routeplane_ipam_flushes_total") >= 1.0);
    routeplane_testkit::assert_readme_metrics("routeplane_ipam_", &body);
    assert_eq!(server.metric("routeplane_ipam_nodes_draining"), 0.0);
    let drained = c
        .drain_node(pb::DrainNodeRequest {
            name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drained.draining && !drained.drain_ends_on_register);
    assert_eq!(server.metric("routeplane_ipam_nodes_draining"), 1.0);
    // The log's figures as a fresh server has them: on sled one segment, nothing checkpointed
    // yet; on etcd no log at all.
    let segments = if matches!(store, Store::Sled) {
        1.0
    } else {
        0.0
    };
    assert_eq!(server.metric("routeplane_ipam_log_segments"), segments);
    assert_eq!(
        server.metric("routeplane_ipam_log_segments_removed_total"),
        0.0
    );
}

async fn sigterm_with_an_open_watch_stops_cleanly_and_state_survives(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &[]);
    let mut c = server.client().await;
    let a = c
        .register_node(register("a", "10.4.94.10"))
        .await
        .unwrap()
        .into_inner();
    let pod = c
        .allocate_pod_ip(pb::AllocatePodIpRequest {
            node: "a".into(),
            owner: "default/p".into(),
            family: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pod.ips, vec!["10.5.112.2"], "the router IP .1 is reserved");
    let mut w = c
        .watch(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    next(&mut w).await;
    // An agent's heartbeat stream, open and never closed by its client, must not hold the exit
    // up either (it did, for the server's 10 s grace, before the stream ended on shutdown).
    let (beats, mut answers) = beating(&mut c, "a").await;
    // Wait on another thread so that this runtime keeps serving the client's side of the close.
    let stopping = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "SIGTERM took {:?} with a heartbeat stream open",
        stopping.elapsed()
    );
    // Ended: UNAVAILABLE "shutting down", or the connection's close if that came first.
    let told = answers.message().await;
    assert!(told.is_err(), "{told:?}");
    drop(beats);
    let ended = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("stream ends");
    if let Err(s) = ended {
        assert!(
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{s:?}"
        );
    }

    let server = store.start(dir.path(), &[]);
    let mut c = server.client().await;
    assert_eq!(
        c.get_node(pb::GetNodeRequest { name: "a".into() })
            .await
            .unwrap()
            .into_inner()
            .pod_cidrs,
        a.pod_cidrs
    );
    let pods = c
        .list_pod_i_ps(pb::ListPodIPsRequest { node: "a".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pods.allocations, vec![pod]);
}

#[test]
fn refused_configs_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let seed_bgp = repo_file("examples/seed/bgp-config.yaml");
    let (status, err) = run_to_exit(dir.path(), &["--bgp-config", seed_bgp.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains("10.5.112.0/21 overlaps the pod CIDR pool 10.5.112.0/21"),
        "{err}"
    );

    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&seed_bgp)
            .unwrap()
            .replace("peer-asn", "peer-asm"),
    )
    .unwrap();
    let (status, err) = run_to_exit(dir.path(), &["--bgp-config", typo.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("unknown field `peer-asm`"), "{err}");

    let (status, err) = run_to_exit(dir.path(), &["--heartbeat-detect-multiplier", "1"]);
    assert!(!status.success());
    assert!(
        err.contains("--heartbeat-detect-multiplier") && err.contains("2..=100"),
        "{err}"
    );

    let values = values_file(dir.path(), "10.5.112.0/21", 20);
    let (status, err) = run_to_exit(dir.path(), &["--values", values.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        err.contains("mask size /20 does not fit pool 10.5.112.0/21")
            && err.contains("from 22 to 30"),
        "{err}"
    );
}

async fn the_seed_values_load_verbatim_and_ignored_keys_are_listed(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let values = repo_file("examples/seed/values.yaml");
    let bgp = repo_file("config/bgp-config.yaml");
    let server = store.start(
        dir.path(),
        &[
            "--values",
            values.to_str().unwrap(),
            "--bgp-config",
            bgp.to_str().unwrap(),
        ],
    );
    let pools = server
        .client()
        .await
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pools.pod_pools.len(), 1);
    assert_eq!(
        (
            pools.pod_pools[0].cidr.as_str(),
            pools.pod_pools[0].mask_size
        ),
        ("10.5.112.0/21", 24)
    );
    let log = server.log();
    assert!(log.contains("keys routeplane-ipam does not act on: installIptablesRules, ipMasqAgent, kubeProxyReplacement"), "{log}");
}

/// A request past the decode limit (routeplane_api::MAX_MESSAGE_BYTES) is refused before any
/// handler sees it, and the server goes on answering.
async fn a_request_past_the_message_limit_is_refused_unread(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(dir.path(), &[]);
    let mut c = server.client().await;
    let huge = "x".repeat(routeplane_api::MAX_MESSAGE_BYTES + 1);
    let e = c
        .register_node(pb::RegisterNodeRequest {
            name: huge,
            ..register("a", "10.4.94.10")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted)
            && e.message().contains("too large"),
        "{e:?}"
    );
    c.register_node(register("a", "10.4.94.10")).await.unwrap();
}

/// Each behaviour test above, on each store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sled {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&Store::Sled).await;
                }
            )*
        }
        mod etcd {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let etcd = tempfile::tempdir().unwrap();
                    super::$name(&Store::etcd(etcd.path())).await;
                }
            )*
        }
    };
}

on_both_stores!(
    seed_pool_takes_eight_nodes_refuses_the_ninth_and_grows,
    errors_carry_the_right_code_and_name_the_value,
    watch_snapshot_then_live_then_resume_replays_what_was_missed,
    a_watcher_that_falls_behind_is_cut_off_and_resumes_without_a_gap,
    lease_expiry_marks_not_ready_and_keepalive_revives,
    heartbeats_keep_a_node_alive_and_refuse_what_is_not_theirs,
    health_reflection_v1_and_metrics,
    sigterm_with_an_open_watch_stops_cleanly_and_state_survives,
    the_seed_values_load_verbatim_and_ignored_keys_are_listed,
    a_request_past_the_message_limit_is_refused_unread,
);
