//! Group commit and the published feed.
//!
//! Writers compute their mutation under the state lock and queue a [`Commit`] in revision order;
//! nothing on the request path touches storage. One committer task takes every queued commit and
//! makes them durable together through the store's [`Journal`] (`journal.rs`: the write-ahead
//! log synced once for all of them, or an etcd transaction), then publishes their events to the
//! [`Feed`] and acknowledges the writers. So an acknowledgement always follows durability, events
//! are published in revision order, and watchers never see a change that a crash could take back.
//! Under load the write of one group overlaps the arrival of the next, so one sync is shared by
//! every request that arrived meanwhile.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::{IpamError, Result};
use crate::image::DurableImage;
use crate::journal::Journal;
use crate::model::{Revision, RevisionedEvent};
use crate::records::History;
use crate::snapshot::SnapshotState;
use crate::state::{Mutation, Persisted};

/// One writer's request for durability: its mutation, or none for a writer that changed nothing
/// but must not answer before what it read is durable.
pub struct Commit {
    pub revision: Revision,
    pub mutation: Option<Mutation>,
    pub done: Option<oneshot::Sender<Result<()>>>,
}

/// Counters the metrics endpoint and the benchmark read.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub flushes: AtomicU64,
    pub commits: AtomicU64,
    pub flush_nanos: AtomicU64,
    /// Highest revision known durable.
    pub durable_revision: AtomicU64,
    /// sled checkpoints, and the revision the last one covered.
    pub checkpoints: AtomicU64,
    pub checkpoint_revision: AtomicU64,
    /// Highest revision applied to sled: sled is written behind the log, and `durable_revision`
    /// minus this is the materializer's backlog.
    pub materialized_revision: AtomicU64,
    /// Log segments on disk now, and deleted after checkpoints so far.
    pub log_segments: AtomicU64,
    pub log_segments_removed: AtomicU64,
    /// Times storage refused writes and the service went into degraded mode.
    pub storage_faults: AtomicU64,
}

/// What watchers see: the durable state, a bounded history of events, and a live channel.
pub struct Feed {
    inner: Mutex<FeedInner>,
    live: broadcast::Sender<Arc<RevisionedEvent>>,
}

struct FeedInner {
    revision: Revision,
    /// Events after this revision are all in `history`.
    horizon: Revision,
    history: VecDeque<Arc<RevisionedEvent>>,
    capacity: usize,
    /// Every record as of `revision`: what snapshots and reads are cut from.
    image: DurableImage,
    /// The last snapshot state handed out, while a watcher still holds it: the next watcher
    /// starting at the same revision shares it.
    snapshot: Option<(Revision, Weak<SnapshotState>)>,
}

/// Where a new watcher starts.
pub enum WatchStart {
    Snapshot {
        revision: Revision,
        state: Arc<SnapshotState>,
    },
    Replay(Vec<Arc<RevisionedEvent>>),
}

