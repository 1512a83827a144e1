//! What this agent owns, on disk: one file per attachment (`pods/<containerID>@<ifname>.json`) and
//! the state of its reports to routeplane-ipam (`report.json`), under --cache-dir.
//!
//! A file is written whole to a temporary name, synced, renamed over the old one and the directory
//! synced, so a crash leaves the old file or the new one, never half of either — and an allocation
//! is on disk before the agent answers ADD. A file that does not parse is not an unfinished write
//! (renames are atomic): it is refused at start, by name, rather than guessed at.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One pod interface and its addresses, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    /// "namespace/name" when the runtime named the pod.
    #[serde(default)]
    pub pod: String,
    pub ips: Vec<IpAddr>,
    /// The host side of the pod's veth pair.
    pub host_veth: String,
}

impl Attachment {
    /// The attachment's name in IPAM's view: "containerID/ifname".
    pub fn owner(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }
}

/// Where the reports to routeplane-ipam stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportState {
    /// The generation of the last report IPAM accepted.
    pub generation: u64,
    /// The pod CIDRs that report was made for: until a report for the current ones is accepted,
    /// this agent does not know what IPAM reserved in them, and hands out nothing.
    pub cidrs: Vec<String>,
    /// What AllocatePodIP holds in them (IPAM's answer).
    pub reserved: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a pod attachment record ({why}); it was not written by this agent as it is: move it away after checking the container it names, and start again"
    )]
    Corrupt { path: String, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub struct Store {
    pods: PathBuf,
    report: PathBuf,
}

/// Container IDs and interface names become file names: both are checked before they get here
/// (`cni.rs`), and neither may contain '@', which separates them.
fn file_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}@{ifname}.json")
}

impl Store {
    /// Opens (creating) the store in `dir` and reads every attachment back.
    pub fn open(dir: &Path) -> Result<(Store, Vec<Attachment>, ReportState), StoreError> {
        let pods = dir.join("pods");
        std::fs::create_dir_all(&pods).map_err(io(&pods))?;
        let mut attachments = Vec::new();
        for entry in std::fs::read_dir(&pods).map_err(io(&pods))? {
            let entry = entry.map_err(io(&pods))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temporary file of a write that never finished its rename: never acknowledged.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let a: Attachment =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })?;
            if name != file_name(&a.container_id, &a.ifname) {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    why: format!("it describes {}", a.owner()),
                });
            }
            attachments.push(a);
        }
        attachments.sort_by_key(Attachment::owner);
        let report_path = dir.join("report.json");
        let report = match std::fs::read(&report_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: report_path.display().to_string(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ReportState::default(),
            Err(e) => return Err(io(&report_path)(e)),
        };
        Ok((
            Store {
                pods,
                report: report_path,
            },
            attachments,
            report,
        ))
    }

    /// Writes an attachment durably.
    pub fn put(&self, a: &Attachment) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(a).map_err(|e| StoreError::Corrupt {
            path: a.owner(),
            why: e.to_string(),
        })?;
        write_durably(&self.pods, &file_name(&a.container_id, &a.ifname), &bytes)
    }

    /// Removes an attachment durably; one that is not there is no error.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), StoreError> {
        let path = self.pods.join(file_name(container_id, ifname));
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.pods),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub fn put_report(&self, r: &ReportState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| StoreError::Corrupt {
            path: self.report.display().to_string(),
            why: e.to_string(),
        })?;
        let dir = self.report.parent().unwrap_or(Path::new("."));
        write_durably(dir, "report.json", &bytes)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Temporary file, fsync, rename over the target, fsync the directory.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: format!("/var/run/netns/{id}"),
            pod: "default/busybox".into(),
            ips: vec!["10.5.112.2".parse().unwrap()],
            host_veth: "rp0123456789ab".into(),
        }
    }

    #[test]
    fn attachments_and_reports_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (store, none, report) = Store::open(dir.path()).unwrap();
        assert!(none.is_empty() && report == ReportState::default());
        store.put(&attachment("b")).unwrap();
        store.put(&attachment("a")).unwrap();
        store.remove("b", "eth0").unwrap();
        store.remove("never", "eth0").unwrap();
        let r = ReportState {
            generation: 9,
            cidrs: vec!["10.5.112.0/24".into()],
            reserved: vec!["10.5.112.3".parse().unwrap()],
        };
        store.put_report(&r).unwrap();
        // A write that died before its rename leaves a temporary file: never acknowledged.
        std::fs::write(dir.path().join("pods/.c@eth0.json.tmp"), b"{\"contai").unwrap();
        let (_, back, report) = Store::open(dir.path()).unwrap();
        assert_eq!(back, vec![attachment("a")]);
        assert_eq!(report, r);
        assert!(!dir.path().join("pods/.c@eth0.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_record_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = Store::open(dir.path()).unwrap();
        store.put(&attachment("a")).unwrap();
        let path = dir.path().join("pods/a@eth0.json");
        std::fs::write(&path, b"{\"container_id\": 7}").unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("a@eth0.json is not a pod attachment record"),
            "{e}"
        );
        // Renamed by hand: the record says what it is.
        std::fs::remove_file(&path).unwrap();
        store.put(&attachment("a")).unwrap();
        std::fs::rename(&path, dir.path().join("pods/z@eth0.json")).unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("it describes a/eth0"), "{e}");
    }
}
