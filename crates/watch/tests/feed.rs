//! crates/watch against a real routeplane-ipam: a snapshot IPAM sends in chunks arrives whole, a
//! follower that falls behind is cut off (ABORTED) and resumes by revision without a gap or a new
//! snapshot, IPAM killed or stopped under a running follower is followed again once back, and a
//! follower of two IPAM replicas on etcd moves to the one that took over with a replay.
//!
//! The follower runs on a runtime of its own thread, as in the speaker and the agent, so that a
//! test can freeze it (a busy process) while IPAM keeps committing.

use routeplane_runtime::dial::Dialer;
use routeplane_runtime::link::Link;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_runtime::shutdown::Shutdown;
use routeplane_testkit::Service;
use routeplane_watch::{FeedEvent, FeedNode, FeedStats};
use tokio::sync::mpsc;

fn start_ipam(dir: &Path, listen: &str, extra: &[&str]) -> (Service, SocketAddr) {
    routeplane_testkit::ipam::start_ipam(dir, routeplane_testkit::ipam::VALUES, listen, extra)
}

/// `routeplane_watch::run` on its own thread and runtime, which [`Follower::freeze`] can stop.
struct Follower {
    events: mpsc::UnboundedReceiver<FeedEvent>,
    stats: Arc<FeedStats>,
    shutdown: Shutdown,
    freeze: mpsc::UnboundedSender<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The nodes as the feed's events build them up.
    nodes: BTreeMap<String, FeedNode>,
    snapshots: usize,
    disconnects: usize,
}

