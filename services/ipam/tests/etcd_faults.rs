//! Two routeplane-ipam replicas (one leading, one standing by) on a three-member etcd cluster
//! (real etcd 3.4 on loopback) under allocation load from callers that know both addresses and
//! switch on a failure, through faults: the etcd leader SIGKILLed and brought back; the leading
//! replica SIGKILLed (the standby takes over) and restarted as the new standby; the new leader
//! paused past its lease (the other takes over) and resumed (it stops); and everything — the three
//! etcd members and both replicas — SIGKILLed at once and started again. The callers allocate pod
//! IPs, pod CIDRs (nodes registering) and LoadBalancer IPs. Afterwards every acknowledged
//! allocation is in etcd exactly once, no address has two owners, and the longest time without a
//! successful allocation after each fault is printed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_testkit::etcd::EtcdCluster;
use routeplane_testkit::ipam::{free_port, spawn_etcd_replica};
use routeplane_testkit::{Service, longest_gap};
use tonic::transport::Endpoint;

const CALLERS: usize = 128;
const PREFIX: &str = "/faults/";

/// One scenario at a time: on two cores, two at once would halve the load each offers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the callers saw: acknowledged allocations, and when each succeeded.
#[derive(Default)]
struct Seen {
    /// Pod IPs: `NODE\0OWNER` → addresses.
    acknowledged: BTreeMap<String, Vec<String>>,
    /// Pod CIDRs of the nodes the callers registered.
    nodes: BTreeMap<String, Vec<String>>,
    /// LoadBalancer IPs: Service → address.
    services: BTreeMap<String, String>,
    successes: Vec<Instant>,
    errors: usize,
}

/// What a caller allocates: most pod IPs, one registers nodes and one allocates LoadBalancer IPs,
/// each of those at a pace (the pools are finite).
#[derive(Clone, Copy)]
enum Kind {
    PodIp,
    Node,
    Service,
}

impl Kind {
    fn of(caller: usize) -> Kind {
        match caller {
            0 => Kind::Node,
            1 => Kind::Service,
            _ => Kind::PodIp,
        }
    }
}

/// Room for the whole run: 256 nodes of 16,382 pod IPs.
const VALUES: &str = "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 100.64.0.0/10\n    clusterPoolIPv4MaskSize: 18\nipv4:\n  enabled: true\n";

/// A replica in `dir/NAME` answering on `port` once it leads (a standby does not listen).
fn replica(dir: &std::path::Path, name: &str, cluster: &EtcdCluster, port: u16) -> Service {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let extra = ["--max-pods-per-node", "1000000"];
    spawn_etcd_replica(&dir, VALUES, port, &cluster.endpoints(), PREFIX, &extra)
}

