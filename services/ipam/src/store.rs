//! The sled seam: the materialized allocation state. One tree, keys by prefix, one atomic batch per
//! [`Mutation`] (its records and the revision together). sled trails the write-ahead log
//! (`wal.rs`), which is what makes a change durable; `flush` here is the checkpoint after which the
//! log segments it covers can go.
//!
//! The record layout is `records.rs`'s, shared with the etcd store.

use std::path::Path;

use crate::error::{IpamError, Result};
use crate::records::{self, REVISION, Write};
use crate::state::{Mutation, Persisted};

pub struct Store {
    db: sled::Db,
    path: std::path::PathBuf,
}

/// sled's segment size for new stores. sled 0.34's default, 512 KiB, deadlocks within a minute of
/// allocating and releasing at full load (threads waiting on each other in its segment accountant,
/// sled#1412: `bench/run-ipam --soak` showed it three times in three runs); with 8 MiB segments it
/// ran 10 minutes without.
const SLED_SEGMENT: usize = 8 << 20;
const SLED_SEGMENT_BEFORE: usize = 512 << 10;

fn open_sled(path: &Path, segment: usize) -> sled::Result<sled::Db> {
    // sled lets go of its file lock only when the last of its threads holding the dropped Db ends,
    // a moment after the drop: a reopen in the same process (--copy-store reads back the store it
    // just wrote) can meet its own lock still held. Bounded, so that another process holding the
    // store is still reported, after 2 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open_sled_once(path, segment) {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn open_sled_once(path: &Path, segment: usize) -> sled::Result<sled::Db> {
    // No background flushes: what is durable in sled is what a checkpoint flushed, and the log
    // holds everything after it. (sled's default flushes every 500 ms, which made a crash lose
    // less than the design allows for and so hid mistakes in what the log keeps.)
    sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .segment_size(segment)
        .open()
}

/// Adds a mutation's writes to `batch`.
fn add_changes(batch: &mut sled::Batch, m: &Mutation) -> Result<()> {
    let mut out = Vec::new();
    for change in &m.changes {
        records::writes(change, &mut out)?;
    }
    for w in out {
        match w {
            Write::Put(k, v) => batch.insert(k, v),
            Write::Delete(k) => batch.remove(k),
        }
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = match open_sled(path, SLED_SEGMENT) {
            // A store made before sled's segment size was raised keeps the size it was made with
            // (sled refuses to change it): it works, with the old exposure to sled#1412.
            Err(sled::Error::Unsupported(why)) if why.contains("io buffer size") => {
                tracing::warn!(
                    store = %path.display(),
                    "this sled store was made with 512 KiB segments, which sled 0.34 can deadlock on under sustained load (sled#1412; routeplane-ipam then fails and restarts); new stores use 8 MiB"
                );
                open_sled(path, SLED_SEGMENT_BEFORE)
            }
            other => other,
        }
        .map_err(|e| {
            IpamError::Storage(format!(
                "cannot open data directory {}: {e} (is another routeplane-ipam using it?)",
                path.display()
            ))
        })?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
        })
    }

    /// The revision of the last mutation applied (0 for a new store).
    pub fn revision(&self) -> Result<u64> {
        match self.db.get(REVISION)? {
            Some(v) => records::read_revision(&v),
            None => Ok(0),
        }
    }

    /// Reads back everything: the core rebuilds its indexes from these records. Keys outside the
    /// layout are left alone, as they always were here. sled keeps no Watch history: after a
    /// restart watchers resume with a snapshot.
    pub fn load(&self) -> Result<Persisted> {
        let mut reader = records::Reader::default();
        for item in self.db.iter() {
            let (k, v) = item?;
            reader.add(&k, &v)?;
        }
        Ok(reader.finish().0)
    }

    /// Writes one mutation atomically (not yet durable).
    pub fn apply(&self, m: &Mutation) -> Result<()> {
        self.apply_all(std::slice::from_ref(m))
    }

    /// Writes mutations, in order, as one atomic sled batch (not yet durable): sled holds all of
    /// them or none, and its revision is the last one's. One batch for many is what makes sled
    /// keep up: sled 0.34 writes out and syncs (`sync_file_range`) its IO buffer twice for every
    /// batch, whatever its size (`pin_log`), so a batch per mutation cost two disk writes per
    /// allocation — half the service's CPU at full load, in sled's IO threads. A key written twice
    /// keeps its last value (sled's batch is a map).
    pub fn apply_all(&self, mutations: &[Mutation]) -> Result<()> {
        let Some(last) = mutations.last() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for m in mutations {
            add_changes(&mut batch, m)?;
        }
        batch.insert(REVISION, &records::revision_value(last.revision));
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Checkpoint: makes every mutation applied so far durable in sled. Refused on a filesystem
    /// that has gone read-only, whose fsync reports success without writing (see
    /// [`still_writable`]): the log behind this checkpoint must not be deleted on its word.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        still_writable(nix::sys::statvfs::statvfs(&self.path))
            .map_err(|e| IpamError::Storage(format!("checkpoint of {}: {e}", self.path.display())))
    }
}

