//! Pods on this node's network: the agent is the owner of its node's pod IPs.
//!
//! Contract: an attachment (container, interface) gets one address per family of the node's pod
//! CIDRs ([`allocator`]), persisted before any answer ([`store`]), then wired ([`wiring`]): a
//! veth pair, the pod's /32 and /128 with a default route via the node's router IP, a host route
//! back (protocol 194) and, where eBPF runs, the classifier on the host side. ADD is idempotent,
//! DEL of what is unknown succeeds, a failed ADD leaves nothing behind, GC releases every
//! attachment the runtime no longer lists. Every change is reported to routeplane-ipam
//! ([`report`]) — later, when IPAM is down: pods start without it. Until the agent's first report
//! for its current pod CIDRs was accepted it knows not what IPAM reserved in them, and hands out
//! nothing. [`cni`] is the gRPC face routeplane-cni talks to.

pub mod allocator;
pub mod cni;
pub mod report;
pub mod store;
pub mod wiring;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use routeplane_net::Cidr;

use crate::desired::Route;
use crate::ebpf::SharedDatapath;
use crate::kernel::{Kernel, KernelError};
use crate::registration::NodeAllocation;
use allocator::{AllocError, Allocator};
use store::{Attachment, ReportState, Store, StoreError};
use wiring::{Wired, Wiring, WiringError};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Full(#[from] AllocError),
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wiring(WiringError),
    #[error("host route: {0}")]
    Kernel(#[from] KernelError),
}

impl From<WiringError> for PodError {
    fn from(e: WiringError) -> PodError {
        match e {
            WiringError::NoNetns { .. } => PodError::Unknown(e.to_string()),
            WiringError::Mismatch(m) => PodError::Mismatch(m),
            other => PodError::Wiring(other),
        }
    }
}

/// A validated (container, interface) pair: what the runtime names an attachment by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    /// CNI_CONTAINERID: letters, digits, '_', '.', '-' (the spec's rule), at most 256 bytes;
    /// CNI_IFNAME: a Linux interface name of the same letters, at most 15 bytes, not "." or "..".
    pub fn new(container_id: &str, ifname: &str) -> Result<AttachmentKey, PodError> {
        let allowed = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        };
        if container_id.is_empty()
            || container_id.len() > 256
            || !allowed(container_id)
            || !container_id.as_bytes()[0].is_ascii_alphanumeric()
        {
            return Err(PodError::Invalid(format!(
                "container ID {container_id:?} is not valid: CNI_CONTAINERID must start with a letter or digit and hold only letters, digits, '_', '.' and '-' (at most 256)"
            )));
        }
        if ifname.is_empty()
            || ifname.len() > 15
            || !allowed(ifname)
            || ifname == "."
            || ifname == ".."
        {
            return Err(PodError::Invalid(format!(
                "interface name {ifname:?} is not valid: CNI_IFNAME must be a Linux interface name of letters, digits, '_', '.' and '-', at most 15 bytes (e.g. eth0)"
            )));
        }
        Ok(AttachmentKey {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }

    pub fn of(a: &Attachment) -> AttachmentKey {
        AttachmentKey {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        }
    }
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// An ADD, validated.
#[derive(Debug, Clone)]
pub struct AddRequest {
    pub key: AttachmentKey,
    pub netns: String,
    /// "namespace/name" from CNI_ARGS, or empty.
    pub pod: String,
}

/// What an attachment looks like to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub attachment: Attachment,
    pub host_mac: Vec<u8>,
    pub pod_mac: Vec<u8>,
    /// The router IP of each of the pod's families.
    pub gateways: Vec<IpAddr>,
}

struct Inner {
    node: Option<NodeAllocation>,
    allocator: Option<Allocator>,
    attachments: BTreeMap<AttachmentKey, Attachment>,
    report: ReportState,
    /// The generation of the current set of attachments (above `report.generation` while a
    /// change waits to be reported).
    generation: u64,
    /// Attachments with a CNI call in flight: a second call for one of them waits its turn.
    busy: BTreeSet<AttachmentKey>,
    last_report_error: String,
    /// Grows at every change of the pod CIDRs: an ADD that began before one is refused.
    epoch: u64,
}

impl Inner {
    fn cidr_strings(&self) -> Vec<String> {
        self.node
            .iter()
            .flat_map(|n| n.pod_cidrs.iter().map(ToString::to_string))
            .collect()
    }

    /// Ready to hand out addresses: a pod CIDR, and a report accepted for it.
    fn ready(&self) -> Result<(), PodError> {
        let Some(node) = &self.node else {
            return Err(PodError::NotReady(
                "this node has no pod CIDR yet: the agent is still registering with routeplane-ipam"
                    .into(),
            ));
        };
        if self.report.cidrs != self.cidr_strings() {
            let why = if self.last_report_error.is_empty() {
                String::new()
            } else {
                format!(" (last attempt: {})", self.last_report_error)
            };
            return Err(PodError::NotReady(format!(
                "node {} has not yet reported its pods for pod CIDRs {} to routeplane-ipam: until it has, it does not know which addresses IPAM reserved there{why}",
                node.node,
                self.cidr_strings().join(", ")
            )));
        }
        Ok(())
    }

    fn changed(&mut self) {
        self.generation = self.generation.max(self.report.generation) + 1;
    }
}

/// The pods of this node: attachments, their addresses and their wiring.
pub struct PodNetwork {
    inner: Mutex<Inner>,
    store: Store,
    wiring: Wiring,
    kernel: Arc<Kernel>,
    datapath: Option<SharedDatapath>,
    /// Held for reading while an attachment's kernel state changes and for writing by the
    /// reconciler, so that a pass never sees a pod's route before its record.
    pub kernel_lock: tokio::sync::RwLock<()>,
    /// Wakes the reporter.
    pub changed: tokio::sync::Notify,
}

/// Releases an attachment's busy mark however the call ends.
struct Busy<'a> {
    pods: &'a PodNetwork,
    key: AttachmentKey,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.pods.lock().busy.remove(&self.key);
    }
}

