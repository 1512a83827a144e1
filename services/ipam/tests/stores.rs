//! One set of behaviour tests, run against both stores: sled (embedded) and a real etcd (Debian's
//! etcd 3.4 on loopback, `routeplane_testkit::etcd`). The allocation logic does not know which
//! store it runs on; these tests hold it to the same promises on each: what was acknowledged
//! survives a SIGKILL, no address is ever handed out twice, across restarts included.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Store;
use routeplane_api::ipam::v1 as pb;

async fn register(c: &mut common::Client, name: &str, ip: &str) -> pb::Node {
    c.register_node(pb::RegisterNodeRequest {
        name: name.into(),
        addresses: vec![ip.into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// Every pod IP and LoadBalancer IP the server holds, by owner.
async fn holdings(c: &mut common::Client, nodes: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut held = BTreeMap::new();
    for node in nodes {
        let pods = c
            .list_pod_i_ps(pb::ListPodIPsRequest {
                node: node.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        for p in pods.allocations {
            held.insert(format!("{node}/{}", p.owner), p.ips);
        }
    }
    let services = c
        .list_service_i_ps(pb::ListServiceIPsRequest {})
        .await
        .unwrap()
        .into_inner();
    for s in services.service_ips {
        held.insert(format!("service {}", s.service), vec![s.ip]);
    }
    held
}

/// Allocations from 16 callers at once, some released, a SIGKILL, a restart: everything
/// acknowledged is there, nothing released is, and what comes after collides with nothing.
async fn acknowledged_allocations_survive_a_kill_and_none_is_given_twice(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(&dir.path().join("data"), &[]);
    let mut c = server.client().await;
    let nodes = ["node-83-1", "node-83-2", "node-94-1"];
    for (i, n) in nodes.iter().enumerate() {
        register(&mut c, n, &format!("10.4.83.{}", 11 + i)).await;
    }
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..25 {
                    let node = ["node-83-1", "node-83-2", "node-94-1"][(t + i) % 3];
                    let owner = format!("default/pod-{t}-{i}");
                    let r = c
                        .allocate_pod_ip(pb::AllocatePodIpRequest {
                            node: node.into(),
                            owner: owner.clone(),
                            family: 0,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    got.push((format!("{node}/{owner}"), r.ips));
                }
                got
            })
        })
        .collect();
    let mut acknowledged = BTreeMap::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    for i in 0..3 {
        let r = c
            .allocate_service_ip(pb::AllocateServiceIpRequest {
                service: format!("default/web-{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        acknowledged.insert(format!("service default/web-{i}"), vec![r.ip]);
    }
    // Two released: they must not come back.
    for owner in ["default/pod-0-0", "default/pod-1-0"] {
        let node = if owner == "default/pod-0-0" {
            "node-83-1"
        } else {
            "node-83-2"
        };
        c.release_pod_ip(pb::ReleasePodIpRequest {
            node: node.into(),
            owner: owner.into(),
        })
        .await
        .unwrap();
        acknowledged.remove(&format!("{node}/{owner}"));
    }
    assert_eq!(holdings(&mut c, &nodes).await, acknowledged);
    server.kill9();

    let server = store.start(&dir.path().join("data"), &[]);
    let mut c = server.client().await;
    let after = holdings(&mut c, &nodes).await;
    assert_eq!(after, acknowledged, "what was acknowledged, exactly");
    let mut seen = BTreeSet::new();
    for ip in after.values().flatten() {
        assert!(seen.insert(ip.clone()), "{ip} held twice: {after:?}");
    }
    // New allocations take free addresses only.
    for i in 0..20 {
        let r = c
            .allocate_pod_ip(pb::AllocatePodIpRequest {
                node: nodes[i % 3].into(),
                owner: format!("default/after-{i}"),
                family: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for ip in r.ips {
            assert!(
                seen.insert(ip.clone()),
                "{ip} handed out again after the restart"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_keeps_acknowledged_allocations_and_gives_none_twice() {
    acknowledged_allocations_survive_a_kill_and_none_is_given_twice(Store::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keeps_acknowledged_allocations_and_gives_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::etcd(dir.path());
    acknowledged_allocations_survive_a_kill_and_none_is_given_twice(store).await;
}

/// A node deleted with its pods, and a node's registration: mutations of every kind, read back
/// after a restart the same on each store.
async fn every_kind_of_record_reads_back(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let server = store.start(&dir.path().join("data"), &[]);
    let mut c = server.client().await;
    register(&mut c, "node-a", "10.4.94.10").await;
    register(&mut c, "node-b", "10.4.94.11").await;
    // More pods than one etcd transaction takes (128 operations): the node's deletion below is
    // one mutation of 200 deletes.
    for i in 0..200 {
        c.allocate_pod_ip(pb::AllocatePodIpRequest {
            node: "node-b".into(),
            owner: format!("default/p{i}"),
            family: 0,
        })
        .await
        .unwrap();
    }
    c.delete_node(pb::DeleteNodeRequest {
        name: "node-b".into(),
        force: true,
    })
    .await
    .unwrap();
    c.add_pool_cidr(pb::AddPoolCidrRequest {
        cidr: "10.5.128.0/23".into(),
        mask_size: 0,
    })
    .await
    .unwrap();
    let before = c
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    let pools_before = c
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    server.terminate();

    let server = store.start(&dir.path().join("data"), &[]);
    let mut c = server.client().await;
    let after = c
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
    assert_eq!(after.nodes.len(), 1, "node-b stays deleted");
    let pools_after = c
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pools_after, pools_before, "the added pool is kept");
    let pods = c
        .list_pod_i_ps(pb::ListPodIPsRequest {
            node: "node-b".into(),
        })
        .await;
    assert!(pods.is_err(), "node-b's pods went with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_reads_every_kind_of_record_back() {
    every_kind_of_record_reads_back(Store::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_reads_every_kind_of_record_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::etcd(dir.path());
    every_kind_of_record_reads_back(store).await;
}
