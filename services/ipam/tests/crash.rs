//! Nothing acknowledged is lost, nothing is held twice: SIGKILL the server while many clients
//! allocate, restart it on the same sled directory, and check every acknowledged allocation.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, values_file};
use routeplane_api::ipam::v1 as pb;

const NODES: usize = 8;
const CLIENTS: usize = 32;

/// (node, owner) → IPs, for every AllocatePodIP that returned OK; and Service → IP likewise.
#[derive(Default)]
struct Acked {
    pods: BTreeMap<(String, String), Vec<String>>,
    services: BTreeMap<String, String>,
}

async fn load(
    server: &common::Attached,
    round: usize,
    acked: Arc<Mutex<Acked>>,
    run_for: Duration,
) {
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let mut c = server.client().await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + run_for;
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                let node = format!("node-{}", (client + i) % NODES);
                if i % 10 == 0 {
                    let service = format!("r{round}/svc-{client}-{i}");
                    let req = pb::AllocateServiceIpRequest {
                        service: service.clone(),
                        ..Default::default()
                    };
                    match c.allocate_service_ip(req).await {
                        Ok(r) => {
                            acked
                                .lock()
                                .unwrap()
                                .services
                                .insert(service, r.into_inner().ip);
                        }
                        Err(_) => return, // the server is gone
                    }
                    continue;
                }
                let owner = format!("r{round}/pod-{client}-{i}");
                let req = pb::AllocatePodIpRequest {
                    node: node.clone(),
                    owner: owner.clone(),
                    family: 0,
                };
                match c.allocate_pod_ip(req).await {
                    Ok(r) => {
                        acked
                            .lock()
                            .unwrap()
                            .pods
                            .insert((node, owner), r.into_inner().ips);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_and_duplicates_nothing() {
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
    let args = [
        "--values",
        values.to_str().unwrap(),
        "--bgp-config",
        bgp.to_str().unwrap(),
    ];
    let acked = Arc::new(Mutex::new(Acked::default()));

    for round in 0..3 {
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
        let before = acked.lock().unwrap().pods.len();
        // Kill while the load is in full flight: the load runs for 5 s, the kill comes once
        // hundreds of its allocations have been acknowledged.
        let loader = tokio::spawn({
            let server_addr = server.endpoint();
            let acked = acked.clone();
            async move {
                let probe = Server::attach(&server_addr);
                load(&probe, round, acked, Duration::from_secs(5)).await;
            }
        });
        let in_flight = tokio::time::Instant::now() + Duration::from_secs(4);
        while acked.lock().unwrap().pods.len() < before + 1000 {
            assert!(
                tokio::time::Instant::now() < in_flight,
                "round {round}: the load never got going:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = server.pid();
        server.kill9();
        tokio::time::timeout(Duration::from_secs(30), loader)
            .await
            .expect("clients notice the kill")
            .unwrap();
        let made = acked.lock().unwrap().pods.len() - before;
        assert!(
            made > 100,
            "round {round}: only {made} allocations were acknowledged before the kill of pid {pid}"
        );

        let server = Server::start(&data, &args);
        let mut c = server.client().await;
        let mut held: HashMap<String, String> = HashMap::new();
        let mut stored: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for n in 0..NODES {
            let node = format!("node-{n}");
            let list = c
                .list_pod_i_ps(pb::ListPodIPsRequest { node: node.clone() })
                .await
                .unwrap()
                .into_inner();
            for a in list.allocations {
                for ip in &a.ips {
                    if let Some(other) = held.insert(ip.clone(), a.owner.clone()) {
                        panic!("{ip} is held by both {other} and {}", a.owner);
                    }
                }
                stored.insert((node.clone(), a.owner), a.ips);
            }
        }
        let services = c
            .list_service_i_ps(pb::ListServiceIPsRequest {})
            .await
            .unwrap()
            .into_inner()
            .service_ips;
        let mut lb = HashSet::new();
        for s in &services {
            assert!(lb.insert(s.ip.clone()), "{} is held twice", s.ip);
        }
        let acked = acked.lock().unwrap();
        for (key, ips) in &acked.pods {
            assert_eq!(
                stored.get(key),
                Some(ips),
                "round {round}: acknowledged {key:?} → {ips:?} was lost or changed"
            );
        }
        let by_service: BTreeMap<&str, &str> = services
            .iter()
            .map(|s| (s.service.as_str(), s.ip.as_str()))
            .collect();
        for (service, ip) in &acked.services {
            assert_eq!(
                by_service.get(service.as_str()),
                Some(&ip.as_str()),
                "round {round}: acknowledged {service} → {ip} was lost"
            );
        }
        eprintln!(
            "round {round}: {} pod allocations and {} Service IPs acknowledged so far, all present after SIGKILL; {} stored in all",
            acked.pods.len(),
            acked.services.len(),
            stored.len()
        );
        drop(acked);
        server.kill9();
    }
}
