//! The IPAM service as the gRPC layer sees it: each method runs one core operation under the state
//! lock and queues its mutation for group commit in the same critical section (so commits queue in
//! revision order), then waits — outside the lock — until the committer says it is durable. Reads
//! are served from the durable image, never from the core, which runs ahead of the disk. When
//! the disk refuses writes the service goes on in degraded mode (`engine.rs`): reads and Watch
//! served, writes refused with `Unavailable` until storage takes them again.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use routeplane_net::{Cidr, Family};
use routeplane_runtime::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot, watch};

use crate::commit::{Commit, CommitStats, Fault, Feed};
use crate::engine::{self, Engine, StorageConfig, WriteGate};
use crate::error::{IpamError, Result};
use crate::lease_clock::LivenessStats;
use crate::model::{Drain, Node, OperatorEntry, Revision, ServiceIp};
use crate::state::{
    Beat, CoreConfig, IpamState, LivenessConfig, Mutation, PodIps, PodPoolView, ReportedPod,
    SyncOutcome,
};

mod watch_feed;
pub use watch_feed::WATCH_SEND_DEADLINE;

/// Tuning that is not part of the allocation model.
#[derive(Debug, Clone)]
pub struct IpamOptions {
    /// Flush before acknowledging (off only for benchmarks: acknowledged writes may then be lost).
    pub durable: bool,
    /// Events kept in memory for Watch resumption.
    pub watch_history: usize,
    /// Events a watcher may lag behind before it is cut off.
    pub watch_buffer: usize,
    /// How long a watcher may go without taking a message before it is cut off.
    pub watch_send_deadline: Duration,
    /// Nodes and Services per snapshot message (which also ends at about 1 MiB).
    pub snapshot_chunk: usize,
    /// When sled is checkpointed (and the log it covers deleted): on a timer and after so many
    /// changes.
    pub checkpoints: crate::materialize::Checkpoints,
    /// Log segments roll over past this size.
    pub log_segment_bytes: u64,
}

impl Default for IpamOptions {
    fn default() -> Self {
        IpamOptions {
            durable: true,
            watch_history: 10_000,
            watch_buffer: 4096,
            watch_send_deadline: WATCH_SEND_DEADLINE,
            // Small enough that what a watcher holds unsent stays small (see `watch`).
            snapshot_chunk: 100,
            checkpoints: crate::materialize::Checkpoints::default(),
            log_segment_bytes: crate::wal::SEGMENT_BYTES,
        }
    }
}

pub struct Ipam {
    core: Mutex<Core>,
    feed: Arc<Feed>,
    stats: Arc<CommitStats>,
    /// Whether writes are taken (degraded mode refuses them), and `writable` for health.
    gate: WriteGate,
    writable: watch::Sender<bool>,
    failed: AtomicBool,
    liveness: LivenessStats,
    shutdown: Shutdown,
    options: IpamOptions,
    config: CoreConfig,
    storage: StorageConfig,
}

/// A change applied: done, or its flush still to wait for.
pub(crate) enum Begun<T> {
    Done(T),
    Flushing(T, oneshot::Receiver<Result<()>>),
}

/// What the state lock guards: the core, and the queue its mutations go to — swapped together
/// when storage fails (no queue: writes refused) and when it is reopened.
struct Core {
    state: IpamState,
    commits: Option<mpsc::UnboundedSender<Commit>>,
}

/// One item of a Watch stream, before conversion to the wire.
pub enum WatchItem {
    Snapshot {
        revision: Revision,
        nodes: Vec<Node>,
        services: Vec<ServiceIp>,
        operator: Vec<OperatorEntry>,
        first: bool,
        last: bool,
    },
    Event(Arc<crate::model::RevisionedEvent>),
    /// Live events that were waiting together, in order: sent back to back, so that the HTTP/2
    /// stream carries them in one write rather than one each (`forward_live`).
    Events(Vec<Arc<crate::model::RevisionedEvent>>),
    /// A bookmark: the watcher has everything through this revision.
    Progress(Revision),
}

