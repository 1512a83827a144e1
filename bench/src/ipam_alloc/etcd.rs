//! `--store etcd`: routeplane-ipam on a three-member etcd cluster (Debian's etcd, started on
//! loopback by the bench), and etcd's own write ceiling in the same run — single-key puts of the
//! size of a pod-IP record, from the same number of callers over the same number of connections.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::Client;
use routeplane_testkit::etcd::EtcdCluster;

use crate::cells::Cell;

/// The ceiling's row in the table.
pub(crate) const ETCD_PUT: &str = "etcd put (same size)";
/// routeplane-ipam on etcd's row.
pub(crate) const ON_ETCD: &str = "routeplane-ipam on etcd";

/// Three members, each with its data under `dir` (on the same disk as sled's).
pub(crate) fn start_cluster(dir: &Path) -> EtcdCluster {
    EtcdCluster::start(dir, 3, &[])
}

/// `concurrency` callers putting keys shaped like IPAM's pod-IP records (`PREFIX/p/NODE\0OWNER`
/// → `["10.0.17.5"]`) for `seconds`, over at most 16 connections, after 300 ms of warm-up.
pub(crate) async fn run_put_cell(
    endpoints: &[String],
    concurrency: usize,
    seconds: f64,
    round: usize,
) -> Cell {
    let mut clients = Vec::new();
    for _ in 0..concurrency.min(16) {
        clients.push(
            Client::connect(endpoints, None)
                .await
                .expect("connect to etcd"),
        );
    }
    let run = |measure: Duration, tag: &'static str| {
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let mut kv = clients[t % clients.len()].kv_client();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let deadline = Instant::now() + measure;
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        let key = format!("/bench-ceiling/p/node-{}\0{tag}{round}-{t}-{i}", t % 64);
                        kv.put(key, r#"["10.0.17.5"]"#, None)
                            .await
                            .expect("an etcd put");
                        lat.push(started.elapsed());
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("a put task"));
            }
            all
        }
    };
    run(Duration::from_millis(300), "warm").await;
    let started = Instant::now();
    let latencies = run(Duration::from_secs_f64(seconds), "m").await;
    Cell::timed(
        ETCD_PUT,
        concurrency,
        started.elapsed().as_secs_f64(),
        latencies,
    )
}
