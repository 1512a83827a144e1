//! The IPAM domain core, without I/O: nodes and their pod CIDRs, pod IPs, Service IPs, pools and the
//! revision. Every operation validates, updates memory, and returns the [`Mutation`] that the caller
//! must make durable (records to write, the event to publish) — or none when nothing changed, as
//! for an idempotent repeat. Time comes in as an argument, so leases test without sleeping.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use routeplane_config::{AddressPool, ClusterPool};
use routeplane_net::{Cidr, Family};
use serde::{Deserialize, Serialize};

use crate::address_set::AddressSet;
use crate::error::{IpamError, Result};
use crate::model::{
    self, Drain, Event, Node, OperatorEntry, OperatorKey, ROUTER_OFFSET, Revision, ServiceIp,
};
use crate::pod_pools::PodPools;
use crate::service_pools::{ServicePool, ServicePools};

mod liveness;
mod operator;
mod pod_ips;
pub use liveness::{
    Beat, Expiry, LivenessConfig, MASS_EXPIRY_GRACE, MASS_EXPIRY_MIN, MAX_HOLD_DOWN_HALF_LIVES,
};
pub use operator::{DEFAULT_MAX_OPERATOR_ENTRIES, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
pub use pod_ips::{AgentPod, PodIps, ReportedPod, SyncOutcome};

/// A record to write or delete, in storage-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    PutNode(Node),
    DeleteNode(String),
    PutPodIps {
        node: String,
        owner: String,
        ips: Vec<IpAddr>,
        /// Set for an attachment the node's route agent reported (`pod_ips.rs`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<AgentPod>,
    },
    DeletePodIps {
        node: String,
        owner: String,
    },
    /// The generation of the last report of the node's route agent that was applied.
    PutPodSync {
        node: String,
        generation: u64,
    },
    PutServiceIp(ServiceIp),
    DeleteServiceIp(String),
    PutPool(PoolRecord),
    /// Another service's operator state (`state/operator.rs`).
    PutOperator(OperatorEntry),
    DeleteOperator(OperatorKey),
}

/// Runtime pool state that outlives the config file: pools added by AddPoolCidr, and drain flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub cidr: String,
    pub mask: u8,
    pub drained: bool,
    /// True for AddPoolCidr pools, false for a config pool whose drain flag is recorded.
    pub added: bool,
}

/// What one operation changed: persisted atomically under `revision`, then `event` is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub revision: Revision,
    pub changes: Vec<Change>,
    pub event: Option<Event>,
}

/// Everything read back from storage at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    pub revision: Revision,
    pub nodes: Vec<Node>,
    pub pod_ips: Vec<(String, String, PodIps)>,
    /// Per node, the generation of its agent's last applied report.
    pub pod_syncs: Vec<(String, u64)>,
    pub service_ips: Vec<ServiceIp>,
    pub pools: Vec<PoolRecord>,
    pub operator: Vec<OperatorEntry>,
}

/// The default of `--max-pods-per-node`: the most pod owners one node may hold addresses for,
/// whatever its CIDR's size (an IPv6 /64 would otherwise let one caller fill memory) — about four
/// times the busiest nodes Kubernetes supports (its maxPods default is 110, common ceilings 250).
pub const DEFAULT_MAX_PODS_PER_NODE: u32 = 1024;

/// The settings the core is built from.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Cluster pools of the enabled families.
    pub pod_pools: Vec<ClusterPool>,
    /// Node CIDR mask per family, for AddPoolCidr without a mask (both families, enabled or not).
    pub default_masks: BTreeMap<Family, u8>,
    pub service_pools: Vec<AddressPool>,
    pub lease_ttl: Duration,
    pub liveness: LivenessConfig,
    /// The most pod owners one node may hold addresses for (`--max-pods-per-node`).
    pub max_pods_per_node: usize,
    /// The most operator entries held (`--max-operator-entries`).
    pub max_operator_entries: usize,
}

