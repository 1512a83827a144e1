//! The Watch feed's sending side: what one watcher is sent — a snapshot a chunk at a time or a
//! replay, then live events, batched when several wait — through a bounded queue whose last slot
//! is kept for the status that ends the stream (`Outbox`). The gRPC layer (`watch_wire.rs`)
//! encodes what comes out of the queue.

use std::sync::Arc;
use std::time::Duration;

use routeplane_runtime::shutdown::Shutdown;
use tokio::sync::{broadcast, mpsc};

use super::{Ipam, WatchItem};
use crate::commit::WatchStart;
use crate::error::{IpamError, Result};
use crate::model::Revision;

impl Ipam {
    /// The change feed: snapshot or replay, then live events, until the client goes, the server
    /// stops, or the watcher falls behind (then an ABORTED error naming the revision to resume from).
    /// Operator entries only when `operator` asks for them.
    pub fn watch(
        self: &Arc<Self>,
        from: Revision,
        operator: bool,
    ) -> mpsc::Receiver<Result<WatchItem>> {
        // Room for one item and the status kept for the end (`Outbox::send` waits for both): a
        // watcher that does not read holds one message here, whatever the size of the state.
        let (tx, rx) = mpsc::channel(2);
        let tx = Outbox {
            tx,
            deadline: self.options.watch_send_deadline,
            operator,
        };
        let (start, live) = self.feed.subscribe(from);
        let feed = self.feed.clone();
        let chunk = self.options.snapshot_chunk.max(1);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let last = match start {
                WatchStart::Snapshot { revision, state } => {
                    if send_snapshot(&tx, from, revision, &state, chunk)
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
                        if tx.send_event(e, last).await.is_err() {
                            return;
                        }
                        last = revision;
                    }
                    last
                }
            };
            forward_live(tx, live, last, shutdown, feed).await;
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
    /// Whether the watcher asked for operator entries.
    operator: bool,
}

impl Outbox {
    /// Queues an event, unless it is one of operator entries the watcher did not ask for (its
    /// revision still counts as seen).
    async fn send_event(
        &self,
        e: Arc<crate::model::RevisionedEvent>,
        resume: Revision,
    ) -> std::result::Result<(), ()> {
        if !self.operator && matches!(e.event, crate::model::Event::OperatorEntries { .. }) {
            return Ok(());
        }
        self.send(WatchItem::Event(e), resume).await
    }

