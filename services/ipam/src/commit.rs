//! Group commit and the published feed.
//!
//! Writers apply their batch to sled under the state lock and queue a [`Commit`] in revision order.
//! One flusher task takes every queued commit, flushes sled once for all of them, then publishes
//! their events to the [`Feed`] and acknowledges the writers. So an acknowledgement always follows
//! durability, events are published in revision order, and watchers never see a change that a crash
//! could take back. Under load the flush of one group overlaps the arrival of the next, so the cost
//! of one flush is shared by every request that arrived meanwhile.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::{IpamError, Result};
use crate::model::{Event, Node, Revision, RevisionedEvent, ServiceIp};
use crate::store::Store;

/// One writer's request for durability.
pub struct Commit {
    pub revision: Revision,
    pub event: Option<Event>,
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
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<String, ServiceIp>,
}

/// Where a new watcher starts.
pub enum WatchStart {
    Snapshot {
        revision: Revision,
        nodes: Vec<Node>,
        services: Vec<ServiceIp>,
    },
    Replay(Vec<Arc<RevisionedEvent>>),
}

impl Feed {
    /// A feed starting at the durable state read at startup.
    pub fn new(
        revision: Revision,
        nodes: Vec<Node>,
        services: Vec<ServiceIp>,
        history: usize,
        live_buffer: usize,
    ) -> Feed {
        Feed {
            inner: Mutex::new(FeedInner {
                revision,
                horizon: revision,
                history: VecDeque::new(),
                capacity: history.max(1),
                nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
                services: services
                    .into_iter()
                    .map(|s| (s.service.clone(), s))
                    .collect(),
            }),
            live: broadcast::channel(live_buffer.max(1)).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedInner> {
        // The feed's invariants hold between statements, so a panicked holder leaves it usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes and decides, atomically with publication, where the watcher starts.
    pub fn subscribe(
        &self,
        from: Revision,
    ) -> (WatchStart, broadcast::Receiver<Arc<RevisionedEvent>>) {
        let inner = self.lock();
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
            WatchStart::Snapshot {
                revision: inner.revision,
                nodes: inner.nodes.values().cloned().collect(),
                services: inner.services.values().cloned().collect(),
            }
        };
        (start, rx)
    }

    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    pub fn watchers(&self) -> usize {
        self.live.receiver_count()
    }

    fn publish(&self, revision: Revision, events: Vec<RevisionedEvent>) {
        let mut inner = self.lock();
        for e in events {
            match &e.event {
                Event::NodeUpdated(n) => {
                    inner.nodes.insert(n.name.clone(), n.clone());
                }
                Event::NodeDeleted { name, .. } => {
                    inner.nodes.remove(name);
                }
                Event::ServiceIpAssigned(s) => {
                    inner.services.insert(s.service.clone(), s.clone());
                }
                Event::ServiceIpReleased(s) => {
                    inner.services.remove(&s.service);
                }
            }
            let e = Arc::new(e);
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
    }
}

/// Runs until every sender is gone: flush once per group, then publish and acknowledge.
pub async fn run_flusher(
    mut rx: mpsc::UnboundedReceiver<Commit>,
    store: Arc<Store>,
    feed: Arc<Feed>,
    stats: Arc<CommitStats>,
    durable: bool,
) {
    let mut group = Vec::new();
    while let Some(first) = rx.recv().await {
        group.push(first);
        while let Ok(c) = rx.try_recv() {
            group.push(c);
        }
        let result = if durable {
            let started = std::time::Instant::now();
            let s = store.clone();
            let r = tokio::task::spawn_blocking(move || s.flush())
                .await
                .unwrap_or_else(|e| Err(IpamError::Storage(format!("flush task failed: {e}"))));
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            stats
                .flush_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            r
        } else {
            Ok(())
        };
        stats
            .commits
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        let top = group.iter().map(|c| c.revision).max().unwrap_or(0);
        if result.is_ok() {
            let events = group
                .iter_mut()
                .filter_map(|c| {
                    c.event.take().map(|event| RevisionedEvent {
                        revision: c.revision,
                        event,
                    })
                })
                .collect();
            feed.publish(top, events);
            stats.durable_revision.fetch_max(top, Ordering::Relaxed);
        }
        for c in group.drain(..) {
            if let Some(done) = c.done {
                // The writer may have gone (client cancelled): its change is durable all the same.
                let _ = done.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, revision: Revision) -> RevisionedEvent {
        RevisionedEvent {
            revision,
            event: Event::NodeUpdated(Node {
                name: name.into(),
                addresses: vec![],
                labels: Default::default(),
                pod_cidrs: vec![],
                ready: true,
                revision,
            }),
        }
    }

    #[test]
    fn replay_within_history_snapshot_outside_it() {
        let feed = Feed::new(10, vec![], vec![], 2, 16);
        feed.publish(11, vec![node("a", 11)]);
        feed.publish(13, vec![node("b", 13)]); // 12 was a pod IP: no event
        assert!(matches!(feed.subscribe(10).0, WatchStart::Replay(v) if v.len() == 2));
        assert!(
            matches!(feed.subscribe(11).0, WatchStart::Replay(v) if v.len() == 1 && v[0].revision == 13)
        );
        assert!(matches!(feed.subscribe(13).0, WatchStart::Replay(v) if v.is_empty()));
        feed.publish(14, vec![node("c", 14)]); // history holds 2: revision 11 falls out
        assert!(
            matches!(feed.subscribe(10).0, WatchStart::Snapshot { .. }),
            "too old"
        );
        assert!(matches!(feed.subscribe(11).0, WatchStart::Replay(v) if v.len() == 2));
        assert!(
            matches!(feed.subscribe(0).0, WatchStart::Snapshot { revision: 14, ref nodes, .. } if nodes.len() == 3)
        );
        assert!(
            matches!(feed.subscribe(99).0, WatchStart::Snapshot { .. }),
            "ahead of the server: start over"
        );
    }

    #[tokio::test]
    async fn flusher_acknowledges_after_publishing_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let feed = Arc::new(Feed::new(0, vec![], vec![], 100, 100));
        let stats = Arc::new(CommitStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (_, mut live) = feed.subscribe(0);
        let mut waits = Vec::new();
        for r in 1..=50 {
            let (done, wait) = oneshot::channel();
            let ev = node(&format!("n{r}"), r);
            tx.send(Commit {
                revision: r,
                event: Some(ev.event),
                done: Some(done),
            })
            .unwrap();
            waits.push(wait);
        }
        drop(tx);
        run_flusher(rx, store, feed.clone(), stats.clone(), true).await;
        for w in waits {
            w.await.unwrap().unwrap();
        }
        for r in 1..=50 {
            assert_eq!(live.recv().await.unwrap().revision, r);
        }
        let flushes = stats.flushes.load(Ordering::Relaxed);
        assert!(
            (1..50).contains(&flushes),
            "50 queued commits share flushes, got {flushes}"
        );
        assert_eq!(stats.durable_revision.load(Ordering::Relaxed), 50);
        assert_eq!(feed.revision(), 50);
    }
}
