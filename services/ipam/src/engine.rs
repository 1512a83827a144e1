//! The storage engine under the core — the store ([`StorageConfig`]: sled with its log, or etcd),
//! the committer writing through its journal, for sled the materializer — and what happens when
//! storage refuses writes.
//!
//! Opening sled replays the log into it and reads back every record; opening etcd checks the
//! prefix and reads it at one revision. While it runs, a supervisor waits for a [`Fault`].
//! Storage that refuses writes (a disk full, remounted read-only or failing; etcd without quorum
//! or out of space) puts the service in **degraded mode** instead of stopping it: writes are
//! refused with `Unavailable` naming the cause (`ResourceExhausted` when storage is full), the
//! queue is closed and whatever it held refused, the core is rebuilt from the durable image
//! (forgetting the changes that never became durable), and reads and Watch go on from that image.
//! Every second the supervisor tries to reopen — sled: a probe write, then the same replay as at
//! startup; etcd: no NOSPACE alarm, then reading it again — and when that works, writes resume by
//! themselves. A fault only a restart can repair (a stuck sled, a bug, another writer on the etcd
//! prefix) fails the service: health NOT_SERVING, and the process exits for its supervisor to
//! restart it.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use routeplane_runtime::shutdown::Shutdown;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::commit::{Commit, CommitStats, Fault, Feed, run_committer};
use crate::error::{IpamError, Result};
use crate::etcd::{EtcdJournal, EtcdSettings};
use crate::ipam::{Ipam, IpamOptions};
use crate::journal::LogJournal;
use crate::materialize::{MATERIALIZE_BACKLOG, run_materializer};
use crate::records::History;
use crate::state::{Mutation, Persisted};
use crate::store::Store;
use crate::wal::Wal;

/// How often degraded mode tries to reopen storage.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Written, synced and deleted before storage is reopened: a disk with room for this much takes
/// the next groups too, rather than failing again at once.
const PROBE_BYTES: usize = 1 << 20;

/// Which store holds the state (`--store`).
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// sled in `DIR/state` and the write-ahead log in `DIR/wal`.
    Sled(PathBuf),
    /// etcd v3 (`etcd/`).
    Etcd(EtcdSettings),
}

/// A store opened, ready for the committer.
pub enum Opened {
    Sled { store: Store, wal: Wal },
    Etcd(Box<EtcdJournal>),
}

/// Storage read back: what it holds, and the store to write through.
pub struct Loaded {
    pub opened: Opened,
    pub persisted: Persisted,
    /// The Watch history the store keeps (etcd), for watchers resuming from before the start.
    pub history: Option<History>,
    pub warnings: Vec<String>,
}

/// Opens the configured store and reads everything back (sled: [`load`]).
pub async fn open(storage: &StorageConfig, options: &IpamOptions) -> Result<Loaded> {
    match storage {
        StorageConfig::Sled(dir) => {
            let (dir, options) = (dir.clone(), options.clone());
            tokio::task::spawn_blocking(move || load(&dir, &options))
                .await
                .map_err(|e| IpamError::Storage(format!("opening sled failed: {e}")))?
        }
        StorageConfig::Etcd(settings) => {
            let opened = crate::etcd::open(settings).await?;
            Ok(Loaded {
                opened: Opened::Etcd(Box::new(opened.journal)),
                persisted: opened.persisted,
                history: opened.history,
                warnings: Vec::new(),
            })
        }
    }
}

/// Opens sled (`DIR/state`) and the log (`DIR/wal`), replays the log into sled, checkpoints sled,
/// deletes the log it covers, and reads everything back.
pub fn load(data_dir: &Path, options: &IpamOptions) -> Result<Loaded> {
    let store = Store::open(&data_dir.join("state"))?;
    let (mut wal, logged, mut warnings) = Wal::open(&data_dir.join("wal"), store.revision()? + 1)?;
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
    Ok(Loaded {
        opened: Opened::Sled { store, wal },
        persisted,
        history: None,
        warnings,
    })
}

/// The first revision after `sled` that the log lacks while holding a later one, and that later
/// one. sled recovers a prefix of what it was given, so a change at or below its revision is there
/// already; one missing after it (a log segment lost or deleted by hand) can never be skipped: the
/// state after it would hold addresses the missing change took or gave back.
pub(crate) fn log_gap(
    sled: crate::model::Revision,
    logged: &[crate::wal::WalRecord],
) -> Option<(crate::model::Revision, crate::model::Revision)> {
    let after = logged.iter().filter(|r| r.revision > sled);
    (sled + 1..)
        .zip(after)
        .find(|(expected, r)| r.revision != *expected)
        .map(|(expected, r)| (expected, r.revision))
}

