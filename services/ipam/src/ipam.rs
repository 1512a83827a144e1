//! The IPAM service as the gRPC layer sees it: each method runs one core operation under the state
//! lock and queues its mutation for group commit in the same critical section (so commits queue in
//! revision order), then waits — outside the lock — until the committer says it is durable.
//! Storage failure is fatal: memory may be ahead of disk, so the service stops taking writes and
//! asks the process to shut down; the restart replays the log.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use routeplane_net::{Cidr, Family};
use routeplane_runtime::shutdown::Shutdown;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::commit::{Commit, CommitStats, Feed, WatchStart, run_committer};
use crate::error::{IpamError, Result};
use crate::materialize::run_materializer;
use crate::model::{Node, Revision, ServiceIp};
use crate::state::{
    CoreConfig, IpamState, Mutation, PodIps, PodPoolView, ReportedPod, SyncOutcome,
};
use crate::store::Store;
use crate::wal::Wal;

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
            snapshot_chunk: 500,
            checkpoints: crate::materialize::Checkpoints::default(),
            log_segment_bytes: crate::wal::SEGMENT_BYTES,
        }
    }
}

pub struct Ipam {
    state: Mutex<IpamState>,
    commits: mpsc::UnboundedSender<Commit>,
    feed: Arc<Feed>,
    stats: Arc<CommitStats>,
    failed: AtomicBool,
    shutdown: Shutdown,
    options: IpamOptions,
}

/// One item of a Watch stream, before conversion to the wire.
pub enum WatchItem {
    Snapshot {
        revision: Revision,
        nodes: Vec<Node>,
        services: Vec<ServiceIp>,
        first: bool,
        last: bool,
    },
    Event(Arc<crate::model::RevisionedEvent>),
}

impl Ipam {
    /// Opens sled (`DIR/state`) and the log (`DIR/wal`), replays the log into sled, rebuilds the
    /// core, and starts the committer, the materializer and the lease clock.
    pub fn start(
        config: CoreConfig,
        data_dir: &std::path::Path,
        options: IpamOptions,
        shutdown: Shutdown,
    ) -> Result<(Arc<Ipam>, Vec<String>)> {
        let store = Store::open(&data_dir.join("state"))?;
        let (mut wal, logged, mut warnings) =
            Wal::open(&data_dir.join("wal"), store.revision()? + 1)?;
        wal.set_segment_bytes(options.log_segment_bytes);
        if let Some(last) = logged.last().map(|r| r.revision) {
            let applied = replay(&store, &logged)?;
            store.flush()?;
            wal.truncate_through(last)?;
            warnings.push(format!(
                "replayed {applied} logged changes into sled (through revision {last})"
            ));
        }
        let persisted = store.load()?;
        let (state, restored) = IpamState::restore(config, persisted, Instant::now())?;
        warnings.extend(restored);
        let feed = Arc::new(Feed::new(
            state.revision(),
            state.nodes().cloned().collect(),
            state.service_ips().cloned().collect(),
            options.watch_history,
            options.watch_buffer,
        ));
        let stats = Arc::new(CommitStats::default());
        stats
            .durable_revision
            .store(state.revision(), Ordering::Relaxed);
        stats
            .checkpoint_revision
            .store(state.revision(), Ordering::Relaxed);
        stats
            .materialized_revision
            .store(state.revision(), Ordering::Relaxed);
        stats
            .log_segments
            .store(wal.segment_count() as u64, Ordering::Relaxed);
        let (commits, rx) = mpsc::unbounded_channel();
        let (materialize, materialize_rx) = mpsc::channel(crate::materialize::MATERIALIZE_BACKLOG);
        let (checkpointed, checkpoints) = watch::channel(state.revision());
        tokio::spawn(run_committer(
            rx,
            wal,
            feed.clone(),
            stats.clone(),
            options.durable,
            materialize,
            checkpoints,
        ));
        let materializer = tokio::spawn(run_materializer(
            materialize_rx,
            Arc::new(store),
            stats.clone(),
            checkpointed,
            options.checkpoints,
        ));
        let ipam = Arc::new(Ipam {
            state: Mutex::new(state),
            commits,
            feed,
            stats,
            failed: AtomicBool::new(false),
            shutdown,
            options,
        });
        tokio::spawn(run_lease_clock(Arc::downgrade(&ipam)));
        let watcher = Arc::downgrade(&ipam);
        tokio::spawn(async move {
            if let Ok(Err(e)) = materializer.await
                && let Some(ipam) = watcher.upgrade()
            {
                ipam.fail(&e);
            }
        });
        Ok((ipam, warnings))
    }

