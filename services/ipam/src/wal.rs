//! The write-ahead log: what makes an IPAM change durable before it is acknowledged.
//!
//! sled's own flush takes milliseconds and stalls concurrent writers while it runs (measured:
//! p99.9 apply latency 24 ms under a flushing thread), so it cannot sit on the request path. Instead
//! every group of mutations is appended here and made durable with one `fdatasync`; sled is brought
//! up to date behind it and checkpointed now and then, after which the segments it covers are
//! deleted. At startup whatever the log still holds is replayed into sled, in order — records are
//! whole-value puts and deletes, so replaying some that sled already has is harmless.
//!
//! Layout: `DIR/NNNNNNNNNNNNNNNNNNNN.wal` segments named by the first revision they may hold.
//! Record: u32 LE payload length, u32 LE CRC-32 of the payload, payload (JSON [`WalRecord`]).
//! A torn tail — a record the file ends inside, a damaged last record, or a damaged record with a
//! whole unwritten (zero) sector before the next intact one — is a write that never completed, so
//! it was never acknowledged, and is cut off. A damaged record with intact ones after it, or any
//! damage in a segment that is not the last, is corruption: the start stops, naming the segment
//! and the offset, and `routeplane-ipam --check-store` shows what the log holds.

// Bytes read back from disk may be torn or corrupt: no indexing, unwrap or expect that could panic.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IpamError, Result};
use crate::model::Revision;
use crate::state::{Change, Mutation};

/// Segments roll over past this size (unless told otherwise), so that checkpoints can delete old
/// ones whole.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 8;
/// No single mutation comes near this; a larger length field is corruption.
const MAX_RECORD: u32 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRecord {
    pub revision: Revision,
    pub changes: Vec<Change>,
}

impl From<&Mutation> for WalRecord {
    fn from(m: &Mutation) -> Self {
        WalRecord {
            revision: m.revision,
            changes: m.changes.clone(),
        }
    }
}

/// A record as it is written, borrowing the mutation's changes: the same JSON as [`WalRecord`]
/// without copying every change on the request path.
#[derive(Serialize)]
struct RecordRef<'a> {
    revision: Revision,
    changes: &'a [Change],
}

/// Appends a framed record to `buf`.
pub fn encode(record: &WalRecord, buf: &mut Vec<u8>) -> Result<()> {
    encode_parts(record.revision, &record.changes, buf)
}

/// Appends a mutation as a framed record to `buf`.
pub fn encode_mutation(m: &Mutation, buf: &mut Vec<u8>) -> Result<()> {
    encode_parts(m.revision, &m.changes, buf)
}

/// The payload is serialized in place after a header filled in once its length and CRC are known:
/// no intermediate buffer to allocate and copy.
fn encode_parts(revision: Revision, changes: &[Change], buf: &mut Vec<u8>) -> Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    let framed = serde_json::to_writer(&mut *buf, &RecordRef { revision, changes })
        .map_err(|e| IpamError::Storage(format!("encoding a log record: {e}")))
        .and_then(|()| {
            let payload = buf.get(start + HEADER..).unwrap_or_default();
            let len = u32::try_from(payload.len())
                .map_err(|_| IpamError::Storage("log record over 4 GiB".into()))?;
            let [l0, l1, l2, l3] = len.to_le_bytes();
            let [c0, c1, c2, c3] = crc32fast::hash(payload).to_le_bytes();
            Ok([l0, l1, l2, l3, c0, c1, c2, c3])
        });
    match framed {
        Ok(header) => {
            if let Some(slot) = buf.get_mut(start..start + HEADER) {
                slot.copy_from_slice(&header);
            }
            Ok(())
        }
        Err(e) => {
            // Nothing of a record that could not be encoded stays in the buffer.
            buf.truncate(start);
            Err(e)
        }
    }
}

/// How every record's payload begins ([`WalRecord`] as JSON, its fields in order).
const RECORD_START: &[u8] = b"{\"revision\":";

/// A disk sector: the unit a crash leaves written or unwritten.
const SECTOR: usize = 512;

/// What follows a segment's last intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: the segment ends with an intact record.
    Clean,
    /// A write that never completed, from byte `at` to the end: nothing intact follows it, or a
    /// whole sector of zeros (one the crash left unwritten) lies between it and the next intact
    /// record. Never acknowledged: acknowledgement waits for the sync that would have finished it,
    /// and nothing is written after a sync that failed.
    Torn { at: usize },
    /// A damaged record at `at` with intact records after it, from `next_intact` on: bytes that
    /// were written and synced have changed since (a failing disk, a hand edit). Dropping it
    /// would drop acknowledged changes with it.
    Corrupt { at: usize, next_intact: usize },
}

