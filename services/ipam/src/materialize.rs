//! The materializer: brings sled up to date behind the write-ahead log and checkpoints it.
//!
//! It takes the durable groups from the committer in order — everything queued at once, applied
//! as one sled batch, since sled's cost is per batch more than per key (`Store::apply_all`) — and
//! flushes sled (a checkpoint) every interval and every so many changes, whichever comes first,
//! reporting the revision each checkpoint covers so that the committer can delete the log behind it. sled is the
//! slower of the two under load; the channel between them is bounded (MATERIALIZE_BACKLOG), so
//! the committer waits rather than letting the backlog grow. A step that fails ends the
//! materializer with a [`Fault`]: a write sled could not make (disk full, read-only) puts the
//! service in degraded mode until storage can be reopened (`engine.rs`); a step that takes longer
//! than the stall limit is fatal (sled is stuck inside: only a restart, replaying the log, helps).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::commit::{CommitStats, Fault};
use crate::error::{IpamError, Result};
use crate::model::Revision;
use crate::state::Mutation;
use crate::store::Store;

/// sled is checkpointed this often by default (when anything changed), bounding the log replayed
/// at startup.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// sled is also checkpointed once this many changes were applied since the last checkpoint,
/// before the interval is up: the log a checkpoint leaves behind is bounded in size as well as in
/// time, whatever the load (a logged change is 150 to 250 bytes).
pub const CHECKPOINT_CHANGES: u64 = 100_000;

/// A step of the materializer (applying a batch, a checkpoint) taking longer than this fails the
/// service: sled is stuck, and only a restart (replaying the log) gets it going again.
pub const SLED_STALL: Duration = Duration::from_secs(60);

/// When sled is checkpointed: on a timer, and after so many changes; and how long a step may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoints {
    pub every: Duration,
    pub changes: u64,
    pub stall: Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            every: CHECKPOINT_EVERY,
            changes: CHECKPOINT_CHANGES,
            stall: SLED_STALL,
        }
    }
}

/// Where the materializer writes: sled ([`Store`]); tests put a store that stalls in its place.
pub trait Materialize: Send + Sync + 'static {
    /// Applies mutations in order, atomically as a whole.
    fn apply(&self, mutations: &[Mutation]) -> Result<()>;
    /// Makes everything applied durable: a checkpoint.
    fn flush(&self) -> Result<()>;
}

impl Materialize for Store {
    fn apply(&self, mutations: &[Mutation]) -> Result<()> {
        Store::apply_all(self, mutations)
    }

    fn flush(&self) -> Result<()> {
        Store::flush(self)
    }
}

/// Durable groups the materializer may be behind before the committer waits for it: with sled
/// slower than the log under some load, the backlog (memory, and log no checkpoint can delete yet)
/// would otherwise grow for as long as the load lasts. Waiting slows acknowledgements instead.
pub const MATERIALIZE_BACKLOG: usize = 256;

/// The materializer takes a batch at most this often. Under load that makes batches of hundreds
/// of changes instead of one group's; it is not on the request path, and MATERIALIZE_BACKLOG groups
/// arrive in far longer than this.
pub const MATERIALIZE_PACE: Duration = Duration::from_millis(20);