/// A pod CIDR pool as ListPools shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPoolView {
    pub cidr: Cidr,
    pub mask: u8,
    pub total: u128,
    pub used: u128,
    pub pod_ips_used: u64,
    /// Usable pod addresses in the node CIDRs handed out from this pool (saturating).
    pub pod_ips_capacity: u128,
    pub drained: bool,
    pub source: String,
}

struct NodeEntry {
    node: Node,
    lease_deadline: Instant,
    damping: liveness::Damping,
    /// By owner. Hashed rather than ordered: a node can hold hundreds of thousands, and
    /// AllocatePodIP looks its owner up on every call (readers that need an order sort).
    pods: HashMap<String, PodIps>,
    taken: BTreeMap<Family, AddressSet>,
    /// Set once the node's route agent reported its pod IPs: from then on it hands them out.
    agent_generation: Option<u64>,
}

impl NodeEntry {
    fn pod_ip_count(&self) -> usize {
        self.taken.values().map(AddressSet::len).sum()
    }
}

/// Whether registering a node renews its lease (its agent speaking) or leaves it (the cluster's API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseUpdate {
    Renew,
    Keep,
}

pub struct IpamState {
    families: Vec<Family>,
    default_masks: BTreeMap<Family, u8>,
    pod_pools: PodPools,
    services: ServicePools,
    nodes: BTreeMap<String, NodeEntry>,
    /// Which node registered each address: a registration checks its addresses against every
    /// other node's, which a scan of `nodes` made quadratic in the cluster's size.
    address_owners: HashMap<IpAddr, String>,
    revision: Revision,
    lease_ttl: Duration,
    /// Set when nodes were restored: the end of the full lease each got, which no renewal
    /// shortens (`state/liveness.rs`).
    restart_lease_until: Option<Instant>,
    liveness: LivenessConfig,
    /// Recent deaths, and whether IPAM is sparing a mass expiry (`state/liveness.rs`).
    mass: liveness::MassExpiry,
    max_pods_per_node: usize,
    /// Which operator entries exist (their values are in the durable image).
    operator: BTreeSet<OperatorKey>,
    max_operator_entries: usize,
}

/// Offsets a node CIDR never hands to a pod: the network address, the router IP and, for IPv4,
/// the broadcast address.
fn reserved_in(cidr: &Cidr, offset: u128) -> bool {
    offset == 0
        || offset == ROUTER_OFFSET
        || (cidr.family() == Family::V4 && offset == cidr.size() - 1)
}

/// Addresses of a node CIDR that can go to pods.
fn usable(cidr: &Cidr) -> u128 {
    cidr.size()
        .saturating_sub(if cidr.family() == Family::V4 { 3 } else { 2 })
}

