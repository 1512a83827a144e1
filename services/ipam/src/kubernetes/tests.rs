//! The controllers against kube's own test tooling: the real kube Client over a mocked API server
//! (tower-test), which checks each request the controller makes and answers it, and a real IPAM
//! on a temporary directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::{Node, Service};
use routeplane_kubernetes::mock::{MockApi, Reply, answer_bytes};
use serde_json::{Value, json};

use super::Controller;
use crate::engine::StorageConfig;
use crate::ipam::{Ipam, IpamOptions};
use crate::settings::Cli;

async fn setup(grace: Duration) -> (Controller, MockApi, Arc<Ipam>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let loaded = Cli::parse_from(["routeplane-ipam"]).load().unwrap();
    let (ipam, _) = Ipam::start(
        loaded.core,
        StorageConfig::Sled(dir.path().to_path_buf()),
        IpamOptions::default(),
        routeplane_runtime::shutdown::Shutdown::new(),
    )
    .await
    .unwrap();
    let (client, api) = MockApi::new();
    (Controller::new(client, ipam.clone(), grace), api, ipam, dir)
}

fn node(name: &str, ip: &str, labels: &[(&str, &str)], version: &str) -> Value {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": version, "labels": labels},
        "spec": {},
        "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
    })
}

fn service(type_: &str, load_balancer_ip: Option<&str>, ingress: &[&str]) -> Value {
    let ingress: Vec<Value> = ingress.iter().map(|ip| json!({"ip": ip})).collect();
    let mut spec = json!({"type": type_, "ports": [{"port": 80}]});
    if let Some(ip) = load_balancer_ip {
        spec["loadBalancerIP"] = json!(ip);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "3", "uid": "u-1"},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress}}
    })
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone()).unwrap()
}

/// A controller call that must not reach the API: the mock answers nothing, so a request would hang.
async fn without_api_calls<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the controller made an API request it had no reason for")
}

/// Applies a Node IPAM does not know yet, expecting the write of its allocation (answered 200);
/// returns the pod CIDR IPAM gave it.
async fn registered(controller: &Controller, api: &mut MockApi, ipam: &Ipam, n: &Value) -> String {
    let name = n["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let object: Node = typed(n);
    let path = format!("/api/v1/nodes/{name}");
    let (result, _) = tokio::join!(
        controller.node_applied(&object),
        api.expect("PATCH", &path, 200, n.clone())
    );
    result.unwrap();
    ipam.node(&name).unwrap().pod_cidrs[0].to_string()
}

/// `n` as the API shows it once the allocation `cidr` was written back: nothing left to write.
fn showing(n: &Value, cidr: &str) -> Value {
    let mut shown = n.clone();
    shown["metadata"]["annotations"] = json!({"routeplane.io/pod-cidrs": cidr});
    shown["spec"]["podCIDRs"] = json!([cidr]);
    shown
}

/// Applies the Service, expecting one status write (answered 200); returns what was written.
async fn applied_with_status_write(
    controller: &Controller,
    api: &mut MockApi,
    svc: &Value,
) -> Value {
    let object: Service = typed(svc);
    let status_path = "/api/v1/namespaces/default/services/web/status";
    let (result, patch) = tokio::join!(
        controller.service_applied(&object),
        api.expect("PATCH", status_path, 200, svc.clone())
    );
    result.unwrap();
    patch
}

/// The watcher's watch request (after its list), not answered yet.
async fn take_watch(api: &mut MockApi) -> Reply {
    let (request, send) = api.next("a watch").await;
    let query = request.uri().query().unwrap_or_default().to_string();
    assert!(
        query.contains("watch=true"),
        "then a watch: {}",
        request.uri()
    );
    send
}

/// Answers a watch with one event, then waits for the watcher's next request, which it makes only
/// once the loop has handled that event.
async fn deliver(api: &mut MockApi, watch: Reply, event: Value) {
    answer_bytes(watch, 200, format!("{event}\n").into_bytes());
    let _next = api
        .next("the watcher's next request, after the event")
        .await;
}

/// Takes the watch request and delivers one event on it.
async fn watch_delivers(api: &mut MockApi, event: Value) {
    let watch = take_watch(api).await;
    deliver(api, watch, event).await;
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
           "message": "the object has been modified; please apply your changes to the latest version and try again"})
}