/// Fails if the filesystem `stat` describes is read-only. ext4 remounts itself read-only after an
/// error (`errors=remount-ro`, the usual setting) and from then on answers fsync with success
/// while writing nothing, so data written just before is acknowledged as durable and then lost.
/// A sync is trusted only if the filesystem is still writable after it.
pub fn still_writable(stat: nix::Result<nix::sys::statvfs::Statvfs>) -> std::io::Result<()> {
    let flags = stat.map_err(std::io::Error::from)?.flags();
    if flags.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ReadOnlyFilesystem,
            "the filesystem is read-only now (Read-only file system), so the sync may have written nothing",
        ));
    }
    Ok(())
}

/// The filesystem type holding `path` (from /proc/mounts), to warn when durability is an illusion
/// (tmpfs: a flush costs nothing and survives nothing).
pub fn filesystem_type(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(dir).then(|| (dir.len(), fs.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Node, ServiceIp};
    use crate::state::{AgentPod, Change, PodIps};

    #[test]
    fn a_store_made_with_the_old_segment_size_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let old = open_sled(dir.path(), SLED_SEGMENT_BEFORE).unwrap();
        old.insert(REVISION, &7u64.to_be_bytes()).unwrap();
        old.flush().unwrap();
        drop(old);
        assert!(
            open_sled(dir.path(), SLED_SEGMENT).is_err(),
            "sled refuses a new segment size"
        );
        // sled's own threads may hold the dropped database's lock a moment longer.
        let started = std::time::Instant::now();
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if started.elapsed() > std::time::Duration::from_secs(5) => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        assert_eq!(store.revision().unwrap(), 7);
    }

    #[test]
    fn mutations_round_trip_through_sled() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node {
            name: "a".into(),
            addresses: vec!["10.4.94.10".parse().unwrap()],
            labels: BTreeMap::from([("kubernetes/route".into(), "bgp-peer-83".into())]),
            pod_cidrs: vec!["10.5.112.0/24".parse().unwrap()],
            ready: true,
            draining: false,
            drain_ends_on_register: false,
            held_down: false,
            revision: 1,
        };
        let svc = ServiceIp {
            service: "default/web".into(),
            ip: "10.5.120.0".parse().unwrap(),
            pool: "default".into(),
        };
        let attachment = AgentPod {
            pod: "default/busybox".into(),
        };
        {
            let s = Store::open(dir.path()).unwrap();
            s.apply(&Mutation {
                revision: 1,
                changes: vec![Change::PutNode(node.clone())],
                event: None,
            })
            .unwrap();
            let pods = |o: &str, agent: Option<AgentPod>| Change::PutPodIps {
                node: "a".into(),
                owner: o.into(),
                ips: vec!["10.5.112.2".parse().unwrap()],
                agent,
            };
            s.apply(&Mutation {
                revision: 2,
                changes: vec![
                    pods("x", None),
                    pods("y", None),
                    pods("c1/eth0", Some(attachment.clone())),
                    Change::PutPodSync {
                        node: "a".into(),
                        generation: 7,
                    },
                ],
                event: None,
            })
            .unwrap();
            s.apply(&Mutation {
                revision: 3,
                changes: vec![
                    Change::DeletePodIps {
                        node: "a".into(),
                        owner: "y".into(),
                    },
                    Change::PutServiceIp(svc.clone()),
                ],
                event: None,
            })
            .unwrap();
            s.flush().unwrap();
            assert!(
                Store::open(dir.path()).is_err(),
                "a second opener is refused while the first holds it"
            );
        }
        let p = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(p.revision, 3);
        assert_eq!(p.nodes, vec![node]);
        let held = |agent| PodIps {
            ips: vec!["10.5.112.2".parse().unwrap()],
            agent,
        };
        assert_eq!(
            p.pod_ips,
            vec![
                (
                    "a".to_string(),
                    "c1/eth0".to_string(),
                    held(Some(attachment))
                ),
                ("a".to_string(), "x".to_string(), held(None)),
            ]
        );
        assert_eq!(p.pod_syncs, vec![("a".to_string(), 7)]);
        assert_eq!(p.service_ips, vec![svc]);
    }

    /// The materializer's batches: many mutations, one sled batch; the last write of a key wins
    /// and sled's revision is the last mutation's.
    #[test]
    fn mutations_applied_together_leave_the_last_write_of_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let put = |owner: &str, ip: &str| Change::PutPodIps {
            node: "a".into(),
            owner: owner.into(),
            ips: vec![ip.parse().unwrap()],
            agent: None,
        };
        let at = |revision, changes| Mutation {
            revision,
            changes,
            event: None,
        };
        s.apply_all(&[
            at(4, vec![put("x", "10.5.112.2"), put("y", "10.5.112.3")]),
            at(5, vec![put("x", "10.5.112.9")]),
            at(
                6,
                vec![Change::DeletePodIps {
                    node: "a".into(),
                    owner: "y".into(),
                }],
            ),
        ])
        .unwrap();
        s.apply_all(&[]).unwrap();
        let p = s.load().unwrap();
        assert_eq!(p.revision, 6);
        assert_eq!(
            p.pod_ips,
            vec![(
                "a".to_string(),
                "x".to_string(),
                PodIps {
                    ips: vec!["10.5.112.9".parse().unwrap()],
                    agent: None
                }
            )]
        );
    }

    #[test]
    fn filesystem_type_is_found() {
        let fs = filesystem_type(Path::new("/proc")).unwrap();
        assert_eq!(fs, "proc");
    }
}
