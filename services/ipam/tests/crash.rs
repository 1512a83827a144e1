//! Nothing acknowledged is lost, nothing is held twice: SIGKILL the server while many clients
//! allocate, release and delete nodes, restart it on the same data directory, and check every
//! acknowledged change — once with the default checkpoints, once with checkpoints so frequent and
//! log segments so small that the kill comes after checkpoints have deleted the log they covered.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{Server, values_file};
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use tonic::Code;
use tonic::transport::Channel;

const NODES: usize = 8;
const CLIENTS: usize = 32;

/// What the clients were told, and what they cannot know (a request in flight at the kill).
#[derive(Default, Clone)]
struct Acked {
    /// (node, owner) → IPs: allocations acknowledged and not released since.
    pods: BTreeMap<(String, String), Vec<String>>,
    /// Releases acknowledged (and the pods of nodes whose deletion was acknowledged).
    released: BTreeSet<(String, String)>,
    services: BTreeMap<String, String>,
    released_services: BTreeSet<String>,
    /// Nodes whose DeleteNode was acknowledged.
    deleted_nodes: BTreeSet<String>,
    /// Releases and deletions sent but not answered: either outcome is right.
    unsure: BTreeSet<String>,
    /// Acknowledgements of any kind.
    acks: usize,
}

/// Whether a failed call failed because the server was killed; any other failure fails the test
/// (a load that quietly stopped on, say, a full pool would prove nothing).
fn gone(status: tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        _ => panic!("a request the server should have served: {status:?}"),
    }
}

fn lock(acked: &Mutex<Acked>) -> MutexGuard<'_, Acked> {
    acked.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client: allocations, a release of its previous pod every seventh step and of its previous
/// Service every tenth; returns when the server is gone or the time is up.
async fn client_load(
    mut c: IpamClient<Channel>,
    tag: String,
    client: usize,
    acked: Arc<Mutex<Acked>>,
    deadline: Instant,
) {
    let mut last_pod: Option<(String, String)> = None;
    let mut last_service: Option<String> = None;
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        if i % 10 == 0 {
            if let Some(service) = last_service.take() {
                lock(&acked).unsure.insert(service.clone());
                let req = pb::ReleaseServiceIpRequest {
                    service: service.clone(),
                };
                if let Err(e) = c.release_service_ip(req).await {
                    return assert!(gone(e));
                }
                let mut a = lock(&acked);
                a.services.remove(&service);
                a.released_services.insert(service.clone());
                a.unsure.remove(&service);
                a.acks += 1;
            }
            let service = format!("{tag}/svc-{client}-{i}");
            let req = pb::AllocateServiceIpRequest {
                service: service.clone(),
                ..Default::default()
            };
            let r = match c.allocate_service_ip(req).await {
                Ok(r) => r,
                Err(e) => return assert!(gone(e)),
            };
            let mut a = lock(&acked);
            a.services.insert(service.clone(), r.into_inner().ip);
            a.acks += 1;
            last_service = Some(service);
            continue;
        }
        if i % 7 == 0
            && let Some((node, owner)) = last_pod.take()
        {
            lock(&acked).unsure.insert(owner.clone());
            let req = pb::ReleasePodIpRequest {
                node: node.clone(),
                owner: owner.clone(),
            };
            if let Err(e) = c.release_pod_ip(req).await {
                return assert!(gone(e));
            }
            let mut a = lock(&acked);
            a.pods.remove(&(node.clone(), owner.clone()));
            a.released.insert((node, owner.clone()));
            a.unsure.remove(&owner);
            a.acks += 1;
            continue;
        }
        let node = format!("node-{}", (client + i) % NODES);
        let owner = format!("{tag}/pod-{client}-{i}");
        let req = pb::AllocatePodIpRequest {
            node: node.clone(),
            owner: owner.clone(),
            family: 0,
        };
        let r = match c.allocate_pod_ip(req).await {
            Ok(r) => r,
            Err(e) => return assert!(gone(e)),
        };
        let mut a = lock(&acked);
        a.pods
            .insert((node.clone(), owner.clone()), r.into_inner().ips);
        a.acks += 1;
        last_pod = Some((node, owner));
    }
}