impl Follower {
    fn start(endpoint: String) -> Follower {
        let (tx, events) = mpsc::unbounded_channel();
        let (freeze, mut freezes) = mpsc::unbounded_channel::<(
            std::sync::mpsc::Sender<()>,
            std::sync::mpsc::Receiver<()>,
        )>();
        let stats = Arc::new(FeedStats::default());
        let shutdown = Shutdown::new();
        let (s, sd) = (stats.clone(), shutdown.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("follower runtime");
            rt.block_on(async move {
                tokio::spawn(async move {
                    while let Some((frozen, thaw)) = freezes.recv().await {
                        let _ = frozen.send(());
                        // Blocks the runtime's only thread: nothing of the follower runs.
                        let _ = thaw.recv();
                    }
                });
                let what = routeplane_watch::Follow::Allocations;
                let link = Arc::new(Link::new(Dialer::loopback_only(), &endpoint));
                routeplane_watch::run(link, what, tx, s, sd).await;
            });
        });
        Follower {
            events,
            stats,
            shutdown,
            freeze,
            thread: Some(thread),
            nodes: BTreeMap::new(),
            snapshots: 0,
            disconnects: 0,
        }
    }

    /// Stops the follower's runtime until the returned sender is dropped or sent to.
    fn freeze(&self) -> std::sync::mpsc::Sender<()> {
        let (frozen_tx, frozen_rx) = std::sync::mpsc::channel();
        let (thaw_tx, thaw_rx) = std::sync::mpsc::channel();
        self.freeze
            .send((frozen_tx, thaw_rx))
            .expect("follower running");
        frozen_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the follower froze");
        thaw_tx
    }

    /// Applies events until `done` holds of the follower's view; fails with the view after 30 s.
    async fn until(&mut self, what: &str, done: impl Fn(&Follower) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => panic!("{what}: the follower stopped"),
                Err(_) => panic!(
                    "{what}: not within 30 s; the follower has {} nodes, {} snapshots, {} disconnects",
                    self.nodes.len(),
                    self.snapshots,
                    self.disconnects
                ),
            }
        }
    }

    fn apply(&mut self, event: FeedEvent) {
        match event {
            FeedEvent::Snapshot { nodes, .. } => {
                self.snapshots += 1;
                self.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
            }
            FeedEvent::Node(n) => {
                self.nodes.insert(n.name.clone(), n);
            }
            FeedEvent::NodeDeleted(name) => {
                self.nodes.remove(&name);
            }
            FeedEvent::Connected(false) => self.disconnects += 1,
            FeedEvent::Connected(true)
            | FeedEvent::ServiceAssigned(_)
            | FeedEvent::ServiceReleased(_) => {}
            FeedEvent::Operator { revision, .. } => {
                panic!(
                    "operator entries (revision {revision}) reached a follower of allocations only"
                )
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn client(addr: SocketAddr) -> IpamClient<tonic::transport::Channel> {
    IpamClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to routeplane-ipam")
}

fn node(i: usize, labels: BTreeMap<String, String>) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        name: format!("node-{i:05}"),
        addresses: vec![format!("172.16.{}.{}", i / 250, i % 250 + 1)],
        labels: labels.into_iter().collect(),
    }
}

/// Registers nodes `range`, 16 at a time; returns the highest revision acknowledged.
async fn register(
    addr: SocketAddr,
    range: std::ops::Range<usize>,
    labels: impl Fn(usize) -> BTreeMap<String, String>,
) -> u64 {
    let c = client(addr).await;
    let mut set = tokio::task::JoinSet::new();
    let mut revision = 0;
    for i in range {
        if set.len() >= 16 {
            revision = revision.max(set.join_next().await.expect("a task").expect("no panic"));
        }
        let mut c = c.clone();
        let request = node(i, labels(i));
        set.spawn(async move {
            c.register_node(request)
                .await
                .expect("RegisterNode")
                .into_inner()
                .revision
        });
    }
    while let Some(r) = set.join_next().await {
        revision = revision.max(r.expect("no panic"));
    }
    revision
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("node-{i:05}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_ipam_sends_in_chunks_arrives_whole_then_changes_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ipam, addr) = start_ipam(dir.path(), "127.0.0.1:0", &[]);
    // Past IPAM's 500 nodes per snapshot message: three chunks.
    register(addr, 0..1_001, |_| BTreeMap::new()).await;
    let mut c = client(addr).await;
    for s in ["default/web", "default/api"] {
        c.allocate_service_ip(pb::AllocateServiceIpRequest {
            service: s.into(),
            ..Default::default()
        })
        .await
        .expect("AllocateServiceIP");
    }

    let mut f = Follower::start(format!("http://{addr}"));
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(30), f.events.recv()).await {
            Ok(Some(FeedEvent::Connected(_))) => continue,
            Ok(Some(e)) => break e,
            other => panic!("no snapshot within 30 s: {other:?}"),
        }
    };
    let FeedEvent::Snapshot {
        nodes, services, ..
    } = &first
    else {
        panic!("the first event is not the snapshot: {first:?}");
    };
    let got: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(got, names(0..1_001), "every chunk, once, in order");
    assert!(
        nodes.iter().all(|n| n.pod_cidrs.len() == 1 && n.ready),
        "each node with its pod CIDR"
    );
    let mut services: Vec<&str> = services.iter().map(|s| s.service.as_str()).collect();
    services.sort_unstable();
    assert_eq!(services, ["default/api", "default/web"]);
    f.apply(first);

    register(addr, 1_001..1_002, |_| BTreeMap::new()).await;
    f.until("the node registered after the snapshot", |f| {
        f.nodes.contains_key("node-01001")
    })
    .await;
    assert_eq!(f.snapshots, 1);
    assert_eq!(f.stats.connects(), 1);
    assert_eq!(f.stats.skipped(), 0, "nothing IPAM sends is unparsable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_falls_behind_is_cut_off_and_resumes_by_revision_without_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ipam, addr) = start_ipam(dir.path(), "127.0.0.1:0", &["--watch-buffer", "4"]);
    let mut f = Follower::start(format!("http://{addr}"));
    f.until("the first snapshot", |f| f.snapshots == 1).await;
    // One event applied first: the snapshot of an empty IPAM is at revision 0, and a follower that
    // resumes from 0 asks for a new snapshot (fromRevision's default), as it should.
    register(addr, 500..501, |_| BTreeMap::new()).await;
    f.until("a first event after the snapshot", |f| {
        f.nodes.contains_key("node-00500")
    })
    .await;

    // About 10 KB per event: 500 of them are more than HTTP/2's windows and IPAM's stream buffer
    // hold, so IPAM's feed overflows the 4 events it keeps for this follower.
    let big = |i: usize| {
        (0..30)
            .map(|k| (format!("example.com/{:a>280}-{k}", ""), format!("{i:0>63}")))
            .collect()
    };
    let thaw = f.freeze();
    register(addr, 0..500, big).await;
    drop(thaw);

    f.until("all 500 nodes after the follower thawed", |f| {
        f.nodes.len() == 501
    })
    .await;
    assert!(
        f.stats.connects() >= 2,
        "the follower was really cut off and reconnected ({} connections)",
        f.stats.connects()
    );
    assert_eq!(
        f.snapshots, 1,
        "resumed from its revision: a replay of what it missed, not a new snapshot"
    );
    let labels = &f.nodes["node-00499"].labels;
    assert_eq!(labels.len(), 30, "every label as sent");
    assert!(labels.values().all(|v| *v == format!("{:0>63}", 499)));

    // 5 MB of nodes: a snapshot IPAM cuts by size too, or no client decodes it (4 MiB limit).
    let mut fresh = Follower::start(format!("http://{addr}"));
    fresh
        .until("a new follower's snapshot of the 501 nodes", |f| {
            f.nodes.len() == 501
        })
        .await;
    assert_eq!(fresh.stats.connects(), 1, "at the first attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_killed_or_stopped_under_a_follower_is_followed_again_once_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut ipam, addr) = start_ipam(dir.path(), "127.0.0.1:0", &[]);
    let listen = addr.to_string();
    let mut f = Follower::start(format!("http://{addr}"));
    register(addr, 0..3, |_| BTreeMap::new()).await;
    f.until("three nodes", |f| f.nodes.len() == 3).await;

    for (round, how) in ["SIGKILL", "SIGTERM", "SIGKILL"].into_iter().enumerate() {
        let before = f.disconnects;
        if how == "SIGKILL" {
            ipam.kill9();
        } else {
            assert!(ipam.terminate().success(), "{}", ipam.log());
        }
        f.until(&format!("the follower sees IPAM gone ({how})"), |f| {
            f.disconnects > before
        })
        .await;
        // Down a while: the follower retries (and backs off) meanwhile.
        tokio::time::sleep(Duration::from_millis(700)).await;
        (ipam, _) = start_ipam(dir.path(), &listen, &[]);
        let n = 3 + round;
        register(addr, n..n + 1, |_| BTreeMap::new()).await;
        let mut c = client(addr).await;
        c.delete_node(pb::DeleteNodeRequest {
            name: format!("node-{round:05}"),
            force: true,
        })
        .await
        .expect("DeleteNode");
        let truth: Vec<String> = c
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("ListNodes")
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        f.until(&format!("IPAM's nodes after its restart {round}"), |f| {
            f.nodes.keys().cloned().collect::<Vec<_>>() == truth
        })
        .await;
    }
    assert_eq!(f.stats.skipped(), 0);
}

/// Two IPAM replicas on etcd, the follower given both addresses: the leader killed, the follower
/// connects to the standby that took over and resumes by revision — a replay from the history in
/// etcd, not a second snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_two_replicas_moves_to_the_one_that_took_over_without_a_snapshot() {
    use routeplane_testkit::etcd::EtcdCluster;
    use routeplane_testkit::ipam::{VALUES, free_port, spawn_etcd_replica};
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let (pa, pb) = (free_port(), free_port());
    let replica = |name: &str, port| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("replica dir");
        spawn_etcd_replica(&d, VALUES, port, &cluster.endpoints(), "/feed/", &[])
    };
    let mut a = replica("a", pa);
    let a_addr = a.listen_addr("gRPC");
    let b = replica("b", pb);
    routeplane_testkit::wait_for("b standing by", Duration::from_secs(20), || {
        b.log().contains("standby")
    });
    let mut f = Follower::start(format!("http://127.0.0.1:{pa},http://127.0.0.1:{pb}"));
    register(a_addr, 0..3, |_| BTreeMap::new()).await;
    f.until("three nodes from a", |f| f.nodes.len() == 3).await;
    assert_eq!(f.snapshots, 1);

    a.kill9();
    let mut b = b;
    let b_addr = b.listen_addr("gRPC");
    register(b_addr, 3..6, |_| BTreeMap::new()).await;
    f.until("the nodes b added", |f| f.nodes.len() == 6).await;
    assert_eq!(
        f.snapshots, 1,
        "resumed at b by revision: a replay, no second snapshot"
    );
    assert_eq!(f.stats.connects(), 2, "a, then b");
    assert_eq!(f.nodes.keys().cloned().collect::<Vec<_>>(), names(0..6));
    assert!(b.log().contains("leading:"), "{}", b.log());
}