#[tokio::test]
async fn a_node_added_gets_a_pod_cidr_written_to_its_spec_and_annotation() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    let n1 = node("worker-1", "10.4.94.11", &[], "5");
    let object: Node = typed(&n1);
    let (result, patch) = tokio::join!(
        controller.node_applied(&object),
        api.expect("PATCH", "/api/v1/nodes/worker-1", 200, n1.clone())
    );
    result.unwrap();
    let held = ipam.node("worker-1").unwrap();
    assert_eq!(
        held.addresses,
        vec!["10.4.94.11".parse::<std::net::IpAddr>().unwrap()]
    );
    let cidr = held.pod_cidrs[0].to_string();
    assert_eq!(
        patch["metadata"]["annotations"]["routeplane.io/pod-cidrs"],
        json!(cidr)
    );
    assert_eq!(patch["spec"]["podCIDRs"], json!([cidr]));
    assert_eq!(
        patch["metadata"]["resourceVersion"],
        json!("5"),
        "the write is guarded by the version read"
    );
}

#[tokio::test]
async fn a_label_change_follows_the_node_without_moving_its_cidr() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    let n1 = node("worker-1", "10.4.83.11", &[], "5");
    let cidr = registered(&controller, &mut api, &ipam, &n1).await;

    // The Node now shows the allocation and carries the seed's label: IPAM takes the label, and no
    // write is needed (the mock would fail an unexpected request at the next expect).
    let labelled = showing(
        &node(
            "worker-1",
            "10.4.83.11",
            &[("kubernetes/route", "bgp-peer-83")],
            "6",
        ),
        &cidr,
    );
    without_api_calls(controller.node_applied(&typed::<Node>(&labelled)))
        .await
        .unwrap();
    let held = ipam.node("worker-1").unwrap();
    assert_eq!(
        held.labels.get("kubernetes/route").map(String::as_str),
        Some("bgp-peer-83")
    );
    assert_eq!(held.pod_cidrs[0].to_string(), cidr, "the CIDR stays");
}

#[tokio::test]
async fn a_cordoned_node_is_drained_and_an_uncordoned_one_is_not() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    let n1 = node("worker-1", "10.4.83.11", &[], "5");
    let cidr = registered(&controller, &mut api, &ipam, &n1).await;
    assert!(!ipam.node("worker-1").unwrap().draining);
    let shown = showing(&n1, &cidr);

    // `kubectl cordon`: spec.unschedulable.
    let mut cordoned = shown.clone();
    cordoned["spec"]["unschedulable"] = json!(true);
    without_api_calls(controller.node_applied(&typed::<Node>(&cordoned)))
        .await
        .unwrap();
    assert!(ipam.node("worker-1").unwrap().draining, "cordoned: drained");

    // Uncordoned: the drain ends.
    without_api_calls(controller.node_applied(&typed::<Node>(&shown)))
        .await
        .unwrap();
    assert!(!ipam.node("worker-1").unwrap().draining, "uncordoned");

    // The lifecycle controller's taint alone counts as a cordon too.
    let mut tainted = shown.clone();
    tainted["spec"]["taints"] =
        json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
    without_api_calls(controller.node_applied(&typed::<Node>(&tainted)))
        .await
        .unwrap();
    assert!(ipam.node("worker-1").unwrap().draining, "tainted: drained");
}

#[tokio::test]
async fn a_deleted_node_is_released_after_the_grace_and_a_returning_one_is_not() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    for (name, ip) in [("gone", "10.4.94.11"), ("back", "10.4.94.12")] {
        registered(&controller, &mut api, &ipam, &node(name, ip, &[], "1")).await;
    }
    let back_cidr = ipam.node("back").unwrap().pod_cidrs.clone();
    controller.node_deleted("gone");
    controller.node_deleted("back");
    assert!(
        controller.release_due(Instant::now()).await.is_empty(),
        "nothing before the grace"
    );
    assert!(ipam.node("gone").is_ok());

    // "back" is re-created within the grace (already annotated: no write).
    let mut again = node("back", "10.4.94.12", &[], "9");
    let text = back_cidr[0].to_string();
    again["metadata"]["annotations"] = json!({"routeplane.io/pod-cidrs": text});
    again["spec"]["podCIDRs"] = json!([text]);
    without_api_calls(controller.node_applied(&typed::<Node>(&again)))
        .await
        .unwrap();

    let released = controller
        .release_due(Instant::now() + Duration::from_secs(61))
        .await;
    assert_eq!(released, vec!["gone".to_string()]);
    assert!(ipam.node("gone").is_err(), "its CIDR went back to the pool");
    assert_eq!(ipam.node("back").unwrap().pod_cidrs, back_cidr);
}