/// A segment read back: its intact records, in order, and what follows them.
#[derive(Debug)]
pub struct SegmentScan {
    pub records: Vec<WalRecord>,
    pub bytes: usize,
    pub tail: Tail,
}

/// Reads a segment's bytes into records and tells a torn tail from corruption.
pub fn scan(bytes: &[u8]) -> SegmentScan {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, end)) = decode_at(bytes, at) {
        records.push(record);
        at = end;
    }
    let tail = if at == bytes.len() {
        Tail::Clean
    } else {
        match (at + 1..bytes.len()).find(|&o| decode_at(bytes, o).is_some()) {
            Some(next) if !holds_zero_sector(bytes, at, next) => Tail::Corrupt {
                at,
                next_intact: next,
            },
            _ => Tail::Torn { at },
        }
    };
    SegmentScan {
        records,
        bytes: bytes.len(),
        tail,
    }
}

/// The intact record framed at `at` and the offset after it; `None` where the bytes there are
/// not one (short, a length out of range, a CRC mismatch, or not a record).
fn decode_at(bytes: &[u8], at: usize) -> Option<(WalRecord, usize)> {
    let &[l0, l1, l2, l3, c0, c1, c2, c3] = bytes.get(at..at.checked_add(HEADER)?)? else {
        return None;
    };
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let end = at + HEADER + len as usize;
    let payload = bytes.get(at + HEADER..end)?;
    // Before the CRC: the search for an intact record after damage tries every offset, and random
    // bytes would otherwise cost a CRC of megabytes wherever a length happens to fit.
    if !payload.starts_with(RECORD_START) {
        return None;
    }
    if crc32fast::hash(payload) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return None;
    }
    serde_json::from_slice(payload).ok().map(|r| (r, end))
}

/// Whether a whole, sector-aligned run of zeros lies in `bytes[from..to]`: a sector a crash left
/// unwritten (the file's length already covered it). A flipped or overwritten byte never looks
/// like that, and a record never holds 512 zeros (its payload is JSON). etcd's WAL tells torn
/// writes from corruption the same way.
fn holds_zero_sector(bytes: &[u8], from: usize, to: usize) -> bool {
    let first = from.div_ceil(SECTOR) * SECTOR;
    (first..to)
        .step_by(SECTOR)
        .filter_map(|s| bytes.get(s..s + SECTOR).filter(|_| s + SECTOR <= to))
        .any(|sector| sector.iter().all(|b| *b == 0))
}

/// Every segment in `dir` (the first revision its name says it may hold, its path, what it holds),
/// oldest first; nothing is changed. For `routeplane-ipam --check-store` and [`Wal::open`].
pub fn inspect(dir: &Path) -> Result<Vec<(Revision, PathBuf, SegmentScan)>> {
    let mut out = Vec::new();
    for (first, path) in segment_paths(dir)? {
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io_err("cannot read log segment", &path, e))?;
        let scan = scan(&bytes);
        out.push((first, path, scan));
    }
    Ok(out)
}

/// The segments, ordered by the first revision in their names.
fn segment_paths(dir: &Path) -> Result<Vec<(Revision, PathBuf)>> {
    let mut segments: Vec<(Revision, PathBuf)> = fs::read_dir(dir)
        .map_err(|e| io_err("cannot list log directory", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let first = p
                .file_name()?
                .to_str()?
                .strip_suffix(".wal")?
                .parse()
                .ok()?;
            Some((first, p))
        })
        .collect();
    segments.sort();
    Ok(segments)
}

/// The error that stops a start on a damaged log, and how to look closer.
fn corrupt(dir: &Path, path: &Path, at: usize, scan: &SegmentScan, why: &str) -> IpamError {
    let data_dir = dir.parent().unwrap_or(dir);
    IpamError::Storage(format!(
        "log segment {} is corrupt at byte {at} of {} ({why}): refusing to start without the acknowledged changes it held. Inspect it with `routeplane-ipam --check-store --data-dir {}`; restore the data directory from a backup",
        path.display(),
        scan.bytes,
        data_dir.display()
    ))
}

fn segment_name(first: Revision) -> String {
    format!("{first:020}.wal")
}

fn io_err(what: &str, path: &Path, e: io::Error) -> IpamError {
    IpamError::Storage(format!("{what} {}: {e}", path.display()))
}

