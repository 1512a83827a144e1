//! The shutdown bookmark (ipam.proto `Progress`): pod IPs move IPAM's revision without an event a
//! watcher follows, so a watcher's last event lags the revision, and on sled — whose Watch history
//! does not outlive the process — resuming from it at a restarted IPAM costs a whole snapshot. At
//! 5,000 nodes that was 5,000 snapshots of 5,000 nodes at once, which starved heartbeats until
//! nodes died en masse. IPAM's SIGTERM now sends every watcher a bookmark at its revision first:
//! resumed from it, nothing is replayed, and the next change comes as itself.

mod common;

use std::time::Duration;

use common::Server;
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::watch_event::Event as E;

async fn next(stream: &mut tonic::Streaming<pb::WatchEvent>) -> Option<pb::WatchEvent> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message or the end within 10 s")
        .ok()
        .flatten()
}

async fn watch(server: &Server, from: u64) -> tonic::Streaming<pb::WatchEvent> {
    server
        .client()
        .await
        .watch(pb::WatchRequest {
            from_revision: from,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_stopped_by_sigterm_gets_a_bookmark_and_resumes_from_it_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let node = c
        .register_node(pb::RegisterNodeRequest {
            name: "a".into(),
            addresses: vec!["10.4.94.10".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut w = watch(&server, node.revision).await;
    // Pod IPs: the revision moves on, with no event for this watcher.
    for p in 0..3 {
        c.allocate_pod_ip(pb::AllocatePodIpRequest {
            node: "a".into(),
            owner: format!("default/p{p}"),
            family: 0,
        })
        .await
        .unwrap();
    }
    let revision = server.metric("routeplane_ipam_revision") as u64;
    assert!(revision > node.revision);

    let stopping = tokio::task::spawn_blocking(move || server.terminate());
    let bookmark = next(&mut w).await.expect("a bookmark before the end");
    assert!(
        matches!(bookmark.event, Some(E::Progress(_))),
        "{bookmark:?}"
    );
    assert_eq!(bookmark.revision, revision);
    assert!(next(&mut w).await.is_none(), "then the stream ends");
    assert!(stopping.await.unwrap().success());

    let server = Server::start(dir.path(), &[]);
    // From the last event seen, the history is gone: a whole snapshot (what every watcher got).
    let mut behind = watch(&server, node.revision).await;
    let first = next(&mut behind).await.unwrap();
    assert!(matches!(first.event, Some(E::Snapshot(_))), "{first:?}");
    // From the bookmark: nothing to replay; the next change comes as itself.
    let mut resumed = watch(&server, bookmark.revision).await;
    let mut c = server.client().await;
    c.register_node(pb::RegisterNodeRequest {
        name: "b".into(),
        addresses: vec!["10.4.94.11".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut resumed).await.unwrap();
    assert!(
        matches!(&first.event, Some(E::NodeUpdated(n)) if n.name == "b"),
        "{first:?}"
    );
}