/// The materializer: applies durable mutations to sled in order and checkpoints it every
/// `checkpoints.every` (whatever the load: a tick is never put off by more work) and after
/// `checkpoints.changes` changes, whichever comes first, reporting each checkpoint's revision.
/// Ends with a last checkpoint when the committer goes away. A storage error is returned, and so
/// is a step that takes longer than `checkpoints.stall`: memory is ahead of sled, which only a
/// restart (replaying the log) repairs.
pub async fn run_materializer(
    mut rx: mpsc::Receiver<Vec<Mutation>>,
    store: Arc<dyn Materialize>,
    stats: Arc<CommitStats>,
    checkpointed: watch::Sender<Revision>,
    checkpoints: Checkpoints,
) -> Result<(), Fault> {
    let mut applied: Option<Revision> = None;
    let mut since_checkpoint = 0u64;
    let mut next_step = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(checkpoints.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // At most one step per MATERIALIZE_PACE: what arrives meanwhile waits in the channel and
        // goes into the next batch (sled's cost is per batch; acknowledgements do not wait here).
        if let Some(wait) = next_step.checked_duration_since(tokio::time::Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        // The tick first: with work always queued, a fair choice can put a checkpoint off for
        // many rounds.
        let (batch, ticked) = tokio::select! {
            biased;
            _ = tick.tick() => (Some(Vec::new()), true),
            b = rx.recv() => (b, false),
        };
        let closing = batch.is_none();
        next_step = tokio::time::Instant::now() + MATERIALIZE_PACE;
        let mut batch = batch.unwrap_or_default();
        while let Ok(mut more) = rx.try_recv() {
            batch.append(&mut more);
        }
        applied = batch.last().map(|m| m.revision).or(applied);
        since_checkpoint += batch.len() as u64;
        // Not `batch.is_empty()`: under steady load the tick always finds more work queued, and
        // sled was never checkpointed (nor the log truncated) until the load stopped.
        let due = closing || ticked || since_checkpoint >= checkpoints.changes;
        let pending = applied.filter(|a| *a > *checkpointed.borrow());
        let s = store.clone();
        let checkpoint = if due { pending } else { None };
        let changes = batch.len();
        let step = tokio::task::spawn_blocking(move || -> Result<()> {
            s.apply(&batch)?;
            if checkpoint.is_some() {
                s.flush()?;
            }
            Ok(())
        });
        // sled 0.34 can deadlock inside a write under sustained load (sled#1412), and a disk can
        // hang: either way sled would never catch up and, the committer waiting for it, writes
        // would stop for good. Give up instead, so that the service fails and is restarted.
        match tokio::time::timeout(checkpoints.stall, step).await {
            // A disk that refuses writes: the service waits it out (`engine.rs`).
            Ok(Ok(done)) => done.map_err(|error| Fault {
                error,
                fatal: false,
            })?,
            Ok(Err(e)) => {
                return Err(Fault {
                    error: IpamError::Storage(format!("sled writer thread failed: {e}")),
                    fatal: true,
                });
            }
            Err(_) => {
                let error = IpamError::Storage(format!(
                    "sled did not finish applying {changes} changes{} within {:?} (a stalled disk, or sled's deadlock under load, sled#1412)",
                    if checkpoint.is_some() {
                        " and a checkpoint"
                    } else {
                        ""
                    },
                    checkpoints.stall
                ));
                return Err(Fault { error, fatal: true });
            }
        }
        if let Some(revision) = applied {
            stats
                .materialized_revision
                .store(revision, Ordering::Relaxed);
        }
        if let Some(revision) = checkpoint {
            since_checkpoint = 0;
            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            stats.checkpoint_revision.store(revision, Ordering::Relaxed);
            checkpointed.send_replace(revision);
        }
        if closing {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::commit::tests::mutation;

    /// The tick must win even when batches never stop coming (it used to need an idle moment).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_is_checkpointed_on_time_under_unbroken_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let stats = Arc::new(CommitStats::default());
        let (mtx, mrx) = mpsc::channel(MATERIALIZE_BACKLOG);
        let (ctx, crx) = watch::channel(0);
        let materializer = tokio::spawn(run_materializer(
            mrx,
            store.clone(),
            stats.clone(),
            ctx,
            Checkpoints {
                every: Duration::from_millis(50),
                ..Checkpoints::default()
            },
        ));
        let started = Instant::now();
        let mut r = 0;
        while started.elapsed() < Duration::from_millis(1000) {
            // Always more queued than the materializer has taken.
            for _ in 0..50 {
                r += 1;
                mtx.send(vec![mutation(r)]).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let during = stats.checkpoints.load(Ordering::Relaxed);
        assert!(
            during >= 1,
            "no checkpoint in 1 s of load at one per 50 ms: the log would grow until the load stops"
        );
        assert!(*crx.borrow() > 0, "and each reported to the committer");
        drop(mtx);
        materializer.await.unwrap().unwrap();
        assert_eq!(stats.checkpoint_revision.load(Ordering::Relaxed), r);
    }

    /// However long the interval, a checkpoint comes every `changes` changes.
    #[tokio::test]
    async fn sled_is_checkpointed_after_so_many_changes_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let stats = Arc::new(CommitStats::default());
        let (mtx, mrx) = mpsc::channel(MATERIALIZE_BACKLOG);
        let (ctx, mut crx) = watch::channel(0);
        let checkpoints = Checkpoints {
            every: Duration::from_secs(3600),
            changes: 100,
            ..Checkpoints::default()
        };
        let materializer = tokio::spawn(run_materializer(
            mrx,
            store.clone(),
            stats.clone(),
            ctx,
            checkpoints,
        ));
        // The first tick of an interval fires at once: let it pass with nothing to cover.
        tokio::time::sleep(Duration::from_millis(20)).await;
        for round in 1..=3 {
            for r in round * 100 - 99..=round * 100 {
                mtx.send(vec![mutation(r)]).await.unwrap();
            }
            while *crx.borrow_and_update() < round * 100 {
                tokio::time::timeout(Duration::from_secs(10), crx.changed())
                    .await
                    .expect("a checkpoint per 100 changes, not per hour")
                    .unwrap();
            }
        }
        assert_eq!(stats.checkpoints.load(Ordering::Relaxed), 3);
        drop(mtx);
        materializer.await.unwrap().unwrap();
    }

    /// sled that never returns from a write (its deadlock under load, a hung disk).
    struct Stuck;

    impl Materialize for Stuck {
        fn apply(&self, _: &[Mutation]) -> Result<()> {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        }

        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_materializer_stuck_in_sled_gives_up_and_says_why() {
        let stats = Arc::new(CommitStats::default());
        let (mtx, mrx) = mpsc::channel(MATERIALIZE_BACKLOG);
        let (ctx, _crx) = watch::channel(0);
        let checkpoints = Checkpoints {
            stall: Duration::from_millis(200),
            ..Checkpoints::default()
        };
        let materializer = tokio::spawn(run_materializer(
            mrx,
            Arc::new(Stuck),
            stats.clone(),
            ctx,
            checkpoints,
        ));
        mtx.send(vec![mutation(1)]).await.unwrap();
        let fault = tokio::time::timeout(Duration::from_secs(1), materializer)
            .await
            .expect("given up after its stall limit, not after sled's 2 s")
            .unwrap()
            .unwrap_err();
        assert!(fault.fatal, "a stuck sled needs a restart");
        let e = fault.error.to_string();
        assert!(
            e.contains("did not finish applying") && e.contains("200ms"),
            "{e}"
        );
        assert_eq!(stats.materialized_revision.load(Ordering::Relaxed), 0);
    }
}
