//! Loading and feeding the eBPF datapath (bpf/route.c) with aya: the classifier goes on each
//! pod-facing interface's ingress, and two LPM tries (IPv4, IPv6) hold one entry per other node's
//! pod CIDR (next hop and interface), kept in step with the desired routes (see `lpm`).
//!
//! Everything lives on in the pin directory (default /sys/fs/bpf/routeplane): the maps, pinned by
//! name, and one TCX link per interface (`link-<iface>`), so packets keep being forwarded while
//! the agent is stopped or restarting. A restarted agent reuses the maps and swaps its freshly
//! loaded program into the pinned links atomically; `--uninstall-ebpf` removes the directory,
//! which detaches the classifier and frees the maps.

use std::collections::BTreeMap;
use std::path::Path;

use routeplane_net::Cidr;

use crate::desired::Route;
#[cfg(ebpf)]
use crate::lpm::{self, Entries};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "routeplane-agent was built without its eBPF datapath (no clang at build time): run with --datapath kernel, or rebuild with clang-14 and libbpf-dev installed"
    )]
    NotBuilt,
    #[error("eBPF: {0}")]
    Ebpf(String),
}

pub(crate) fn err(e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Ebpf(e.to_string())
}

#[cfg(ebpf)]
pub struct Datapath {
    bpf: aya::Ebpf,
    /// What the LPM maps hold, when known.
    mirror: Option<Entries>,
    pin_dir: std::path::PathBuf,
}

#[cfg(ebpf)]
const V4: &str = "rp_routes_v4";
#[cfg(ebpf)]
const V6: &str = "rp_routes_v6";