impl IpamState {
    /// Builds the core from config and what storage holds. Returns warnings worth logging once.
    pub fn restore(
        config: CoreConfig,
        persisted: Persisted,
        now: Instant,
    ) -> Result<(IpamState, Vec<String>)> {
        let mut warnings = Vec::new();
        let mut pod_pools = PodPools::default();
        let mut families = Vec::new();
        for pool in &config.pod_pools {
            families.push(pool.family);
            for cidr in &pool.cidrs {
                pod_pools.add(*cidr, pool.mask_size, &pool.source_key)?;
            }
        }
        for record in &persisted.pools {
            let cidr: Cidr = record
                .cidr
                .parse()
                .map_err(|e| IpamError::Storage(format!("stored pool {:?}: {e}", record.cidr)))?;
            if record.added && pod_pools.get(&cidr).is_none() {
                if !families.contains(&cidr.family()) {
                    warnings.push(format!("pool {cidr} (added by AddPoolCidr) is {} but that family is disabled: it is not used", cidr.family()));
                    continue;
                }
                pod_pools.add(cidr, record.mask, "AddPoolCidr")?;
            }
            if pod_pools.get(&cidr).is_some() {
                pod_pools.set_drained(&cidr, record.drained)?;
            }
        }
        let services = ServicePools::new(&config.service_pools, &pod_pools)?;
        let mut state = IpamState {
            families,
            default_masks: config.default_masks,
            pod_pools,
            services,
            nodes: BTreeMap::new(),
            address_owners: HashMap::new(),
            revision: persisted.revision,
            lease_ttl: config.lease_ttl,
            restart_lease_until: (!persisted.nodes.is_empty()).then(|| now + config.lease_ttl),
            liveness: config.liveness,
            mass: liveness::MassExpiry::default(),
            max_pods_per_node: config.max_pods_per_node,
            // Restored whatever the cap: lowering it refuses new entries, it loses none.
            operator: persisted.operator.iter().map(OperatorEntry::name).collect(),
            max_operator_entries: config.max_operator_entries,
        };
        for node in persisted.nodes {
            for cidr in &node.pod_cidrs {
                if !state.pod_pools.mark(cidr) {
                    warnings.push(format!(
                        "node {} keeps pod CIDR {cidr}, which lies in no configured pool",
                        node.name
                    ));
                }
            }
            // Every node starts with a full lease: its agent has one TTL to reach the restarted server.
            let entry = NodeEntry {
                lease_deadline: now + state.lease_ttl,
                damping: liveness::Damping::default(),
                pods: HashMap::new(),
                agent_generation: None,
                taken: node
                    .pod_cidrs
                    .iter()
                    .map(|c| (c.family(), AddressSet::default()))
                    .collect(),
                node,
            };
            for addr in &entry.node.addresses {
                state.address_owners.insert(*addr, entry.node.name.clone());
            }
            state.nodes.insert(entry.node.name.clone(), entry);
        }
        for (node, generation) in persisted.pod_syncs {
            if let Some(entry) = state.nodes.get_mut(&node) {
                entry.agent_generation = Some(generation);
            }
        }
        for (node, owner, held) in persisted.pod_ips {
            let Some(entry) = state.nodes.get_mut(&node) else {
                warnings.push(format!(
                    "pod IPs {:?} of {owner} belong to unknown node {node}: ignored",
                    held.ips
                ));
                continue;
            };
            for ip in &held.ips {
                let cidr = entry.node.cidr_of(Family::of(*ip));
                match (
                    cidr.and_then(|c| c.offset_of(*ip)),
                    entry.taken.get_mut(&Family::of(*ip)),
                ) {
                    (Some(offset), Some(set)) => {
                        set.insert(offset);
                    }
                    _ => warnings.push(format!(
                        "pod IP {ip} of {owner} is outside node {node}'s pod CIDRs: ignored"
                    )),
                }
            }
            entry.pods.insert(owner, held);
        }
        for ip in persisted.service_ips {
            let (service, addr) = (ip.service.clone(), ip.ip);
            if !state.services.restore(ip) {
                warnings.push(format!(
                    "service {service} keeps {addr}, which lies in no configured address-pool"
                ));
            }
        }
        Ok((state, warnings))
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    fn mutation(&mut self, changes: Vec<Change>, event: Option<Event>) -> Mutation {
        Mutation {
            revision: self.revision,
            changes,
            event,
        }
    }

    fn bump(&mut self) -> Revision {
        self.revision += 1;
        self.revision
    }

    fn entry(&self, name: &str) -> Result<&NodeEntry> {
        self.nodes.get(name).ok_or_else(|| not_registered(name))
    }

    fn entry_mut(&mut self, name: &str) -> Result<&mut NodeEntry> {
        self.nodes.get_mut(name).ok_or_else(|| not_registered(name))
    }

    // ---- nodes -------------------------------------------------------------------------------

    pub fn node(&self, name: &str) -> Result<&Node> {
        Ok(&self.entry(name)?.node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|e| &e.node)
    }

    /// Registers or updates a node; allocates a pod CIDR for each enabled family it lacks.
    pub fn register_node(
        &mut self,
        name: &str,
        addresses: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
        now: Instant,
    ) -> Result<(Node, Option<Mutation>)> {
        self.upsert_node(name, addresses, labels, now, LeaseUpdate::Renew)
    }

    /// A node as the cluster's API describes it (Kubernetes mode): created or updated with these
    /// addresses and labels, its pod CIDRs allocated — but readiness stays the agent's to give. A
    /// new node starts NotReady (nothing is advertised for it before its agent runs), and an
    /// existing one keeps its lease, so a label change on a node whose agent is gone does not
    /// bring its routes back.
    pub fn sync_node(
        &mut self,
        name: &str,
        addresses: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
        now: Instant,
    ) -> Result<(Node, Option<Mutation>)> {
        self.upsert_node(name, addresses, labels, now, LeaseUpdate::Keep)
    }

    fn upsert_node(
        &mut self,
        name: &str,
        addresses: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
        now: Instant,
        lease: LeaseUpdate,
    ) -> Result<(Node, Option<Mutation>)> {
        model::validate_node_name(name)?;
        model::validate_labels(&labels)?;
        let addresses: Vec<IpAddr> = addresses
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for addr in &addresses {
            if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
                return Err(IpamError::InvalidArgument(format!(
                    "node address {addr} is not valid: give the node's unicast address that routers and other nodes reach it at"
                )));
            }
            if let Some(other) = self.address_owners.get(addr).filter(|o| *o != name) {
                return Err(IpamError::AlreadyExists(format!(
                    "address {addr} is already registered by node {other}: two nodes cannot share a next hop; delete that node first if it was replaced"
                )));
            }
        }
        // Keep: a new node's lease is already over (it waits for its agent), an existing one's stays.
        let lease_deadline = match lease {
            LeaseUpdate::Renew => now + self.lease_ttl,
            LeaseUpdate::Keep => self.nodes.get(name).map_or(now, |e| e.lease_deadline),
        };
        let existing = self.nodes.get(name).map(|e| e.node.clone());
        let held: Vec<Family> = existing
            .iter()
            .flat_map(|n| n.pod_cidrs.iter().map(|c| c.family()))
            .collect();
        let mut new_cidrs = Vec::new();
        for family in self.families.clone() {
            if held.contains(&family) {
                continue;
            }
            match self.pod_pools.allocate(family) {
                Ok(c) => new_cidrs.push(c),
                Err(e) => {
                    new_cidrs.iter().for_each(|c| self.pod_pools.release(c));
                    return Err(e);
                }
            }
        }
        let mut node = existing.clone().unwrap_or_else(|| Node {
            name: name.to_string(),
            addresses: Vec::new(),
            labels: BTreeMap::new(),
            pod_cidrs: Vec::new(),
            ready: false,
            draining: false,
            drain_ends_on_register: false,
            held_down: false,
            revision: 0,
        });
        node.addresses = addresses;
        node.labels = labels;
        if lease == LeaseUpdate::Renew {
            // Ready, unless damped (`state/liveness.rs`); a new node is never held down.
            (node.ready, node.held_down) = self.revival(name, now).unwrap_or((true, false));
            // The agent is back from the shutdown that drained the node.
            if node.drain_ends_on_register {
                node.draining = false;
                node.drain_ends_on_register = false;
            }
        }
        node.pod_cidrs.extend(new_cidrs.iter().copied());
        node.pod_cidrs.sort_by_key(|c| c.family());
        let entry = self
            .nodes
            .entry(name.to_string())
            .or_insert_with(|| NodeEntry {
                node: node.clone(),
                lease_deadline,
                damping: liveness::Damping::default(),
                pods: HashMap::new(),
                taken: BTreeMap::new(),
                agent_generation: None,
            });
        entry.lease_deadline = lease_deadline;
        for c in &new_cidrs {
            entry.taken.insert(c.family(), AddressSet::default());
        }
        if existing.as_ref() == Some(&node) {
            return Ok((node, None));
        }
        let revision = self.bump();
        node.revision = revision;
        if let Some(old) = &existing {
            self.forget_addresses(name, &old.addresses);
        }
        for addr in &node.addresses {
            self.address_owners.insert(*addr, name.to_string());
        }
        if let Some(entry) = self.nodes.get_mut(name) {
            entry.node = node.clone();
        }
        let m = self.mutation(
            vec![Change::PutNode(node.clone())],
            Some(Event::NodeUpdated(node.clone())),
        );
        Ok((node, Some(m)))
    }