/// Log records replayed into sled per batch.
const REPLAY_CHUNK: usize = 4096;

/// Applies the log to sled, in order; refuses a gap after sled's revision (see [`log_gap`]).
/// Records at or below sled's revision are applied again too, as far back as the log runs without
/// a hole: a record is a set of writes and deletes, so applying an unbroken run of them again, in
/// order, up to the last, leaves every key they touch as the last one set it — changing nothing
/// sled holds intact, and repairing what sled lost. sled's own files can come back damaged from a
/// disk that failed (a filesystem repaired by e2fsck) with its revision intact and a change before
/// it gone. The log is deleted only behind a checkpoint (on a filesystem still writable after it),
/// so the records it holds cover whatever sled may lack. The revision never goes backwards: a log
/// that ends below sled's revision is not applied.
fn replay(store: &Store, logged: &[crate::wal::WalRecord]) -> Result<usize> {
    let sled = store.revision()?;
    if let Some((expected, found)) = log_gap(sled, logged) {
        return Err(IpamError::Storage(format!(
            "the log has no record of revision {expected}: sled holds changes through {}, and the log goes on at {found}. A log segment was lost or deleted; refusing to start without the changes it held (restore the data directory from a backup)",
            expected - 1
        )));
    }
    let run = replay_run(sled, logged);
    // In chunks, each one sled batch (see `Store::apply_all`): replaying 100,000 records one batch
    // each took sled two buffer writes apiece.
    for chunk in run.chunks(REPLAY_CHUNK) {
        let mutations: Vec<Mutation> = chunk
            .iter()
            .map(|r| Mutation {
                revision: r.revision,
                changes: r.changes.clone(),
                event: None,
            })
            .collect();
        store.apply_all(&mutations)?;
    }
    Ok(run.len())
}

/// The records [`replay`] applies over a sled at revision `sled`: the unbroken run that ends the
/// log (before a hole, a key's last write may be missing), or none if the log ends below `sled`.
pub(crate) fn replay_run(
    sled: crate::model::Revision,
    logged: &[crate::wal::WalRecord],
) -> &[crate::wal::WalRecord] {
    if logged.last().is_none_or(|r| r.revision < sled) {
        return &[];
    }
    let start = logged
        .windows(2)
        .rposition(|w| w[1].revision != w[0].revision + 1)
        .map_or(0, |hole| hole + 1);
    &logged[start..]
}

/// The running engine's tasks, and where they report faults.
pub struct Engine {
    committer: Option<JoinHandle<()>>,
    materializer: Option<JoinHandle<Result<(), Fault>>>,
    faults: mpsc::UnboundedReceiver<Fault>,
}

impl Engine {
    /// Starts the committer (and for sled the materializer) on opened storage; returns the
    /// engine and the sender of its commit queue (the queue closes when every sender is gone).
    pub fn start(
        opened: Opened,
        feed: Arc<Feed>,
        stats: Arc<CommitStats>,
        options: &IpamOptions,
    ) -> (Engine, mpsc::UnboundedSender<Commit>) {
        let revision = feed.revision();
        for gauge in [
            &stats.durable_revision,
            &stats.checkpoint_revision,
            &stats.materialized_revision,
        ] {
            gauge.store(revision, Ordering::Relaxed);
        }
        let (commits, rx) = mpsc::unbounded_channel();
        let (faults_tx, faults) = mpsc::unbounded_channel();
        let (committer, materializer) = match opened {
            Opened::Sled { store, wal } => {
                stats
                    .log_segments
                    .store(wal.segment_count() as u64, Ordering::Relaxed);
                let (materialize, materialize_rx) = mpsc::channel(MATERIALIZE_BACKLOG);
                let (checkpointed, checkpoints) = watch::channel(revision);
                let journal = LogJournal::new(
                    wal,
                    options.durable,
                    stats.clone(),
                    materialize,
                    checkpoints,
                );
                let committer =
                    tokio::spawn(run_committer(rx, journal, feed, stats.clone(), faults_tx));
                let materializer = tokio::spawn(run_materializer(
                    materialize_rx,
                    Arc::new(store),
                    stats,
                    checkpointed,
                    options.checkpoints,
                ));
                (committer, Some(materializer))
            }
            Opened::Etcd(journal) => {
                let journal = (*journal)
                    .with_stats(stats.clone())
                    .with_history(options.watch_history);
                let committer = tokio::spawn(run_committer(rx, journal, feed, stats, faults_tx));
                (committer, None)
            }
        };
        let engine = Engine {
            committer: Some(committer),
            materializer,
            faults,
        };
        (engine, commits)
    }

