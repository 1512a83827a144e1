//! The write-ahead log stays bounded under unbroken load: 32 clients allocate and release pod IPs
//! as fast as a real routeplane-ipam answers for 60 s — longer on a machine too slow to have made
//! enough changes by then to outgrow the bound, up to 180 s — and every half second the test reads
//! the checkpoint revision and the log's size on disk. Checkpoints come on time and on size whatever
//! the queue holds, the materializer's backlog is bounded, and so the log is too.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, values_file};
use routeplane_api::ipam::v1 as pb;

const CLIENTS: usize = 32;
const LOAD: Duration = Duration::from_secs(60);
/// The longest the load goes on for want of changes (a debug build on a slow machine made 55,232
/// in 60 s where 59,758 could outgrow the bound).
const LOAD_MOST: Duration = Duration::from_secs(180);
/// What a run may leave un-checkpointed: --checkpoint-changes changes, plus a materializer backlog
/// of 256 groups (each at most one change per client), at under 300 bytes a change, plus the
/// segment being written and the one before it (segments are deleted whole).
const CHECKPOINT_CHANGES: u64 = 5_000;
const SEGMENT: u64 = 256 << 10;
const LOG_BOUND: u64 = (CHECKPOINT_CHANGES + 256 * CLIENTS as u64) * 300 + 2 * SEGMENT;

fn log_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_full_load_keeps_checkpoints_on_time_and_the_log_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let values = values_file(dir.path(), "10.0.0.0/16", 24);
    let server = Server::start(
        &data,
        &[
            "--values",
            values.to_str().unwrap(),
            "--log-segment-size",
            "256KiB",
            "--checkpoint-changes",
            &CHECKPOINT_CHANGES.to_string(),
        ],
    );
    let mut c = server.client().await;
    for n in 0..CLIENTS {
        c.register_node(pb::RegisterNodeRequest {
            name: format!("n{n}"),
            addresses: vec![format!("192.0.2.{}", n + 1)],
            labels: Default::default(),
        })
        .await
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for n in 0..CLIENTS {
        let mut c = server.client().await;
        let (stop, changes) = (stop.clone(), changes.clone());
        load.push(tokio::spawn(async move {
            let node = format!("n{n}");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let owner = format!("pod-{i}");
                c.allocate_pod_ip(pb::AllocatePodIpRequest {
                    node: node.clone(),
                    owner: owner.clone(),
                    family: 0,
                })
                .await
                .unwrap();
                c.release_pod_ip(pb::ReleasePodIpRequest {
                    node: node.clone(),
                    owner,
                })
                .await
                .unwrap();
                changes.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    let started = Instant::now();
    let mut last_checkpoint = (
        server.metric("routeplane_ipam_checkpoint_revision"),
        started,
    );
    let (mut longest_gap, mut largest_log) = (Duration::ZERO, 0);
    // Enough changes that an unbounded log would have outgrown the bound twice over.
    let enough = |done: u64| done * 150 > 2 * LOG_BOUND;
    while started.elapsed() < LOAD
        || (!enough(changes.load(Ordering::Relaxed)) && started.elapsed() < LOAD_MOST)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let checkpoint = server.metric("routeplane_ipam_checkpoint_revision");
        if checkpoint > last_checkpoint.0 {
            last_checkpoint = (checkpoint, Instant::now());
        }
        longest_gap = longest_gap.max(last_checkpoint.1.elapsed());
        largest_log = largest_log.max(log_bytes(&data));
        assert!(
            longest_gap <= Duration::from_secs(10),
            "no checkpoint for {longest_gap:?} under load"
        );
        assert!(
            largest_log <= LOG_BOUND,
            "log at {largest_log} bytes, over its bound of {LOG_BOUND}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let done = changes.load(Ordering::Relaxed);
    let took = started.elapsed();
    println!(
        "{done} changes in {took:.1?} ({:.0}/s): longest time without a checkpoint {longest_gap:?}, largest log {largest_log} bytes (bound {LOG_BOUND})",
        done as f64 / took.as_secs_f64()
    );
    // The load must have been able to outgrow the bound: otherwise the test proved nothing.
    assert!(
        enough(done),
        "only {done} changes: too few to fill an unbounded log past {LOG_BOUND} bytes"
    );
    assert!(server.metric("routeplane_ipam_log_segments_removed_total") > 0.0);
}