    /// Drops `name`'s claim on `addresses` from the index (not another node's).
    fn forget_addresses(&mut self, name: &str, addresses: &[IpAddr]) {
        for addr in addresses {
            if self.address_owners.get(addr).is_some_and(|o| o == name) {
                self.address_owners.remove(addr);
            }
        }
    }

    /// Deletes a node, releasing its pod CIDRs (and, with `force`, its pod IPs).
    pub fn delete_node(&mut self, name: &str, force: bool) -> Result<(Node, u64, Mutation)> {
        let entry = self.entry(name)?;
        let count = entry.pod_ip_count() as u64;
        if count > 0 && !force {
            return Err(IpamError::FailedPrecondition(format!(
                "node {name} still has {count} pod IPs allocated (owners such as {:?}); release them first or delete with force",
                entry
                    .pods
                    .keys()
                    .min()
                    .map(String::as_str)
                    .unwrap_or_default()
            )));
        }
        let Some(entry) = self.nodes.remove(name) else {
            return Err(not_registered(name));
        };
        self.forget_addresses(name, &entry.node.addresses);
        for c in &entry.node.pod_cidrs {
            self.pod_pools.release(c);
        }
        let mut owners: Vec<&String> = entry.pods.keys().collect();
        owners.sort();
        let mut changes: Vec<Change> = owners
            .into_iter()
            .map(|owner| Change::DeletePodIps {
                node: name.to_string(),
                owner: owner.clone(),
            })
            .collect();
        changes.push(Change::DeleteNode(name.to_string()));
        self.bump();
        let event = Event::NodeDeleted {
            name: name.to_string(),
            pod_cidrs: entry.node.pod_cidrs.iter().map(|c| c.to_string()).collect(),
        };
        let m = self.mutation(changes, Some(event));
        Ok((entry.node, count, m))
    }