    /// The next fault, or None once both tasks ended without one (shutdown).
    async fn next_fault(&mut self) -> Option<Fault> {
        loop {
            if self.committer.is_none() && self.materializer.is_none() {
                return self.faults.try_recv().ok();
            }
            tokio::select! {
                Some(fault) = self.faults.recv() => return Some(fault),
                ended = join(&mut self.committer) => {
                    if let Err(e) = ended {
                        return Some(panicked("committer", e));
                    }
                }
                ended = join(&mut self.materializer) => match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(fault)) => return Some(fault),
                    Err(e) => return Some(panicked("materializer", e)),
                },
            }
        }
    }

    /// Waits for both tasks to end (the caller has closed the queue). A fatal fault on the way —
    /// the materializer stalling in its last steps — is returned.
    async fn stop(self) -> Option<Fault> {
        if let Some(committer) = self.committer
            && let Err(e) = committer.await
        {
            return Some(panicked("committer", e));
        }
        match self.materializer?.await {
            Err(e) => Some(panicked("materializer", e)),
            Ok(Err(fault)) if fault.fatal => Some(fault),
            // Its last checkpoint failing on the disk that failed already changes nothing: the
            // log still holds what sled lacks.
            Ok(_) => None,
        }
    }
}

/// Awaits a task once; pends forever once it has been awaited (for `select!`).
async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(handle) => {
            let ended = handle.await;
            *task = None;
            ended
        }
        None => std::future::pending().await,
    }
}

fn panicked(task: &str, e: tokio::task::JoinError) -> Fault {
    Fault {
        error: IpamError::Storage(format!("the {task} failed: {e}")),
        fatal: true,
    }
}

/// Whether writes are taken, for health and metrics: open, or refused since when and why.
#[derive(Debug, Default)]
pub struct WriteGate {
    refused: Mutex<Option<(Instant, IpamError)>>,
}

impl WriteGate {
    /// Refuses writes from now on with `cause` (its kind decides the status: storage full is
    /// RESOURCE_EXHAUSTED, anything else UNAVAILABLE).
    pub fn refuse(&self, cause: IpamError) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), cause));
    }

    /// Opens writes again; returns how long they were refused.
    pub fn open(&self) -> Option<Duration> {
        let was = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        was.map(|(since, _)| since.elapsed())
    }

    /// Why writes are refused, if they are.
    pub fn cause(&self) -> Option<IpamError> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.as_ref().map(|(_, cause)| cause.clone())
    }
}

/// Writes, syncs and deletes a file of PROBE_BYTES in `dir`.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".write-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    // Best effort: a probe left behind is overwritten by the next.
    let _ = std::fs::remove_file(&path);
    written
}

/// Reopens storage after a fault — sled: the probe, then the startup replay; etcd: connecting
/// and reading it all again. The records read back must be exactly the durable image
/// (`expected`): any more means storage kept changes nobody was told are durable (the log could
/// not cut them off; etcd applied a write whose answer was lost), which only a restart
/// (reloading them) reconciles.
pub async fn reopen(
    storage: &StorageConfig,
    options: &IpamOptions,
    expected: crate::model::Revision,
) -> Result<Loaded, Fault> {
    let refused = |error: IpamError| Fault {
        error,
        fatal: false,
    };
    if let StorageConfig::Sled(data_dir) = storage {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || probe(&dir))
            .await
            .map_err(|e| refused(IpamError::Storage(format!("the write probe failed: {e}"))))?
            .map_err(|e| {
                refused(IpamError::Storage(format!(
                    "the data directory {} still refuses a {} KiB write: {e}",
                    data_dir.display(),
                    PROBE_BYTES / 1024
                )))
            })?;
    }
    if let StorageConfig::Etcd(settings) = storage {
        crate::etcd::check_space(settings).await.map_err(refused)?;
    }
    let loaded = open(storage, options).await.map_err(refused)?;
    if loaded.persisted.revision != expected {
        return Err(Fault {
            error: IpamError::Storage(format!(
                "storage reopened at revision {} where revision {expected} was the last made durable; restarting to reload it",
                loaded.persisted.revision
            )),
            fatal: true,
        });
    }
    Ok(loaded)
}

