//! Loading and feeding the eBPF datapath (bpf/route.c) with aya: `rp_pod` goes on the ingress of
//! each pod's host-side veth (and of any --pod-interface), `rp_uplink` on the node's own
//! interfaces; two LPM tries (IPv4, IPv6) hold one entry per other node's pod CIDR (next hop and
//! interface), kept in step with the desired routes (see `lpm`), and two small ones this node's
//! pod CIDRs with their router IPs, for the hop rule the programs keep.
//!
//! Everything outlives the agent, so packets keep being forwarded while it is stopped or
//! restarting: the maps, pinned by name in the pin directory (default /sys/fs/bpf/routeplane); one
//! TCX link per uplink and --pod-interface, pinned there too (`uplink-<iface>`, `link-<iface>`); and
//! on each pod's veth a tc filter (clsact, cls_bpf over netlink, at a fixed priority and handle),
//! which lives as long as the veth. A pod's attach is the legacy tc one because a TCX attach waits
//! for an RCU grace period under the RTNL lock — 5–15 ms measured, holding up every other pod's
//! wiring — where this one takes 0.2–0.9 ms. A restarted agent reuses the maps and swaps its
//! freshly loaded programs in atomically (into the pinned links, over the pods' filters); a pod's
//! filter goes with its veth (DEL, GC); `--uninstall-ebpf` removes the pin directory, which
//! detaches the pinned links and frees the maps once the pods' filters are gone too.

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

/// The datapath as the agent's loop and its CNI handlers share it.
pub type SharedDatapath = std::sync::Arc<std::sync::Mutex<Datapath>>;

pub fn lock(dp: &SharedDatapath) -> std::sync::MutexGuard<'_, Datapath> {
    dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which program an interface gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A pod's host-side veth: `rp_pod`, pinned as `link-<iface>`.
    Pod,
    /// One of the node's own interfaces: `rp_uplink`, pinned as `uplink-<iface>`.
    Uplink,
}

impl Side {
    #[cfg(ebpf)]
    fn program(self) -> &'static str {
        match self {
            Side::Pod => "rp_pod",
            Side::Uplink => "rp_uplink",
        }
    }

    #[cfg(ebpf)]
    fn pin(self, iface: &str) -> String {
        match self {
            Side::Pod => format!("link-{iface}"),
            Side::Uplink => format!("uplink-{iface}"),
        }
    }
}

/// Counters of the programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub forwarded: u64,
    pub passed: u64,
    /// Packets whose TTL (hop limit) ran out on this node, dropped without an answer.
    pub hop_drops: u64,
}

#[cfg(ebpf)]
pub struct Datapath {
    bpf: aya::Ebpf,
    /// What the LPM maps hold, when known.
    mirror: Option<Entries>,
    pin_dir: std::path::PathBuf,
    /// Interfaces this run attached to (or took over), per side.
    attached: std::collections::BTreeSet<(String, bool)>,
    /// Pods' veths carrying this run's `rp_pod` filter.
    pods: std::collections::BTreeSet<String>,
}

/// A pod filter's place in the veth's ingress: fixed, so that a restarted agent finds (and
/// replaces) the one an earlier run left.
#[cfg(ebpf)]
const POD_FILTER_PRIORITY: u16 = 1;
#[cfg(ebpf)]
const POD_FILTER_HANDLE: aya::programs::tc::TcHandle = aya::programs::tc::TcHandle::new(0, 1);

#[cfg(ebpf)]
const V4: &str = "rp_routes_v4";
#[cfg(ebpf)]
const V6: &str = "rp_routes_v6";
#[cfg(ebpf)]
const LOCAL_V4: &str = "rp_local_v4";
#[cfg(ebpf)]
const LOCAL_V6: &str = "rp_local_v6";

#[cfg(ebpf)]
impl Datapath {
    /// Loads both programs (reusing the maps pinned in `pin_dir`) and attaches `rp_pod` to the
    /// ingress of every interface named, through the link pinned for it when there is one.
    pub fn attach(interfaces: &[String], pin_dir: &Path) -> Result<Datapath, DatapathError> {
        let mut dp = Datapath::load(pin_dir)?;
        for iface in interfaces {
            dp.attach_to(iface, Side::Pod)?;
        }
        Ok(dp)
    }

