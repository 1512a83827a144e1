//! The Watch feed on etcd outlives the replica that served it: a watcher resuming with
//! `fromRevision` at the replica that took over, or at a restarted one, gets a replay of exactly
//! what it missed (the history is in etcd, `records.rs`), and a snapshot only when it asks for
//! more than `--watch-history` keeps. Real etcd 3.4 on loopback, started by testkit.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Server;
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::watch_event::Event as E;
use routeplane_testkit::etcd::EtcdCluster;
use routeplane_testkit::{Service, wait_for};

fn args(cluster: &EtcdCluster, prefix: &str, extra: &[&str]) -> Vec<String> {
    let mut args = cluster.ipam_flags(prefix);
    args.extend(
        ["--etcd-lease-ttl", "1s"]
            .into_iter()
            .chain(extra.iter().copied())
            .map(String::from),
    );
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Registers node `nI` with the address 10.4.94.I (a next hop is one node's).
async fn register(endpoint: &str, name: &str) {
    let i: u8 = name.trim_start_matches('n').parse().unwrap();
    Server::attach(endpoint)
        .client()
        .await
        .register_node(pb::RegisterNodeRequest {
            name: name.into(),
            addresses: vec![format!("10.4.94.{i}")],
            ..Default::default()
        })
        .await
        .unwrap();
}

/// What a Watch from `from` delivered: the snapshot's revision and node names if it began with
/// one, then every event after it, until `until` says the events so far are enough (bounded: 10 s).
struct Watched {
    snapshot: Option<(u64, BTreeSet<String>)>,
    events: Vec<(u64, E)>,
}

async fn watch(endpoint: &str, from: u64, until: impl Fn(&[(u64, E)]) -> bool) -> Watched {
    let mut stream = Server::attach(endpoint)
        .client()
        .await
        .watch(pb::WatchRequest {
            from_revision: from,
            // Everything IPAM publishes (plaintext on loopback: no certificate role to refuse it).
            operator_entries: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Watched {
        snapshot: None,
        events: Vec::new(),
    };
    let mut names = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = got.snapshot.is_some() || !got.events.is_empty();
        // A snapshot where a replay was expected ends the watch: the caller's assertion says so.
        if (started && until(&got.events)) || (from != 0 && got.snapshot.is_some()) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.message())
            .await
            .expect("the Watch delivered what was expected within 10 s")
            .unwrap()
            .expect("the stream stays open");
        match ev.event.unwrap() {
            E::Snapshot(s) => {
                assert!(got.events.is_empty(), "a snapshot after events");
                names.extend(s.nodes.into_iter().map(|n| n.name));
                if s.last {
                    got.snapshot = Some((ev.revision, std::mem::take(&mut names)));
                }
            }
            other => got.events.push((ev.revision, other)),
        }
    }
    got
}

fn updated(events: &[(u64, E)]) -> Vec<String> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            E::NodeUpdated(n) => Some(n.name.clone()),
            _ => None,
        })
        .collect()
}

fn seen(events: &[(u64, E)], name: &str) -> bool {
    events.iter().any(|(_, e)| match e {
        E::NodeUpdated(n) => n.name == name,
        E::NodeDeleted(d) => d.name == name,
        _ => false,
    })
}

/// A watcher of the leader that went down resumes at the standby that took over: no snapshot,
/// every event after its revision once, in order, and nothing the new leader's own state lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_at_the_replica_that_took_over_with_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let args = args(&cluster, "/watch/", &[]);
    let a = Server::start(&dir.path().join("a"), &refs(&args));
    let mut b = Service::start(
        "routeplane-ipam standby",
        common::command(&dir.path().join("b"), &refs(&args)),
    );
    wait_for("b standing by", Duration::from_secs(20), || {
        b.log().contains("standby")
    });
    for n in ["n1", "n2", "n3"] {
        register(&a.endpoint(), n).await;
    }
    let first = watch(&a.endpoint(), 0, |_| true).await;
    let (seen_at, before) = first.snapshot.expect("from 0: a snapshot");
    assert_eq!(before, BTreeSet::from(["n1", "n2", "n3"].map(String::from)));
    // Missed by the watcher: two at the old leader, then the new leader's own.
    register(&a.endpoint(), "n4").await;
    register(&a.endpoint(), "n5").await;
    a.kill9();
    wait_for("b leads", Duration::from_secs(10), || {
        b.log().contains("gRPC listening")
    });
    let b_endpoint = format!("http://{}", b.listen_addr("gRPC"));
    register(&b_endpoint, "n6").await;
    Server::attach(&b_endpoint)
        .client()
        .await
        .delete_node(pb::DeleteNodeRequest {
            name: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let resumed = watch(&b_endpoint, seen_at, |e| seen(e, "n1")).await;
    assert!(
        resumed.snapshot.is_none(),
        "resuming at the new leader replays; it does not start over with a snapshot"
    );
    let revisions: Vec<u64> = resumed.events.iter().map(|(r, _)| *r).collect();
    assert!(
        revisions.first().is_some_and(|r| *r > seen_at)
            && revisions.windows(2).all(|w| w[0] < w[1]),
        "after {seen_at}, increasing, none twice: {revisions:?}"
    );
    assert_eq!(updated(&resumed.events), ["n4", "n5", "n6"]);
    assert!(matches!(&resumed.events.last(), Some((_, E::NodeDeleted(d))) if d.name == "n1"));
    // Exactly what was missed: the new leader's state now is the old snapshot plus the replay.
    let now = watch(&b_endpoint, 0, |_| true).await;
    let (revision_now, nodes_now) = now.snapshot.unwrap();
    assert_eq!(revisions.last(), Some(&revision_now));
    assert_eq!(
        nodes_now,
        BTreeSet::from(["n2", "n3", "n4", "n5", "n6"].map(String::from))
    );
}

/// A restart on etcd replays too; what falls out of `--watch-history` is deleted from etcd, and a
/// watcher resuming from before it gets a snapshot instead of a replay with a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_replays_the_kept_history_and_a_snapshot_beyond_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let args = args(&cluster, "/restart/", &["--watch-history", "4"]);
    let server = Server::start(&dir.path().join("a"), &refs(&args));
    register(&server.endpoint(), "n1").await;
    let (seen_at, _) = watch(&server.endpoint(), 0, |_| true)
        .await
        .snapshot
        .unwrap();
    register(&server.endpoint(), "n2").await;
    register(&server.endpoint(), "n3").await;
    assert!(server.terminate().success());
    let server = Server::start(&dir.path().join("a"), &refs(&args));
    let resumed = watch(&server.endpoint(), seen_at, |e| seen(e, "n3")).await;
    assert!(
        resumed.snapshot.is_none(),
        "a restart no longer forces a snapshot"
    );
    assert_eq!(updated(&resumed.events), ["n2", "n3"]);

    for i in 4..=8 {
        register(&server.endpoint(), &format!("n{i}")).await;
    }
    let history = cluster.get_prefix("/restart/h/");
    assert!(
        (1..=5).contains(&history.len()),
        "etcd keeps about --watch-history 4 revisions of events: {history:?}"
    );
    let too_old = watch(&server.endpoint(), seen_at, |_| true).await;
    let (_, nodes) = too_old
        .snapshot
        .expect("history no longer reaches back: a snapshot");
    assert_eq!(nodes.len(), 8);
}

