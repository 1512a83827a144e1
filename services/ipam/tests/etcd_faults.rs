//! routeplane-ipam on a three-member etcd cluster (real etcd 3.4 on loopback) under allocation
//! load, through faults: the etcd leader SIGKILLed and brought back, then routeplane-ipam itself
//! SIGKILLed and restarted. Afterwards every acknowledged allocation is in etcd exactly once, no
//! address has two owners, and the longest time without a successful allocation is printed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use routeplane_api::ipam::v1 as pb;
use routeplane_testkit::etcd::EtcdCluster;
use tonic::transport::{Channel, Endpoint};

const CALLERS: usize = 32;
const PREFIX: &str = "/faults/";

/// What the callers saw: acknowledged allocations, and when each succeeded.
#[derive(Default)]
struct Seen {
    acknowledged: BTreeMap<String, Vec<String>>,
    successes: Vec<Instant>,
    errors: usize,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_ipam(dir: &std::path::Path, cluster: &EtcdCluster, port: u16) -> Server {
    let listen = format!("127.0.0.1:{port}");
    let endpoints = cluster.endpoints();
    // Room for the whole run: a /16 per node.
    let values = common::values_file(dir, "172.16.0.0/12", 16);
    Server::start(
        &dir.join("data"),
        &[
            "--values",
            values.to_str().unwrap(),
            "--max-pods-per-node",
            "1000000",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            PREFIX,
            "--grpc-listen",
            &listen,
        ],
    )
}

/// Callers allocating pod IPs until `stop`, each on its own lazily (re)connecting channel.
fn load(port: u16, stop: Instant, seen: Arc<Mutex<Seen>>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CALLERS)
        .map(|t| {
            let seen = seen.clone();
            tokio::spawn(async move {
                let channel: Channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy();
                let mut c = pb::ipam_client::IpamClient::new(channel);
                let mut i = 0;
                while Instant::now() < stop {
                    let owner = format!("default/c{t}-{i}");
                    i += 1;
                    let node = format!("node-{}", t % 4);
                    let r = c
                        .allocate_pod_ip(pb::AllocatePodIpRequest {
                            node: node.clone(),
                            owner: owner.clone(),
                            family: 0,
                        })
                        .await;
                    let ok = {
                        let mut seen = seen.lock().unwrap();
                        match r {
                            Ok(r) => {
                                seen.acknowledged
                                    .insert(format!("{node}\0{owner}"), r.into_inner().ips);
                                seen.successes.push(Instant::now());
                                true
                            }
                            Err(_) => {
                                seen.errors += 1;
                                false
                            }
                        }
                    };
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

/// The longest time between successes within [from, to].
fn longest_gap(successes: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = successes
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut points = vec![from];
    points.extend(times);
    points.push(to);
    points
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_through_an_etcd_leader_kill_and_an_ipam_kill_are_kept_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 3, &[]);
    let port = free_port();
    let server = start_ipam(dir.path(), &cluster, port);
    let mut c = server.client().await;
    for n in 0..4 {
        c.register_node(pb::RegisterNodeRequest {
            name: format!("node-{n}"),
            addresses: vec![format!("10.4.94.{}", 10 + n)],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let stop = started + Duration::from_secs(16);
    let callers = load(port, stop, seen.clone());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader();
    let leader_killed = Instant::now();
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let ipam_killed = Instant::now();
    server.kill9();
    let server = start_ipam(dir.path(), &cluster, port);
    for caller in callers {
        caller.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let ended = Instant::now();
    let before_kill = seen
        .successes
        .iter()
        .filter(|t| **t < leader_killed)
        .count();
    let secs = leader_killed.duration_since(started).as_secs_f64();
    println!(
        "offered by {CALLERS} callers: {:.0} allocations/s before the faults; {} acknowledged, {} refused in all",
        before_kill as f64 / secs,
        seen.acknowledged.len(),
        seen.errors
    );
    let leader_gap = longest_gap(&seen.successes, leader_killed, ipam_killed);
    let ipam_gap = longest_gap(&seen.successes, ipam_killed, ended);
    println!(
        "longest time without a successful allocation: {leader_gap:?} after the etcd leader's SIGKILL, {ipam_gap:?} after routeplane-ipam's SIGKILL (restart included)"
    );
    // Liveness, loosely: writes came back after each fault (the figures are the benchmark's).
    assert!(leader_gap < Duration::from_secs(10), "{leader_gap:?}");
    assert!(ipam_gap < Duration::from_secs(10), "{ipam_gap:?}");
    assert!(
        seen.acknowledged.len() > 2000,
        "{}",
        seen.acknowledged.len()
    );

    // Every acknowledged allocation is in etcd, once, with the address acknowledged.
    let out = cluster.etcdctl(&["get", "--prefix", &format!("{PREFIX}p/")]);
    let lines: Vec<&str> = out.lines().collect();
    let mut stored = BTreeMap::new();
    for kv in lines.chunks(2) {
        let key = kv[0].strip_prefix(&format!("{PREFIX}p/")).unwrap();
        let ips: Vec<String> = serde_json::from_str(kv[1]).unwrap();
        assert!(stored.insert(key.to_string(), ips).is_none(), "{key} twice");
    }
    for (key, ips) in &seen.acknowledged {
        assert_eq!(stored.get(key), Some(ips), "acknowledged {key} {ips:?}");
    }
    let mut owners = BTreeMap::new();
    for (key, ips) in &stored {
        for ip in ips {
            if let Some(other) = owners.insert(ip.clone(), key.clone()) {
                panic!("{ip} held by {other:?} and {key:?}");
            }
        }
    }
    // The restarted replica serves the same state.
    let mut c = server.client().await;
    let mut listed = BTreeSet::new();
    for n in 0..4 {
        let pods = c
            .list_pod_i_ps(pb::ListPodIPsRequest {
                node: format!("node-{n}"),
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(
            pods.allocations
                .into_iter()
                .map(|a| format!("node-{n}\0{}", a.owner)),
        );
    }
    let in_etcd: BTreeSet<String> = stored.keys().cloned().collect();
    assert_eq!(listed, in_etcd);
}