/// Registers a node, gives it three pods, deletes it (force), and again, one node at a time.
async fn node_churn(
    mut c: IpamClient<Channel>,
    round: usize,
    tag: String,
    acked: Arc<Mutex<Acked>>,
    deadline: Instant,
) {
    let mut k = 0;
    while Instant::now() < deadline {
        k += 1;
        let node = format!("{}-gone-{k}", tag.replace('/', "-"));
        let req = pb::RegisterNodeRequest {
            name: node.clone(),
            // Apart from the nodes of other rounds that a kill left behind.
            addresses: vec![format!("10.4.{}.{}", 95 + round, 10 + k % 200)],
            labels: HashMap::new(),
        };
        if let Err(e) = c.register_node(req).await {
            return assert!(gone(e));
        }
        let mut owners = Vec::new();
        for p in 0..3 {
            let owner = format!("{tag}/churn-{k}-{p}");
            let req = pb::AllocatePodIpRequest {
                node: node.clone(),
                owner: owner.clone(),
                family: 0,
            };
            let r = match c.allocate_pod_ip(req).await {
                Ok(r) => r,
                Err(e) => return assert!(gone(e)),
            };
            lock(&acked)
                .pods
                .insert((node.clone(), owner.clone()), r.into_inner().ips);
            owners.push(owner);
        }
        lock(&acked).unsure.insert(node.clone());
        let req = pb::DeleteNodeRequest {
            name: node.clone(),
            force: true,
        };
        if let Err(e) = c.delete_node(req).await {
            return assert!(gone(e));
        }
        let mut a = lock(&acked);
        for owner in owners {
            a.pods.remove(&(node.clone(), owner.clone()));
            a.released.insert((node.clone(), owner));
        }
        a.deleted_nodes.insert(node.clone());
        a.unsure.remove(&node);
        a.acks += 1;
    }
}

