//! Loading and feeding the eBPF datapath (bpf/route.c) with aya: the classifier goes on each
//! pod-facing interface's ingress, and the LPM trie holds one entry per other node's IPv4 pod CIDR
//! (next hop and interface), kept in step with the desired routes by diffing its keys.

use std::collections::BTreeMap;
use std::net::IpAddr;

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

#[cfg(ebpf)]
pub struct Datapath {
    bpf: aya::Ebpf,
}

#[cfg(ebpf)]
impl Datapath {
    /// Loads the classifier and attaches it to the ingress of every interface named.
    pub fn attach(interfaces: &[String]) -> Result<Datapath, DatapathError> {
        use aya::programs::{SchedClassifier, TcAttachType, tc};
        let mut bpf = aya::Ebpf::load(include_bytes!(concat!(env!("OUT_DIR"), "/route.bpf.o")))
            .map_err(err)?;
        let program: &mut SchedClassifier = bpf
            .program_mut("rp_route")
            .ok_or_else(|| err("no rp_route program"))?
            .try_into()
            .map_err(err)?;
        program.load().map_err(err)?;
        for iface in interfaces {
            // Already there is fine; the attach below says whether the interface is usable.
            let _ = tc::qdisc_add_clsact(iface);
            program
                .attach(iface, TcAttachType::Ingress)
                .map_err(|e| err(format!("attaching to {iface}: {e}")))?;
        }
        Ok(Datapath { bpf })
    }

    /// Makes the LPM trie hold exactly the IPv4 routes given; returns (added or changed, removed).
    pub fn sync(
        &mut self,
        routes: &BTreeMap<Cidr, Route>,
    ) -> Result<(usize, usize), DatapathError> {
        use aya::maps::LpmTrie;
        let map = self
            .bpf
            .map_mut("rp_routes_v4")
            .ok_or_else(|| err("no rp_routes_v4 map"))?;
        let mut trie: LpmTrie<_, [u8; 4], [u8; 8]> = LpmTrie::try_from(map).map_err(err)?;
        let want: BTreeMap<(u32, [u8; 4]), [u8; 8]> = routes
            .values()
            .filter_map(|r| Some((key_of(&r.destination)?, nexthop(r)?)))
            .map(|(k, v)| ((k.prefix_len(), k.data()), v))
            .collect();
        let have: Vec<(u32, [u8; 4])> = trie
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let mut removed = 0;
        for (len, addr) in &have {
            if !want.contains_key(&(*len, *addr)) {
                trie.remove(&aya::maps::lpm_trie::Key::new(*len, *addr))
                    .map_err(err)?;
                removed += 1;
            }
        }
        let mut changed = 0;
        for ((len, addr), value) in &want {
            let key = aya::maps::lpm_trie::Key::new(*len, *addr);
            if trie.get(&key, 0).ok() != Some(*value) {
                trie.insert(&key, value, 0).map_err(err)?;
                changed += 1;
            }
        }
        Ok((changed, removed))
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

/// Stand-in when the agent was built without clang: asking for the datapath says so.
#[cfg(not(ebpf))]
pub struct Datapath;

#[cfg(not(ebpf))]
impl Datapath {
    pub fn attach(_: &[String]) -> Result<Datapath, DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn sync(&mut self, _: &BTreeMap<Cidr, Route>) -> Result<(usize, usize), DatapathError> {
        Err(DatapathError::NotBuilt)
    }

    pub fn counters(&self) -> (u64, u64) {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