/// Runs beside the service until shutdown: on a fault, degraded mode and reopening (see the
/// module's documentation); on a fatal one, fails the service.
pub async fn supervise(ipam: Weak<Ipam>, mut engine: Engine, shutdown: Shutdown) {
    loop {
        let fault = tokio::select! {
            fault = engine.next_fault() => fault,
            () = shutdown.wait() => return,
        };
        let (Some(fault), Some(service)) = (fault, ipam.upgrade()) else {
            return;
        };
        if fault.fatal {
            service.fail(&fault.error);
            return;
        }
        service.refuse_writes(&fault.error);
        if let Some(fatal) = engine.stop().await {
            service.fail(&fatal.error);
            return;
        }
        if let Err(e) = service.forget_undurable() {
            service.fail(&e);
            return;
        }
        drop(service);
        engine = match reopen_when_possible(&ipam, &shutdown).await {
            Some(engine) => engine,
            None => return,
        };
    }
}

/// Tries to reopen storage every REOPEN_EVERY until it works (or shutdown, or a fatal fault).
async fn reopen_when_possible(ipam: &Weak<Ipam>, shutdown: &Shutdown) -> Option<Engine> {
    let mut tick = tokio::time::interval(REOPEN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_logged: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return None,
        }
        let service = ipam.upgrade()?;
        match service.reopen().await {
            Ok(engine) => return Some(engine),
            Err(fault) if fault.fatal => {
                service.fail(&fault.error);
                return None;
            }
            Err(fault) => {
                // Once in a while, not every second: the cause rarely changes.
                if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(error = %fault.error, "storage still refuses writes; reads and Watch are served, writes refused");
                    last_logged = Some(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalRecord;

    fn records(revisions: &[crate::model::Revision]) -> Vec<WalRecord> {
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
        // Already in sled up to 3: 2 and 3 again, then 4 and 5.
        assert_eq!(replay(&store, &records(&[2, 3, 4, 5])).unwrap(), 4);
        assert_eq!(store.revision().unwrap(), 5);
        // Not before a hole, and never backwards.
        assert_eq!(replay(&store, &records(&[1, 3, 4, 5, 6])).unwrap(), 4);
        assert_eq!(replay(&store, &records(&[2, 3])).unwrap(), 0);
        assert_eq!(store.revision().unwrap(), 6);
        let e = replay(&store, &records(&[6, 8, 9]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no record of revision 7"), "{e}");
        assert!(e.contains("goes on at 8"), "{e}");
        assert_eq!(
            store.revision().unwrap(),
            6,
            "nothing after the hole applied"
        );
    }

    /// A committer that panics is a fatal fault: the service fails (and exits) instead of going on
    /// with writes that would wait for ever.
    #[tokio::test]
    async fn a_panicked_task_is_a_fatal_fault() {
        let (_faults_tx, faults) = mpsc::unbounded_channel();
        let mut engine = Engine {
            committer: Some(tokio::spawn(async { panic!("a bug in the committer") })),
            materializer: Some(tokio::spawn(std::future::pending())),
            faults,
        };
        let fault = tokio::time::timeout(Duration::from_secs(5), engine.next_fault())
            .await
            .expect("noticed at once")
            .expect("a fault");
        assert!(fault.fatal);
        assert!(
            fault.error.to_string().contains("committer"),
            "{}",
            fault.error
        );
    }

    /// sled back from a damaged disk at revision 3 but without a change of revision 2: the log
    /// puts it back, and what a later record deleted stays deleted.
    #[test]
    fn replay_repairs_what_a_damaged_sled_lost_before_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let put = |owner: &str| crate::state::Change::PutPodIps {
            node: "n".into(),
            owner: owner.into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            agent: None,
        };
        let delete = |owner: &str| crate::state::Change::DeletePodIps {
            node: "n".into(),
            owner: owner.into(),
        };
        let logged = vec![
            WalRecord {
                revision: 1,
                changes: vec![put("a")],
            },
            WalRecord {
                revision: 2,
                changes: vec![put("b")],
            },
            WalRecord {
                revision: 3,
                changes: vec![delete("a")],
            },
        ];
        // The damage: sled says 3, and lacks b.
        store
            .apply(&Mutation {
                revision: 3,
                changes: vec![],
                event: None,
            })
            .unwrap();
        assert_eq!(replay(&store, &logged).unwrap(), 3);
        let owners: Vec<String> = store
            .load()
            .unwrap()
            .pod_ips
            .into_iter()
            .map(|(_, owner, _)| owner)
            .collect();
        assert_eq!(owners, ["b"]);
        assert_eq!(store.revision().unwrap(), 3);
    }
}