impl Feed {
    /// A feed starting at the durable state read at startup, with the Watch history the store
    /// kept (etcd: what lets a watcher resume at a new replica), of which it keeps the last
    /// `capacity` events.
    pub fn new(
        persisted: &Persisted,
        stored: Option<History>,
        capacity: usize,
        live_buffer: usize,
    ) -> Feed {
        let capacity = capacity.max(1);
        let (mut horizon, mut history) = match stored {
            Some(h) => (h.horizon, h.events.into_iter().map(Arc::new).collect()),
            None => (persisted.revision, VecDeque::new()),
        };
        while history.len() > capacity {
            if let Some(old) = history.pop_front() {
                horizon = old.revision;
            }
        }
        Feed {
            inner: Mutex::new(FeedInner {
                revision: persisted.revision,
                horizon,
                history,
                capacity,
                image: DurableImage::new(persisted),
                snapshot: None,
            }),
            live: broadcast::channel(live_buffer.max(1)).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedInner> {
        // The feed's invariants hold between statements, so a panicked holder leaves it usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes and decides, atomically with publication, where the watcher starts. A snapshot's
    /// state holds every operator entry: the watcher's sender leaves them out unless asked for.
    pub fn subscribe(
        &self,
        from: Revision,
    ) -> (WatchStart, broadcast::Receiver<Arc<RevisionedEvent>>) {
        let mut inner = self.lock();
        let rx = self.live.subscribe();
        let replayable = from != 0 && from >= inner.horizon && from <= inner.revision;
        let start = if replayable {
            WatchStart::Replay(
                inner
                    .history
                    .iter()
                    .filter(|e| e.revision > from)
                    .cloned()
                    .collect(),
            )
        } else {
            let revision = inner.revision;
            let shared = inner
                .snapshot
                .as_ref()
                .filter(|(r, _)| *r == revision)
                .and_then(|(_, state)| state.upgrade());
            let state = shared.unwrap_or_else(|| {
                let state = Arc::new(SnapshotState {
                    nodes: inner.image.nodes().cloned().collect(),
                    services: inner.image.services().cloned().collect(),
                    operator: inner.image.operator_entries("").collect(),
                });
                inner.snapshot = Some((revision, Arc::downgrade(&state)));
                state
            });
            WatchStart::Snapshot { revision, state }
        };
        (start, rx)
    }

    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    pub fn watchers(&self) -> usize {
        self.live.receiver_count()
    }

    /// Reads the durable image (see `image.rs`).
    pub fn read<T>(&self, op: impl FnOnce(&DurableImage) -> T) -> T {
        op(&self.lock().image)
    }

    /// Publishes a durable group: its changes go into the image, its events to the history and
    /// to live watchers. Takes the events out of `mutations`.
    fn publish(&self, revision: Revision, mutations: &mut [Mutation]) {
        let mut inner = self.lock();
        for m in mutations {
            for change in &m.changes {
                inner.image.apply(change);
            }
            let Some(event) = m.event.take() else {
                continue;
            };
            let e = Arc::new(RevisionedEvent {
                revision: m.revision,
                event,
            });
            if inner.history.len() == inner.capacity
                && let Some(old) = inner.history.pop_front()
            {
                inner.horizon = old.revision;
            }
            inner.history.push_back(e.clone());
            // No receivers is fine: nobody is watching.
            let _ = self.live.send(e);
        }
        inner.revision = inner.revision.max(revision);
        inner.image.set_revision(revision);
    }
}

/// A storage failure, as the committer or the materializer reports it to the engine's supervisor
/// (`engine.rs`).
#[derive(Debug, Clone)]
pub struct Fault {
    pub error: IpamError,
    /// Only a restart can repair it (a bug, a store that hangs), as opposed to a disk that refuses
    /// writes for now (full, read-only, failing), which the service waits out in degraded mode.
    pub fatal: bool,
}

/// The committer: runs until every sender is gone. Hands each group to `journal` and, once it is
/// durable, publishes it, acknowledges its writers and gives it back to the journal (`written`).
/// When the journal fails, it reports a [`Fault`], refuses that group and everything still queued
/// (all of it computed on top of the failed group), and ends once the senders are gone; nothing it
/// refused is published.
pub async fn run_committer(
    mut rx: mpsc::UnboundedReceiver<Commit>,
    mut journal: impl Journal,
    feed: Arc<Feed>,
    stats: Arc<CommitStats>,
    faults: mpsc::UnboundedSender<Fault>,
) {
    let mut group = Vec::new();
    while let Some(first) = rx.recv().await {
        group.push(first);
        while let Ok(c) = rx.try_recv() {
            group.push(c);
        }
        let changed: Vec<&Mutation> = group.iter().filter_map(|c| c.mutation.as_ref()).collect();
        // None changed: only writers waiting for earlier groups, which are durable already.
        let result = if changed.is_empty() {
            Ok(())
        } else {
            journal.write(&changed).await
        };
        stats
            .commits
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        if let Err(fault) = result {
            return refuse_from_now(rx, group, fault, &faults).await;
        }
        let top = group.iter().map(|c| c.revision).max().unwrap_or(0);
        let mut mutations: Vec<Mutation> =
            group.iter_mut().filter_map(|c| c.mutation.take()).collect();
        feed.publish(top, &mut mutations);
        stats.durable_revision.fetch_max(top, Ordering::Relaxed);
        for c in group.drain(..) {
            if let Some(done) = c.done {
                // The writer may have gone (client cancelled): its change is durable all the same.
                let _ = done.send(Ok(()));
            }
        }
        if !mutations.is_empty() {
            journal.written(mutations).await;
        }
    }
}

/// After a failed write: reports it, then refuses `group` and every commit still to come, until
/// the senders are gone (the supervisor closes the queue when it takes the fault).
async fn refuse_from_now(
    mut rx: mpsc::UnboundedReceiver<Commit>,
    group: Vec<Commit>,
    fault: Fault,
    faults: &mpsc::UnboundedSender<Fault>,
) {
    let error = fault.error.clone();
    // Nobody to tell means the service is gone already.
    let _ = faults.send(fault);
    let refuse = |c: Commit| {
        if let Some(done) = c.done {
            let _ = done.send(Err(error.clone()));
        }
    };
    group.into_iter().for_each(refuse);
    while let Some(c) = rx.recv().await {
        refuse(c);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::journal::LogJournal;
    use crate::materialize::{Checkpoints, MATERIALIZE_BACKLOG, run_materializer};
    use crate::model::{Event, Node};
    use crate::store::Store;
    use crate::wal::Wal;
    use tokio::sync::watch;

    fn node(name: &str, revision: Revision) -> RevisionedEvent {
        RevisionedEvent {
            revision,
            event: Event::NodeUpdated(Node {
                name: name.into(),
                addresses: vec![],
                labels: Default::default(),
                pod_cidrs: vec![],
                ready: true,
                draining: false,
                drain_ends_on_register: false,
                held_down: false,
                revision,
            }),
        }
    }

    #[test]
    fn replay_within_history_snapshot_outside_it() {
        let feed = Feed::new(&at(10), None, 2, 16);
        feed.publish(11, &mut [named("a", 11)]);
        feed.publish(13, &mut [named("b", 13)]); // 12 was a pod IP: no event
        assert!(matches!(feed.subscribe(10).0, WatchStart::Replay(v) if v.len() == 2));
        assert!(
            matches!(feed.subscribe(11).0, WatchStart::Replay(v) if v.len() == 1 && v[0].revision == 13)
        );
        assert!(matches!(feed.subscribe(13).0, WatchStart::Replay(v) if v.is_empty()));
        feed.publish(14, &mut [named("c", 14)]); // history holds 2: revision 11 falls out
        assert!(
            matches!(feed.subscribe(10).0, WatchStart::Snapshot { .. }),
            "too old"
        );
        assert!(matches!(feed.subscribe(11).0, WatchStart::Replay(v) if v.len() == 2));
        assert!(
            matches!(feed.subscribe(0).0, WatchStart::Snapshot { revision: 14, ref state } if state.nodes.len() == 3)
        );
        assert!(
            matches!(feed.subscribe(99).0, WatchStart::Snapshot { .. }),
            "ahead of the server: start over"
        );
    }

    #[test]
    fn a_feed_started_from_stored_history_replays_it_to_watchers_resuming_from_before_the_start() {
        let stored = History {
            horizon: 4,
            events: vec![node("a", 5), node("b", 7), node("c", 9), node("d", 10)],
        };
        // Capacity 3: the oldest stored event falls out, and the horizon with it.
        let feed = Feed::new(&at(10), Some(stored), 3, 16);
        let replayed = |from| match feed.subscribe(from).0 {
            WatchStart::Replay(v) => Some(v.iter().map(|e| e.revision).collect::<Vec<_>>()),
            WatchStart::Snapshot { .. } => None,
        };
        assert_eq!(replayed(5), Some(vec![7, 9, 10]));
        assert_eq!(replayed(8), Some(vec![9, 10]));
        assert_eq!(replayed(4), None, "revision 5's event was not kept");
        let fresh = Feed::new(&at(10), None, 3, 16);
        assert!(
            matches!(fresh.subscribe(8).0, WatchStart::Snapshot { .. }),
            "no stored history: nothing before the start can be replayed"
        );
    }

    #[test]
    fn watchers_starting_at_one_revision_share_one_snapshot_state() {
        let feed = Feed::new(&at(10), None, 2, 16);
        feed.publish(11, &mut [named("a", 11)]);
        let state = |start: WatchStart| match start {
            WatchStart::Snapshot { state, .. } => state,
            WatchStart::Replay(_) => panic!("a snapshot was asked for"),
        };
        let first = state(feed.subscribe(0).0);
        let second = state(feed.subscribe(0).0);
        assert!(Arc::ptr_eq(&first, &second));
        feed.publish(12, &mut [named("b", 12)]);
        let third = state(feed.subscribe(0).0);
        assert!(
            !Arc::ptr_eq(&first, &third),
            "a newer revision, a new state"
        );
        assert_eq!(third.nodes.len(), 2);
        // Once no watcher holds it, the feed does not either.
        let weak = Arc::downgrade(&third);
        drop(third);
        assert!(weak.upgrade().is_none());
    }

    fn at(revision: Revision) -> Persisted {
        Persisted {
            revision,
            ..Persisted::default()
        }
    }

    pub(crate) fn mutation(r: Revision) -> Mutation {
        named(&format!("n{r}"), r)
    }

    fn named(name: &str, r: Revision) -> Mutation {
        let ev = node(name, r);
        let Event::NodeUpdated(n) = ev.event.clone() else {
            unreachable!()
        };
        Mutation {
            revision: r,
            changes: vec![crate::state::Change::PutNode(n)],
            event: Some(ev.event),
        }
    }

    #[tokio::test]
    async fn committer_acknowledges_after_logging_and_publishes_in_order_then_sled_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let (wal, _, _) = Wal::open(&dir.path().join("wal"), 1).unwrap();
        let feed = Arc::new(Feed::new(&at(0), None, 100, 100));
        let stats = Arc::new(CommitStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (mtx, mrx) = mpsc::channel(MATERIALIZE_BACKLOG);
        let (ctx, crx) = watch::channel(0);
        let (_, mut live) = feed.subscribe(0);
        let mut waits = Vec::new();
        for r in 1..=50 {
            let (done, wait) = oneshot::channel();
            tx.send(Commit {
                revision: r,
                mutation: Some(mutation(r)),
                done: Some(done),
            })
            .unwrap();
            waits.push(wait);
        }
        drop(tx);
        let materializer = tokio::spawn(run_materializer(
            mrx,
            store.clone(),
            stats.clone(),
            ctx,
            Checkpoints::default(),
        ));
        let (faults, _) = mpsc::unbounded_channel();
        let journal = LogJournal::new(wal, true, stats.clone(), mtx, crx);
        run_committer(rx, journal, feed.clone(), stats.clone(), faults).await;
        for w in waits {
            w.await.unwrap().unwrap();
        }
        for r in 1..=50 {
            assert_eq!(live.recv().await.unwrap().revision, r);
        }
        let flushes = stats.flushes.load(Ordering::Relaxed);
        assert!(
            (1..50).contains(&flushes),
            "50 queued commits share syncs, got {flushes}"
        );
        assert_eq!(stats.durable_revision.load(Ordering::Relaxed), 50);
        assert_eq!(feed.revision(), 50);
        materializer.await.unwrap().unwrap();
        assert_eq!(
            stats.checkpoint_revision.load(Ordering::Relaxed),
            50,
            "a last checkpoint on close"
        );
        assert_eq!(stats.materialized_revision.load(Ordering::Relaxed), 50);
        assert_eq!(store.load().unwrap().nodes.len(), 50);
        // Everything is in the log as well, ready to replay.
        let (_, logged, _) = Wal::open(&dir.path().join("wal"), 1).unwrap();
        assert_eq!(
            logged.iter().map(|r| r.revision).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
    }

    /// A materializer that falls behind holds the committer back (and with it the log and the
    /// acknowledgements) instead of queueing without bound.
    #[tokio::test]
    async fn the_committer_waits_for_a_materializer_that_is_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = Wal::open(&dir.path().join("wal"), 1).unwrap();
        let feed = Arc::new(Feed::new(&at(0), None, 100, 100));
        let stats = Arc::new(CommitStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        // Room for two groups, and nobody applying them.
        let (mtx, mut mrx) = mpsc::channel(2);
        let (_ctx, crx) = watch::channel(0);
        let (faults, _) = mpsc::unbounded_channel();
        let journal = LogJournal::new(wal, false, stats.clone(), mtx, crx);
        let committer = tokio::spawn(run_committer(rx, journal, feed, stats.clone(), faults));
        let mut acks = Vec::new();
        for r in 1..=5 {
            let (done, ack) = oneshot::channel();
            tx.send(Commit {
                revision: r,
                mutation: Some(mutation(r)),
                done: Some(done),
            })
            .unwrap();
            acks.push(ack);
            // One group each: the committer takes it before the next arrives.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            stats.durable_revision.load(Ordering::Relaxed),
            3,
            "two groups queued, the third written and waiting for room: no further"
        );
        // 4 and 5 waited together, and come as one group.
        let mut applied = Vec::new();
        while applied.last() != Some(&5) {
            let group = tokio::time::timeout(Duration::from_secs(10), mrx.recv())
                .await
                .expect("the committer goes on once there is room")
                .unwrap();
            applied.extend(group.iter().map(|m| m.revision));
        }
        assert_eq!(applied, [1, 2, 3, 4, 5]);
        drop(tx);
        committer.await.unwrap();
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
    }
}
