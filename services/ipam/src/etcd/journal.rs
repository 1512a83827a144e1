//! The etcd journal: each group of mutations becomes etcd transactions, acknowledged once etcd
//! answers them (its quorum has them on disk).
//!
//! Every transaction compares the revision key's `mod_revision` with the one this replica last
//! wrote or read (the fence): a write by anyone else in between fails the comparison, and the
//! journal stops with a fatal fault rather than write on top of state it has not seen — the
//! restart reads the store again. Within a transaction each key is written once (its last value
//! in the group: etcd refuses a key twice in one transaction), with the revision key last.
//!
//! A transaction that fails on the way — its member killed, etcd electing a new leader — is sent
//! again for up to WRITE_RETRY, so a leader change costs a pause rather than degraded mode. Each
//! transaction that moves the revision key also writes `m/writer` (this journal's token and the
//! revision): when a retry finds the fence moved, that stamp says whether an earlier attempt of
//! the same write was applied (go on) or another writer's was (stop).
//!
//! Each mutation's Watch event goes into the same transaction (`h/REV`, `records.rs`), so the
//! history is exactly as durable as the state: a replica that takes over replays it to watchers
//! resuming from a revision it never served. The history is cut to the last `--watch-history`
//! revisions by one range delete that moves `m/horizon`, in the transaction that passes the mark
//! by an eighth (not every transaction: a range delete costs etcd a scan).
//!
//! etcd bounds a transaction (128 operations and 1.5 MiB by default), so a group is cut into
//! several. A single mutation bigger than one transaction (a node deleted with its pods, a
//! thousand operator entries) is first written whole as an intent under `m/pending`, then its
//! records, then the revision with the intent deleted: a crash in between leaves the intent, and
//! opening rolls it forward before reading — so a mutation is never seen half applied. Its Watch
//! event goes first, in a transaction of its own (an event as big as the mutation would not fit
//! beside the intent in etcd's 1.5 MiB request): one left without an intent after it is deleted
//! on opening (`mod.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, DeleteOptions, KvClient, Txn, TxnOp, TxnOpResponse};

use super::{EtcdSettings, etcd_error};
use crate::commit::{CommitStats, Fault};
use crate::error::IpamError;
use crate::journal::Journal;
use crate::model::Revision;
use crate::records::{self, HORIZON, REVISION, Write};
use crate::state::{Change, Mutation};

/// Record writes per transaction: etcd's default `--max-txn-ops` (128), less the revision key,
/// the writer stamp, an intent's deletion, the history's range delete and its horizon.
const TXN_OPS: usize = 123;
/// Bytes of keys and values per transaction, under etcd's default `--max-request-bytes` (1.5 MiB).
const TXN_BYTES: usize = 1 << 20;
/// The intent of a mutation too big for one transaction.
pub(crate) const PENDING: &[u8] = b"m/pending";
/// Which replica wrote the revision key last, and at which revision: `TOKEN REVISION`.
pub(crate) const WRITER: &[u8] = b"m/writer";
/// How long one attempt at a transaction may take.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// How long a write is retried before the service goes into degraded mode: longer than etcd
/// takes to elect a new leader.
const WRITE_RETRY: Duration = Duration::from_secs(10);
/// Revisions of Watch history kept unless told (`--watch-history`'s default).
const HISTORY_KEPT: u64 = 10_000;

/// A mutation too big for one transaction, as its intent holds it (`m/pending`); its Watch
/// event is stored before it, under its history key.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Intent {
    pub revision: Revision,
    pub changes: Vec<Change>,
}

impl Intent {
    /// Its record writes.
    pub fn writes(&self) -> crate::error::Result<Vec<Write>> {
        let mut out = Vec::new();
        for change in &self.changes {
            records::writes(change, &mut out)?;
        }
        Ok(out)
    }
}

pub struct EtcdJournal {
    kv: KvClient,
    settings: EtcdSettings,
    /// The revision key's mod_revision as this replica last saw it.
    fence: i64,
    /// This journal's identity in `m/writer`: unique per process start.
    token: String,
    stats: Option<Arc<CommitStats>>,
    /// Revisions of Watch history to keep.
    history_kept: u64,
    /// `m/horizon` as stored; None while there is none (a new prefix, or one from before history
    /// was kept): the first transaction writes it.
    horizon: Option<Revision>,
}

/// The writes of one transaction, each key once (its last value).
#[derive(Default)]
struct Batch {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
    /// The revisions of its first and last mutation.
    first: Option<Revision>,
    top: Option<Revision>,
}

