//! `routeplane-ipam --copy-store sled-to-etcd | etcd-to-sled`: copies the allocation state from
//! one store into an empty other, then reads the copy back and compares every record with the
//! source; exits 0 only when they are equal. The source is read the way a start reads it (sled
//! with its log replayed into it, as a start would), so routeplane-ipam must be stopped (sled
//! admits one opener; etcd's state must not move under the copy). No record is deleted from the
//! source: going back is the same command the other way round.

use std::fmt::Write as _;
use std::path::Path;

use crate::engine;
use crate::error::{IpamError, Result};
use crate::etcd::{self, EtcdSettings};
use crate::ipam::IpamOptions;
use crate::records;
use crate::state::{Mutation, Persisted};
use crate::store::Store;

/// Which way to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    SledToEtcd,
    EtcdToSled,
}

/// What was copied, for the operator.
pub fn summary(p: &Persisted) -> String {
    let pod_ips: usize = p.pod_ips.iter().map(|(_, _, held)| held.ips.len()).sum();
    format!(
        "revision {}: {} nodes, {} pod IPs of {} owners, {} agent report generations, {} LoadBalancer IPs, {} pool records, {} operator entries",
        p.revision,
        p.nodes.len(),
        pod_ips,
        p.pod_ips.len(),
        p.pod_syncs.len(),
        p.service_ips.len(),
        p.pools.len(),
        p.operator.len()
    )
}

/// Copies and verifies; returns the report to print.
pub async fn copy(
    direction: Direction,
    data_dir: &Path,
    settings: &EtcdSettings,
) -> Result<String> {
    let mut report = String::new();
    let source = match direction {
        Direction::SledToEtcd => read_sled(data_dir).await?,
        Direction::EtcdToSled => etcd::open(settings).await?.persisted,
    };
    let _ = writeln!(report, "read {}", summary(&source));
    let copied = match direction {
        Direction::SledToEtcd => {
            etcd::write_into_empty(settings, &source).await?;
            etcd::open(settings).await?.persisted
        }
        Direction::EtcdToSled => write_sled(data_dir, &source).await?,
    };
    if copied != source {
        return Err(IpamError::Storage(format!(
            "the copy read back differs from the source ({} against {}): it is left in place for inspection; do not start on it",
            summary(&copied),
            summary(&source)
        )));
    }
    let _ = writeln!(
        report,
        "copied and read back: every record equal ({})",
        match direction {
            Direction::SledToEtcd => format!("etcd prefix {}", settings.prefix),
            Direction::EtcdToSled => format!("sled in {}", data_dir.display()),
        }
    );
    Ok(report)
}

/// sled as a start reads it: the log replayed into it first.
async fn read_sled(data_dir: &Path) -> Result<Persisted> {
    if !data_dir.join("state").exists() {
        return Err(IpamError::Config(format!(
            "{} holds no sled store (no state/ in it): nothing to copy",
            data_dir.display()
        )));
    }
    let loaded = engine::open(
        &engine::StorageConfig::Sled(data_dir.to_path_buf()),
        &IpamOptions::default(),
    )
    .await?;
    Ok(loaded.persisted)
}

/// Writes `source` into a new sled store in `data_dir` (refused if one is there), as one batch
/// at the source's revision, checkpoints it, and reads it back.
async fn write_sled(data_dir: &Path, source: &Persisted) -> Result<Persisted> {
    for existing in ["state", "wal"] {
        if data_dir.join(existing).exists() {
            return Err(IpamError::Config(format!(
                "{} already holds a store ({existing}/): copy into an empty --data-dir",
                data_dir.display()
            )));
        }
    }
    let (dir, source) = (data_dir.to_path_buf(), source.clone());
    tokio::task::spawn_blocking(move || -> Result<Persisted> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| IpamError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let store = Store::open(&dir.join("state"))?;
        store.apply(&Mutation {
            revision: source.revision,
            changes: records::changes_of(&source),
            event: None,
        })?;
        store.flush()?;
        drop(store);
        // Read back as a start would (this also makes the empty log).
        Ok(engine::load(&dir, &IpamOptions::default())?.persisted)
    })
    .await
    .map_err(|e| IpamError::Storage(format!("writing sled failed: {e}")))?
}