#[tokio::test]
async fn a_conflicting_node_write_reads_the_node_again_and_retries() {
    let (controller, mut api, _ipam, _dir) = setup(Duration::from_secs(60)).await;
    let n1 = node("worker-1", "10.4.94.11", &[], "5");
    let newer = node("worker-1", "10.4.94.11", &[("zone", "a")], "6");
    let object: Node = typed(&n1);
    let (result, (first, second)) = tokio::join!(controller.node_applied(&object), async {
        let first = api
            .expect("PATCH", "/api/v1/nodes/worker-1", 409, conflict())
            .await;
        api.expect("GET", "/api/v1/nodes/worker-1", 200, newer.clone())
            .await;
        let second = api
            .expect("PATCH", "/api/v1/nodes/worker-1", 200, newer.clone())
            .await;
        (first, second)
    });
    result.unwrap();
    assert_eq!(first["metadata"]["resourceVersion"], json!("5"));
    assert_eq!(
        second["metadata"]["resourceVersion"],
        json!("6"),
        "the retry carries the version it read"
    );
    assert_eq!(
        second["metadata"]["annotations"],
        first["metadata"]["annotations"]
    );
}

#[tokio::test]
async fn a_load_balancer_gets_an_address_in_its_status_and_gives_it_back_when_deleted() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    let svc = service("LoadBalancer", None, &[]);
    let patch = applied_with_status_write(&controller, &mut api, &svc).await;
    let held = ipam.service_ips();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].service, "default/web");
    assert_eq!(
        patch["status"]["loadBalancer"]["ingress"],
        json!([{"ip": held[0].ip.to_string()}])
    );
    controller.service_deleted("default/web").await.unwrap();
    assert!(ipam.service_ips().is_empty());
}

#[tokio::test]
async fn a_service_no_longer_load_balancer_releases_its_address_and_clears_its_status() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    let given = ipam
        .allocate_service_ip("default/web", None, None, None)
        .await
        .unwrap();
    let svc = service("ClusterIP", None, &[&given.ip.to_string()]);
    let patch = applied_with_status_write(&controller, &mut api, &svc).await;
    assert!(ipam.service_ips().is_empty());
    assert_eq!(patch["status"]["loadBalancer"]["ingress"], json!([]));
}

#[tokio::test]
async fn a_requested_address_that_is_taken_is_an_event_and_a_pending_status_not_a_crash() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    ipam.allocate_service_ip(
        "default/other",
        None,
        Some("10.5.120.53".parse().unwrap()),
        None,
    )
    .await
    .unwrap();
    let svc = service("LoadBalancer", Some("10.5.120.53"), &[]);
    let object: Service = typed(&svc);
    let (result, event) = tokio::join!(
        controller.service_applied(&object),
        api.expect("POST", "/api/v1/namespaces/default/events", 201, json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": "default"}, "involvedObject": {}}))
    );
    result.unwrap();
    assert_eq!(event["type"], json!("Warning"));
    assert_eq!(event["reason"], json!("AllocationFailed"));
    assert_eq!(event["involvedObject"]["name"], json!("web"));
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("10.5.120.53"),
        "the event names the address: {message}"
    );
    assert_eq!(
        ipam.service_ips().len(),
        1,
        "the other Service keeps its address"
    );
}

