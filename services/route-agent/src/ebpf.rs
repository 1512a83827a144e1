//! Loading and feeding the eBPF datapath (bpf/route.c) with aya: the classifier goes on each
//! pod-facing interface's ingress, and the LPM trie holds one entry per other node's IPv4 pod CIDR
//! (next hop and interface), kept in step with the desired routes by diffing its keys.
//!
//! Everything lives on in the pin directory (default /sys/fs/bpf/routeplane): the maps, pinned by
//! name, and one TCX link per interface (`link-<iface>`), so packets keep being forwarded while
//! the agent is stopped or restarting. A restarted agent reuses the maps and swaps its freshly
//! loaded program into the pinned links atomically; `--uninstall-ebpf` removes the directory,
//! which detaches the classifier and frees the maps.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use routeplane_net::Cidr;

use crate::desired::Route;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "routeplane-agent was built without its eBPF datapath (no clang at build time): run with --datapath kernel, or rebuild with clang-14 and libbpf-dev installed"
    )]
    NotBuilt,
    #[error("eBPF: {0}")]
    Ebpf(String),
}

fn err(e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Ebpf(e.to_string())
}

/// Value of an LPM entry, as `struct nexthop_v4`: interface index (native order), then the next
/// hop's address.
fn nexthop(route: &Route) -> Option<[u8; 8]> {
    let IpAddr::V4(gw) = route.gateway else {
        return None;
    };
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&route.ifindex.to_ne_bytes());
    v[4..].copy_from_slice(&gw.octets());
    Some(v)
}

fn key_of(cidr: &Cidr) -> Option<aya::maps::lpm_trie::Key<[u8; 4]>> {
    let IpAddr::V4(net) = cidr.network() else {
        return None;
    };
    Some(aya::maps::lpm_trie::Key::new(
        u32::from(cidr.prefix_len()),
        net.octets(),
    ))
}

/// An LPM key: (prefix length, IPv4 network).
type LpmKey = (u32, [u8; 4]);
/// LPM entries: key → `struct nexthop_v4`.
type Entries = BTreeMap<LpmKey, [u8; 8]>;

/// The entries for the IPv4 routes given (others have no place in the map).
fn entries_of(routes: &BTreeMap<Cidr, Route>) -> Entries {
    routes
        .values()
        .filter_map(|r| Some((key_of(&r.destination)?, nexthop(r)?)))
        .map(|(k, v)| ((k.prefix_len(), k.data()), v))
        .collect()
}

/// What to write so that `have` becomes `want`: entries to insert or overwrite, keys to remove.
fn diff(want: &Entries, have: &Entries) -> (Entries, Vec<LpmKey>) {
    let upserts = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let removals = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .copied()
        .collect();
    (upserts, removals)
}