    /// Loads both programs, reusing the maps pinned in `pin_dir`; attaches nothing.
    pub fn load(pin_dir: &Path) -> Result<Datapath, DatapathError> {
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
        for name in [Side::Pod.program(), Side::Uplink.program()] {
            let program: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| err(format!("no {name} program")))?
                .try_into()
                .map_err(err)?;
            program.load().map_err(err)?;
        }
        Ok(Datapath {
            bpf,
            mirror: None,
            pin_dir: pin_dir.to_path_buf(),
            attached: std::collections::BTreeSet::new(),
            pods: std::collections::BTreeSet::new(),
        })
    }

    /// Attaches a side's program to `iface` (through its pinned link when there is one); nothing
    /// to do when this run already did.
    pub fn attach_to(&mut self, iface: &str, side: Side) -> Result<(), DatapathError> {
        use aya::programs::SchedClassifier;
        let id = (iface.to_string(), side == Side::Pod);
        // A pin removed by hand took its link with it: attach again.
        if self.attached.contains(&id) && self.pin_dir.join(side.pin(iface)).exists() {
            return Ok(());
        }
        let program: &mut SchedClassifier = self
            .bpf
            .program_mut(side.program())
            .ok_or_else(|| err(format!("no {} program", side.program())))?
            .try_into()
            .map_err(err)?;
        attach_pinned(program, iface, &self.pin_dir.join(side.pin(iface)))?;
        self.attached.insert(id);
        Ok(())
    }

    /// `rp_pod` on a pod's veth: a tc filter (clsact qdisc, cls_bpf over netlink), or this run's
    /// program swapped into the filter an earlier run left.
    pub fn attach_pod(&mut self, iface: &str) -> Result<(), DatapathError> {
        use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions};
        use aya::programs::{SchedClassifier, TcAttachType};
        if self.pods.contains(iface) {
            return Ok(());
        }
        // Already there on a veth an earlier run wired: that is what this is for.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        let program: &mut SchedClassifier = self
            .bpf
            .program_mut(Side::Pod.program())
            .ok_or_else(|| err("no rp_pod program"))?
            .try_into()
            .map_err(err)?;
        let options = NlOptions {
            priority: POD_FILTER_PRIORITY,
            handle: POD_FILTER_HANDLE,
            ..NlOptions::default()
        };
        let id = match program.attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(options),
        ) {
            Ok(id) => id,
            Err(first) => {
                // The filter an earlier run left (attach refuses to create it twice): replace its program.
                let link = SchedClassifierLink::attached(
                    iface,
                    TcAttachType::Ingress,
                    POD_FILTER_PRIORITY,
                    POD_FILTER_HANDLE,
                    None,
                )
                .map_err(|e| err(format!("tc filter on {iface}: {first}; {e}")))?;
                program
                    .attach_to_link(link)
                    .map_err(|e| err(format!("tc filter on {iface}: {first}; replacing it: {e}")))?
            }
        };
        // Owned by the veth from now on: dropping the link would detach it.
        std::mem::forget(program.take_link(id).map_err(err)?);
        self.pods.insert(iface.to_string());
        Ok(())
    }

    /// A pod's veth is gone (its filter with it).
    pub fn forget_pod(&mut self, iface: &str) {
        self.pods.remove(iface);
    }

    /// Whether a pod's veth carries this run's classifier.
    pub fn has_pod(&self, iface: &str) -> bool {
        self.pods.contains(iface)
    }

    /// This node's pod CIDRs with their router IPs, for the hop rule.
    pub fn set_local(&mut self, local: &[(Cidr, std::net::IpAddr)]) -> Result<(), DatapathError> {
        let want: Entries = local
            .iter()
            .map(|(cidr, router)| {
                (
                    *cidr,
                    Route {
                        destination: *cidr,
                        gateway: Some(*router),
                        ifindex: 0,
                    },
                )
            })
            .collect();
        let (v4, v6) = (self.pin_dir.join(LOCAL_V4), self.pin_dir.join(LOCAL_V6));
        let have: Entries = lpm::read::<4, 8>(&v4)?
            .into_iter()
            .chain(lpm::read::<16, 20>(&v6)?)
            .map(|r| (r.destination, r))
            .collect();
        let (upserts, removals) = lpm::diff(&want, &have);
        lpm::remove::<4, 8>(&v4, &removals)?;
        lpm::remove::<16, 20>(&v6, &removals)?;
        lpm::insert::<4, 8>(&v4, &upserts)?;
        lpm::insert::<16, 20>(&v6, &upserts)?;
        Ok(())
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
    pub fn entries(&self) -> Result<Vec<Route>, DatapathError> {
        match &self.mirror {
            Some(m) => Ok(m.values().copied().collect()),
            None => self.read().map(|m| m.into_values().collect()),
        }
    }

    /// The programs' counters, summed over CPUs; an error when a map cannot be read (a zero
    /// would read as "nothing happened").
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        use aya::maps::PerCpuArray;
        let sum = |name: &str, i: u32| -> Result<u64, DatapathError> {
            let map = self
                .bpf
                .map(name)
                .ok_or_else(|| err(format!("no {name} map")))?;
            let array = PerCpuArray::<_, u64>::try_from(map).map_err(err)?;
            let values = array
                .get(&i, 0)
                .map_err(|e| err(format!("reading {name}[{i}]: {e}")))?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            forwarded: sum("rp_counters", 0)?,
            passed: sum("rp_counters", 1)?,
            hop_drops: sum("rp_hop_drops", 0)?,
        })
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
    let mut removed = remove_pod_filters();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(err(format!("reading {}: {e}", pin_dir.display()))),
    };
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

/// The pods' filters (on the veths named like a pod's host side, in /sys/class/net): removed,
/// as "filter-<iface>".
fn remove_pod_filters() -> Vec<String> {
    let Ok(links) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    links
        .filter_map(Result::ok)
        .map(|l| l.file_name().to_string_lossy().into_owned())
        .filter(|name| crate::pods::wiring::is_host_veth(name))
        .filter(|name| {
            aya::programs::tc::qdisc_detach_program(
                name,
                aya::programs::TcAttachType::Ingress,
                "rp_pod",
            )
            .is_ok()
        })
        .map(|name| format!("filter-{name}"))
        .collect()
}

/// Stand-in when the agent was built without clang: asking for the datapath says so.
#[cfg(not(ebpf))]
pub struct Datapath;

#[cfg(not(ebpf))]
impl Datapath {
    pub fn attach(_: &[String], _: &Path) -> Result<Datapath, DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn load(_: &Path) -> Result<Datapath, DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn attach_to(&mut self, _: &str, _: Side) -> Result<(), DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn attach_pod(&mut self, _: &str) -> Result<(), DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn has_pod(&self, _: &str) -> bool {
        false
    }

    pub fn forget_pod(&mut self, _: &str) {}

    pub fn set_local(&mut self, _: &[(Cidr, std::net::IpAddr)]) -> Result<(), DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn sync(&mut self, _: BTreeMap<Cidr, Route>) -> Result<(usize, usize), DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn entries(&self) -> Result<Vec<Route>, DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn counters(&self) -> Result<Counters, DatapathError> {
        Err(DatapathError::NotBuilt)
    }
}
