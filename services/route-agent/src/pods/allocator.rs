//! Handing out pod IPs from this node's pod CIDRs, without I/O: one address per family per
//! attachment, never the network address, the router IP (offset 1, Cilium's cilium_host address)
//! or, for IPv4, the broadcast address, never one IPAM reserved (what AllocatePodIP handed out
//! before this agent took the node over), never one twice. Addresses go round the CIDR before
//! one is reused, as host-local does, so that a released address is not handed straight to the
//! next pod while something may still send to the old one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use routeplane_net::{Cidr, Family};

/// Offset of the router IP in a node's pod CIDR (as IPAM's `ROUTER_OFFSET`).
pub const ROUTER_OFFSET: u128 = 1;

/// The router IP of a pod CIDR: its first usable address.
pub fn router_ip(cidr: &Cidr) -> Option<IpAddr> {
    cidr.nth_addr(ROUTER_OFFSET)
}

/// Addresses of a CIDR that can go to pods.
pub fn capacity(cidr: &Cidr) -> u128 {
    cidr.size()
        .saturating_sub(if cidr.family() == Family::V4 { 3 } else { 2 })
}

fn reserved_offset(cidr: &Cidr, offset: u128) -> bool {
    offset == 0
        || offset == ROUTER_OFFSET
        || (cidr.family() == Family::V4 && offset == cidr.size() - 1)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "node {node}'s pod CIDR {cidr} is full: {used} of {capacity} pod IPs in use{reserved}; pods that are gone free theirs when the runtime deletes them (CNI DEL or GC)"
    )]
    Full {
        node: String,
        cidr: Cidr,
        used: u128,
        capacity: u128,
        reserved: String,
    },
    #[error("{ip} lies in none of this node's pod CIDRs ({cidrs})")]
    Outside { ip: IpAddr, cidrs: String },
    #[error("{ip} is the network, router or broadcast address of pod CIDR {cidr}")]
    Reserved { ip: IpAddr, cidr: Cidr },
    #[error("{ip} is already held")]
    Taken { ip: IpAddr },
}

struct Pool {
    cidr: Cidr,
    taken: BTreeSet<u128>,
    /// Offsets IPAM holds for AllocatePodIP owners.
    reserved: BTreeSet<u128>,
    /// Where the next search starts.
    next: u128,
}

impl Pool {
    fn free(&self, offset: u128) -> bool {
        !reserved_offset(&self.cidr, offset)
            && !self.taken.contains(&offset)
            && !self.reserved.contains(&offset)
    }
}

/// The pod IPs of one node: one pool per pod CIDR.
pub struct Allocator {
    node: String,
    pools: BTreeMap<Family, Pool>,
}

