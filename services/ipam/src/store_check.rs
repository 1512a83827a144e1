//! `routeplane-ipam --check-store`: what a data directory holds — sled's revision and every log
//! segment's records — and what a start would do with it (replay, cut a torn tail, or refuse),
//! found without changing the log. For an operator facing a start refused for corruption, and for
//! a look before restoring a backup.

use std::fmt::Write as _;
use std::path::Path;

use crate::engine::{log_gap, replay_run};
use crate::error::{IpamError, Result};
use crate::store::Store;
use crate::wal::{self, Tail};

/// Whether a start on the directory would go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Starts,
    Refuses,
}

/// The report, one line per finding, and the verdict. An error: the directory cannot be read
/// (missing, unreadable, or sled locked by a running routeplane-ipam).
pub fn check(data_dir: &Path) -> Result<(String, Verdict)> {
    if !data_dir.is_dir() {
        return Err(IpamError::Storage(format!(
            "no data directory at {} (give the one routeplane-ipam runs with, --data-dir)",
            data_dir.display()
        )));
    }
    let mut out = format!("data directory {}\n", data_dir.display());
    let state = data_dir.join("state");
    let sled = if state.exists() {
        let revision = Store::open(&state)?.revision()?;
        let _ = writeln!(out, "sled (state/): changes through revision {revision}");
        revision
    } else {
        let _ = writeln!(out, "sled (state/): none yet (revision 0)");
        0
    };
    let segments = if data_dir.join("wal").exists() {
        wal::inspect(&data_dir.join("wal"))?
    } else {
        Vec::new()
    };
    let _ = writeln!(out, "log (wal/): {} segments", segments.len());
    let last = segments.len().saturating_sub(1);
    let mut refusal = None;
    let mut records = Vec::new();
    for (i, (_, path, scan)) in segments.into_iter().enumerate() {
        let name = path.file_name().map_or(path.display().to_string(), |n| {
            n.to_string_lossy().into_owned()
        });
        let revisions = match (scan.records.first(), scan.records.last()) {
            (Some(a), Some(b)) => format!("revisions {}..={}", a.revision, b.revision),
            _ => "no records".to_string(),
        };
        let tail = match scan.tail {
            Tail::Clean => "intact".to_string(),
            Tail::Torn { at } if i == last => format!(
                "torn tail at byte {at} ({} bytes of a write that never completed, never acknowledged): a start cuts it",
                scan.bytes - at
            ),
            Tail::Torn { at } => {
                refusal.get_or_insert(format!(
                    "{name} is damaged at byte {at} and later segments follow it"
                ));
                format!("DAMAGED at byte {at}, in a segment that is not the last")
            }
            Tail::Corrupt { at, next_intact } => {
                refusal.get_or_insert(format!(
                    "{name} is corrupt at byte {at}, with intact records from byte {next_intact}"
                ));
                format!(
                    "CORRUPT at byte {at}: intact records follow from byte {next_intact}, so acknowledged changes sit past the damage"
                )
            }
        };
        let _ = writeln!(
            out,
            "  {name}: {} bytes, {} records, {revisions}, {tail}",
            scan.bytes,
            scan.records.len()
        );
        records.extend(scan.records);
    }
    if refusal.is_none()
        && let Some((expected, found)) = log_gap(sled, &records)
    {
        refusal = Some(format!(
            "the log lacks revision {expected} (sled is at {sled}, the log goes on at {found}): a segment was lost or deleted"
        ));
    }
    let verdict = match refusal {
        Some(why) => {
            let _ = writeln!(
                out,
                "a start would refuse: {why}. Restore the data directory from a backup."
            );
            Verdict::Refuses
        }
        None => {
            let run = replay_run(sled, &records);
            let new = run.iter().filter(|r| r.revision > sled).count();
            match (run.first(), run.last()) {
                (Some(a), Some(b)) => {
                    let _ = writeln!(
                        out,
                        "a start would replay revisions {}..={} ({} changes, {new} of them after sled's revision) into sled",
                        a.revision,
                        b.revision,
                        run.len()
                    );
                }
                _ => {
                    let _ = writeln!(out, "a start would replay nothing: sled has every change");
                }
            }
            Verdict::Starts
        }
    };
    Ok((out, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Change;
    use crate::wal::{Wal, WalRecord, encode};

    fn log(dir: &Path, revisions: std::ops::RangeInclusive<u64>) -> std::path::PathBuf {
        let (mut wal, _, _) = Wal::open(&dir.join("wal"), *revisions.start()).unwrap();
        let mut buf = Vec::new();
        for revision in revisions.clone() {
            let changes = vec![Change::DeletePodIps {
                node: "n".into(),
                owner: format!("o{revision}"),
            }];
            encode(&WalRecord { revision, changes }, &mut buf).unwrap();
        }
        wal.append(&buf, *revisions.start()).unwrap();
        wal.sync().unwrap();
        dir.join("wal")
            .join(format!("{:020}.wal", revisions.start()))
    }

    #[test]
    fn a_clean_log_says_what_it_replays_and_a_corrupt_one_where_it_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let seg = log(dir.path(), 1..=4);
        let (report, verdict) = check(dir.path()).unwrap();
        assert_eq!(verdict, Verdict::Starts, "{report}");
        assert!(
            report.contains("4 records, revisions 1..=4, intact"),
            "{report}"
        );
        assert!(
            report.contains("replay revisions 1..=4 (4 changes, 4 of them after sled's revision)"),
            "{report}"
        );

        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[12] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        let (report, verdict) = check(dir.path()).unwrap();
        assert_eq!(verdict, Verdict::Refuses, "{report}");
        assert!(report.contains("CORRUPT at byte 0"), "{report}");
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            bytes,
            "the check changes nothing"
        );
    }

    #[test]
    fn a_torn_tail_starts_and_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let seg = log(dir.path(), 1..=3);
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (report, verdict) = check(dir.path()).unwrap();
        assert_eq!(verdict, Verdict::Starts, "{report}");
        assert!(report.contains("torn tail at byte"), "{report}");
        assert!(report.contains("replay revisions 1..=2"), "{report}");
        let e = check(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(
            e.contains("no data directory at") && e.contains("nope"),
            "{e}"
        );
    }
}