    /// Starts or ends a node's drain (see [`Drain`]). Idempotent: a node already in the state
    /// asked for changes nothing (no revision, no event).
    ///
    /// The agent's own shutdown ([`Drain::UntilRegistered`]) also renews the lease for the lease
    /// TTL: a planned restart is not a death, and its heartbeat stopping must not withdraw the
    /// node before the drain delay is over.
    pub fn drain_node(
        &mut self,
        name: &str,
        drain: Drain,
        now: Instant,
    ) -> Result<(Node, Option<Mutation>)> {
        if drain == Drain::UntilRegistered {
            let ttl = self.lease_ttl;
            let entry = self.entry_mut(name)?;
            entry.lease_deadline = entry.lease_deadline.max(now + ttl);
        }
        let node = &self.entry(name)?.node;
        let (draining, ends_on_register) = match drain {
            Drain::End => (false, false),
            Drain::Hold => (true, false),
            Drain::UntilRegistered if node.draining => (true, node.drain_ends_on_register),
            Drain::UntilRegistered => (true, true),
        };
        if (node.draining, node.drain_ends_on_register) == (draining, ends_on_register) {
            return Ok((node.clone(), None));
        }
        let revision = self.bump();
        let Some(entry) = self.nodes.get_mut(name) else {
            return Err(not_registered(name));
        };
        entry.node.draining = draining;
        entry.node.drain_ends_on_register = ends_on_register;
        entry.node.revision = revision;
        let node = entry.node.clone();
        let m = self.mutation(
            vec![Change::PutNode(node.clone())],
            Some(Event::NodeUpdated(node.clone())),
        );
        Ok((node, Some(m)))
    }

    // ---- pod IPs: state/pod_ips.rs ----------------------------------------------------------

    // ---- Service IPs -------------------------------------------------------------------------

    pub fn allocate_service_ip(
        &mut self,
        service: &str,
        pool: Option<&str>,
        ip: Option<IpAddr>,
        family: Option<Family>,
    ) -> Result<(ServiceIp, Option<Mutation>)> {
        model::validate_service(service)?;
        let (assigned, new) = self.services.allocate(service, pool, ip, family)?;
        if !new {
            return Ok((assigned, None));
        }
        self.bump();
        let m = self.mutation(
            vec![Change::PutServiceIp(assigned.clone())],
            Some(Event::ServiceIpAssigned(assigned.clone())),
        );
        Ok((assigned, Some(m)))
    }