impl Allocator {
    pub fn new(node: &str, cidrs: &[Cidr]) -> Allocator {
        Allocator {
            node: node.to_string(),
            pools: cidrs
                .iter()
                .map(|c| {
                    (
                        c.family(),
                        Pool {
                            cidr: *c,
                            taken: BTreeSet::new(),
                            reserved: BTreeSet::new(),
                            next: ROUTER_OFFSET + 1,
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn cidrs(&self) -> Vec<Cidr> {
        self.pools.values().map(|p| p.cidr).collect()
    }

    fn cidr_list(&self) -> String {
        self.cidrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn locate(&self, ip: IpAddr) -> Result<(Family, u128), AllocError> {
        let family = Family::of(ip);
        let pool = self.pools.get(&family).ok_or_else(|| AllocError::Outside {
            ip,
            cidrs: self.cidr_list(),
        })?;
        let offset = pool.cidr.offset_of(ip).ok_or_else(|| AllocError::Outside {
            ip,
            cidrs: self.cidr_list(),
        })?;
        if reserved_offset(&pool.cidr, offset) {
            return Err(AllocError::Reserved {
                ip,
                cidr: pool.cidr,
            });
        }
        Ok((family, offset))
    }

    /// Marks an address held (restoring what was persisted); refused when it is not one a pod
    /// may have, or is held already.
    pub fn mark(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let (family, offset) = self.locate(ip)?;
        let inserted = self
            .pools
            .get_mut(&family)
            .is_some_and(|pool| pool.taken.insert(offset));
        if inserted {
            Ok(())
        } else {
            Err(AllocError::Taken { ip })
        }
    }

    pub fn release(&mut self, ip: IpAddr) {
        if let Ok((family, offset)) = self.locate(ip)
            && let Some(pool) = self.pools.get_mut(&family)
        {
            pool.taken.remove(&offset);
        }
    }

    /// The addresses IPAM reserved (AllocatePodIP's): the whole set, replacing the last one.
    pub fn set_reserved(&mut self, ips: &[IpAddr]) {
        for pool in self.pools.values_mut() {
            pool.reserved.clear();
        }
        for ip in ips {
            if let Ok((family, offset)) = self.locate(*ip)
                && let Some(pool) = self.pools.get_mut(&family)
            {
                pool.reserved.insert(offset);
            }
        }
    }

    /// One address of each family, or none at all.
    pub fn allocate(&mut self) -> Result<Vec<IpAddr>, AllocError> {
        let mut got: Vec<(Family, u128)> = Vec::new();
        for (family, pool) in &self.pools {
            let size = pool.cidr.size();
            // Round the CIDR once, from where the last search stopped.
            let found = (0..size)
                .map(|i| (pool.next + i) % size)
                .find(|o| pool.free(*o));
            match found {
                Some(o) => got.push((*family, o)),
                None => {
                    return Err(AllocError::Full {
                        node: self.node.clone(),
                        cidr: pool.cidr,
                        used: pool.taken.len() as u128,
                        capacity: capacity(&pool.cidr),
                        reserved: if pool.reserved.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ", {} more reserved by routeplane-ipam (AllocatePodIP)",
                                pool.reserved.len()
                            )
                        },
                    });
                }
            }
        }
        let mut ips = Vec::new();
        for (family, offset) in got {
            if let Some(pool) = self.pools.get_mut(&family) {
                pool.taken.insert(offset);
                pool.next = (offset + 1) % pool.cidr.size();
                ips.extend(pool.cidr.nth_addr(offset));
            }
        }
        Ok(ips)
    }

    /// (held, capacity) of each pod CIDR.
    pub fn usage(&self) -> Vec<(Cidr, u128, u128)> {
        self.pools
            .values()
            .map(|p| (p.cidr, p.taken.len() as u128, capacity(&p.cidr)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn a_slash_30_gives_one_pod_address_skipping_network_router_and_broadcast() {
        let mut a = Allocator::new("n1", &[cidr("10.5.112.0/30")]);
        assert_eq!(a.allocate().unwrap(), vec![ip("10.5.112.2")]);
        let e = a.allocate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "node n1's pod CIDR 10.5.112.0/30 is full: 1 of 1 pod IPs in use; pods that are gone free theirs when the runtime deletes them (CNI DEL or GC)"
        );
        a.release(ip("10.5.112.2"));
        assert_eq!(a.allocate().unwrap(), vec![ip("10.5.112.2")]);
    }

    #[test]
    fn dual_stack_gives_one_of_each_or_none() {
        let mut a = Allocator::new("n1", &[cidr("10.5.112.0/30"), cidr("fd00::/120")]);
        assert_eq!(a.allocate().unwrap(), vec![ip("10.5.112.2"), ip("fd00::2")]);
        assert!(a.allocate().is_err(), "IPv4 is full");
        assert_eq!(
            a.usage()[1],
            (cidr("fd00::/120"), 1, 254),
            "no IPv6 address leaked"
        );
    }

    #[test]
    fn addresses_go_round_before_reuse_and_reserved_ones_are_skipped() {
        let mut a = Allocator::new("n1", &[cidr("10.5.112.0/29")]);
        a.set_reserved(&[ip("10.5.112.3")]);
        let first = a.allocate().unwrap()[0];
        assert_eq!(first, ip("10.5.112.2"));
        a.release(first);
        let next: Vec<IpAddr> = (0..4).map(|_| a.allocate().unwrap()[0]).collect();
        assert_eq!(
            next,
            [
                ip("10.5.112.4"),
                ip("10.5.112.5"),
                ip("10.5.112.6"),
                ip("10.5.112.2")
            ],
            "10.5.112.3 is IPAM's, .7 the broadcast, .2 comes back last"
        );
        let e = a.allocate().unwrap_err().to_string();
        assert!(
            e.contains("4 of 5 pod IPs in use, 1 more reserved by routeplane-ipam"),
            "{e}"
        );
    }

    #[test]
    fn restoring_refuses_what_no_pod_may_hold() {
        let mut a = Allocator::new("n1", &[cidr("10.5.112.0/24")]);
        a.mark(ip("10.5.112.9")).unwrap();
        assert_eq!(
            a.mark(ip("10.5.112.9")),
            Err(AllocError::Taken {
                ip: ip("10.5.112.9")
            })
        );
        assert!(matches!(
            a.mark(ip("10.5.112.1")),
            Err(AllocError::Reserved { .. })
        ));
        assert!(matches!(
            a.mark(ip("10.5.113.9")),
            Err(AllocError::Outside { .. })
        ));
        assert!(matches!(
            a.mark(ip("fd00::9")),
            Err(AllocError::Outside { .. })
        ));
        assert_ne!(a.allocate().unwrap()[0], ip("10.5.112.9"));
    }
}