/// The open log. One writer (the committer); checkpoints truncate through [`Wal::truncate_through`].
pub struct Wal {
    dir: PathBuf,
    file: File,
    /// (first revision, path) of every segment, oldest first; the last is being written.
    segments: Vec<(Revision, PathBuf)>,
    written: u64,
    /// Bytes of the current segment known durable (or, without syncs, fully written): where a
    /// failed append or sync cuts the segment back to.
    kept: u64,
    segment_bytes: u64,
}

impl Wal {
    /// Opens the log in `dir`, returning what it holds (in order) for replay, and starts a new
    /// segment after it for the revisions to come (`next` and up).
    pub fn open(dir: &Path, next: Revision) -> Result<(Wal, Vec<WalRecord>, Vec<String>)> {
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create log directory", dir, e))?;
        let scanned = inspect(dir)?;
        let last = scanned.len().saturating_sub(1);
        let mut records = Vec::new();
        let mut notes = Vec::new();
        let mut segments = Vec::new();
        for (i, (first, path, mut scan)) in scanned.into_iter().enumerate() {
            match scan.tail {
                Tail::Clean => {}
                // A segment is rolled over only after its last write was synced: a bad byte in
                // one with another after it is damage, torn or not.
                Tail::Torn { at } | Tail::Corrupt { at, .. } if i < last => {
                    return Err(corrupt(
                        dir,
                        &path,
                        at,
                        &scan,
                        "and later segments follow it",
                    ));
                }
                Tail::Corrupt { at, next_intact } => {
                    let why = format!("intact records follow it from byte {next_intact}");
                    return Err(corrupt(dir, &path, at, &scan, &why));
                }
                Tail::Torn { at } => {
                    notes.push(format!(
                        "log segment {}: dropped {} bytes at byte {at}, a write that never completed (it was never acknowledged)",
                        path.display(),
                        scan.bytes - at
                    ));
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| io_err("cannot open log segment", &path, e))?;
                    f.set_len(at as u64)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io_err("cannot truncate log segment", &path, e))?;
                }
            }
            records.append(&mut scan.records);
            segments.push((first, path));
        }
        let next = records.last().map_or(next, |r| r.revision + 1).max(next);
        let path = dir.join(segment_name(next));
        let file = create_segment(&path, dir)?;
        segments.retain(|(_, p)| *p != path);
        segments.push((next, path));
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                file,
                segments,
                written: 0,
                kept: 0,
                segment_bytes: SEGMENT_BYTES,
            },
            records,
            notes,
        ))
    }

    /// Appends encoded records (see [`encode`]); `first` is the lowest revision among them. On
    /// failure, what it wrote of them is cut off again (see [`Wal::take_back`]).
    pub fn append(&mut self, bytes: &[u8], first: Revision) -> Result<()> {
        if self.written >= self.segment_bytes {
            let path = self.dir.join(segment_name(first));
            self.file = create_segment(&path, &self.dir)?;
            self.segments.push((first, path));
            self.written = 0;
            self.kept = 0;
        }
        if let Err(e) = self.file.write_all(bytes) {
            let e = io_err("cannot write log segment", self.current_path(), e);
            return Err(self.take_back(e));
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything appended durable; on failure, cuts it off again. A sync on a filesystem
    /// that has gone read-only is a failure even when it reports success (see
    /// [`crate::store::still_writable`]).
    pub fn sync(&mut self) -> Result<()> {
        let synced = self
            .file
            .sync_data()
            .and_then(|()| crate::store::still_writable(nix::sys::statvfs::fstatvfs(&self.file)));
        match synced {
            Ok(()) => {
                self.kept = self.written;
                Ok(())
            }
            Err(e) => {
                let e = io_err("cannot sync log segment", self.current_path(), e);
                Err(self.take_back(e))
            }
        }
    }

    /// For a log that is not synced (benchmarks): what was appended counts as kept.
    pub fn keep_unsynced(&mut self) {
        self.kept = self.written;
    }

    /// After a failed write or sync: cuts the segment back to its last durable byte, so that
    /// records nobody was told are durable (a disk full halfway through a group leaves some of
    /// them whole) are not replayed as if they had been, and the next append does not land after
    /// a torn record. The disk may refuse even that (a read-only remount); reopening the log later
    /// then finds them, and the service restarts to replay them (`engine.rs`).
    fn take_back(&mut self, e: IpamError) -> IpamError {
        let cut = self.file.set_len(self.kept);
        self.written = self.kept;
        match cut {
            Ok(()) => e,
            Err(cut) => {
                tracing::warn!(segment = %self.current_path().display(), error = %cut, "cannot cut a failed write off the log");
                IpamError::Storage(format!(
                    "{e}; nor could the records be cut off the log again ({cut}), so the disk may yet hold them: a restart would replay them"
                ))
            }
        }
    }

    /// The segment being appended to (there is always one; the directory if ever not).
    fn current_path(&self) -> &Path {
        self.segments.last().map_or(&self.dir, |s| &s.1)
    }

    /// Deletes the segments whose every record is at or below `revision` (known durable in sled).
    pub fn truncate_through(&mut self, revision: Revision) -> Result<usize> {
        let mut removed = 0;
        // Segment k holds revisions from its first up to just before segment k+1's first.
        while self.segments.get(1).is_some_and(|s| s.0 <= revision + 1) {
            let (_, path) = self.segments.remove(0);
            fs::remove_file(&path).map_err(|e| io_err("cannot delete log segment", &path, e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Rolls segments over past `bytes` instead of [`SEGMENT_BYTES`].
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes.max(1);
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Creates a segment and makes its directory entry durable, so a crash cannot lose the file itself.
fn create_segment(path: &Path, dir: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err("cannot create log segment", path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync log directory", dir, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(revision: Revision) -> WalRecord {
        WalRecord {
            revision,
            changes: vec![Change::DeletePodIps {
                node: "n".into(),
                owner: format!("o{revision}"),
            }],
        }
    }

    fn append(wal: &mut Wal, revisions: std::ops::RangeInclusive<Revision>) {
        let mut buf = Vec::new();
        let first = *revisions.start();
        for r in revisions {
            encode(&record(r), &mut buf).unwrap();
        }
        wal.append(&buf, first).unwrap();
        wal.sync().unwrap();
    }

    #[test]
    fn a_mutation_is_framed_as_its_record_after_what_the_buffer_held() {
        let m = Mutation {
            revision: 7,
            changes: record(7).changes,
            event: None,
        };
        let mut by_mutation = b"earlier".to_vec();
        encode_mutation(&m, &mut by_mutation).unwrap();
        let payload = &by_mutation[7 + HEADER..];
        // What the reader decodes: the owned record's JSON.
        assert_eq!(payload, serde_json::to_vec(&WalRecord::from(&m)).unwrap());
        assert_eq!(&by_mutation[..7], b"earlier");
        assert_eq!(
            by_mutation[7..7 + HEADER],
            [
                (payload.len() as u32).to_le_bytes(),
                crc32fast::hash(payload).to_le_bytes()
            ]
            .concat()
        );
        assert!(payload.starts_with(RECORD_START));
    }

    #[test]
    fn records_come_back_in_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, old, _) = Wal::open(dir.path(), 1).unwrap();
        assert!(old.is_empty());
        append(&mut wal, 1..=3);
        append(&mut wal, 4..=4);
        drop(wal);
        let (_, back, notes) = Wal::open(dir.path(), 1).unwrap();
        assert_eq!(back, (1..=4).map(record).collect::<Vec<_>>());
        assert!(notes.is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported_but_corruption_before_it_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _, _) = Wal::open(dir.path(), 1).unwrap();
        append(&mut wal, 1..=2);
        let seg = wal.segments[0].1.clone();
        drop(wal);
        // Half of a third record: a crash in the middle of a write.
        let mut tail = Vec::new();
        encode(&record(3), &mut tail).unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&tail[..tail.len() / 2]).unwrap();
        drop(f);
        let (wal, back, notes) = Wal::open(dir.path(), 1).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(notes.len(), 1, "{notes:?}");
        drop(wal);
        let (_, again, notes) = Wal::open(dir.path(), 1).unwrap();
        assert_eq!(
            (again.len(), notes.len()),
            (2, 0),
            "the tail was cut once and for all"
        );

        // A flipped byte in an older segment, with a newer one after it, is refused.
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER + 3] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        let e = Wal::open(dir.path(), 1).err().unwrap().to_string();
        assert!(
            e.contains("is corrupt at byte 0") && e.contains("refusing to start"),
            "{e}"
        );
    }

    /// Records 1..=n framed one after another, and where each begins.
    fn segment(n: Revision) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for r in 1..=n {
            starts.push(bytes.len());
            encode(&record(r), &mut bytes).unwrap();
        }
        (bytes, starts)
    }

    #[test]
    fn a_segment_of_random_bytes_is_scanned_quickly_and_called_torn() {
        // 4 MiB of noise after two records: a start must not spend minutes on it.
        let (mut bytes, _) = segment(2);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        bytes.extend((0..4 << 20).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        let started = std::time::Instant::now();
        let scan = scan(&bytes);
        assert_eq!(scan.records.len(), 2);
        assert!(matches!(scan.tail, Tail::Torn { .. }), "{:?}", scan.tail);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let mut framed = Vec::new();
        encode(&record(1), &mut framed).unwrap();
        assert!(framed[HEADER..].starts_with(RECORD_START));
    }

    #[test]
    fn a_changed_byte_in_any_record_but_the_last_is_corruption_never_a_torn_tail() {
        let (bytes, starts) = segment(20);
        // Every byte of record 10: its length, its CRC, its payload.
        for offset in starts[9]..starts[10] {
            let mut b = bytes.clone();
            b[offset] ^= 0x5a;
            let scan = scan(&b);
            assert_eq!(scan.records.len(), 9, "byte {offset}");
            assert!(
                matches!(scan.tail, Tail::Corrupt { at, next_intact } if at == starts[9] && next_intact >= starts[10]),
                "byte {offset}: {:?}",
                scan.tail
            );
        }
        // The last record damaged: nothing after it to tell, so it is the torn tail.
        let mut b = bytes.clone();
        b[starts[19] + HEADER + 2] ^= 0x5a;
        let scan = scan(&b);
        assert_eq!(
            (scan.records.len(), scan.tail),
            (19, Tail::Torn { at: starts[19] })
        );
    }

    #[test]
    fn any_cut_of_a_segment_is_a_torn_tail_never_corruption() {
        let (bytes, starts) = segment(8);
        for cut in 0..bytes.len() {
            let scan = scan(&bytes[..cut]);
            // Records that end at or before the cut are whole.
            let whole = starts.iter().skip(1).filter(|&&end| end <= cut).count();
            assert_eq!(scan.records.len(), whole, "cut at {cut}");
            let expected = if cut == starts[whole] {
                Tail::Clean
            } else {
                Tail::Torn { at: starts[whole] }
            };
            assert_eq!(scan.tail, expected, "cut at {cut}");
        }
    }

    /// A crash during a write can leave a later page written and an earlier one not: intact
    /// records after a sector of zeros were never acknowledged either.
    #[test]
    fn intact_records_after_an_unwritten_sector_are_a_torn_tail() {
        let (mut bytes, starts) = segment(60);
        let sector = starts[20].div_ceil(SECTOR) * SECTOR;
        assert!(sector + SECTOR < starts[59], "the segment spans the sector");
        bytes[sector..sector + SECTOR].fill(0);
        let scan = scan(&bytes);
        let at = starts
            .iter()
            .rev()
            .find(|&&s| s <= sector)
            .copied()
            .unwrap();
        assert!(
            matches!(scan.tail, Tail::Torn { at: a } if a == at),
            "{:?}",
            scan.tail
        );
        // Zeros short of a whole sector are damage, not an unwritten sector.
        let (mut bytes, _) = segment(60);
        bytes[sector + 1..sector + SECTOR].fill(0);
        assert!(matches!(super::scan(&bytes).tail, Tail::Corrupt { .. }));
    }

    #[test]
    fn a_corrupt_middle_record_in_the_last_segment_stops_the_start_naming_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let (mut wal, _, _) = Wal::open(&wal_dir, 1).unwrap();
        append(&mut wal, 1..=5);
        let seg = wal.segments[0].1.clone();
        drop(wal);
        let (_, starts) = segment(5);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[starts[2] + HEADER + 5] ^= 1;
        fs::write(&seg, &bytes).unwrap();
        let e = Wal::open(&wal_dir, 1).err().unwrap().to_string();
        assert!(
            e.contains(&format!("is corrupt at byte {}", starts[2]))
                && e.contains(&format!("intact records follow it from byte {}", starts[3]))
                && e.contains("--check-store --data-dir")
                && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
        assert_eq!(
            fs::read(&seg).unwrap(),
            bytes,
            "nothing cut from a corrupt log"
        );
    }

    #[test]
    fn truncation_deletes_only_fully_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _, _) = Wal::open(dir.path(), 1).unwrap();
        append(&mut wal, 1..=5);
        // Force rollovers.
        wal.written = SEGMENT_BYTES;
        append(&mut wal, 6..=8);
        wal.written = SEGMENT_BYTES;
        append(&mut wal, 9..=9);
        assert_eq!(wal.segment_count(), 3);
        assert_eq!(
            wal.truncate_through(6).unwrap(),
            1,
            "segment 1..=5 is covered, 6..=8 is not"
        );
        assert_eq!(wal.truncate_through(8).unwrap(), 1);
        assert_eq!(
            wal.truncate_through(100).unwrap(),
            0,
            "the segment being written stays"
        );
        drop(wal);
        let (_, back, _) = Wal::open(dir.path(), 1).unwrap();
        assert_eq!(back, vec![record(9)]);
    }
}