#[tokio::test]
async fn a_conflicting_status_write_reads_the_service_again_and_retries() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    let svc = service("LoadBalancer", None, &[]);
    let mut newer = svc.clone();
    newer["metadata"]["resourceVersion"] = json!("4");
    let object: Service = typed(&svc);
    let (result, second) = tokio::join!(controller.service_applied(&object), async {
        api.expect(
            "PATCH",
            "/api/v1/namespaces/default/services/web/status",
            409,
            conflict(),
        )
        .await;
        api.expect(
            "GET",
            "/api/v1/namespaces/default/services/web",
            200,
            newer.clone(),
        )
        .await;
        api.expect(
            "PATCH",
            "/api/v1/namespaces/default/services/web/status",
            200,
            newer.clone(),
        )
        .await
    });
    result.unwrap();
    let held = ipam.service_ips();
    assert_eq!(held.len(), 1, "one address, not a second one for the retry");
    assert_eq!(second["metadata"]["resourceVersion"], json!("4"));
    assert_eq!(
        second["status"]["loadBalancer"]["ingress"],
        json!([{"ip": held[0].ip.to_string()}])
    );
}

#[tokio::test]
async fn addresses_of_services_deleted_while_not_watching_go_back_after_the_full_list() {
    let (controller, _api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    for key in ["default/web", "default/gone"] {
        ipam.allocate_service_ip(key, None, None, None)
            .await
            .unwrap();
    }
    let listed = ["default/web".to_string()].into();
    let released = without_api_calls(controller.services_listed(&listed))
        .await
        .unwrap();
    assert_eq!(released, vec!["default/gone".to_string()]);
    let held: Vec<String> = ipam.service_ips().into_iter().map(|s| s.service).collect();
    assert_eq!(held, vec!["default/web".to_string()]);
}

/// The Node watch loop itself, over the mocked API: a full list registers and writes back, and a
/// DELETED event from the watch starts the node's grace.
#[tokio::test]
async fn the_node_watch_lists_registers_and_follows_a_deletion() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    let controller = Arc::new(controller);
    let shutdown = routeplane_runtime::shutdown::Shutdown::new();
    let watching = tokio::spawn(super::watch_nodes(controller.clone(), shutdown.clone()));
    let n1 = node("worker-1", "10.4.94.11", &[], "7");
    let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "7"}, "items": [n1]});
    api.expect("GET", "/api/v1/nodes", 200, list).await;
    api.expect("PATCH", "/api/v1/nodes/worker-1", 200, n1.clone())
        .await;
    assert!(ipam.node("worker-1").is_ok(), "listed node registered");
    watch_delivers(&mut api, json!({"type": "DELETED", "object": n1})).await;
    assert_eq!(
        controller
            .release_due(Instant::now() + Duration::from_secs(61))
            .await,
        vec!["worker-1".to_string()]
    );
    assert!(ipam.node("worker-1").is_err());
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), watching)
        .await
        .expect("the watch loop ends on shutdown")
        .unwrap();
}

/// The Service watch loop over the mocked API: the full list gives the listed LoadBalancer its
/// address, takes back the address of one deleted while not watching, and a DELETED event from
/// the watch releases the listed one.
#[tokio::test]
async fn the_service_watch_lists_allocates_reclaims_and_follows_a_deletion() {
    let (controller, mut api, ipam, _dir) = setup(Duration::from_secs(60)).await;
    ipam.allocate_service_ip("default/gone", None, None, None)
        .await
        .unwrap();
    let controller = Arc::new(controller);
    let shutdown = routeplane_runtime::shutdown::Shutdown::new();
    let watching = tokio::spawn(super::watch_services(controller.clone(), shutdown.clone()));
    let svc = service("LoadBalancer", None, &[]);
    let list = json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "3"}, "items": [svc]});
    api.expect("GET", "/api/v1/services", 200, list).await;
    api.expect(
        "PATCH",
        "/api/v1/namespaces/default/services/web/status",
        200,
        svc.clone(),
    )
    .await;
    let watch = take_watch(&mut api).await;
    let held: Vec<String> = ipam.service_ips().into_iter().map(|s| s.service).collect();
    assert_eq!(
        held,
        vec!["default/web".to_string()],
        "listed one allocated, the one gone reclaimed"
    );
    deliver(&mut api, watch, json!({"type": "DELETED", "object": svc})).await;
    assert!(
        ipam.service_ips().is_empty(),
        "the deleted Service's address went back"
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), watching)
        .await
        .expect("the watch loop ends on shutdown")
        .unwrap();
}
