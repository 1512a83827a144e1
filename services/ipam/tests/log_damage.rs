//! A damaged write-ahead log, on a real process and a real data directory: acknowledged
//! allocations are logged, the server is killed before a checkpoint covers them, and a byte of the
//! log is flipped. In a middle record the start is refused, naming the offset (and
//! `--check-store` says why); in the last record that record alone is dropped and everything else
//! comes back.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{BIN, Server, output_text, run_to_exit, values_file};
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use tonic::transport::Channel;

const PODS: usize = 12;

/// Where each record of a segment begins (u32 LE length, u32 CRC, payload).
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        starts.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    assert_eq!(at, bytes.len(), "the test reads whole records");
    starts
}

/// The segment holding the records (the others are empty).
fn logged_segment(data: &Path) -> PathBuf {
    let mut with_records: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert_eq!(with_records.len(), 1, "{with_records:?}");
    with_records.remove(0)
}

/// Registers a node and allocates PODS pod IPs one at a time (one log record each), then SIGKILL
/// before any checkpoint: everything acknowledged is only in the log.
async fn acknowledged_then_killed(data: &Path, flags: &[&str]) -> BTreeMap<String, Vec<String>> {
    let server = Server::start(data, flags);
    let mut c = server.client().await;
    c.register_node(pb::RegisterNodeRequest {
        name: "n1".into(),
        addresses: vec!["192.0.2.10".into()],
        labels: Default::default(),
    })
    .await
    .unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..PODS {
        let owner = format!("pod-{i:02}");
        acked.insert(owner.clone(), allocate(&mut c, &owner).await);
    }
    server.kill9();
    acked
}

/// A pod IP on node n1 for `owner`: its addresses.
async fn allocate(c: &mut IpamClient<Channel>, owner: &str) -> Vec<String> {
    let req = pb::AllocatePodIpRequest {
        node: "n1".into(),
        owner: owner.into(),
        family: 0,
    };
    c.allocate_pod_ip(req).await.unwrap().into_inner().ips
}

async fn held(server: &Server) -> BTreeMap<String, Vec<String>> {
    let mut c = server.client().await;
    let list = c
        .list_pod_i_ps(pb::ListPodIPsRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    list.allocations
        .into_iter()
        .map(|a| (a.owner, a.ips))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_middle_record_stops_the_start_and_a_flipped_last_record_alone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let values = values_file(dir.path(), "10.0.0.0/16", 24);
    // No checkpoint while the test runs: the log is all there is.
    let flags = [
        "--values",
        values.to_str().unwrap(),
        "--checkpoint-interval",
        "1h",
    ];
    let acked = acknowledged_then_killed(&data, &flags).await;
    let segment = logged_segment(&data);
    let intact = std::fs::read(&segment).unwrap();
    let starts = record_starts(&intact);
    assert_eq!(
        starts.len(),
        PODS + 1,
        "the node and every pod, one record each"
    );

    // A byte in the middle record's payload.
    let middle = starts[starts.len() / 2];
    let mut damaged = intact.clone();
    damaged[middle + 20] ^= 0x01;
    std::fs::write(&segment, &damaged).unwrap();
    let (status, stderr) = run_to_exit(&data, &flags);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("is corrupt at byte {middle}"))
            && stderr.contains("--check-store"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        damaged,
        "a refused start cuts nothing"
    );
    let mut check = std::process::Command::new(BIN);
    check.args(["--check-store", "--data-dir", data.to_str().unwrap()]);
    let (ok, report) = output_text(&mut check);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("CORRUPT at byte {middle}")) && report.contains("would refuse"),
        "{report}"
    );

    // The same byte back, and one in the last record instead: that record is dropped, alone.
    let last = *starts.last().unwrap();
    let mut damaged = intact.clone();
    damaged[last + 20] ^= 0x01;
    std::fs::write(&segment, &damaged).unwrap();
    let (ok, report) = output_text(&mut check);
    assert!(
        ok && report.contains(&format!("torn tail at byte {last}")),
        "{report}"
    );
    let server = Server::start(&data, &flags);
    assert!(
        server
            .log()
            .contains(&format!("at byte {last}, a write that never completed")),
        "{}",
        server.log()
    );
    let back = held(&server).await;
    let lost = format!("pod-{:02}", PODS - 1);
    let mut expected = acked.clone();
    expected.remove(&lost);
    assert_eq!(back, expected, "every record but the last replayed");
    // The dropped allocation's address is free again, and goes to exactly one owner.
    let again = allocate(&mut server.client().await, &lost).await;
    let now = held(&server).await;
    let mut ips: Vec<&String> = now.values().flatten().collect();
    ips.sort();
    let before = ips.len();
    ips.dedup();
    assert_eq!(ips.len(), before, "no address held twice: {now:?}");
    assert_eq!(now.get(&lost), Some(&again));
}