    pub fn release_service_ip(
        &mut self,
        service: &str,
    ) -> Result<(Option<ServiceIp>, Option<Mutation>)> {
        model::validate_service(service)?;
        let Some(released) = self.services.release(service) else {
            return Ok((None, None));
        };
        self.bump();
        let m = self.mutation(
            vec![Change::DeleteServiceIp(service.to_string())],
            Some(Event::ServiceIpReleased(released.clone())),
        );
        Ok((Some(released), Some(m)))
    }

    pub fn service_ips(&self) -> impl Iterator<Item = &ServiceIp> {
        self.services.all()
    }

    pub fn service_ip(&self, service: &str) -> Option<&ServiceIp> {
        self.services.get(service)
    }

    // ---- pools -------------------------------------------------------------------------------

    pub fn pod_pools(&self) -> Vec<PodPoolView> {
        self.pod_pools
            .iter()
            .map(|p| self.pool_view(&p.cidr))
            .collect()
    }

    fn pool_view(&self, cidr: &Cidr) -> PodPoolView {
        let held = self.nodes.values().flat_map(|e| {
            e.node
                .pod_cidrs
                .iter()
                .filter(|c| cidr.overlaps(c))
                .map(|c| {
                    (
                        c,
                        e.taken.get(&c.family()).map_or(0, AddressSet::len) as u64,
                    )
                })
        });
        let (pod_ips_used, pod_ips_capacity) = held.fold((0u64, 0u128), |(used, cap), (c, n)| {
            (used + n, cap.saturating_add(usable(c)))
        });
        // Callers pass a CIDR taken from pod_pools, so the pool exists.
        let pool = self.pod_pools.get(cidr);
        PodPoolView {
            cidr: *cidr,
            mask: pool.map_or(0, |p| p.mask),
            total: pool.map_or(0, |p| p.total()),
            used: pool.map_or(0, |p| p.used()),
            pod_ips_used,
            pod_ips_capacity,
            drained: pool.is_some_and(|p| p.drained),
            source: pool.map(|p| p.source.clone()).unwrap_or_default(),
        }
    }

    pub fn service_pools(&self) -> impl Iterator<Item = &ServicePool> {
        self.services.pools()
    }

    pub fn pod_ip_count(&self) -> u64 {
        self.nodes.values().map(|e| e.pod_ip_count() as u64).sum()
    }