impl Batch {
    fn fits(&self, writes: &[Write]) -> bool {
        let bytes: usize = writes.iter().map(write_bytes).sum();
        self.writes.len() + writes.len() <= TXN_OPS && self.bytes + bytes <= TXN_BYTES
    }

    fn add(&mut self, writes: Vec<Write>) {
        for w in writes {
            self.bytes += write_bytes(&w);
            match w {
                Write::Put(k, v) => self.writes.insert(k, Some(v)),
                Write::Delete(k) => self.writes.insert(k, None),
            };
        }
    }
}

/// A token no other journal has: the process, the time, and a per-process random seed.
fn writer_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    format!("{}-{:016x}", std::process::id(), h.finish())
}

fn write_bytes(w: &Write) -> usize {
    match w {
        Write::Put(k, v) => k.len() + v.len(),
        Write::Delete(k) => k.len(),
    }
}

/// A mutation's record writes and its Watch event's.
fn mutation_writes(m: &Mutation) -> Result<Vec<Write>, Fault> {
    let fatal = |error| Fault { error, fatal: true };
    let mut out = Vec::new();
    for change in &m.changes {
        records::writes(change, &mut out).map_err(fatal)?;
    }
    if let Some(event) = &m.event {
        out.push(records::history_write(m.revision, event).map_err(fatal)?);
    }
    Ok(out)
}

/// Where the history's horizon moves in a transaction of mutations `first..=top`, if it does:
/// when there is none yet (to just before `first`: every event from then on is stored), or once
/// the oldest kept revision is an eighth of `kept` past the mark — never past `first`, whose
/// events this same transaction writes.
fn next_horizon(
    horizon: Option<Revision>,
    kept: u64,
    first: Revision,
    top: Revision,
) -> Option<Revision> {
    let floor = first.saturating_sub(1);
    let Some(horizon) = horizon else {
        return Some(floor);
    };
    let mark = top.saturating_sub(kept).min(floor);
    (mark > horizon.saturating_add(kept / 8)).then_some(mark)
}

impl EtcdJournal {
    pub(super) fn new(
        kv: KvClient,
        settings: EtcdSettings,
        fence: i64,
        horizon: Option<Revision>,
    ) -> EtcdJournal {
        EtcdJournal {
            kv,
            settings,
            fence,
            token: writer_token(),
            stats: None,
            history_kept: HISTORY_KEPT,
            horizon,
        }
    }

    /// Keeps the Watch events of the last `revisions` revisions (`--watch-history`).
    pub fn with_history(mut self, revisions: usize) -> EtcdJournal {
        self.history_kept = (revisions as u64).max(1);
        self
    }

    /// Counts transactions as the log's syncs (`routeplane_ipam_flushes_total`).
    pub fn with_stats(mut self, stats: Arc<CommitStats>) -> EtcdJournal {
        self.stats = Some(stats);
        self
    }

    fn key(&self, record: &[u8]) -> Vec<u8> {
        self.settings.key(record)
    }

