//! The eBPF LPM maps' entries (bpf/route.c: `struct lpm_vN` → `struct nexthop_vN`, one map per
//! family): routes encoded to those bytes and back, the difference between what a map holds and
//! what it should, and — with the datapath built — reading and writing one family's pinned map.
//! `A` is the address size (4 or 16) and `V` the value size (`A` + 4, the interface index first).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use routeplane_net::Cidr;

use crate::desired::Route;

/// Entries by destination; a route with a next hop of another family has no place in the maps.
pub type Entries = BTreeMap<Cidr, Route>;

pub fn entries_of(mut routes: BTreeMap<Cidr, Route>) -> Entries {
    routes.retain(|c, r| fits(c, r));
    routes
}

/// Whether a route has a place in the maps: a next hop of its destination's family (an on-link
/// route, a pod's or this node's own, stays in the kernel).
pub fn fits(cidr: &Cidr, route: &Route) -> bool {
    route
        .gateway
        .is_some_and(|g| cidr.network().is_ipv4() == g.is_ipv4())
}

/// What to write so that `have` becomes `want`: entries to insert or overwrite, keys to remove.
pub fn diff(want: &Entries, have: &Entries) -> (Vec<Route>, Vec<Cidr>) {
    let upserts = want
        .iter()
        .filter(|(c, r)| have.get(*c) != Some(*r))
        .map(|(_, r)| *r)
        .collect();
    let removals = have
        .keys()
        .filter(|c| !want.contains_key(*c))
        .copied()
        .collect();
    (upserts, removals)
}

fn addr_bytes<const A: usize>(ip: IpAddr) -> Option<[u8; A]> {
    match ip {
        IpAddr::V4(a) => a.octets().as_slice().try_into().ok(),
        IpAddr::V6(a) => a.octets().as_slice().try_into().ok(),
    }
}