/// Checks the restarted server against what was acknowledged.
async fn verify(server: &Server, acked: &Acked, round: usize) {
    let mut c = server.client().await;
    let nodes = c
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let mut cidrs = BTreeMap::new();
    for n in &nodes {
        for cidr in &n.pod_cidrs {
            if let Some(other) = cidrs.insert(cidr.clone(), n.name.clone()) {
                panic!(
                    "round {round}: pod CIDR {cidr} is held by {other} and {}",
                    n.name
                );
            }
        }
        assert!(
            !acked.deleted_nodes.contains(&n.name),
            "round {round}: {} was deleted (acknowledged) and is back",
            n.name
        );
    }
    let mut held: HashMap<String, String> = HashMap::new();
    let mut stored: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for n in &nodes {
        let list = c
            .list_pod_i_ps(pb::ListPodIPsRequest {
                node: n.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for a in list.allocations {
            for ip in &a.ips {
                if let Some(other) = held.insert(ip.clone(), a.owner.clone()) {
                    panic!(
                        "round {round}: {ip} is held by both {other} and {}",
                        a.owner
                    );
                }
            }
            stored.insert((n.name.clone(), a.owner), a.ips);
        }
    }
    for (key, ips) in &acked.pods {
        if acked.unsure.contains(&key.1) || acked.unsure.contains(&key.0) {
            continue;
        }
        assert_eq!(
            stored.get(key),
            Some(ips),
            "round {round}: acknowledged {key:?} → {ips:?} was lost or changed"
        );
    }
    for key in &acked.released {
        assert!(
            !stored.contains_key(key),
            "round {round}: {key:?} was released (acknowledged) and is held again"
        );
    }
    let services = c
        .list_service_i_ps(pb::ListServiceIPsRequest {})
        .await
        .unwrap()
        .into_inner()
        .service_ips;
    let mut by_ip = HashMap::new();
    for s in &services {
        if let Some(other) = by_ip.insert(s.ip.clone(), s.service.clone()) {
            panic!(
                "round {round}: {} is held by {other} and {}",
                s.ip, s.service
            );
        }
    }
    let by_service: BTreeMap<&str, &str> = services
        .iter()
        .map(|s| (s.service.as_str(), s.ip.as_str()))
        .collect();
    for (service, ip) in &acked.services {
        if acked.unsure.contains(service) {
            continue;
        }
        assert_eq!(
            by_service.get(service.as_str()),
            Some(&ip.as_str()),
            "round {round}: acknowledged {service} → {ip} was lost"
        );
    }
    for service in &acked.released_services {
        assert!(
            !by_service.contains_key(service.as_str()),
            "round {round}: {service} was released (acknowledged) and is back"
        );
    }
    for node in &acked.deleted_nodes {
        let status = c
            .get_node(pb::GetNodeRequest { name: node.clone() })
            .await
            .expect_err("a deleted node");
        assert_eq!(status.code(), Code::NotFound, "{node}: {status:?}");
    }
}

/// Rounds of: start, load, SIGKILL once `ready` holds (and hundreds of changes are acknowledged),
/// restart, verify.
async fn crash_rounds(rounds: usize, extra: &[&str], ready: impl Fn(&Server) -> bool) -> Acked {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // /16 per node: room for every allocation the load can make.
    let values = values_file(dir.path(), "10.64.0.0/12", 16);
    let bgp = dir.path().join("bgp.yaml");
    std::fs::write(
        &bgp,
        "address-pools:\n- {name: lb, protocol: bgp, addresses: [10.200.0.0/16]}\n",
    )
    .unwrap();
    let mut args = vec![
        "--values",
        values.to_str().unwrap(),
        "--bgp-config",
        bgp.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let acked = Arc::new(Mutex::new(Acked::default()));

    for round in 0..rounds {
        let server = Server::start(&data, &args);
        let mut c = server.client().await;
        for n in 0..NODES {
            let req = pb::RegisterNodeRequest {
                name: format!("node-{n}"),
                addresses: vec![format!("10.4.94.{}", 10 + n)],
                labels: HashMap::new(),
            };
            c.register_node(req).await.unwrap();
        }
        let before = lock(&acked).acks;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            tasks.push(tokio::spawn(client_load(
                server.client().await,
                format!("r{round}"),
                client,
                acked.clone(),
                deadline,
            )));
        }
        tasks.push(tokio::spawn(node_churn(
            server.client().await,
            round,
            format!("r{round}"),
            acked.clone(),
            deadline,
        )));
        // Kill while the load is in full flight.
        let in_flight = Instant::now() + Duration::from_secs(15);
        while lock(&acked).acks < before + 1000 || !ready(&server) {
            assert!(
                Instant::now() < in_flight,
                "round {round}: the load never got there ({} acknowledged):\n{}",
                lock(&acked).acks - before,
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill9();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("clients notice the kill")
                .unwrap();
        }
        let server = Server::start(&data, &args);
        // Every client has returned: the record is complete.
        let record = lock(&acked).clone();
        verify(&server, &record, round).await;
        server.kill9();
    }
    Arc::try_unwrap(acked)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_and_duplicates_nothing() {
    let acked = crash_rounds(3, &[], |_| true).await;
    assert!(acked.released.len() > 100, "releases were part of the load");
    assert!(!acked.released_services.is_empty());
    assert!(!acked.deleted_nodes.is_empty(), "so were node deletions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_checkpoints_deleted_the_log_loses_nothing() {
    let acked = crash_rounds(
        2,
        &[
            "--checkpoint-interval",
            "100ms",
            "--log-segment-size",
            "16KiB",
        ],
        |server| {
            server.metric("routeplane_ipam_checkpoints_total") >= 3.0
                && server.metric("routeplane_ipam_log_segments_removed_total") >= 3.0
        },
    )
    .await;
    assert!(!acked.deleted_nodes.is_empty());
}