impl Ipam {
    /// Opens storage (`engine.rs`: sled in `DIR/state` with the log in `DIR/wal`, replayed; or
    /// etcd), rebuilds the core, and starts the engine, its supervisor and the lease clock.
    pub async fn start(
        config: CoreConfig,
        storage: StorageConfig,
        options: IpamOptions,
        shutdown: Shutdown,
    ) -> Result<(Arc<Ipam>, Vec<String>)> {
        let loaded = engine::open(&storage, &options).await?;
        let mut warnings = loaded.warnings;
        let feed = Arc::new(Feed::new(
            &loaded.persisted,
            loaded.history,
            options.watch_history,
            options.watch_buffer,
        ));
        let (state, restored) =
            IpamState::restore(config.clone(), loaded.persisted, Instant::now())?;
        warnings.extend(restored);
        let stats = Arc::new(CommitStats::default());
        let (engine, commits) = Engine::start(loaded.opened, feed.clone(), stats.clone(), &options);
        let ipam = Arc::new(Ipam {
            core: Mutex::new(Core {
                state,
                commits: Some(commits),
            }),
            feed,
            stats,
            gate: WriteGate::default(),
            writable: watch::Sender::new(true),
            failed: AtomicBool::new(false),
            liveness: LivenessStats::default(),
            shutdown: shutdown.clone(),
            options,
            config,
            storage,
        });
        tokio::spawn(crate::lease_clock::run(Arc::downgrade(&ipam)));
        tokio::spawn(engine::supervise(Arc::downgrade(&ipam), engine, shutdown));
        Ok((ipam, warnings))
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // Core operations validate before they change anything, so a panic mid-way is a bug that
        // leaves at worst a half-updated index; refusing all further service would be worse.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// True while writes are taken: false in degraded mode and after a failure (health's
    /// `routeplane.ipam.v1.Ipam/writes`).
    pub fn writable(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }

    /// A fault only a restart repairs: refuses writes and shuts the process down (exit 1), so
    /// that its supervisor restarts it and the restart replays the log.
    pub(crate) fn fail(&self, e: &IpamError) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "storage failed: refusing writes and shutting down so that a restart reloads from disk");
            self.gate.refuse(IpamError::Unavailable(format!(
                "{e}; routeplane-ipam is restarting to reload its state from storage"
            )));
            self.lock().commits = None;
            self.writable.send_replace(false);
            self.shutdown.trigger();
        }
    }

    /// Degraded mode begins: writes refused from now on, the queue closed (the committer refuses
    /// what it still holds and ends).
    pub(crate) fn refuse_writes(&self, e: &IpamError) {
        tracing::error!(error = %e, "storage refuses writes: degraded mode — reads and Watch are served, writes refused until it takes them again");
        let cause = format!(
            "{e}. routeplane-ipam serves reads and Watch meanwhile and takes writes again by itself once storage does"
        );
        self.gate.refuse(match e {
            IpamError::StorageFull(_) => IpamError::StorageFull(cause),
            _ => IpamError::Unavailable(cause),
        });
        self.stats.storage_faults.fetch_add(1, Ordering::Relaxed);
        self.lock().commits = None;
        self.writable.send_replace(false);
    }

    /// Rebuilds the core from the durable image once the engine has stopped: the changes that
    /// were being made when storage failed never reached the disk, nobody was told they did, and
    /// they are forgotten (their addresses free again).
    pub(crate) fn forget_undurable(&self) -> Result<()> {
        let mut core = self.lock();
        let persisted = self.feed.read(|image| image.to_persisted());
        let forgotten = core.state.revision() - persisted.revision;
        core.state = IpamState::restore(self.config.clone(), persisted, Instant::now())?.0;
        tracing::warn!(
            forgotten,
            "the core now holds only what is durable; changes that were being written were refused"
        );
        Ok(())
    }

    /// One attempt to leave degraded mode: reopens storage and opens writes again.
    pub(crate) async fn reopen(self: &Arc<Self>) -> std::result::Result<Engine, Fault> {
        let loaded = engine::reopen(&self.storage, &self.options, self.feed.revision()).await?;
        let (engine, commits) = Engine::start(
            loaded.opened,
            self.feed.clone(),
            self.stats.clone(),
            &self.options,
        );
        self.lock().commits = Some(commits);
        let refused = self.gate.open().unwrap_or_default();
        self.writable.send_replace(true);
        tracing::warn!(after = ?refused, "storage takes writes again: writes resumed");
        Ok(engine)
    }

    /// Runs `op` on the core, queues its mutation, and returns once it is durable. An
    /// operation that changed nothing still waits until what it returns is durable.
    async fn commit<T>(
        &self,
        op: impl FnOnce(&mut IpamState) -> Result<(T, Option<Mutation>)>,
    ) -> Result<T> {
        self.finish(self.begin(op)?).await
    }

    /// Applies `op` and queues its mutation, without waiting: done when there is nothing to flush.
    fn begin<T>(
        &self,
        op: impl FnOnce(&mut IpamState) -> Result<(T, Option<Mutation>)>,
    ) -> Result<Begun<T>> {
        let mut core = self.lock();
        let Some(commits) = core.commits.clone() else {
            return Err(self.refused());
        };
        let (out, mutation) = op(&mut core.state)?;
        let revision = core.state.revision();
        if mutation.is_none() && self.stats.durable_revision.load(Ordering::Relaxed) >= revision {
            return Ok(Begun::Done(out));
        }
        let (done, wait) = oneshot::channel();
        commits
            .send(Commit {
                revision,
                mutation,
                done: Some(done),
            })
            .map_err(|_| self.refused())?;
        Ok(Begun::Flushing(out, wait))
    }

    /// Waits for a begun change to be flushed.
    pub(crate) async fn finish<T>(&self, begun: Begun<T>) -> Result<T> {
        let (out, wait) = match begun {
            Begun::Done(out) => return Ok(out),
            Begun::Flushing(out, wait) => (out, wait),
        };
        match wait.await {
            Ok(Ok(())) => Ok(out),
            // The supervisor puts the service in degraded mode (or fails it).
            Ok(Err(IpamError::StorageFull(e))) => Err(IpamError::StorageFull(format!(
                "this change was refused: {e}"
            ))),
            Ok(Err(e)) => Err(IpamError::Unavailable(format!(
                "this change was refused: {e}"
            ))),
            Err(_) => Err(self.refused()),
        }
    }

    fn refused(&self) -> IpamError {
        match self.gate.cause() {
            Some(IpamError::StorageFull(cause)) => {
                IpamError::StorageFull(format!("writes are refused: {cause}"))
            }
            Some(cause) => IpamError::Unavailable(format!("writes are refused: {cause}")),
            None => IpamError::Unavailable(
                "writes are refused: routeplane-ipam is shutting down".into(),
            ),
        }
    }

    /// Declares nodes whose lease ran out dead; run by the lease clock. Queues without waiting:
    /// nobody is waiting for it. Not while writes are refused: a death could not be recorded, and
    /// agents whose beats are refused too must not be declared dead for it.
    pub(crate) fn expire_leases(&self, now: Instant) {
        let mut core = self.lock();
        let Some(commits) = core.commits.clone() else {
            return;
        };
        let expiry = core.state.expire_leases(now);
        if expiry.spared > 0 {
            self.liveness
                .spared
                .fetch_add(expiry.spared as u64, Ordering::Relaxed);
            if expiry.sparing_began {
                tracing::warn!(
                    nodes = expiry.spared,
                    "the leases of a third of the nodes or more ran out together: more likely this IPAM (overloaded) or its network than that many nodes failing; their leases are extended for up to {:?} before any is declared dead",
                    crate::state::MASS_EXPIRY_GRACE
                );
            }
        }
        let many = expiry.deaths.len() > NAMED_DEATHS_PER_TICK;
        if many {
            tracing::warn!(
                nodes = expiry.deaths.len(),
                "nodes declared dead (no heartbeat or KeepAlive in time): NotReady"
            );
        }
        for m in expiry.deaths {
            if let Some(crate::model::Event::NodeUpdated(n)) = &m.event {
                self.liveness.deaths.fetch_add(1, Ordering::Relaxed);
                // Named one by one unless many died at once (then the count above).
                if !many {
                    let held = if n.held_down {
                        ", and held down for flapping"
                    } else {
                        ""
                    };
                    tracing::warn!(node = %n.name, "node declared dead (no heartbeat or KeepAlive in time): NotReady{held}");
                }
            }
            // A closed queue means shutdown or a failed disk: the committer refuses it either way.
            let _ = commits.send(Commit {
                revision: m.revision,
                mutation: Some(m),
                done: None,
            });
        }
    }

    pub async fn register_node(
        &self,
        name: &str,
        addresses: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
    ) -> Result<Node> {
        self.commit(|s| s.register_node(name, addresses, labels, Instant::now()))
            .await
    }

    /// A node from the cluster's API: see [`IpamState::sync_node`] (readiness stays the agent's).
    pub async fn sync_node(
        &self,
        name: &str,
        addresses: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
    ) -> Result<Node> {
        self.commit(|s| s.sync_node(name, addresses, labels, Instant::now()))
            .await
    }

    /// Reads are served from the durable image (`image.rs`): never a change that is not on disk.
    pub fn node(&self, name: &str) -> Result<Node> {
        self.feed.read(|image| image.node(name).cloned())
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.feed.read(|image| image.nodes().cloned().collect())
    }

    pub async fn delete_node(&self, name: &str, force: bool) -> Result<(Node, u64)> {
        self.commit(|s| {
            s.delete_node(name, force)
                .map(|(n, c, m)| ((n, c), Some(m)))
        })
        .await
    }

    /// Returns the lease TTL and whether the node came back from NotReady.
    pub async fn keep_alive(&self, name: &str) -> Result<(Duration, bool)> {
        self.commit(|s| {
            let ttl = s.lease_ttl();
            s.keep_alive(name, Instant::now())
                .map(|(back, m)| ((ttl, back), m))
        })
        .await
    }

    /// A heartbeat from the node's agent (see [`IpamState::beat`]).
    pub async fn heartbeat(&self, name: &str) -> Result<Beat> {
        self.commit(|s| s.beat(name, Instant::now())).await
    }

    /// A beat taken off the async runtime (heartbeat datagrams' reader thread): done at once
    /// unless it revives the node, whose change is then flushing ([`Ipam::finish`] waits).
    pub(crate) fn heartbeat_now(&self, name: &str) -> Result<Begun<Beat>> {
        self.begin(|s| s.beat(name, Instant::now()))
    }

    /// IPAM did not run for `lost`: every lease gets it back (`lease_clock.rs`).
    pub(crate) fn give_back(&self, lost: Duration) {
        self.lock().state.give_back(lost);
    }

    pub fn liveness(&self) -> LivenessConfig {
        self.config.liveness
    }

    pub fn liveness_stats(&self) -> &LivenessStats {
        &self.liveness
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Resolves once the service begins shutting down: long-lived streams end then, so that the
    /// server's graceful shutdown does not wait out their clients.
    pub(crate) async fn shutting_down(&self) {
        self.shutdown.wait().await;
    }

    /// Starts or ends a node's drain (see [`IpamState::drain_node`]).
    pub async fn drain_node(&self, name: &str, drain: Drain) -> Result<Node> {
        self.commit(|s| s.drain_node(name, drain, Instant::now()))
            .await
    }

    pub async fn allocate_pod_ip(
        &self,
        node: &str,
        owner: &str,
        family: Option<Family>,
    ) -> Result<Vec<IpAddr>> {
        self.commit(|s| s.allocate_pod_ip(node, owner, family))
            .await
    }

    pub async fn release_pod_ip(&self, node: &str, owner: &str) -> Result<Vec<IpAddr>> {
        self.commit(|s| s.release_pod_ip(node, owner)).await
    }

    pub fn pod_ips(&self, node: &str) -> Result<BTreeMap<String, PodIps>> {
        self.feed.read(|image| image.pod_ips(node))
    }

    /// The route agent's report of its node's pod IPs (see `state/pod_ips.rs`).
    pub async fn sync_pod_ips(
        &self,
        node: &str,
        generation: u64,
        report: Vec<ReportedPod>,
    ) -> Result<SyncOutcome> {
        self.commit(|s| s.sync_pod_ips(node, generation, report))
            .await
    }

    pub async fn allocate_service_ip(
        &self,
        service: &str,
        pool: Option<&str>,
        ip: Option<IpAddr>,
        family: Option<Family>,
    ) -> Result<ServiceIp> {
        self.commit(|s| s.allocate_service_ip(service, pool, ip, family))
            .await
    }

    pub async fn release_service_ip(&self, service: &str) -> Result<Option<ServiceIp>> {
        self.commit(|s| s.release_service_ip(service)).await
    }

    pub fn service_ips(&self) -> Vec<ServiceIp> {
        self.feed.read(|image| image.services().cloned().collect())
    }

    /// The LoadBalancer IP `service` holds, if any.
    pub fn service_ip(&self, service: &str) -> Option<ServiceIp> {
        self.feed.read(|image| image.service(service).cloned())
    }

    /// Pod pools, and LoadBalancer pools as (config, total, used).
    pub fn pools(
        &self,
    ) -> (
        Vec<PodPoolView>,
        Vec<(routeplane_config::AddressPool, u128, u128)>,
    ) {
        let core = self.lock();
        let s = &core.state;
        let services = s
            .service_pools()
            .map(|p| (p.config.clone(), p.total(), p.used()))
            .collect();
        (s.pod_pools(), services)
    }

    pub fn pod_ip_count(&self) -> u64 {
        self.lock().state.pod_ip_count()
    }

    /// Every node, by name, with the pod IPs it holds.
    pub fn pod_ips_per_node(&self) -> Vec<(String, u64)> {
        self.lock().state.pod_ips_per_node()
    }

    pub async fn add_pool_cidr(&self, cidr: Cidr, mask: Option<u8>) -> Result<PodPoolView> {
        self.commit(|s| s.add_pool_cidr(cidr, mask)).await
    }

    pub async fn drain_pool_cidr(&self, cidr: Cidr, drained: bool) -> Result<PodPoolView> {
        self.commit(|s| s.drain_pool_cidr(cidr, drained)).await
    }

    /// Writes operator entries (`state/operator.rs`); returns the revision and how many.
    pub async fn put_operator_entries(
        &self,
        entries: Vec<OperatorEntry>,
        create_only: bool,
    ) -> Result<(Revision, u64)> {
        self.commit(|s| {
            let (n, m) = s.put_operator_entries(entries, create_only)?;
            Ok(((s.revision(), n), m))
        })
        .await
    }

    pub async fn delete_operator_entries(
        &self,
        kind: &str,
        keys: Vec<String>,
    ) -> Result<(Revision, u64)> {
        self.commit(|s| {
            let (n, m) = s.delete_operator_entries(kind, keys)?;
            Ok(((s.revision(), n), m))
        })
        .await
    }

    /// The durable operator entries of `kind` (every kind when empty).
    pub fn operator_entries(&self, kind: &str) -> Vec<OperatorEntry> {
        self.feed
            .read(|image| image.operator_entries(kind).collect())
    }
}

/// Deaths in one lease-clock tick that are logged one line each; more are logged as a count, so
/// that a mass death is not thousands of lines.
const NAMED_DEATHS_PER_TICK: usize = 10;