fn ip_of<const A: usize>(bytes: [u8; A]) -> Option<IpAddr> {
    match A {
        4 => <[u8; 4]>::try_from(bytes.as_slice())
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(bytes.as_slice())
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// The key (prefix length, network) of a destination, when it belongs in the `A`-byte map.
pub fn key<const A: usize>(cidr: &Cidr) -> Option<(u32, [u8; A])> {
    Some((u32::from(cidr.prefix_len()), addr_bytes(cidr.network())?))
}

/// `struct nexthop_vN`: interface index (native order), then the next hop's address.
pub fn value<const A: usize, const V: usize>(route: &Route) -> Option<[u8; V]> {
    let gateway: [u8; A] = addr_bytes(route.gateway?)?;
    let mut v = [0u8; V];
    v.get_mut(..4)?
        .copy_from_slice(&route.ifindex.to_ne_bytes());
    v.get_mut(4..)?.copy_from_slice(gateway.as_slice());
    Some(v)
}

pub fn decode<const A: usize, const V: usize>(
    (len, network): (u32, [u8; A]),
    value: [u8; V],
) -> Option<Route> {
    let destination = Cidr::containing(ip_of(network)?, u8::try_from(len).ok()?)?;
    let ifindex = u32::from_ne_bytes(value.get(..4)?.try_into().ok()?);
    let gateway = ip_of::<A>(value.get(4..)?.try_into().ok()?)?;
    Some(Route {
        destination,
        gateway: Some(gateway),
        ifindex,
    })
}

#[cfg(ebpf)]
pub use pinned::{insert, read, remove};

/// One family's map, opened from its pin for each operation.
#[cfg(ebpf)]
mod pinned {
    use std::path::Path;

    use aya::maps::lpm_trie::Key;
    use aya::maps::{LpmTrie, Map, MapData};
    use routeplane_net::Cidr;

    use super::{decode, key, value};
    use crate::desired::Route;
    use crate::ebpf::{DatapathError, err};

    /// From this many writes on, they are spread over one thread per CPU.
    const PARALLEL_FROM: usize = 4096;

    fn open<const A: usize, const V: usize>(
        pin: &Path,
    ) -> Result<LpmTrie<MapData, [u8; A], [u8; V]>, DatapathError> {
        let data = MapData::from_pin(pin).map_err(|e| err(format!("{}: {e}", pin.display())))?;
        LpmTrie::try_from(Map::LpmTrie(data)).map_err(err)
    }

    pub fn read<const A: usize, const V: usize>(pin: &Path) -> Result<Vec<Route>, DatapathError> {
        let trie = open::<A, V>(pin)?;
        trie.iter()
            .map(|entry| {
                let (k, v) = entry.map_err(err)?;
                decode((k.prefix_len(), k.data()), v)
                    .ok_or_else(|| err(format!("undecodable entry in {}", pin.display())))
            })
            .collect()
    }

    pub fn remove<const A: usize, const V: usize>(
        pin: &Path,
        cidrs: &[Cidr],
    ) -> Result<(), DatapathError> {
        let mut trie = open::<A, V>(pin)?;
        for c in cidrs {
            if let Some((len, addr)) = key::<A>(c) {
                trie.remove(&Key::new(len, addr)).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Inserts or overwrites. Each insert costs about a microsecond in the trie itself (a batch
    /// syscall saves nothing), but only part of it runs under the trie's lock, so large batches
    /// go through one handle per CPU (100,000 entries: 0.105 s on one thread, about 0.072 s on
    /// two; bench/run-lpm).
    pub fn insert<const A: usize, const V: usize>(
        pin: &Path,
        routes: &[Route],
    ) -> Result<(), DatapathError> {
        let write = |part: &[Route]| -> Result<(), DatapathError> {
            let mut trie = open::<A, V>(pin)?;
            for r in part {
                let (Some((len, addr)), Some(v)) = (key::<A>(&r.destination), value::<A, V>(r))
                else {
                    continue;
                };
                trie.insert(&Key::new(len, addr), v, 0).map_err(err)?;
            }
            Ok(())
        };
        if routes.len() < PARALLEL_FROM {
            return write(routes);
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = routes.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let writers: Vec<_> = routes
                .chunks(chunk)
                .map(|part| scope.spawn(move || write(part)))
                .collect();
            writers
                .into_iter()
                .try_for_each(|w| w.join().map_err(|_| err("a map writer panicked"))?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: &str) -> (Cidr, Route) {
        let destination: Cidr = dst.parse().unwrap();
        let r = Route {
            destination,
            gateway: Some(gw.parse().unwrap()),
            ifindex: 3,
        };
        (destination, r)
    }

    #[test]
    fn only_the_difference_is_written() {
        let have = entries_of(BTreeMap::from([
            route("10.5.113.0/24", "10.4.94.12"),
            route("10.5.114.0/24", "10.4.94.13"),
            route("10.5.115.0/24", "10.4.94.14"),
            route("fd00:5::/120", "fd04:94::21"),
        ]));
        let want = entries_of(BTreeMap::from([
            route("10.5.113.0/24", "10.4.94.12"),
            route("10.5.114.0/24", "10.4.94.99"),
            route("10.5.116.0/24", "10.4.94.16"),
            route("fd00:5::/120", "fd04:94::21"),
            route("fd00:6::/120", "10.4.94.17"),
        ]));
        assert_eq!(
            want.len(),
            4,
            "an IPv6 CIDR via an IPv4 next hop has no place"
        );
        let (upserts, removals) = diff(&want, &have);
        let written: Vec<String> = upserts.iter().map(|r| r.destination.to_string()).collect();
        assert_eq!(
            written,
            ["10.5.114.0/24", "10.5.116.0/24"],
            "changed and new"
        );
        assert_eq!(removals, ["10.5.115.0/24".parse::<Cidr>().unwrap()]);
        assert_eq!(
            diff(&want, &want),
            (vec![], vec![]),
            "in step: nothing to write"
        );
    }

    #[test]
    fn entries_match_the_c_layout_and_decode_back() {
        let (_, r4) = route("10.5.113.0/24", "10.4.94.12");
        let v = value::<4, 8>(&r4).unwrap();
        assert_eq!(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]), 3);
        assert_eq!(&v[4..], &[10, 4, 94, 12]);
        let k = key::<4>(&r4.destination).unwrap();
        assert_eq!(k, (24, [10, 5, 113, 0]));
        assert_eq!(decode(k, v), Some(r4));

        let (_, r6) = route("fd00:5::/120", "fd04:94::21");
        let v = value::<16, 20>(&r6).unwrap();
        assert_eq!(&v[4..6], &[0xfd, 0x04]);
        assert_eq!(v[19], 0x21);
        let k = key::<16>(&r6.destination).unwrap();
        assert_eq!(k.0, 120);
        assert_eq!(decode(k, v), Some(r6));

        assert!(
            key::<4>(&r6.destination).is_none(),
            "IPv6 keys stay out of the IPv4 map"
        );
        assert!(value::<16, 20>(&r4).is_none());
    }
}