#[cfg(ebpf)]
pub struct Datapath {
    bpf: aya::Ebpf,
    /// What the LPM map holds, when known.
    mirror: Option<Entries>,
    map_pin: std::path::PathBuf,
}

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
            map_pin: pin_dir.join("rp_routes_v4"),
        })
    }

    /// Makes the LPM trie hold exactly the IPv4 routes given; returns (added or changed, removed).
    /// Only the difference reaches the kernel, one syscall per entry: the map's contents are
    /// mirrored here (read from the map once, and again after any failed write), since this
    /// agent is the map's only writer.
    pub fn sync(
        &mut self,
        routes: &BTreeMap<Cidr, Route>,
    ) -> Result<(usize, usize), DatapathError> {
        use aya::maps::LpmTrie;
        let want = entries_of(routes);
        let map = self
            .bpf
            .map_mut("rp_routes_v4")
            .ok_or_else(|| err("no rp_routes_v4 map"))?;
        let mut trie: LpmTrie<_, [u8; 4], [u8; 8]> = LpmTrie::try_from(map).map_err(err)?;
        let mirror = match self.mirror.take() {
            Some(m) => m,
            None => trie
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| ((k.prefix_len(), k.data()), v))
                .collect(),
        };
        let (upserts, removals) = diff(&want, &mirror);
        // On failure the mirror stays unknown, so the next pass reads the map again.
        for (len, addr) in &removals {
            trie.remove(&aya::maps::lpm_trie::Key::new(*len, *addr))
                .map_err(err)?;
        }
        let upserts: Vec<_> = upserts.into_iter().collect();
        if upserts.len() < PARALLEL_FROM {
            for ((len, addr), value) in &upserts {
                trie.insert(&aya::maps::lpm_trie::Key::new(*len, *addr), value, 0)
                    .map_err(err)?;
            }
        } else {
            insert_in_parallel(&self.map_pin, &upserts)?;
        }
        self.mirror = Some(want);
        Ok((upserts.len(), removals.len()))
    }

    /// The map's entries, as routes.
    pub fn entries(&self) -> Vec<Route> {
        use aya::maps::LpmTrie;
        let Some(map) = self.bpf.map("rp_routes_v4") else {
            return vec![];
        };
        let Ok(trie) = LpmTrie::<_, [u8; 4], [u8; 8]>::try_from(map) else {
            return vec![];
        };
        trie.iter()
            .filter_map(Result::ok)
            .filter_map(|(key, value)| {
                let destination = Cidr::containing(
                    IpAddr::from(key.data()),
                    u8::try_from(key.prefix_len()).ok()?,
                )?;
                let ifindex = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
                let gateway = IpAddr::from([value[4], value[5], value[6], value[7]]);
                Some(Route {
                    destination,
                    gateway,
                    ifindex,
                })
            })
            .collect()
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

/// From this many writes on, they are spread over one thread per CPU.
#[cfg(ebpf)]
const PARALLEL_FROM: usize = 4096;

/// Inserts the entries through one handle on the pinned map per CPU. The kernel's update is well
/// under a microsecond; the syscall around it is most of the cost, and that part runs side by side
/// (100,000 entries: 0.105 s on one thread, 0.076 s on two, bench/run-lpm).
#[cfg(ebpf)]
fn insert_in_parallel(map_pin: &Path, entries: &[(LpmKey, [u8; 8])]) -> Result<(), DatapathError> {
    use aya::maps::{LpmTrie, Map, MapData};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let writers: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<(), DatapathError> {
                    let data = MapData::from_pin(map_pin).map_err(err)?;
                    let mut trie: LpmTrie<_, [u8; 4], [u8; 8]> =
                        LpmTrie::try_from(Map::LpmTrie(data)).map_err(err)?;
                    for ((len, addr), value) in part {
                        trie.insert(&aya::maps::lpm_trie::Key::new(*len, *addr), value, 0)
                            .map_err(err)?;
                    }
                    Ok(())
                })
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| err("a map writer panicked"))?)
    })
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

    pub fn sync(&mut self, _: &BTreeMap<Cidr, Route>) -> Result<(usize, usize), DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn entries(&self) -> Vec<Route> {
        vec![]
    }

    pub fn counters(&self) -> (u64, u64) {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: &str) -> (Cidr, Route) {
        let destination: Cidr = dst.parse().unwrap();
        let r = Route {
            destination,
            gateway: gw.parse().unwrap(),
            ifindex: 3,
        };
        (destination, r)
    }

    #[test]
    fn only_the_difference_is_written() {
        let have = entries_of(&BTreeMap::from([
            route("10.5.113.0/24", "10.4.94.12"),
            route("10.5.114.0/24", "10.4.94.13"),
            route("10.5.115.0/24", "10.4.94.14"),
        ]));
        let want = entries_of(&BTreeMap::from([
            route("10.5.113.0/24", "10.4.94.12"),
            route("10.5.114.0/24", "10.4.94.99"),
            route("10.5.116.0/24", "10.4.94.16"),
            route("fd00:5::/120", "fd00:4::12"),
        ]));
        assert_eq!(want.len(), 3, "IPv6 has no place in the IPv4 map");
        let (upserts, removals) = diff(&want, &have);
        let keys: Vec<[u8; 4]> = upserts.iter().map(|((_, a), _)| *a).collect();
        assert_eq!(
            keys,
            vec![[10, 5, 114, 0], [10, 5, 116, 0]],
            "changed and new"
        );
        assert_eq!(removals, vec![(24, [10, 5, 115, 0])]);
        assert_eq!(
            diff(&want, &want),
            (Entries::new(), vec![]),
            "in step: nothing to write"
        );
    }

    #[test]
    fn entries_match_the_c_layout() {
        let r = Route {
            destination: "10.5.113.0/24".parse().unwrap(),
            gateway: "10.4.94.12".parse().unwrap(),
            ifindex: 7,
        };
        let v = nexthop(&r).unwrap();
        assert_eq!(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]), 7);
        assert_eq!(&v[4..], &[10, 4, 94, 12]);
        let k = key_of(&r.destination).unwrap();
        assert_eq!((k.prefix_len(), k.data()), (24, [10, 5, 113, 0]));
        assert!(
            key_of(&"fd00::/120".parse().unwrap()).is_none(),
            "IPv4 only for now"
        );
    }
}
