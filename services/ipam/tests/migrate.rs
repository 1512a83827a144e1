//! `routeplane-ipam --copy-store`: a sled store with every kind of record copied into a real etcd
//! (Debian's etcd 3.4 on loopback), served from there, changed, and copied back into a new sled
//! store — each copy read back and compared by the tool, and the served state compared here.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Server, output_text};
use routeplane_api::ipam::v1 as pb;
use routeplane_testkit::etcd::EtcdCluster;

fn copy(direction: &str, data_dir: &Path, cluster: &EtcdCluster) -> (bool, String) {
    output_text(Command::new(BIN).args([
        "--copy-store",
        direction,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--etcd-endpoints",
        &cluster.endpoints(),
        "--etcd-prefix",
        "/moved/",
    ]))
}

/// Everything a client can read: nodes, every node's pod IPs, LoadBalancer IPs, pools, operator
/// entries.
async fn everything(server: &Server) -> String {
    let mut c = server.client().await;
    let nodes = c
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut out = format!("{nodes:?}\n");
    for n in &nodes.nodes {
        let pods = c
            .list_pod_i_ps(pb::ListPodIPsRequest {
                node: n.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        out += &format!("{pods:?}\n");
    }
    let services = c
        .list_service_i_ps(pb::ListServiceIPsRequest {})
        .await
        .unwrap()
        .into_inner();
    let pools = c
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    let operator = c
        .list_operator_entries(pb::ListOperatorEntriesRequest {
            kind: "bgp-peer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    out + &format!("{services:?}\n{pools:?}\n{operator:?}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_to_etcd_and_back_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let sled = dir.path().join("sled");
    let server = Server::start(&sled, &[]);
    let mut c = server.client().await;
    for (i, name) in ["node-83-1", "node-94-1"].iter().enumerate() {
        c.register_node(pb::RegisterNodeRequest {
            name: name.to_string(),
            addresses: vec![format!("10.4.83.{}", 11 + i)],
            ..Default::default()
        })
        .await
        .unwrap();
        for p in 0..30 {
            c.allocate_pod_ip(pb::AllocatePodIpRequest {
                node: name.to_string(),
                owner: format!("default/pod-{p}"),
                family: 0,
            })
            .await
            .unwrap();
        }
    }
    c.allocate_service_ip(pb::AllocateServiceIpRequest {
        service: "default/web".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.add_pool_cidr(pb::AddPoolCidrRequest {
        cidr: "10.5.128.0/23".into(),
        mask_size: 0,
    })
    .await
    .unwrap();
    c.put_operator_entries(pb::PutOperatorEntriesRequest {
        entries: vec![pb::OperatorEntry {
            kind: "bgp-peer".into(),
            key: "10.4.36.239".into(),
            value: r#"{"peer-address":"10.4.36.239","peer-asn":65000}"#.into(),
        }],
        create_only: true,
    })
    .await
    .unwrap();
    let before = everything(&server).await;
    // Running, it holds sled: the copy is refused, saying why.
    let (ok, text) = copy("sled-to-etcd", &sled, &cluster);
    assert!(!ok, "{text}");
    assert!(text.contains("another routeplane-ipam"), "{text}");
    server.terminate();

    let (ok, text) = copy("sled-to-etcd", &sled, &cluster);
    assert!(ok, "{text}");
    assert!(
        text.contains("60 pod IPs") && text.contains("every record equal"),
        "{text}"
    );
    // A second copy into the same prefix is refused: it holds state now.
    let (ok, text) = copy("sled-to-etcd", &sled, &cluster);
    assert!(!ok && text.contains("already holds"), "{text}");

    let on_etcd = Server::start(
        &dir.path().join("unused"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &cluster.endpoints(),
            "--etcd-prefix",
            "/moved/",
        ],
    );
    assert_eq!(everything(&on_etcd).await, before);
    // Served from etcd, it goes on: a new pod takes a free address.
    let mut c = on_etcd.client().await;
    c.allocate_pod_ip(pb::AllocatePodIpRequest {
        node: "node-83-1".into(),
        owner: "default/on-etcd".into(),
        family: 0,
    })
    .await
    .unwrap();
    let changed = everything(&on_etcd).await;
    on_etcd.terminate();

    let back = dir.path().join("back");
    let (ok, text) = copy("etcd-to-sled", &back, &cluster);
    assert!(ok && text.contains("61 pod IPs"), "{text}");
    let (ok, text) = copy("etcd-to-sled", &back, &cluster);
    assert!(!ok && text.contains("already holds a store"), "{text}");
    let on_sled = Server::start(&back, &[]);
    assert_eq!(everything(&on_sled).await, changed);
}