    /// One transaction, fenced: `writes`, then the revision key at `revision` (when given) with
    /// this replica's stamp, and the history before `horizon` deleted (when given; the caller
    /// puts the horizon key among `writes`). A transaction that fails on the way (its member killed, the quorum
    /// electing a new leader) is sent again until WRITE_RETRY is up: if an earlier attempt was
    /// applied after all, the retry fails its comparison, and the stamp tells whether the write
    /// that moved the revision key was this one.
    async fn commit(
        &mut self,
        writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
        revision: Option<Revision>,
        horizon: Option<Revision>,
    ) -> Result<(), Fault> {
        let mut ops: Vec<TxnOp> = writes
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(self.key(&k), v, None),
                None => TxnOp::delete(self.key(&k), None),
            })
            .collect();
        if let Some(h) = horizon {
            // Every history key up to and including the horizon: `h/0…0` to `h/(h+1)`.
            let range = DeleteOptions::new().with_range(self.key(&records::history_key(h + 1)));
            ops.push(TxnOp::delete(
                self.key(&records::history_key(0)),
                Some(range),
            ));
        }
        let stamp = revision.map(|r| format!("{} {r}", self.token));
        if let (Some(r), Some(stamp)) = (revision, &stamp) {
            ops.push(TxnOp::put(
                self.key(REVISION),
                records::revision_value(r).to_vec(),
                None,
            ));
            ops.push(TxnOp::put(self.key(WRITER), stamp.as_bytes(), None));
        }
        let txn = Txn::new().when(self.fences()).and_then(ops);
        let started = Instant::now();
        let mut retried = false;
        let mut pause = Duration::from_millis(50);
        let answer = loop {
            let failure = match tokio::time::timeout(ATTEMPT, self.kv.txn(txn.clone())).await {
                Ok(Ok(answer)) => break answer,
                Ok(Err(e)) => etcd_error(&self.settings, "did not take a write", e),
                Err(_) => IpamError::Storage(format!(
                    "etcd at {} did not answer a write within {ATTEMPT:?}",
                    self.settings.endpoints.join(",")
                )),
            };
            // Out of space is not passing; anything else may be (a new leader being elected).
            if matches!(failure, IpamError::StorageFull(_))
                || started.elapsed() + pause >= WRITE_RETRY
            {
                // The service waits it out in degraded mode. Had an attempt been applied after
                // all, reopening finds the revision moved and restarts (`engine.rs`).
                return Err(Fault {
                    error: failure,
                    fatal: false,
                });
            }
            tracing::debug!(error = %failure, "retrying an etcd write");
            retried = true;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        };
        if let Some(stats) = &self.stats {
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            stats
                .flush_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        if !answer.succeeded() {
            if let (true, Some(stamp)) = (retried, &stamp)
                && let Some(fence) = self.applied_with(stamp).await?
            {
                self.fence = fence;
                return Ok(());
            }
            return Err(Fault {
                error: IpamError::Storage(format!(
                    "this replica lost the leadership of etcd prefix {} or another writer changed its state since this replica read it (revision key no longer at etcd revision {}); restarting to read it again",
                    self.settings.prefix, self.fence
                )),
                fatal: true,
            });
        }
        if revision.is_some() {
            self.fence = answer.header().map_or(self.fence, |h| h.revision());
        }
        Ok(())
    }

    /// What every transaction compares: the revision key as this replica last saw it, and the
    /// leader key it won.
    fn fences(&self) -> Vec<Compare> {
        let mut fences = vec![Compare::mod_revision(
            self.key(REVISION),
            CompareOp::Equal,
            self.fence,
        )];
        if let Some(won) = self.settings.leader {
            fences.push(Compare::create_revision(
                self.key(super::LEADER),
                CompareOp::Equal,
                won,
            ));
        }
        fences
    }

    /// Deletes the Watch events stored after `revision`: a big mutation's event whose writer
    /// stopped before its intent (the mutation never happened; the next one takes its revision).
    pub(super) async fn delete_history_after(&mut self, revision: Revision) -> Result<(), Fault> {
        let end = super::prefix_end(&self.key(b"h/"));
        let range = DeleteOptions::new().with_range(end);
        let op = TxnOp::delete(self.key(&records::history_key(revision + 1)), Some(range));
        let answer = self
            .kv
            .txn(Txn::new().when(self.fences()).and_then([op]))
            .await
            .map_err(|e| Fault {
                error: super::etcd_error(&self.settings, "did not take a write", e),
                fatal: false,
            })?;
        if !answer.succeeded() {
            return Err(Fault {
                error: IpamError::Storage(format!(
                    "etcd prefix {} changed while a left-over Watch event was deleted; try again",
                    self.settings.prefix
                )),
                fatal: false,
            });
        }
        Ok(())
    }

    /// Whether the last write to the revision key carried `stamp` (was ours): its mod_revision
    /// then, the new fence.
    async fn applied_with(&mut self, stamp: &str) -> Result<Option<i64>, Fault> {
        let read = self
            .kv
            .txn(Txn::new().and_then([
                TxnOp::get(self.key(REVISION), None),
                TxnOp::get(self.key(WRITER), None),
            ]))
            .await
            .map_err(|e| Fault {
                error: etcd_error(&self.settings, "did not answer a read", e),
                fatal: false,
            })?;
        // One answer per get, in order; a key that is missing answers None.
        let found: Vec<Option<(i64, Vec<u8>)>> = read
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
                _ => None,
            })
            .collect();
        let (Some(Some((fence, _))), Some(Some((writer_revision, writer)))) =
            (found.first(), found.get(1))
        else {
            return Ok(None);
        };
        let (fence, writer_revision) = (*fence, *writer_revision);
        // Written together, in one transaction: same etcd revision.
        Ok((writer == stamp.as_bytes() && writer_revision == fence).then_some(fence))
    }

    /// A batch of whole mutations, moving the history's horizon when it is due.
    async fn commit_batch(&mut self, mut batch: Batch) -> Result<(), Fault> {
        let (Some(first), Some(top)) = (batch.first, batch.top) else {
            return Ok(());
        };
        let horizon = next_horizon(self.horizon, self.history_kept, first, top);
        if let Some(h) = horizon {
            batch
                .writes
                .insert(HORIZON.to_vec(), Some(records::revision_value(h).to_vec()));
        }
        // A new horizon has nothing below it to delete.
        let delete_below = horizon.filter(|_| self.horizon.is_some());
        self.commit(batch.writes, Some(top), delete_below).await?;
        if horizon.is_some() {
            self.horizon = horizon;
        }
        Ok(())
    }

    /// A mutation too big for one transaction: its event, intent, records, revision (see the
    /// module).
    async fn commit_big(&mut self, m: &Mutation) -> Result<(), Fault> {
        let fatal = |error| Fault { error, fatal: true };
        if let Some(event) = &m.event
            && let Write::Put(k, v) = records::history_write(m.revision, event).map_err(fatal)?
        {
            self.commit([(k, Some(v))], None, None).await?;
        }
        let intent = Intent {
            revision: m.revision,
            changes: m.changes.clone(),
        };
        let writes = intent.writes().map_err(fatal)?;
        let intent = serde_json::to_vec(&intent).map_err(|e| {
            fatal(IpamError::Storage(format!(
                "encoding a mutation's intent: {e}"
            )))
        })?;
        self.commit([(PENDING.to_vec(), Some(intent))], None, None)
            .await?;
        self.roll_forward(m.revision, writes).await
    }

    /// The records of an intent, then its revision with the intent deleted.
    pub(super) async fn roll_forward(
        &mut self,
        revision: Revision,
        writes: Vec<Write>,
    ) -> Result<(), Fault> {
        let mut batch = Batch::default();
        for w in writes {
            let one = [w];
            if !batch.fits(&one) {
                let full = std::mem::take(&mut batch);
                self.commit(full.writes, None, None).await?;
            }
            batch.add(one.into());
        }
        batch.writes.insert(PENDING.to_vec(), None);
        // A history not started yet starts after this revision (its event, if any, is there).
        let start = self.horizon.is_none().then_some(revision);
        if let Some(h) = start {
            batch
                .writes
                .insert(HORIZON.to_vec(), Some(records::revision_value(h).to_vec()));
        }
        self.commit(batch.writes, Some(revision), None).await?;
        self.horizon = self.horizon.or(start);
        Ok(())
    }
}