/// Callers allocating pod IPs until `stop`, each with a client per replica, moving to the other
/// one on a failure.
fn load(ports: [u16; 2], stop: Instant) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..CALLERS)
        .map(|t| {
            tokio::spawn(async move {
                // Each caller's own: no lock shared by 128 callers on two cores.
                let mut seen = Seen::default();
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
                let (mut current, mut i) = (0, 0usize);
                while Instant::now() < stop {
                    i += 1;
                    let client = &mut clients[current];
                    let ok = match Kind::of(t) {
                        Kind::PodIp => {
                            let owner = format!("default/c{t}-{i}");
                            let node = format!("node-{}", t % 4);
                            let r = client
                                .allocate_pod_ip(pb::AllocatePodIpRequest {
                                    node: node.clone(),
                                    owner: owner.clone(),
                                    family: 0,
                                })
                                .await;
                            record(&mut seen, r, |seen, r| {
                                seen.acknowledged.insert(format!("{node}\0{owner}"), r.ips);
                            })
                        }
                        Kind::Node => {
                            let name = format!("load-{i}");
                            let r = client
                                .register_node(pb::RegisterNodeRequest {
                                    name: name.clone(),
                                    addresses: vec![format!("10.6.{}.{}", i / 250, i % 250 + 1)],
                                    ..Default::default()
                                })
                                .await;
                            record(&mut seen, r, |seen, r| {
                                seen.nodes.insert(name, r.pod_cidrs);
                            })
                        }
                        Kind::Service => {
                            let service = format!("default/svc-{i}");
                            let r = client
                                .allocate_service_ip(pb::AllocateServiceIpRequest {
                                    service: service.clone(),
                                    ..Default::default()
                                })
                                .await;
                            record(&mut seen, r, |seen, r| {
                                seen.services.insert(service, r.ip);
                            })
                        }
                    };
                    if !ok {
                        current = 1 - current;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    } else if !matches!(Kind::of(t), Kind::PodIp) {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                seen
            })
        })
        .collect()
}

/// What every caller saw, together.
async fn gather(callers: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    let mut all = Seen::default();
    for caller in callers {
        let seen = caller.await.unwrap();
        all.acknowledged.extend(seen.acknowledged);
        all.nodes.extend(seen.nodes);
        all.services.extend(seen.services);
        all.successes.extend(seen.successes);
        all.errors += seen.errors;
    }
    all
}

/// Records an answer: on success what `keep` takes of it and when; on failure a count. Whether it
/// succeeded.
fn record<T>(
    seen: &mut Seen,
    answer: Result<tonic::Response<T>, tonic::Status>,
    keep: impl FnOnce(&mut Seen, T),
) -> bool {
    match answer {
        Ok(r) => {
            keep(seen, r.into_inner());
            seen.successes.push(Instant::now());
            true
        }
        Err(_) => {
            seen.errors += 1;
            false
        }
    }
}

/// Every acknowledged allocation is in etcd, once, as acknowledged, and no address (pod IP, pod
/// CIDR, LoadBalancer IP) has two owners. Returns the pod IPs stored.
fn check_stored(cluster: &EtcdCluster, seen: &Seen) -> BTreeMap<String, Vec<String>> {
    let records = |kind: &str| {
        let prefix = format!("{PREFIX}{kind}/");
        let mut found = BTreeMap::new();
        for (key, value) in cluster.get_prefix(&prefix) {
            let key = key.strip_prefix(&prefix).unwrap().to_string();
            found.insert(
                key,
                serde_json::from_str::<serde_json::Value>(&value).unwrap(),
            );
        }
        found
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let stored: BTreeMap<String, Vec<String>> = records("p")
        .iter()
        .map(|(k, v)| (k.clone(), strings(v)))
        .collect();
    for (key, ips) in &seen.acknowledged {
        assert_eq!(stored.get(key), Some(ips), "acknowledged {key} {ips:?}");
    }
    let nodes = records("n");
    for (name, cidrs) in &seen.nodes {
        let node = nodes
            .get(name)
            .unwrap_or_else(|| panic!("node {name} lost"));
        assert_eq!(&strings(&node["pod_cidrs"]), cidrs, "node {name}");
    }
    let services = records("s");
    for (service, ip) in &seen.services {
        let held = services.get(service).map(|s| s["ip"].as_str().unwrap());
        assert_eq!(held, Some(ip.as_str()), "Service {service}");
    }
    let mut owners = BTreeMap::new();
    let held = stored
        .iter()
        .flat_map(|(key, ips)| ips.iter().map(move |ip| (ip.clone(), key.clone())))
        .chain(nodes.iter().flat_map(|(name, n)| {
            strings(&n["pod_cidrs"])
                .into_iter()
                .map(move |c| (c, name.clone()))
        }))
        .chain(
            services
                .iter()
                .map(|(name, s)| (s["ip"].as_str().unwrap().to_string(), name.clone())),
        );
    for (address, owner) in held {
        if let Some(other) = owners.insert(address.clone(), owner.clone()) {
            panic!("{address} held by {other:?} and {owner:?}");
        }
    }
    stored
}

/// Three etcd members, replica a leading with the four nodes the pod-IP callers use, b standing
/// by.
async fn two_replicas(dir: &std::path::Path) -> (EtcdCluster, [u16; 2], Service, Service) {
    let cluster = EtcdCluster::start(dir, 3, &[]);
    let ports = [free_port(), free_port()];
    let mut a = replica(dir, "a", &cluster, ports[0]);
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
    let b = replica(dir, "b", &cluster, ports[1]);
    (cluster, ports, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_through_etcd_and_replica_faults_are_kept_exactly_once() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, ports, mut a, mut b) = two_replicas(dir.path()).await;
    let started = Instant::now();
    let stop = started + Duration::from_secs(20);
    let callers = load(ports, stop);

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

    let seen = gather(callers).await;
    let ended = Instant::now();
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

    let stored = check_stored(&cluster, &seen);
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

/// Everything SIGKILLed at once under load — the three etcd members and both replicas — and
/// started again: the callers' allocations resume, and every one acknowledged before or after is
/// in etcd once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_restarted_under_load_keeps_every_acknowledged_allocation() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, ports, mut a, mut b) = two_replicas(dir.path()).await;
    let started = Instant::now();
    let stop = started + Duration::from_secs(16);
    let callers = load(ports, stop);

    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed = Instant::now();
    a.kill9();
    b.kill9();
    for member in 0..3 {
        cluster.kill(member);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for member in 0..3 {
        cluster.restart(member);
    }
    let a = replica(dir.path(), "a", &cluster, ports[0]);
    let b = replica(dir.path(), "b", &cluster, ports[1]);
    let seen = gather(callers).await;
    let ended = Instant::now();
    let secs = killed.duration_since(started).as_secs_f64();
    let acknowledged_before = seen.successes.iter().filter(|t| **t < killed).count();
    let gap = longest_gap(&seen.successes, killed, ended);
    println!(
        "offered by {CALLERS} callers: {:.0} allocations/s before; everything SIGKILLed and started again 1 s later: {gap:?} without a successful allocation; {} pod IPs, {} nodes, {} LoadBalancer IPs acknowledged",
        acknowledged_before as f64 / secs,
        seen.acknowledged.len(),
        seen.nodes.len(),
        seen.services.len()
    );
    assert!(
        seen.successes.len() > acknowledged_before,
        "allocations resumed after the restart"
    );
    assert!(gap < Duration::from_secs(10), "{gap:?}");
    assert!(!seen.nodes.is_empty() && !seen.services.is_empty());
    check_stored(&cluster, &seen);
    // The replica leading now serves what etcd holds.
    let leading = if a.log().contains("gRPC listening") {
        ports[0]
    } else {
        assert!(b.log().contains("gRPC listening"), "neither replica leads");
        ports[1]
    };
    let mut c = common::Server::attach(&format!("http://127.0.0.1:{leading}"))
        .client()
        .await;
    let served: BTreeMap<String, String> = c
        .list_service_i_ps(pb::ListServiceIPsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .service_ips
        .into_iter()
        .map(|s| (s.service, s.ip))
        .collect();
    // A Service IP committed whose answer died with the SIGKILL is held though never
    // acknowledged (the caller's retry gets the same one): served must equal what etcd holds,
    // and hold every acknowledged one.
    let prefix = format!("{PREFIX}s/");
    let held: BTreeMap<String, String> = cluster
        .get_prefix(&prefix)
        .into_iter()
        .map(|(key, value)| {
            let record = serde_json::from_str::<serde_json::Value>(&value).unwrap();
            let service = key.strip_prefix(&prefix).unwrap().to_string();
            (service, record["ip"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(served, held);
    for (service, ip) in &seen.services {
        assert_eq!(served.get(service), Some(ip), "Service {service}");
    }
}