    /// Queues `item`, waiting at most the deadline for room; otherwise cuts the watcher off with
    /// ABORTED naming `resume`, the revision it has everything through. `Err`: the stream is over.
    async fn send(&self, item: WatchItem, resume: Revision) -> std::result::Result<(), ()> {
        // Room now (a watcher reading along): no deadline timer to arm and cancel, which was a
        // good part of each watcher's cost per event at 5,000 watchers.
        match self.tx.try_reserve_many(2) {
            Ok(mut permits) => {
                if let Some(permit) = permits.next() {
                    permit.send(Ok(item));
                }
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(()),
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
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

/// On shutdown: forwards what was published and not yet sent, then a bookmark at the feed's
/// revision — so that every watcher resumes at the restarted IPAM from there (nothing to replay
/// when nothing changed) instead of every one of thousands asking for a whole snapshot because
/// changes it does not follow (pod IPs) moved the revision past the last event it saw. The
/// revision is read before the queue is drained: publication sends every event up to it first
/// (`Feed::publish`, under the same lock). Returns the bookmark's revision, or None when the
/// watcher fell behind or went.
async fn catch_up(
    tx: &Outbox,
    live: &mut broadcast::Receiver<Arc<crate::model::RevisionedEvent>>,
    mut last: Revision,
    feed: &crate::commit::Feed,
) -> Option<Revision> {
    let through = feed.revision();
    loop {
        match live.try_recv() {
            Ok(e) if e.revision <= last => {}
            Ok(e) => {
                let revision = e.revision;
                tx.send_event(e, last).await.ok()?;
                last = revision;
            }
            Err(broadcast::error::TryRecvError::Empty) => break,
            Err(_) => return None,
        }
    }
    let through = through.max(last);
    tx.send(WatchItem::Progress(through), last).await.ok()?;
    Some(through)
}

/// Sends the snapshot a chunk at a time, each copied out of the shared state only when there is
/// room for it.
async fn send_snapshot(
    tx: &Outbox,
    asked: Revision,
    revision: Revision,
    state: &crate::snapshot::SnapshotState,
    chunk: usize,
) -> std::result::Result<(), ()> {
    let plan = state.plan(tx.operator, chunk);
    let count = plan.len();
    for (i, p) in plan.iter().enumerate() {
        let c = state.chunk(p);
        let item = WatchItem::Snapshot {
            revision,
            nodes: c.nodes,
            services: c.services,
            operator: c.operator,
            first: i == 0,
            last: i + 1 == count,
        };
        // Cut off half-way, a watcher resumes from what it had before the snapshot.
        tx.send(item, asked).await?;
    }
    Ok(())
}

/// The most live events taken from the feed for one watcher at once. A burst (a rack of nodes
/// dying, their returns) then costs a write per batch and watcher, not a write per event and
/// watcher: 2,000 events to 5,000 watchers, one TLS record each, had kept IPAM busy for minutes.
const LIVE_BATCH: usize = 256;

/// What a watcher takes from the feed at once.
enum Taken {
    Events {
        events: Vec<Arc<crate::model::RevisionedEvent>>,
        through: Revision,
        /// The feed overflowed right after them: end the stream once they are sent.
        lagged: Option<u64>,
    },
    Lagged(u64),
    Closed,
}

/// `first`, then whatever else is waiting (up to [`LIVE_BATCH`]), without those up to `last`
/// (in the snapshot or the replay already) or of operator entries the watcher did not ask for.
fn take_waiting(
    first: Arc<crate::model::RevisionedEvent>,
    live: &mut broadcast::Receiver<Arc<crate::model::RevisionedEvent>>,
    last: Revision,
    operator: bool,
) -> Taken {
    let mut events = Vec::new();
    let mut through = last;
    let mut next = Some(first);
    let mut lagged = None;
    let mut taken = 0;
    while let Some(e) = next.take() {
        taken += 1;
        if e.revision > through {
            through = e.revision;
            if operator || !matches!(e.event, crate::model::Event::OperatorEntries { .. }) {
                events.push(e);
            }
        }
        if taken == LIVE_BATCH {
            break;
        }
        match live.try_recv() {
            Ok(e) => next = Some(e),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => lagged = Some(missed),
            Err(_) => {}
        }
    }
    Taken::Events {
        events,
        through,
        lagged,
    }
}

async fn forward_live(
    tx: Outbox,
    mut live: broadcast::Receiver<Arc<crate::model::RevisionedEvent>>,
    mut last: Revision,
    shutdown: Shutdown,
    feed: Arc<crate::commit::Feed>,
) {
    // Made once for the stream's life, not once per event.
    let closed = tx.closed();
    let stopping = shutdown.wait();
    tokio::pin!(closed, stopping);
    loop {
        let taken = tokio::select! {
            r = live.recv() => match r {
                Ok(e) => take_waiting(e, &mut live, last, tx.operator),
                Err(broadcast::error::RecvError::Lagged(missed)) => Taken::Lagged(missed),
                Err(broadcast::error::RecvError::Closed) => Taken::Closed,
            },
            () = &mut closed => return,
            () = &mut stopping => {
                if let Some(through) = catch_up(&tx, &mut live, last, &feed).await {
                    last = through;
                }
                tx.end(IpamError::Unavailable(format!("routeplane-ipam is shutting down; resume with fromRevision={last}"))).await;
                return;
            }
        };
        let missed = match taken {
            Taken::Events {
                mut events,
                through,
                lagged,
            } => {
                let item = match events.len() {
                    0 => None,
                    1 => events.pop().map(WatchItem::Event),
                    _ => Some(WatchItem::Events(events)),
                };
                if let Some(item) = item
                    && tx.send(item, last).await.is_err()
                {
                    return;
                }
                last = through;
                match lagged {
                    Some(missed) => missed,
                    None => continue,
                }
            }
            Taken::Lagged(missed) => missed,
            Taken::Closed => return,
        };
        tx.end(IpamError::Aborted(format!(
            "this watcher fell {missed} events behind and was cut off after revision {last}; call Watch again to resume with fromRevision={last}"
        )))
        .await;
        return;
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use clap::Parser as _;

    use super::*;
    use crate::engine::StorageConfig;
    use crate::ipam::IpamOptions;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_waiting_for_a_slow_watcher_reach_it_in_order_and_batched() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = crate::settings::Cli::parse_from(["routeplane-ipam"])
            .load()
            .unwrap();
        let (ipam, _) = Ipam::start(
            loaded.core,
            StorageConfig::Sled(dir.path().to_path_buf()),
            IpamOptions::default(),
            Shutdown::new(),
        )
        .await
        .unwrap();
        let mut rx = ipam.watch(0, false);
        assert!(matches!(
            rx.recv().await,
            Some(Ok(WatchItem::Snapshot { last: true, .. }))
        ));
        // Fifty changes (one node's labels) while the watcher reads nothing.
        for i in 0..50 {
            ipam.register_node(
                "n0",
                vec![IpAddr::from([192, 0, 2, 1])],
                [("k".to_string(), i.to_string())].into(),
            )
            .await
            .unwrap();
        }
        let (mut revisions, mut largest) = (Vec::new(), 0);
        while revisions.len() < 50 {
            let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("every event within 10 s");
            let events = match item {
                Some(Ok(WatchItem::Event(e))) => vec![e],
                Some(Ok(WatchItem::Events(events))) => events,
                other => panic!("not an event: {:?}", other.map(|r| r.is_ok())),
            };
            largest = largest.max(events.len());
            revisions.extend(events.iter().map(|e| e.revision));
        }
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
        assert!(
            largest > 10,
            "the events that waited came one by one (largest batch {largest})"
        );
    }
}