impl Journal for EtcdJournal {
    async fn write(&mut self, group: &[&Mutation]) -> Result<(), Fault> {
        let mut batch = Batch::default();
        for m in group {
            let writes = mutation_writes(m)?;
            if !Batch::default().fits(&writes) {
                let full = std::mem::take(&mut batch);
                self.commit_batch(full).await?;
                self.commit_big(m).await?;
                continue;
            }
            if !batch.fits(&writes) {
                let full = std::mem::take(&mut batch);
                self.commit_batch(full).await?;
            }
            batch.add(writes);
            batch.first.get_or_insert(m.revision);
            batch.top = Some(m.revision);
        }
        self.commit_batch(batch).await
    }

    async fn written(&mut self, _group: Vec<Mutation>) {
        // etcd holds the records themselves: nothing to bring up to date behind it.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_horizon_starts_then_moves_in_steps_never_past_the_batch() {
        // None yet: it starts just before the transaction's first mutation.
        assert_eq!(next_horizon(None, 100, 51, 60), Some(50));
        // Within the window, or not an eighth (12) past the mark: not moved.
        assert_eq!(next_horizon(Some(50), 100, 61, 140), None);
        assert_eq!(next_horizon(Some(50), 100, 161, 162), None);
        assert_eq!(next_horizon(Some(50), 100, 163, 163), Some(63));
        // A batch longer than the window: not past its first mutation, whose event it writes.
        assert_eq!(next_horizon(Some(50), 10, 100, 400), Some(99));
        assert_eq!(next_horizon(Some(0), 1, 1, 1), None);
        assert_eq!(next_horizon(Some(0), 1, 3, 3), Some(2));
    }

    #[test]
    fn a_batch_keeps_each_key_once_with_its_last_write() {
        let mut b = Batch::default();
        b.add(vec![
            Write::Put(b"p/a\0x".to_vec(), b"[1]".to_vec()),
            Write::Delete(b"p/a\0x".to_vec()),
            Write::Put(b"n/a".to_vec(), b"{}".to_vec()),
        ]);
        assert_eq!(b.writes.len(), 2);
        assert_eq!(b.writes.get(b"p/a\0x".as_slice()), Some(&None));
        let many: Vec<Write> = (0..TXN_OPS)
            .map(|i| Write::Delete(format!("p/n\0{i}").into_bytes()))
            .collect();
        assert!(Batch::default().fits(&many));
        assert!(!b.fits(&many), "two keys already in: 128 would be too many");
        let huge = vec![Write::Put(b"o/k".to_vec(), vec![b'x'; TXN_BYTES + 1])];
        assert!(!Batch::default().fits(&huge));
    }
}
