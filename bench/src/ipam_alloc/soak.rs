//! `--soak`: full load for a long time, printing the log's size, the longest time without a
//! checkpoint and the server's RSS as it goes.

use std::path::Path;
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;

use crate::server::{NODES, Server, metric, register_nodes};

/// Full load for `length`: 128 callers each allocating a pod IP and releasing it, over 16
/// connections; every 30 s a line with the log's size, the longest time so far without a
/// checkpoint and the server's RSS.
pub(crate) async fn soak(server: &Server, data: &Path, length: Duration) {
    register_nodes(server).await;
    let mut channels = Vec::new();
    for _ in 0..16 {
        channels.push(server.channel().await);
    }
    let deadline = Instant::now() + length;
    let load: Vec<_> = (0..128)
        .map(|t| {
            let mut client = IpamClient::new(channels[t % channels.len()].clone());
            tokio::spawn(async move {
                let node = format!("node-{}", t % NODES);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let owner = format!("soak-{t}-{i}");
                    let req = pb::AllocatePodIpRequest {
                        node: node.clone(),
                        owner: owner.clone(),
                        family: 0,
                    };
                    client.allocate_pod_ip(req).await.expect("allocation");
                    let req = pb::ReleasePodIpRequest {
                        node: node.clone(),
                        owner,
                    };
                    client.release_pod_ip(req).await.expect("release");
                    i += 1;
                }
                2 * i
            })
        })
        .collect();
    println!(
        "soak: 128 callers allocating and releasing for {length:?} on routeplane-ipam durable"
    );
    println!(
        "{:>8} {:>12} {:>14} {:>20} {:>10}",
        "seconds", "changes/s", "log bytes", "longest no-ckpt s", "RSS MiB"
    );
    let started = Instant::now();
    let mut checkpoint = (
        metric(server.metrics, "routeplane_ipam_checkpoint_revision"),
        started,
    );
    let (mut longest, mut largest, mut last_report) = (0f64, 0u64, started);
    let mut revision = metric(server.metrics, "routeplane_ipam_revision");
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = metric(server.metrics, "routeplane_ipam_checkpoint_revision");
        if now > checkpoint.0 {
            checkpoint = (now, Instant::now());
        }
        longest = longest.max(checkpoint.1.elapsed().as_secs_f64());
        let log: u64 = std::fs::read_dir(data.join("wal"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        largest = largest.max(log);
        if last_report.elapsed() >= Duration::from_secs(30) || Instant::now() >= deadline {
            let r = metric(server.metrics, "routeplane_ipam_revision");
            let rate = (r - revision) / last_report.elapsed().as_secs_f64();
            (revision, last_report) = (r, Instant::now());
            let rss = server.process.rss_kib() as f64;
            println!(
                "{:>8.0} {:>12.0} {:>14} {:>20.1} {:>10.1}",
                started.elapsed().as_secs_f64(),
                rate,
                log,
                longest,
                rss / 1024.0
            );
        }
    }
    let mut changes = 0;
    for l in load {
        changes += l.await.expect("a load task");
    }
    println!(
        "soak: {changes} changes acknowledged; the log at most {largest} bytes, at most {longest:.1} s without a checkpoint"
    );
}
