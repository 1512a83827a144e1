//! Kubernetes mode (`--kubernetes`): IPAM follows the cluster's Nodes and LoadBalancer Services.
//!
//! Contract: every Node with an address is an IPAM node with the Node's addresses and labels, and
//! shows its pod CIDRs (annotation `routeplane.io/pod-cidrs`, and `spec.podCIDRs` while empty); a
//! deleted Node's CIDRs are released after `--node-release-grace`. Every LoadBalancer Service
//! without a `loadBalancerClass` holds an address from the bgp-config pools, shown in
//! `status.loadBalancer.ingress`, and gives it back when deleted or no longer LoadBalancer. What
//! cannot be done becomes a Warning event or a log line, never a crash; a write that meets a newer
//! version of the object (409 Conflict) reads it again and retries. The decisions live in
//! [`nodes`] and [`services`], without I/O; this file reads and writes the API.

pub mod nodes;
pub mod services;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use routeplane_runtime::shutdown::Shutdown;
use serde_json::json;

use crate::error::IpamError;
use crate::ipam::Ipam;
use nodes::{KubeNode, POD_CIDRS_ANNOTATION, PendingReleases};
use services::{KubeService, POOL_ANNOTATION, ServiceAction};

/// How often writes that met a 409 Conflict are retried with a fresh read.
const CONFLICT_RETRIES: usize = 5;
/// The component named in the events routeplane-ipam writes.
const COMPONENT: &str = "routeplane-ipam";

/// Errors of Kubernetes mode: the API's, or IPAM's own.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("{what}: still conflicting after {CONFLICT_RETRIES} fresh reads")]
    Conflicts { what: String },
}

fn is_conflict(e: &KubeError) -> bool {
    matches!(e, KubeError::Api(kube::Error::Api(status)) if status.is_conflict())
}

impl From<&Node> for KubeNode {
    fn from(node: &Node) -> KubeNode {
        KubeNode {
            name: node.name_any(),
            addresses: routeplane_kubernetes::node_addresses(node),
            labels: node.labels().clone(),
            spec_pod_cidrs: node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidrs.clone())
                .unwrap_or_default(),
            annotated: node.annotations().get(POD_CIDRS_ANNOTATION).cloned(),
            cordoned: node.spec.as_ref().is_some_and(|s| {
                s.unschedulable == Some(true)
                    || s.taints
                        .iter()
                        .flatten()
                        .any(|t| t.key == nodes::UNSCHEDULABLE_TAINT)
            }),
        }
    }
}

impl From<&Service> for KubeService {
    fn from(service: &Service) -> KubeService {
        let spec = service.spec.as_ref();
        KubeService {
            key: format!(
                "{}/{}",
                service.namespace().unwrap_or_default(),
                service.name_any()
            ),
            // A Service with a loadBalancerClass belongs to that class's implementation.
            load_balancer: spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
                && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none(),
            requested_ip: spec.and_then(|s| s.load_balancer_ip.clone()),
            pool: service.annotations().get(POOL_ANNOTATION).cloned(),
            ingress: service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone())
                .collect(),
        }
    }
}

/// The controllers' shared state: the API client, IPAM, and the deleted Nodes in their grace.
pub struct Controller {
    client: Client,
    ipam: Arc<Ipam>,
    pending: Mutex<PendingReleases>,
}