#[cfg(ebpf)]
impl Datapath {
    /// Loads the classifier (reusing the maps pinned in `pin_dir`) and attaches it to the ingress
    /// of every interface named, through the link pinned for it when there is one.
    pub fn attach(interfaces: &[String], pin_dir: &Path) -> Result<Datapath, DatapathError> {
        use aya::programs::SchedClassifier;
        std::fs::create_dir_all(pin_dir).map_err(|e| {
            err(format!(
                "creating {}: {e}; it must be on a bpffs (mount -t bpf bpf /sys/fs/bpf, or a Kubernetes hostPath of the host's /sys/fs/bpf)",
                pin_dir.display()
            ))
        })?;
        let mut bpf = aya::EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(include_bytes!(concat!(env!("OUT_DIR"), "/route.bpf.o")))
            .map_err(|e| {
                err(format!(
                    "loading (maps pinned in {} by an incompatible build are removed by --uninstall-ebpf): {e}",
                    pin_dir.display()
                ))
            })?;
        let program: &mut SchedClassifier = bpf
            .program_mut("rp_route")
            .ok_or_else(|| err("no rp_route program"))?
            .try_into()
            .map_err(err)?;
        program.load().map_err(err)?;
        for iface in interfaces {
            attach_pinned(program, iface, &pin_dir.join(format!("link-{iface}")))?;
        }
        Ok(Datapath {
            bpf,
            mirror: None,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Makes the LPM maps hold exactly the routes given; returns (added or changed, removed).
    /// Only the difference reaches the kernel, one syscall per entry: the maps' contents are
    /// mirrored here (read from the maps once, and again after any failed write), since this
    /// agent is their only writer.
    pub fn sync(&mut self, routes: BTreeMap<Cidr, Route>) -> Result<(usize, usize), DatapathError> {
        let want = lpm::entries_of(routes);
        // On failure the mirror stays unknown, so the next pass reads the maps again.
        let have = match self.mirror.take() {
            Some(m) => m,
            None => self.read()?,
        };
        let (upserts, removals) = lpm::diff(&want, &have);
        let (v4, v6) = (self.pin_dir.join(V4), self.pin_dir.join(V6));
        // Each family's map takes the entries whose addresses fit its keys and skips the rest.
        lpm::remove::<4, 8>(&v4, &removals)?;
        lpm::remove::<16, 20>(&v6, &removals)?;
        lpm::insert::<4, 8>(&v4, &upserts)?;
        lpm::insert::<16, 20>(&v6, &upserts)?;
        self.mirror = Some(want);
        Ok((upserts.len(), removals.len()))
    }

    fn read(&self) -> Result<Entries, DatapathError> {
        let v4 = lpm::read::<4, 8>(&self.pin_dir.join(V4))?;
        let v6 = lpm::read::<16, 20>(&self.pin_dir.join(V6))?;
        Ok(v4
            .into_iter()
            .chain(v6)
            .map(|r| (r.destination, r))
            .collect())
    }

    /// The maps' entries, as routes.
    pub fn entries(&self) -> Vec<Route> {
        match &self.mirror {
            Some(m) => m.values().copied().collect(),
            None => self
                .read()
                .map(|m| m.into_values().collect())
                .unwrap_or_default(),
        }
    }

    /// Packets forwarded and passed, summed over CPUs.
    pub fn counters(&self) -> (u64, u64) {
        use aya::maps::PerCpuArray;
        let Some(map) = self.bpf.map("rp_counters") else {
            return (0, 0);
        };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return (0, 0);
        };
        let sum = |i: u32| array.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        (sum(0), sum(1))
    }
}

/// Points the pinned link of `iface` at `program`, or attaches a new TCX link and pins it. A
/// pinned link whose interface has gone (its namespace deleted, say) is replaced.
#[cfg(ebpf)]
fn attach_pinned(
    program: &mut aya::programs::SchedClassifier,
    iface: &str,
    pin: &Path,
) -> Result<(), DatapathError> {
    use aya::programs::links::{FdLink, PinnedLink};
    use aya::programs::{LinkOrder, TcAttachType, tc::TcAttachOptions};
    if let Ok(old) = PinnedLink::from_pin(pin) {
        let reused = FdLink::from(old)
            .try_into()
            .map_err(err)
            .and_then(|link| program.attach_to_link(link).map_err(err));
        match reused {
            // The link stays pinned; the program inside it is now this run's.
            Ok(_) => {
                tracing::info!(interface = iface, "classifier swapped into the pinned link");
                return Ok(());
            }
            Err(e) => {
                tracing::info!(interface = iface, error = %e, "pinned link unusable: attaching anew");
                std::fs::remove_file(pin).map_err(err)?;
            }
        }
    }
    let id = program
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| err(format!("attaching to {iface} (TCX needs Linux 6.6): {e}")))?;
    let link: FdLink = program
        .take_link(id)
        .map_err(err)?
        .try_into()
        .map_err(err)?;
    link.pin(pin)
        .map_err(|e| err(format!("pinning {}: {e}", pin.display())))?;
    tracing::info!(interface = iface, pin = %pin.display(), "classifier attached and pinned");
    Ok(())
}

/// Removes everything the datapath left in `pin_dir`: the links (which detaches the classifier)
/// and the maps. Returns the names removed; a missing directory is nothing to do.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<String>, DatapathError> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(err(format!("reading {}: {e}", pin_dir.display()))),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err)?;
        std::fs::remove_file(entry.path())
            .map_err(|e| err(format!("removing {}: {e}", entry.path().display())))?;
        removed.push(entry.file_name().to_string_lossy().into_owned());
    }
    std::fs::remove_dir(pin_dir)
        .map_err(|e| err(format!("removing {}: {e}", pin_dir.display())))?;
    removed.sort();
    Ok(removed)
}

/// Stand-in when the agent was built without clang: asking for the datapath says so.
#[cfg(not(ebpf))]
pub struct Datapath;

#[cfg(not(ebpf))]
impl Datapath {
    pub fn attach(_: &[String], _: &Path) -> Result<Datapath, DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn sync(&mut self, _: BTreeMap<Cidr, Route>) -> Result<(usize, usize), DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn entries(&self) -> Vec<Route> {
        vec![]
    }

    pub fn counters(&self) -> (u64, u64) {
        (0, 0)
    }
}