/// A change too big for one etcd transaction stores its Watch event first, then its intent. A
/// writer stopped between the two leaves an event for a change that never happened: opening
/// deletes it, so the next change taking that revision is not replayed as it. A writer stopped
/// after the intent is rolled forward with its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_change_cut_short_is_replayed_only_if_it_is_rolled_forward() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1, &[]);
    let args = args(&cluster, "/big/", &[]);
    let data = dir.path().join("a");
    let server = Server::start(&data, &refs(&args));
    register(&server.endpoint(), "n1").await;
    let (at, _) = watch(&server.endpoint(), 0, |_| true)
        .await
        .snapshot
        .unwrap();
    assert!(server.terminate().success());
    let path = |key: &str| {
        format!(
            r#"{{"OperatorEntries":{{"put":[{{"kind":"bgp-path","key":"{key}","value":"{{}}"}}],"deleted":[]}}}}"#
        )
    };
    let history_key = |r: u64| format!("/big/h/{r:020}");

    // Stopped after the event of revision at+1, before its intent.
    cluster.etcdctl(&["put", &history_key(at + 1), &path("10.9.0.1/32")]);
    let server = Server::start(&data, &refs(&args));
    // Revision at+1 is taken by a change that publishes nothing (a pod IP), then n2.
    server
        .client()
        .await
        .allocate_pod_ip(pb::AllocatePodIpRequest {
            node: "n1".into(),
            owner: "default/web".into(),
            family: 0,
        })
        .await
        .unwrap();
    register(&server.endpoint(), "n2").await;
    // Read back from etcd by the next start: the history is what etcd holds.
    assert!(server.terminate().success());
    let server = Server::start(&data, &refs(&args));
    let resumed = watch(&server.endpoint(), at, |e| seen(e, "n2")).await;
    assert!(resumed.snapshot.is_none());
    assert_eq!(
        resumed.events.len(),
        1,
        "only n2, not the left-over event of revision {}: {:?}",
        at + 1,
        resumed.events
    );
    assert_eq!(resumed.events[0].0, at + 2);
    let (now, _) = watch(&server.endpoint(), 0, |_| true)
        .await
        .snapshot
        .unwrap();
    assert!(server.terminate().success());

    // Stopped after the event and the intent of revision now+1: rolled forward, replayed.
    cluster.etcdctl(&["put", &history_key(now + 1), &path("10.9.0.2/32")]);
    let intent = format!(
        r#"{{"revision":{},"changes":[{{"PutOperator":{{"kind":"bgp-path","key":"10.9.0.2/32","value":"{{}}"}}}}]}}"#,
        now + 1
    );
    cluster.etcdctl(&["put", "/big/m/pending", &intent]);
    let server = Server::start(&data, &refs(&args));
    assert!(server.log().contains("rolled forward"), "{}", server.log());
    let mut stream = server
        .client()
        .await
        .watch(pb::WatchRequest {
            from_revision: now,
            operator_entries: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.revision, now + 1);
    assert!(
        matches!(&first.event, Some(E::OperatorEntries(o)) if o.put.len() == 1 && o.put[0].key == "10.9.0.2/32"),
        "{first:?}"
    );
    assert!(cluster.get_prefix("/big/m/pending").is_empty());
}