impl Controller {
    pub fn new(client: Client, ipam: Arc<Ipam>, release_grace: Duration) -> Controller {
        Controller {
            client,
            ipam,
            pending: Mutex::new(PendingReleases::new(release_grace)),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingReleases> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A Node was added or changed: register it where needed, then write the allocation back.
    pub async fn node_applied(&self, node: &Node) -> Result<(), KubeError> {
        let mut kube = KubeNode::from(node);
        self.pending().present(&kube.name);
        let held = self.ipam.node(&kube.name).ok();
        let ipam_node = if nodes::needs_register(&kube, held.as_ref()) {
            let registered = self
                .ipam
                .sync_node(&kube.name, kube.addresses.clone(), kube.labels.clone())
                .await?;
            tracing::info!(node = %kube.name, cidrs = ?registered.pod_cidrs, labels = ?registered.labels, "node from the Kubernetes API");
            registered
        } else if let Some(held) = held {
            held
        } else {
            return Ok(()); // no address yet
        };
        let ipam_node = match nodes::drain_change(&kube, &ipam_node) {
            Some(drain) => {
                tracing::info!(node = %kube.name, cordoned = kube.cordoned, "node cordon changed in the Kubernetes API: the drain follows");
                self.ipam.drain_node(&kube.name, drain).await?
            }
            None => ipam_node,
        };
        let api: Api<Node> = Api::all(self.client.clone());
        let mut version = node.resource_version();
        for _ in 0..CONFLICT_RETRIES {
            let Some(write) = nodes::write_back(&kube, &ipam_node.pod_cidrs) else {
                return Ok(());
            };
            if write.spec_disagrees {
                tracing::warn!(node = %kube.name, spec = ?kube.spec_pod_cidrs, routeplane = %write.annotation,
                    "spec.podCIDRs was set by someone else (kube-controller-manager --allocate-node-cidrs?); routeplane's CIDRs are in the annotation");
            }
            let mut patch = json!({"metadata": {"resourceVersion": version, "annotations": {POD_CIDRS_ANNOTATION: write.annotation}}});
            if let Some(spec) = &write.spec {
                patch["spec"] = json!({"podCIDR": spec[0], "podCIDRs": spec});
            }
            match api
                .patch(&kube.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(KubeError::from)
            {
                Err(e) if is_conflict(&e) => {
                    let fresh = api.get(&kube.name).await?;
                    version = fresh.resource_version();
                    kube = KubeNode::from(&fresh);
                }
                other => return other.map(drop),
            }
        }
        Err(KubeError::Conflicts {
            what: format!("writing node {}", kube.name),
        })
    }

    /// A Node was deleted: its CIDRs go after the grace period, unless it returns.
    pub fn node_deleted(&self, name: &str) {
        tracing::info!(
            node = name,
            "node deleted from the Kubernetes API: releasing its pod CIDRs after the grace period"
        );
        self.pending().deleted(name, Instant::now());
    }

    /// After a full list of Nodes: IPAM nodes the cluster no longer has start their grace.
    pub fn nodes_listed(&self, listed: &BTreeSet<String>) {
        let names: Vec<String> = self.ipam.nodes().into_iter().map(|n| n.name).collect();
        self.pending()
            .listed(listed, names.iter().map(String::as_str), Instant::now());
    }

    /// Releases the Nodes whose grace is over; returns their names.
    pub async fn release_due(&self, now: Instant) -> Vec<String> {
        let due = self.pending().take_due(now);
        let mut released = Vec::new();
        for name in due {
            match self.ipam.delete_node(&name, true).await {
                Ok((node, pods)) => {
                    tracing::info!(node = %name, cidrs = ?node.pod_cidrs, pod_ips = pods, "released the pod CIDRs of a deleted node");
                    released.push(name);
                }
                Err(IpamError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "cannot release a deleted node; retrying later")
                }
            }
        }
        released
    }

    /// A Service was added or changed: give it, keep, change or take back its LoadBalancer IP.
    pub async fn service_applied(&self, service: &Service) -> Result<(), KubeError> {
        let mut current = service.clone();
        for _ in 0..CONFLICT_RETRIES {
            match self.service_once(&current).await {
                Err(e) if is_conflict(&e) => {
                    let api: Api<Service> = Api::namespaced(
                        self.client.clone(),
                        &current.namespace().unwrap_or_default(),
                    );
                    current = api.get(&current.name_any()).await?;
                }
                other => return other,
            }
        }
        Err(KubeError::Conflicts {
            what: format!(
                "writing the status of service {}",
                KubeService::from(service).key
            ),
        })
    }

    async fn service_once(&self, service: &Service) -> Result<(), KubeError> {
        let kube = KubeService::from(service);
        let held = self.ipam.service_ip(&kube.key);
        for step in services::plan(&kube, held.as_ref()) {
            match step {
                ServiceAction::Release => {
                    if let Some(released) = self.ipam.release_service_ip(&kube.key).await? {
                        tracing::info!(service = %kube.key, ip = %released.ip, "LoadBalancer IP released");
                    }
                }
                ServiceAction::Allocate { pool, ip } => {
                    match self
                        .ipam
                        .allocate_service_ip(&kube.key, pool.as_deref(), ip, None)
                        .await
                    {
                        Ok(given) => {
                            tracing::info!(service = %kube.key, ip = %given.ip, pool = %given.pool, "LoadBalancer IP allocated");
                            self.set_ingress(service, &[given.ip]).await?;
                        }
                        Err(
                            e @ (IpamError::InvalidArgument(_)
                            | IpamError::AlreadyExists(_)
                            | IpamError::Exhausted(_)
                            | IpamError::NotFound(_)
                            | IpamError::FailedPrecondition(_)),
                        ) => {
                            self.warn(service, "AllocationFailed", &e.to_string()).await;
                            if !kube.ingress.is_empty() {
                                self.set_ingress(service, &[]).await?;
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                ServiceAction::SetIngress(ips) => self.set_ingress(service, &ips).await?,
                ServiceAction::Warn { reason, message } => {
                    self.warn(service, reason, &message).await
                }
            }
        }
        Ok(())
    }

    /// A Service was deleted: its LoadBalancer IP goes back to the pool.
    pub async fn service_deleted(&self, key: &str) -> Result<(), KubeError> {
        if let Some(released) = self.ipam.release_service_ip(key).await? {
            tracing::info!(service = key, ip = %released.ip, "LoadBalancer IP released: service deleted");
        }
        Ok(())
    }

    /// After a full list of the Services (`listed`: the keys of LoadBalancer Services): releases the
    /// addresses of Services that went while routeplane-ipam was not watching; returns their keys.
    pub async fn services_listed(
        &self,
        listed: &BTreeSet<String>,
    ) -> Result<Vec<String>, KubeError> {
        let orphaned = services::orphaned(listed, &self.ipam.service_ips());
        for key in &orphaned {
            self.service_deleted(key).await?;
        }
        Ok(orphaned)
    }

    /// `status.loadBalancer.ingress`, guarded by the version the decision was made on.
    async fn set_ingress(
        &self,
        service: &Service,
        ips: &[std::net::IpAddr],
    ) -> Result<(), KubeError> {
        let api: Api<Service> = Api::namespaced(
            self.client.clone(),
            &service.namespace().unwrap_or_default(),
        );
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        let patch = json!({"metadata": {"resourceVersion": service.resource_version()}, "status": {"loadBalancer": {"ingress": ingress}}});
        api.patch_status(
            &service.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(())
    }

    /// A Warning event on the Service (core/v1, which every Kubernetes serves); a failure to write
    /// it is logged, since the event only reports.
    async fn warn(&self, service: &Service, reason: &str, message: &str) {
        tracing::warn!(service = %KubeService::from(service).key, reason, message);
        let namespace = service.namespace().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", service.name_any())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                name: Some(service.name_any()),
                namespace: Some(namespace.clone()),
                uid: service.uid(),
                resource_version: service.resource_version(),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                ..EventSource::default()
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %e, "cannot write an event");
        }
    }
}

/// Runs both watches until shutdown. Each reconnects with backoff after an API error.
pub async fn run(client: Client, ipam: Arc<Ipam>, release_grace: Duration, shutdown: Shutdown) {
    let controller = Arc::new(Controller::new(client, ipam, release_grace));
    tokio::join!(
        watch_nodes(controller.clone(), shutdown.clone()),
        watch_services(controller, shutdown)
    );
}

async fn watch_nodes(controller: Arc<Controller>, shutdown: Shutdown) {
    let api: Api<Node> = Api::all(controller.client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listed.clear(),
                Some(Ok(watcher::Event::InitApply(node))) => {
                    listed.insert(node.name_any());
                    log_failure("node", controller.node_applied(&node).await);
                }
                Some(Ok(watcher::Event::InitDone)) => controller.nodes_listed(&listed),
                Some(Ok(watcher::Event::Apply(node))) => log_failure("node", controller.node_applied(&node).await),
                Some(Ok(watcher::Event::Delete(node))) => controller.node_deleted(&node.name_any()),
                Some(Err(e)) => tracing::warn!(error = %e, "watching Nodes; retrying"),
                None => return,
            },
            _ = tick.tick() => { controller.release_due(Instant::now()).await; }
            () = shutdown.wait() => return,
        }
    }
}

async fn watch_services(controller: Arc<Controller>, shutdown: Shutdown) {
    let api: Api<Service> = Api::all(controller.client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed = BTreeSet::new();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listed.clear(),
                Some(Ok(watcher::Event::InitApply(service))) => {
                    let kube = KubeService::from(&service);
                    if kube.load_balancer {
                        listed.insert(kube.key);
                    }
                    log_failure("service", controller.service_applied(&service).await);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    log_failure("services", controller.services_listed(&listed).await.map(drop));
                }
                Some(Ok(watcher::Event::Apply(service))) => {
                    log_failure("service", controller.service_applied(&service).await);
                }
                Some(Ok(watcher::Event::Delete(service))) => {
                    log_failure("service", controller.service_deleted(&KubeService::from(&service).key).await);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching Services; retrying"),
                None => return,
            },
            () = shutdown.wait() => return,
        }
    }
}

fn log_failure(what: &str, result: Result<(), KubeError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "{what} not reconciled; the next change or resync retries");
    }
}

#[cfg(test)]
mod tests;
