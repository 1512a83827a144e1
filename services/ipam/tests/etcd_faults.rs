//! Two routeplane-ipam replicas (one leading, one standing by) on a three-member etcd cluster
//! (real etcd 3.4 on loopback) under allocation load from callers that know both addresses and
//! switch on a failure, through faults: the etcd leader SIGKILLed and brought back; the leading
//! replica SIGKILLed (the standby takes over) and restarted as the new standby; the new leader
//! paused past its lease (the other takes over) and resumed (it stops). Afterwards every
//! acknowledged allocation is in etcd exactly once, no address has two owners, and the longest
//! time without a successful allocation after each fault is printed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_testkit::Service;
use routeplane_testkit::etcd::EtcdCluster;
use routeplane_testkit::ipam::free_port;
use tonic::transport::Endpoint;

const CALLERS: usize = 32;
const PREFIX: &str = "/faults/";

/// What the callers saw: acknowledged allocations, and when each succeeded.
#[derive(Default)]
struct Seen {
    acknowledged: BTreeMap<String, Vec<String>>,
    successes: Vec<Instant>,
    errors: usize,
}

/// A replica in `dir/NAME` answering on `port` once it leads (a standby does not listen).
fn replica(dir: &std::path::Path, name: &str, cluster: &EtcdCluster, port: u16) -> Service {
    let listen = format!("127.0.0.1:{port}");
    let endpoints = cluster.endpoints();
    // Room for the whole run: a /16 per node.
    let values = common::values_file(dir, "172.16.0.0/12", 16);
    let args = [
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
        "--etcd-lease-ttl",
        "1s",
        "--grpc-listen",
        &listen,
    ];
    Service::start(
        &format!("routeplane-ipam {name}"),
        common::command(&dir.join(name), &args),
    )
}

/// Callers allocating pod IPs until `stop`, each with a client per replica, moving to the other
/// one on a failure.
fn load(
    ports: [u16; 2],
    stop: Instant,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CALLERS)
        .map(|t| {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut clients: Vec<_> = ports
                    .iter()
                    .map(|port| {
                        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                            .unwrap()
                            .connect_timeout(Duration::from_millis(300))
                            .timeout(Duration::from_secs(5))
                            .connect_lazy();
                        pb::ipam_client::IpamClient::new(channel)
                    })
                    .collect();
                let (mut current, mut i) = (0, 0);
                while Instant::now() < stop {
                    let owner = format!("default/c{t}-{i}");
                    i += 1;
                    let node = format!("node-{}", t % 4);
                    let r = clients[current]
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
                        current = 1 - current;
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
async fn allocations_through_etcd_and_replica_faults_are_kept_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 3, &[]);
    let ports = [free_port(), free_port()];
    let mut a = replica(dir.path(), "a", &cluster, ports[0]);
    let grpc = a.listen_addr("gRPC");
    let mut c = common::Server::attach(&format!("http://{grpc}"))
        .client()
        .await;
    for n in 0..4 {
        c.register_node(pb::RegisterNodeRequest {
            name: format!("node-{n}"),
            addresses: vec![format!("10.4.94.{}", 10 + n)],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut b = replica(dir.path(), "b", &cluster, ports[1]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let stop = started + Duration::from_secs(20);
    let callers = load(ports, stop, seen.clone());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader();
    let etcd_leader_killed = Instant::now();
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The leading replica dies: the standby takes over once the lease runs out.
    let a_killed = Instant::now();
    a.kill9();
    b.listen_addr("gRPC");
    println!("b leads {:?} after a's SIGKILL", a_killed.elapsed());
    let mut a = replica(dir.path(), "a", &cluster, ports[0]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The new leader is paused past its lease: a takes over; b, resumed, cannot write and stops.
    let b_paused = Instant::now();
    b.signal("-STOP");
    a.listen_addr("gRPC");
    println!("a leads {:?} after b's SIGSTOP", b_paused.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.signal("-CONT");
    let status = b.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the deposed leader stops: {status:?}");

    for caller in callers {
        caller.await.unwrap();
    }
    let ended = Instant::now();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let before = seen
        .successes
        .iter()
        .filter(|t| **t < etcd_leader_killed)
        .count();
    let secs = etcd_leader_killed.duration_since(started).as_secs_f64();
    println!(
        "offered by {CALLERS} callers: {:.0} allocations/s before the faults; {} acknowledged, {} refused or failed over in all",
        before as f64 / secs,
        seen.acknowledged.len(),
        seen.errors
    );
    let etcd_gap = longest_gap(&seen.successes, etcd_leader_killed, a_killed);
    let kill_gap = longest_gap(&seen.successes, a_killed, b_paused);
    let pause_gap = longest_gap(&seen.successes, b_paused, ended);
    println!(
        "longest time without a successful allocation: {etcd_gap:?} after the etcd leader's SIGKILL, {kill_gap:?} after the leading replica's SIGKILL, {pause_gap:?} after the leading replica's SIGSTOP"
    );
    // Liveness, loosely: writes came back after each fault (the figures are printed above).
    for gap in [etcd_gap, kill_gap, pause_gap] {
        assert!(gap < Duration::from_secs(10), "{gap:?}");
    }
    assert!(
        seen.acknowledged.len() > 2000,
        "{}",
        seen.acknowledged.len()
    );

    // Every acknowledged allocation is in etcd, once, with the address acknowledged.
    let mut stored = BTreeMap::new();
    for (key, value) in cluster.get_prefix(&format!("{PREFIX}p/")) {
        let key = key
            .strip_prefix(&format!("{PREFIX}p/"))
            .unwrap()
            .to_string();
        let ips: Vec<String> = serde_json::from_str(&value).unwrap();
        assert!(stored.insert(key.clone(), ips).is_none(), "{key} twice");
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
    // The replica leading now serves exactly that.
    let grpc = a.listen_addr("gRPC");
    let mut c = common::Server::attach(&format!("http://{grpc}"))
        .client()
        .await;
    let mut listed = 0;
    for n in 0..4 {
        let pods = c
            .list_pod_i_ps(pb::ListPodIPsRequest {
                node: format!("node-{n}"),
            })
            .await
            .unwrap()
            .into_inner();
        for p in pods.allocations {
            assert_eq!(
                stored.get(&format!("node-{n}\0{}", p.owner)),
                Some(&p.ips),
                "{p:?}"
            );
            listed += 1;
        }
    }
    assert_eq!(listed, stored.len());
}