    /// Every node, by name, with the pod IPs it holds.
    pub fn pod_ips_per_node(&self) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .map(|(name, e)| (name.clone(), e.pod_ip_count() as u64))
            .collect()
    }

    /// Adds a pool CIDR at runtime. Idempotent for the same CIDR and mask.
    pub fn add_pool_cidr(
        &mut self,
        cidr: Cidr,
        mask: Option<u8>,
    ) -> Result<(PodPoolView, Option<Mutation>)> {
        let family = cidr.family();
        let mask = match mask {
            Some(m) => m,
            None => *self.default_masks.get(&family).ok_or_else(|| {
                IpamError::InvalidArgument(format!(
                    "no default mask size for {family}: give maskSize"
                ))
            })?,
        };
        if !self.families.contains(&family) {
            return Err(IpamError::FailedPrecondition(format!(
                "{cidr} is {family}, which is not enabled in values.yaml ({}: false): its node CIDRs would never be used",
                if family == Family::V4 {
                    "ipv4.enabled"
                } else {
                    "ipv6.enabled"
                }
            )));
        }
        if let Some(existing) = self.pod_pools.get(&cidr) {
            if existing.mask == mask {
                return Ok((self.pool_view(&cidr), None));
            }
            return Err(IpamError::AlreadyExists(format!(
                "pool {cidr} already exists with mask size /{}; a pool's mask size cannot change",
                existing.mask
            )));
        }
        sensible_pool(cidr, mask)?;
        if let Some((name, range)) = self.services.range_overlapping(&cidr) {
            return Err(IpamError::InvalidArgument(format!(
                "{cidr} overlaps LoadBalancer address-pool {name:?} ({range}): an address in both could be given to a pod and to a Service"
            )));
        }
        if let Some((addr, name)) = self
            .address_owners
            .iter()
            .find(|(a, _)| cidr.contains_addr(**a))
        {
            return Err(IpamError::InvalidArgument(format!(
                "{cidr} contains node {name}'s address {addr}: a pod could be given a node's address; choose a range apart from the nodes' subnets"
            )));
        }
        self.pod_pools
            .add(cidr, mask, "AddPoolCidr")
            .map_err(|e| IpamError::InvalidArgument(e.to_string()))?;
        // Nodes that kept a CIDR from an earlier pool here must not see it handed out again.
        let held: Vec<Cidr> = self
            .nodes
            .values()
            .flat_map(|e| e.node.pod_cidrs.clone())
            .collect();
        for c in &held {
            self.pod_pools.mark(c);
        }
        self.bump();
        let record = PoolRecord {
            cidr: cidr.to_string(),
            mask,
            drained: false,
            added: true,
        };
        let m = self.mutation(vec![Change::PutPool(record)], None);
        Ok((self.pool_view(&cidr), Some(m)))
    }

    pub fn drain_pool_cidr(
        &mut self,
        cidr: Cidr,
        drained: bool,
    ) -> Result<(PodPoolView, Option<Mutation>)> {
        let pool = self.pod_pools.get(&cidr).ok_or_else(|| {
            let names: Vec<String> = self.pod_pools.iter().map(|p| p.cidr.to_string()).collect();
            IpamError::NotFound(format!(
                "pool CIDR {cidr} does not exist; pool CIDRs are: {}",
                names.join(", ")
            ))
        })?;
        if pool.drained == drained {
            return Ok((self.pool_view(&cidr), None));
        }
        let added = pool.source == "AddPoolCidr";
        let mask = pool.mask;
        self.pod_pools.set_drained(&cidr, drained)?;
        self.bump();
        let record = PoolRecord {
            cidr: cidr.to_string(),
            mask,
            drained,
            added,
        };
        let m = self.mutation(vec![Change::PutPool(record)], None);
        Ok((self.pool_view(&cidr), Some(m)))
    }
}

fn release_offset(entry: &mut NodeEntry, ip: IpAddr) {
    let family = Family::of(ip);
    if let (Some(cidr), Some(set)) = (entry.node.cidr_of(family), entry.taken.get_mut(&family))
        && let Some(o) = cidr.offset_of(ip)
    {
        set.remove(o);
    }
}

fn not_registered(name: &str) -> IpamError {
    IpamError::NotFound(format!(
        "node {name:?} is not registered; its route agent registers it (RegisterNode)"
    ))
}

/// A pool an API caller may add: a unicast range, not a wide swath of the address space, carved
/// into node CIDRs of a size that holds a node's pods and no more (IPv4 /16 to /28 of a pool of
/// at most a /8; IPv6 /64 to /120 of one of at most a /16). values.yaml's pools are the operator's
/// file and keep only the carving rule of `pod_pools.rs`.
fn sensible_pool(cidr: Cidr, mask: u8) -> Result<()> {
    let (widest, masks) = match cidr.family() {
        Family::V4 => (8, 16..=28),
        Family::V6 => (16, 64..=120),
    };
    let net = cidr.network();
    let special = net.is_unspecified()
        || net.is_loopback()
        || net.is_multicast()
        || match net {
            IpAddr::V4(a) => a.is_link_local() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_unicast_link_local(),
        };
    if special {
        return Err(IpamError::InvalidArgument(format!(
            "{cidr} is not a unicast range pods can use (unspecified, loopback, multicast, link-local and broadcast ranges are refused)"
        )));
    }
    if cidr.prefix_len() < widest {
        return Err(IpamError::InvalidArgument(format!(
            "{cidr} is too wide for a pod pool: give a prefix of /{widest} or longer"
        )));
    }
    if !masks.contains(&mask) {
        return Err(IpamError::InvalidArgument(format!(
            "maskSize {mask} is not a node CIDR size: give {} to {} for {} (a node CIDR holds one node's pods)",
            masks.start(),
            masks.end(),
            cidr.family()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
