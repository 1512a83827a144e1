//! The storage boundary under the committer: where a group of mutations becomes durable.
//!
//! The committer (`commit.rs`) takes writers' commits in revision order, hands each group to a
//! [`Journal`], and publishes and acknowledges the group only once the journal says it is durable.
//! It knows nothing of the store: [`LogJournal`] is the embedded one — the write-ahead log synced
//! once per group, sled brought up to date behind it (`materialize.rs`) — and `etcd/journal.rs`
//! writes each group as etcd transactions. A journal that fails returns the [`Fault`] to report;
//! the committer refuses that group and everything queued behind it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::commit::{CommitStats, Fault};
use crate::error::IpamError;
use crate::model::Revision;
use crate::state::Mutation;
use crate::wal::{self, Wal};

/// Where the committer makes groups durable.
pub trait Journal: Send + 'static {
    /// Makes `group` durable: mutations in revision order, at least one. Nothing is published
    /// before this returns `Ok`.
    fn write(&mut self, group: &[&Mutation]) -> impl Future<Output = Result<(), Fault>> + Send;

    /// The group is published and its writers acknowledged: what the store does after (sled:
    /// the materializer applies it). May wait, holding the next group back.
    fn written(&mut self, group: Vec<Mutation>) -> impl Future<Output = ()> + Send;
}

/// The embedded store's journal: the write-ahead log, one `fdatasync` per group, with sled
/// materialized behind it and log segments deleted behind sled's checkpoints.
pub struct LogJournal {
    /// Taken while a blocking write holds it.
    wal: Option<Wal>,
    /// false: no sync (benchmarks only).
    durable: bool,
    stats: Arc<CommitStats>,
    materialize: mpsc::Sender<Vec<Mutation>>,
    checkpointed: watch::Receiver<Revision>,
    /// The checkpoint the log was last cut at.
    truncated: Revision,
}

impl LogJournal {
    pub fn new(
        wal: Wal,
        durable: bool,
        stats: Arc<CommitStats>,
        materialize: mpsc::Sender<Vec<Mutation>>,
        checkpointed: watch::Receiver<Revision>,
    ) -> LogJournal {
        LogJournal {
            wal: Some(wal),
            durable,
            stats,
            materialize,
            checkpointed,
            truncated: 0,
        }
    }
}

impl Journal for LogJournal {
    async fn write(&mut self, group: &[&Mutation]) -> Result<(), Fault> {
        let fatal = |error| Fault { error, fatal: true };
        let mut bytes = Vec::new();
        for m in group {
            wal::encode_mutation(m, &mut bytes).map_err(fatal)?;
        }
        let first_revision = group.first().map(|m| m.revision).unwrap_or_default();
        let through = *self.checkpointed.borrow_and_update();
        let truncate = (through > self.truncated).then_some(through);
        let Some(mut wal) = self.wal.take() else {
            return Err(fatal(IpamError::Storage(
                "the log was lost by an earlier failed write".into(),
            )));
        };
        let durable = self.durable;
        let started = Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            let r = wal.append(&bytes, first_revision).and_then(|()| {
                if durable {
                    wal.sync()
                } else {
                    wal.keep_unsynced();
                    Ok(())
                }
            });
            // Deleting covered segments is apart from the group's durability: the group is
            // durable once synced, whatever happens to old segments after.
            let removed = match r {
                Ok(()) => truncate.map(|t| wal.truncate_through(t)),
                Err(_) => None,
            };
            (wal, r, removed)
        })
        .await;
        let (wal, r, removed) = written.map_err(|e| {
            fatal(IpamError::Storage(format!(
                "the log writer thread failed: {e}"
            )))
        })?;
        let stats = &self.stats;
        match removed {
            Some(Ok(n)) => {
                self.truncated = truncate.unwrap_or(self.truncated);
                stats
                    .log_segments_removed
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            // Tried again with the next group; a disk in trouble shows in its append.
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot delete log segments a checkpoint covers")
            }
            None => {}
        }
        stats
            .log_segments
            .store(wal.segment_count() as u64, Ordering::Relaxed);
        self.wal = Some(wal);
        if durable {
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            stats
                .flush_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        r.map_err(|error| Fault {
            error,
            fatal: false,
        })
    }

    async fn written(&mut self, group: Vec<Mutation>) {
        // Waits while the materializer is MATERIALIZE_BACKLOG groups behind: the next group is
        // not written (nor acknowledged) until sled catches up. The materializer only goes away
        // at shutdown or on a storage error; the log holds these regardless.
        let _ = self.materialize.send(group).await;
    }
}