    fn lock(&self) -> MutexGuard<'_, IpamState> {
        // Core operations validate before they change anything, so a panic mid-way is a bug that
        // leaves at worst a half-updated index; refusing all further service would be worse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn fail(&self, e: &IpamError) -> IpamError {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "storage failed: refusing writes and shutting down so that a restart reloads from disk");
            self.shutdown.trigger();
        }
        IpamError::Storage(format!(
            "{e}; routeplane-ipam is restarting to reload its state from disk"
        ))
    }

    /// Runs `op` on the core, queues its mutation, and returns once it is durable. An
    /// operation that changed nothing still waits until what it returns is durable.
    async fn commit<T>(
        &self,
        op: impl FnOnce(&mut IpamState) -> Result<(T, Option<Mutation>)>,
    ) -> Result<T> {
        if self.has_failed() {
            return Err(IpamError::Storage(
                "an earlier write failed; routeplane-ipam is restarting".into(),
            ));
        }
        let wait = {
            let mut state = self.lock();
            let (out, mutation) = op(&mut state)?;
            let revision = state.revision();
            if mutation.is_none() && self.stats.durable_revision.load(Ordering::Relaxed) >= revision
            {
                return Ok(out);
            }
            let (done, wait) = oneshot::channel();
            self.commits
                .send(Commit {
                    revision,
                    mutation,
                    done: Some(done),
                })
                .map_err(|_| {
                    IpamError::Storage("the commit queue is closed: shutting down".into())
                })?;
            (out, wait)
        };
        match wait.1.await {
            Ok(Ok(())) => Ok(wait.0),
            Ok(Err(e)) => Err(self.fail(&e)),
            Err(_) => Err(IpamError::Storage(
                "the committer stopped before this change was durable".into(),
            )),
        }
    }

    fn read<T>(&self, op: impl FnOnce(&IpamState) -> Result<T>) -> Result<T> {
        op(&self.lock())
    }

    /// Expires leases; run by the lease clock. Queues without waiting: nobody is waiting for it.
    fn expire_leases(&self, now: Instant) {
        let mut state = self.lock();
        for m in state.expire_leases(now) {
            if let Some(crate::model::Event::NodeUpdated(n)) = &m.event {
                tracing::warn!(node = %n.name, "lease expired: node is NotReady");
            }
            // A closed queue means shutdown: the lease clock stops with everything else.
            let _ = self.commits.send(Commit {
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

    pub fn node(&self, name: &str) -> Result<Node> {
        self.read(|s| s.node(name).cloned())
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes().cloned().collect()
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
        self.read(|s| s.pod_ips(node).cloned())
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
        self.lock().service_ips().cloned().collect()
    }

    /// The LoadBalancer IP `service` holds, if any.
    pub fn service_ip(&self, service: &str) -> Option<ServiceIp> {
        self.lock().service_ip(service).cloned()
    }

    /// Pod pools, and LoadBalancer pools as (config, total, used).
    pub fn pools(
        &self,
    ) -> (
        Vec<PodPoolView>,
        Vec<(routeplane_config::AddressPool, u128, u128)>,
    ) {
        let s = self.lock();
        let services = s
            .service_pools()
            .map(|p| (p.config.clone(), p.total(), p.used()))
            .collect();
        (s.pod_pools(), services)
    }

    pub fn pod_ip_count(&self) -> u64 {
        self.lock().pod_ip_count()
    }

    pub async fn add_pool_cidr(&self, cidr: Cidr, mask: Option<u8>) -> Result<PodPoolView> {
        self.commit(|s| s.add_pool_cidr(cidr, mask)).await
    }

    pub async fn drain_pool_cidr(&self, cidr: Cidr, drained: bool) -> Result<PodPoolView> {
        self.commit(|s| s.drain_pool_cidr(cidr, drained)).await
    }

    /// The change feed: snapshot or replay, then live events, until the client goes, the server
    /// stops, or the watcher falls behind (then an ABORTED error naming the revision to resume from).
    pub fn watch(self: &Arc<Self>, from: Revision) -> mpsc::Receiver<Result<WatchItem>> {
        let (tx, rx) = mpsc::channel(64);
        let tx = Outbox {
            tx,
            deadline: self.options.watch_send_deadline,
        };
        let (start, live) = self.feed.subscribe(from);
        let chunk = self.options.snapshot_chunk.max(1);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let last = match start {
                WatchStart::Snapshot {
                    revision,
                    nodes,
                    services,
                } => {
                    if send_snapshot(&tx, from, revision, nodes, services, chunk)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    revision
                }
                WatchStart::Replay(events) => {
                    let mut last = from;
                    for e in events {
                        let revision = e.revision;
                        if tx.send(WatchItem::Event(e), last).await.is_err() {
                            return;
                        }
                        last = revision;
                    }
                    last
                }
            };
            forward_live(tx, live, last, shutdown).await;
        });
        rx
    }
}

/// How long a watcher may go without taking a message before it is cut off, by default.
pub const WATCH_SEND_DEADLINE: Duration = Duration::from_secs(30);

/// One watcher's outgoing messages: a bounded queue that always keeps one slot for the status
/// that ends the stream, so that a watcher that stopped reading is told why it was cut off — when
/// it reads again — and where to resume.
struct Outbox {
    tx: mpsc::Sender<Result<WatchItem>>,
    deadline: Duration,
}

impl Outbox {
    /// Queues `item`, waiting at most the deadline for room; otherwise cuts the watcher off with
    /// ABORTED naming `resume`, the revision it has everything through. `Err`: the stream is over.
    async fn send(&self, item: WatchItem, resume: Revision) -> std::result::Result<(), ()> {
        match tokio::time::timeout(self.deadline, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                if let Some(permit) = permits.next() {
                    permit.send(Ok(item));
                }
                Ok(())
            }
            // The client went.
            Ok(Err(_)) => Err(()),
            Err(_) => {
                let _ = self.tx.try_send(Err(IpamError::Aborted(format!(
                    "this watcher took no message for {:?} and was cut off; call Watch again to resume with fromRevision={resume}",
                    self.deadline
                ))));
                Err(())
            }
        }
    }

    /// The status that ends the stream (the slot kept for it is there unless the client went).
    async fn end(&self, status: IpamError) {
        let _ = tokio::time::timeout(self.deadline, self.tx.send(Err(status))).await;
    }

    async fn closed(&self) {
        self.tx.closed().await
    }
}