impl PodNetwork {
    /// Opens the store in `dir` (`pods/`, `report.json`); the attachments in it wait for the
    /// node's pod CIDRs ([`PodNetwork::set_node`]).
    pub fn open(
        dir: &Path,
        kernel: Arc<Kernel>,
        wiring: Wiring,
        datapath: Option<SharedDatapath>,
    ) -> Result<PodNetwork, PodError> {
        let (store, attachments, report) = Store::open(dir)?;
        let generation = report.generation;
        Ok(PodNetwork {
            inner: Mutex::new(Inner {
                node: None,
                allocator: None,
                attachments: attachments
                    .into_iter()
                    .map(|a| (AttachmentKey::of(&a), a))
                    .collect(),
                report,
                generation,
                busy: BTreeSet::new(),
                last_report_error: String::new(),
                epoch: 0,
            }),
            store,
            wiring,
            kernel,
            datapath,
            kernel_lock: tokio::sync::RwLock::new(()),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn claim(&self, key: &AttachmentKey) -> Result<Busy<'_>, PodError> {
        if !self.lock().busy.insert(key.clone()) {
            return Err(PodError::NotReady(format!(
                "another CNI call for {key} is in progress"
            )));
        }
        Ok(Busy {
            pods: self,
            key: key.clone(),
        })
    }

    /// The node's pod CIDRs, at start and whenever registration answers. Attachments outside
    /// them — the node was given other CIDRs (deleted and registered again, IPAM's state lost) —
    /// are unwired and released: their addresses may be another node's now. Returns them.
    pub async fn set_node(&self, node: &NodeAllocation) -> Vec<Attachment> {
        let orphans = {
            let mut inner = self.lock();
            let same = inner.node.as_ref().map(|n| &n.pod_cidrs) == Some(&node.pod_cidrs)
                && inner.allocator.is_some();
            inner.node = Some(node.clone());
            if same {
                return Vec::new();
            }
            inner.epoch += 1;
            let mut allocator = Allocator::new(&node.node, &node.pod_cidrs);
            let mut orphans = Vec::new();
            let keys: Vec<AttachmentKey> = inner.attachments.keys().cloned().collect();
            for key in keys {
                let Some(a) = inner.attachments.get(&key).cloned() else {
                    continue;
                };
                let mut marked = Vec::new();
                let mut refused = None;
                for ip in &a.ips {
                    match allocator.mark(*ip) {
                        Ok(()) => marked.push(*ip),
                        Err(e) => refused = Some(e),
                    }
                }
                if let Some(why) = refused {
                    for ip in marked {
                        allocator.release(ip);
                    }
                    tracing::error!(attachment = %key, ips = ?a.ips, %why, "unwiring a pod whose address this node can no longer hold: its container must be recreated");
                    inner.attachments.remove(&key);
                    orphans.push(a);
                }
            }
            if inner.report.cidrs == inner.cidr_strings() {
                allocator.set_reserved(&inner.report.reserved);
            }
            inner.allocator = Some(allocator);
            if !orphans.is_empty() {
                inner.changed();
            }
            orphans
        };
        for a in &orphans {
            if let Err(e) = self.unwire(a).await {
                tracing::warn!(attachment = %a.owner(), error = %e, "unwiring failed");
            }
            if let Err(e) = self.store.remove(&a.container_id, &a.ifname) {
                tracing::warn!(attachment = %a.owner(), error = %e, "removing its record failed");
            }
        }
        self.changed.notify_one();
        orphans
    }

    fn gateways(&self) -> Vec<IpAddr> {
        self.lock()
            .node
            .as_ref()
            .map(|n| n.router_ips.clone())
            .unwrap_or_default()
    }

    /// ADD: the attachment's addresses, persisted, then its wiring.
    pub async fn add(&self, req: AddRequest) -> Result<Outcome, PodError> {
        if req.netns.is_empty() || !req.netns.starts_with('/') {
            return Err(PodError::Invalid(format!(
                "network namespace {:?} is not valid: CNI_NETNS must be an absolute path such as /var/run/netns/pod-1",
                req.netns
            )));
        }
        let _busy = self.claim(&req.key)?;
        // Under the lock only what must be: the addresses taken. The disk write happens outside
        // it (other ADDs and DELs go on), and the attachment becomes visible once it is durable.
        let (attachment, fresh, epoch) = {
            let mut inner = self.lock();
            inner.ready()?;
            match inner.attachments.get(&req.key) {
                Some(a) if a.netns != req.netns => {
                    return Err(PodError::Invalid(format!(
                        "{} is already attached in network namespace {}, not {}: DEL it first",
                        req.key, a.netns, req.netns
                    )));
                }
                Some(a) => (a.clone(), false, inner.epoch),
                None => {
                    let allocator = inner
                        .allocator
                        .as_mut()
                        .ok_or_else(|| PodError::NotReady("no pod CIDR yet".into()))?;
                    let ips = allocator.allocate()?;
                    let a = Attachment {
                        container_id: req.key.container_id.clone(),
                        ifname: req.key.ifname.clone(),
                        netns: req.netns.clone(),
                        pod: req.pod.clone(),
                        ips,
                        host_veth: wiring::host_veth_name(&req.key.container_id, &req.key.ifname),
                    };
                    (a, true, inner.epoch)
                }
            }
        };
        if fresh {
            let persisted = self.store.put(&attachment);
            let mut inner = self.lock();
            // The pod CIDRs changed meanwhile (set_node): these addresses belong to none of them.
            let stale = inner.epoch != epoch;
            if persisted.is_err() || stale {
                if !stale && let Some(allocator) = inner.allocator.as_mut() {
                    attachment.ips.iter().for_each(|ip| allocator.release(*ip));
                }
                drop(inner);
                if persisted.is_ok() {
                    let _ = self
                        .store
                        .remove(&attachment.container_id, &attachment.ifname);
                }
                persisted?;
                return Err(PodError::NotReady(
                    "this node's pod CIDRs changed during the ADD: try again".into(),
                ));
            }
            inner
                .attachments
                .insert(req.key.clone(), attachment.clone());
            inner.changed();
        }
        if fresh {
            self.changed.notify_one();
        }
        let gateways = self.gateways();
        let wired = {
            let _kernel = self.kernel_lock.read().await;
            match self.wiring.host_side(&attachment.host_veth).await {
                Ok(Some((host_index, host_mac))) if !fresh => {
                    let pod_mac = self.wiring.pod_mac(&attachment).await.unwrap_or_default();
                    // Answered again: make sure its routes and classifier are still there.
                    self.finish(&attachment, host_index).await.map(|()| Wired {
                        host_index,
                        host_mac,
                        pod_mac,
                    })
                }
                _ => self.wire(&attachment, &gateways).await,
            }
        };
        match wired {
            Ok(w) => Ok(Outcome {
                gateways: gateways
                    .into_iter()
                    .filter(|g| attachment_has_family(&attachment, g))
                    .collect(),
                attachment,
                host_mac: w.host_mac,
                pod_mac: w.pod_mac,
            }),
            Err(e) => {
                // Nothing half-wired stays: the pair, the routes and the addresses go.
                let _kernel = self.kernel_lock.read().await;
                if let Err(undo) = self.unwire(&attachment).await {
                    tracing::warn!(attachment = %req.key, error = %undo, "undoing a failed ADD");
                }
                drop(_kernel);
                self.forget(&req.key)?;
                Err(e)
            }
        }
    }

    async fn wire(&self, a: &Attachment, gateways: &[IpAddr]) -> Result<Wired, PodError> {
        let wired = self.wiring.create(a, gateways).await?;
        self.finish(a, wired.host_index).await?;
        Ok(wired)
    }

    /// The host routes to the pod's addresses and the classifier on its host side.
    async fn finish(&self, a: &Attachment, host_index: u32) -> Result<(), PodError> {
        for route in host_routes(a, host_index) {
            self.kernel.install(&route).await?;
        }
        if let Some(dp) = &self.datapath {
            crate::ebpf::lock(dp)
                .attach_pod(&a.host_veth)
                .map_err(|e| PodError::Mismatch(format!("classifier on {}: {e}", a.host_veth)))?;
        }
        Ok(())
    }

    /// The classifier on every pod's host side that lacks it (a reconcile pass calls it).
    pub fn attach_missing(
        &self,
        dp: &mut crate::ebpf::Datapath,
        links: &BTreeMap<String, u32>,
    ) -> Vec<String> {
        let mut failures = Vec::new();
        for a in self.lock().attachments.values() {
            if links.contains_key(&a.host_veth)
                && let Err(e) = dp.attach_pod(&a.host_veth)
            {
                failures.push(format!("classifier on {}: {e}", a.host_veth));
            }
        }
        failures
    }

    /// The pod's veth pair goes, and its host routes and classifier with it (the kernel drops a
    /// device's routes and tc filters with the device).
    async fn unwire(&self, a: &Attachment) -> Result<(), PodError> {
        self.wiring.remove(&a.host_veth).await?;
        if let Some(dp) = &self.datapath {
            crate::ebpf::lock(dp).forget_pod(&a.host_veth);
        }
        Ok(())
    }

    /// Drops an attachment's record (durably, outside the lock) and then its addresses. The
    /// caller holds the attachment's busy mark: nothing else changes it meanwhile.
    fn forget(&self, key: &AttachmentKey) -> Result<Option<Attachment>, PodError> {
        let Some(a) = self.lock().attachments.get(key).cloned() else {
            return Ok(None);
        };
        self.store.remove(&a.container_id, &a.ifname)?;
        let mut inner = self.lock();
        inner.attachments.remove(key);
        if let Some(allocator) = inner.allocator.as_mut() {
            a.ips.iter().for_each(|ip| allocator.release(*ip));
        }
        inner.changed();
        drop(inner);
        self.changed.notify_one();
        Ok(Some(a))
    }

    /// DEL: unwired, then released; an attachment this node does not know is nothing to do.
    pub async fn del(&self, key: &AttachmentKey) -> Result<Vec<IpAddr>, PodError> {
        let _busy = self.claim(key)?;
        let Some(a) = self.lock().attachments.get(key).cloned() else {
            return Ok(Vec::new());
        };
        {
            let _kernel = self.kernel_lock.read().await;
            self.unwire(&a).await?;
        }
        Ok(self.forget(key)?.map(|a| a.ips).unwrap_or_default())
    }

    /// CHECK: the attachment as ADD left it — host side up, host routes, the pod's interface,
    /// addresses and default routes — or an error naming what is not.
    pub async fn check(&self, key: &AttachmentKey, netns: &str) -> Result<(), PodError> {
        let _busy = self.claim(key)?;
        let a = self
            .lock()
            .attachments
            .get(key)
            .cloned()
            .ok_or_else(|| PodError::Unknown(format!("{key} is not attached on this node")))?;
        if !netns.is_empty() && netns != a.netns {
            return Err(PodError::Mismatch(format!(
                "{key} was attached in {}, not {netns}",
                a.netns
            )));
        }
        let _kernel = self.kernel_lock.read().await;
        let (index, _) = self.wiring.host_side(&a.host_veth).await?.ok_or_else(|| {
            PodError::Mismatch(format!(
                "host side {} of {key} is missing or down",
                a.host_veth
            ))
        })?;
        let installed = self.kernel.our_routes().await?;
        for route in host_routes(&a, index) {
            if !installed.contains(&route) {
                return Err(PodError::Mismatch(format!(
                    "the host route {} dev {} of {key} is missing (deleted by hand?)",
                    route.destination, a.host_veth
                )));
            }
        }
        if let Some(dp) = &self.datapath
            && !crate::ebpf::lock(dp).has_pod(&a.host_veth)
        {
            return Err(PodError::Mismatch(format!(
                "the classifier on {} of {key} is not attached (yet)",
                a.host_veth
            )));
        }
        self.wiring.inspect(&a).await?;
        Ok(())
    }

    /// GC: releases every attachment not in `valid`, and host sides no record names.
    pub async fn gc(
        &self,
        valid: &BTreeSet<AttachmentKey>,
    ) -> Result<Vec<AttachmentKey>, PodError> {
        let stale: Vec<AttachmentKey> = self
            .lock()
            .attachments
            .keys()
            .filter(|k| !valid.contains(k))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for key in stale {
            match self.del(&key).await {
                Ok(_) => released.push(key),
                Err(e) => tracing::warn!(attachment = %key, error = %e, "GC could not release it"),
            }
        }
        let named: BTreeSet<String> = self
            .lock()
            .attachments
            .values()
            .map(|a| a.host_veth.clone())
            .collect();
        let _kernel = self.kernel_lock.read().await;
        for veth in self.wiring.host_veths().await? {
            if !named.contains(&veth) {
                tracing::info!(interface = %veth, "GC: removing a pod's host side no attachment names");
                self.wiring.remove(&veth).await?;
                if let Some(dp) = &self.datapath {
                    crate::ebpf::lock(dp).forget_pod(&veth);
                }
            }
        }
        Ok(released)
    }

    /// STATUS: whether an ADD could be served now.
    pub fn status(&self) -> Result<(), PodError> {
        let inner = self.lock();
        inner.ready()?;
        if let Some(allocator) = &inner.allocator
            && let Some((cidr, used, cap)) = allocator.usage().into_iter().find(|(_, u, c)| u >= c)
        {
            let node = inner
                .node
                .as_ref()
                .map(|n| n.node.clone())
                .unwrap_or_default();
            return Err(PodError::NotReady(format!(
                "node {node}'s pod CIDR {cidr} is full: {used} of {cap} pod IPs in use"
            )));
        }
        Ok(())
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.lock().attachments.values().cloned().collect()
    }

    /// The host routes every attachment needs, given the host sides' indexes (reconcile).
    pub fn host_routes(&self, links: &BTreeMap<String, u32>) -> Vec<Route> {
        self.lock()
            .attachments
            .values()
            .filter_map(|a| links.get(&a.host_veth).map(|i| host_routes(a, *i)))
            .flatten()
            .collect()
    }

    /// (held, capacity) per pod CIDR.
    pub fn usage(&self) -> Vec<(Cidr, u128, u128)> {
        self.lock()
            .allocator
            .as_ref()
            .map(Allocator::usage)
            .unwrap_or_default()
    }

    /// What to report: node, generation, pod CIDRs and every attachment; None before registration.
    pub fn report(&self) -> Option<(String, u64, Vec<String>, Vec<Attachment>)> {
        let inner = self.lock();
        let node = inner.node.as_ref()?.node.clone();
        let generation = inner.generation.max(inner.report.generation);
        Some((
            node,
            generation,
            inner.cidr_strings(),
            inner.attachments.values().cloned().collect(),
        ))
    }

    /// Whether the last accepted report covers the current attachments and pod CIDRs.
    pub fn reported(&self) -> (u64, bool) {
        let inner = self.lock();
        let pending = inner.generation > inner.report.generation
            || inner.report.cidrs != inner.cidr_strings();
        (inner.report.generation, pending)
    }

    /// IPAM accepted the report of `generation` for `cidrs`, and reserved `reserved`. Only the
    /// reporter calls it, one report at a time; the disk write happens outside the lock.
    pub fn accepted(
        &self,
        generation: u64,
        cidrs: Vec<String>,
        reserved: Vec<IpAddr>,
    ) -> Result<(), PodError> {
        let state = ReportState {
            generation,
            cidrs,
            reserved,
        };
        self.store.put_report(&state)?;
        let mut inner = self.lock();
        if state.cidrs == inner.cidr_strings()
            && let Some(allocator) = inner.allocator.as_mut()
        {
            allocator.set_reserved(&state.reserved);
        }
        inner.report = state;
        inner.last_report_error.clear();
        Ok(())
    }

    /// IPAM holds a newer generation (this agent's store was replaced): continue above it.
    pub fn rebase(&self, theirs: u64) {
        let mut inner = self.lock();
        inner.generation = inner.generation.max(theirs + 1);
    }

    pub fn report_failed(&self, why: String) {
        self.lock().last_report_error = why;
    }
}

fn attachment_has_family(a: &Attachment, gateway: &IpAddr) -> bool {
    a.ips.iter().any(|ip| ip.is_ipv4() == gateway.is_ipv4())
}

/// `<pod IP>/32 dev <host side>` and `/128`: the way back to the pod.
pub fn host_routes(a: &Attachment, host_index: u32) -> Vec<Route> {
    a.ips
        .iter()
        .filter_map(|ip| {
            Cidr::containing(*ip, if ip.is_ipv4() { 32 } else { 128 }).map(|destination| Route {
                destination,
                gateway: None,
                ifindex: host_index,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_keys_take_what_the_cni_spec_allows_and_name_what_they_refuse() {
        assert!(AttachmentKey::new("4f0c2b8a9d1e_x.y-z", "eth0").is_ok());
        for (id, ifname, needle) in [
            ("", "eth0", "container ID \"\""),
            ("-x", "eth0", "container ID \"-x\""),
            ("a/../b", "eth0", "container ID \"a/../b\""),
            ("a@b", "eth0", "container ID \"a@b\""),
            ("abc", "", "interface name \"\""),
            (
                "abc",
                "a-very-long-ifname",
                "interface name \"a-very-long-ifname\"",
            ),
            ("abc", "..", "interface name \"..\""),
            ("abc", "eth 0", "interface name \"eth 0\""),
        ] {
            let e = AttachmentKey::new(id, ifname).unwrap_err().to_string();
            assert!(e.contains(needle), "{id:?} {ifname:?}: {e}");
        }
    }
}