async fn send_snapshot(
    tx: &Outbox,
    asked: Revision,
    revision: Revision,
    nodes: Vec<Node>,
    services: Vec<ServiceIp>,
    chunk: usize,
) -> std::result::Result<(), ()> {
    let chunks = crate::snapshot::chunks(nodes, services, chunk);
    let count = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let item = WatchItem::Snapshot {
            revision,
            nodes: c.nodes,
            services: c.services,
            first: i == 0,
            last: i + 1 == count,
        };
        // Cut off half-way, a watcher resumes from what it had before the snapshot.
        tx.send(item, asked).await?;
    }
    Ok(())
}

async fn forward_live(
    tx: Outbox,
    mut live: broadcast::Receiver<Arc<crate::model::RevisionedEvent>>,
    mut last: Revision,
    shutdown: Shutdown,
) {
    loop {
        let received = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return,
            _ = shutdown.wait() => {
                tx.end(IpamError::Unavailable(format!("routeplane-ipam is shutting down; resume with fromRevision={last}"))).await;
                return;
            }
        };
        match received {
            // Events up to `last` were already in the snapshot or the replay.
            Ok(e) if e.revision <= last => {}
            Ok(e) => {
                let revision = e.revision;
                if tx.send(WatchItem::Event(e), last).await.is_err() {
                    return;
                }
                last = revision;
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tx.end(IpamError::Aborted(format!(
                    "this watcher fell {missed} events behind and was cut off after revision {last}; call Watch again to resume with fromRevision={last}"
                )))
                .await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The first revision after `sled` that the log lacks while holding a later one, and that later
/// one. sled recovers a prefix of what it was given, so a change at or below its revision is there
/// already; one missing after it (a log segment lost or deleted by hand) can never be skipped: the
/// state after it would hold addresses the missing change took or gave back.
pub(crate) fn log_gap(
    sled: Revision,
    logged: &[crate::wal::WalRecord],
) -> Option<(Revision, Revision)> {
    let after = logged.iter().filter(|r| r.revision > sled);
    (sled + 1..)
        .zip(after)
        .find(|(expected, r)| r.revision != *expected)
        .map(|(expected, r)| (expected, r.revision))
}

/// Applies the logged changes sled does not have yet, in order; refuses a gap (see [`log_gap`]).
fn replay(store: &Store, logged: &[crate::wal::WalRecord]) -> Result<usize> {
    let sled = store.revision()?;
    if let Some((expected, found)) = log_gap(sled, logged) {
        return Err(IpamError::Storage(format!(
            "the log has no record of revision {expected}: sled holds changes through {}, and the log goes on at {found}. A log segment was lost or deleted; refusing to start without the changes it held (restore the data directory from a backup)",
            expected - 1
        )));
    }
    let mut applied = 0;
    for r in logged.iter().filter(|r| r.revision > sled) {
        store.apply(&Mutation {
            revision: r.revision,
            changes: r.changes.clone(),
            event: None,
        })?;
        applied += 1;
    }
    Ok(applied)
}

/// Expires leases a few times per TTL, until the service is dropped.
async fn run_lease_clock(ipam: std::sync::Weak<Ipam>) {
    let period = match ipam.upgrade() {
        Some(i) => {
            (i.lock().lease_ttl() / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        }
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(ipam) = ipam.upgrade() else { return };
        if ipam.shutdown.is_triggered() {
            return;
        }
        ipam.expire_leases(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalRecord;

    fn records(revisions: &[Revision]) -> Vec<WalRecord> {
        revisions
            .iter()
            .map(|&revision| WalRecord {
                revision,
                changes: vec![],
            })
            .collect()
    }

    #[test]
    fn replay_applies_what_sled_lacks_and_refuses_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        assert_eq!(replay(&store, &records(&[1, 2, 3])).unwrap(), 3);
        assert_eq!(store.revision().unwrap(), 3);
        // Already in sled up to 3: only 4 and 5 are applied.
        assert_eq!(replay(&store, &records(&[2, 3, 4, 5])).unwrap(), 2);
        assert_eq!(store.revision().unwrap(), 5);
        let e = replay(&store, &records(&[5, 7, 8]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no record of revision 6"), "{e}");
        assert!(e.contains("goes on at 7"), "{e}");
        assert_eq!(
            store.revision().unwrap(),
            5,
            "nothing after the hole applied"
        );
    }
}
