//! The cluster pool: CIDRs that node pod CIDRs are carved from, as Cilium's cluster-pool IPAM does
//! (`clusterPoolIPv4PodCIDRList` split into `/clusterPoolIPv4MaskSize` blocks). Pools can be added
//! and drained at runtime; a node's block stays marked for as long as the node exists.

use std::ops::Range;

use routeplane_net::{Cidr, Family};

use crate::address_set::AddressSet;
use crate::error::{IpamError, Result};

/// Longest node CIDR that still leaves a pod address after the reserved ones (network, router IP
/// and, for IPv4, broadcast).
pub fn max_mask(family: Family) -> u8 {
    match family {
        Family::V4 => 30,
        Family::V6 => 126,
    }
}

#[derive(Debug, Clone)]
pub struct PodPool {
    pub cidr: Cidr,
    pub mask: u8,
    pub drained: bool,
    /// The values.yaml key it came from, or "AddPoolCidr".
    pub source: String,
    blocks: AddressSet,
}

impl PodPool {
    pub fn total(&self) -> u128 {
        self.cidr.subnet_count(self.mask)
    }

    pub fn used(&self) -> u128 {
        self.blocks.len() as u128
    }

    /// Block indices of this pool that `node_cidr` covers (empty when it lies outside).
    fn covering(&self, node_cidr: &Cidr) -> Range<u128> {
        if !self.cidr.overlaps(node_cidr) {
            return 0..0;
        }
        if node_cidr.prefix_len() <= self.mask {
            // The node CIDR is at least one block: it may also be larger than the pool itself.
            let inner = if node_cidr.prefix_len() < self.cidr.prefix_len() {
                self.cidr
            } else {
                *node_cidr
            };
            let Some(first) = inner
                .nth_subnet(self.mask, 0)
                .and_then(|b| self.cidr.subnet_index(&b))
            else {
                return 0..0;
            };
            first..first + inner.subnet_count(self.mask)
        } else {
            let block = Cidr::containing(node_cidr.network(), self.mask);
            match block.and_then(|b| self.cidr.subnet_index(&b)) {
                Some(i) => i..i + 1,
                None => 0..0,
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PodPools {
    pools: Vec<PodPool>,
}

impl PodPools {
    pub fn iter(&self) -> impl Iterator<Item = &PodPool> {
        self.pools.iter()
    }

    pub fn get(&self, cidr: &Cidr) -> Option<&PodPool> {
        self.pools.iter().find(|p| p.cidr == *cidr)
    }

    /// Adds a pool after checking its mask and that it overlaps no other pool.
    pub fn add(&mut self, cidr: Cidr, mask: u8, source: &str) -> Result<&PodPool> {
        let family = cidr.family();
        let max = max_mask(family);
        if mask <= cidr.prefix_len() || mask > max {
            let low = cidr.prefix_len() + 1;
            return Err(IpamError::Config(format!(
                "{source}: mask size /{mask} does not fit pool {cidr}: node CIDRs are carved from the pool, so the mask must be longer than /{} and at most /{max} (leaving room for the router IP and pods); use a mask size from {low} to {max}",
                cidr.prefix_len()
            )));
        }
        if let Some(other) = self.pools.iter().find(|p| p.cidr.overlaps(&cidr)) {
            return Err(IpamError::Config(format!(
                "{source}: pool {cidr} overlaps pool {} (from {}): pod CIDR pools must be disjoint",
                other.cidr, other.source
            )));
        }
        self.pools.push(PodPool {
            cidr,
            mask,
            drained: false,
            source: source.to_string(),
            blocks: AddressSet::default(),
        });
        Ok(&self.pools[self.pools.len() - 1])
    }

    /// Marks the blocks an existing node CIDR covers; false when no pool contains it.
    pub fn mark(&mut self, node_cidr: &Cidr) -> bool {
        let mut found = false;
        for pool in &mut self.pools {
            for i in pool.covering(node_cidr) {
                pool.blocks.insert(i);
                found = true;
            }
        }
        found
    }

    pub fn release(&mut self, node_cidr: &Cidr) {
        for pool in &mut self.pools {
            for i in pool.covering(node_cidr) {
                pool.blocks.remove(i);
            }
        }
    }

    /// Carves a free node CIDR of `family` from the first pool, in order, that is not drained and has one.
    pub fn allocate(&mut self, family: Family) -> Result<Cidr> {
        for pool in self
            .pools
            .iter_mut()
            .filter(|p| p.cidr.family() == family && !p.drained)
        {
            let total = pool.total();
            if let Some(i) = pool.blocks.allocate(total, |_| false) {
                // In range by construction: i < total.
                if let Some(cidr) = pool.cidr.nth_subnet(pool.mask, i) {
                    return Ok(cidr);
                }
            }
        }
        Err(self.exhausted(family))
    }

    fn exhausted(&self, family: Family) -> IpamError {
        let pools: Vec<String> = self
            .pools
            .iter()
            .filter(|p| p.cidr.family() == family)
            .map(|p| {
                let state = if p.drained { ", drained" } else { "" };
                format!(
                    "{} (/{} per node: {} of {} in use{state})",
                    p.cidr,
                    p.mask,
                    p.used(),
                    p.total()
                )
            })
            .collect();
        let key = match family {
            Family::V4 => "ipam.operator.clusterPoolIPv4PodCIDRList",
            Family::V6 => "ipam.operator.clusterPoolIPv6PodCIDRList",
        };
        let what = if pools.is_empty() {
            format!("there is no {family} pool")
        } else {
            format!("the {family} cluster pool is full: {}", pools.join("; "))
        };
        IpamError::Exhausted(format!(
            "no free {family} pod CIDR for a new node: {what}. Grow it with AddPoolCidr (e.g. grpcurl ... routeplane.ipam.v1.Ipam/AddPoolCidr) or add a CIDR to {key}, or delete a node that is gone"
        ))
    }

    pub fn set_drained(&mut self, cidr: &Cidr, drained: bool) -> Result<&PodPool> {
        let names: Vec<String> = self.pools.iter().map(|p| p.cidr.to_string()).collect();
        let pool = self
            .pools
            .iter_mut()
            .find(|p| p.cidr == *cidr)
            .ok_or_else(|| {
                IpamError::NotFound(format!(
                    "pool CIDR {cidr} does not exist; pool CIDRs are: {}",
                    names.join(", ")
                ))
            })?;
        pool.drained = drained;
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn seed() -> PodPools {
        let mut p = PodPools::default();
        p.add(
            c("10.5.112.0/21"),
            24,
            "ipam.operator.clusterPoolIPv4PodCIDR",
        )
        .unwrap();
        p.add(c("fd00::/104"), 120, "ipam.operator.clusterPoolIPv6PodCIDR")
            .unwrap();
        p
    }

    #[test]
    fn seed_pool_gives_eight_nodes_then_says_how_to_grow() {
        let mut p = seed();
        let got: Vec<Cidr> = (0..8).map(|_| p.allocate(Family::V4).unwrap()).collect();
        assert_eq!(got[0], c("10.5.112.0/24"));
        assert_eq!(got[7], c("10.5.119.0/24"));
        let err = p.allocate(Family::V4).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted(_)));
        let msg = err.to_string();
        assert!(
            msg.contains("10.5.112.0/21 (/24 per node: 8 of 8 in use)"),
            "{msg}"
        );
        assert!(msg.contains("AddPoolCidr"), "{msg}");
        assert_eq!(p.allocate(Family::V6).unwrap(), c("fd00::/120"));
    }

    #[test]
    fn drain_stops_new_allocations_and_add_grows() {
        let mut p = seed();
        let first = p.allocate(Family::V4).unwrap();
        p.set_drained(&c("10.5.112.0/21"), true).unwrap();
        assert!(
            p.allocate(Family::V4)
                .unwrap_err()
                .to_string()
                .contains("drained")
        );
        assert_eq!(
            p.get(&c("10.5.112.0/21")).unwrap().used(),
            1,
            "existing blocks stay"
        );
        p.add(c("10.6.0.0/23"), 24, "AddPoolCidr").unwrap();
        assert_eq!(p.allocate(Family::V4).unwrap(), c("10.6.0.0/24"));
        p.set_drained(&c("10.5.112.0/21"), false).unwrap();
        p.release(&first);
        assert!(
            p.set_drained(&c("10.7.0.0/16"), true)
                .unwrap_err()
                .to_string()
                .contains("10.5.112.0/21, fd00::/104, 10.6.0.0/23")
        );
    }

    #[test]
    fn masks_and_overlaps_are_checked() {
        let mut p = seed();
        let e = p.add(c("10.9.0.0/24"), 21, "x").unwrap_err().to_string();
        assert!(
            e.contains("mask size /21 does not fit pool 10.9.0.0/24"),
            "{e}"
        );
        assert!(e.contains("from 25 to 30"), "{e}");
        assert!(
            p.add(c("10.9.0.0/24"), 24, "x").is_err(),
            "a mask equal to the prefix leaves one block: refused"
        );
        assert!(p.add(c("10.9.0.0/24"), 31, "x").is_err());
        let e = p.add(c("10.5.0.0/16"), 24, "x").unwrap_err().to_string();
        assert!(e.contains("overlaps pool 10.5.112.0/21"), "{e}");
        assert!(p.add(c("fd01::/64"), 126, "x").is_ok());
        assert!(p.add(c("fd02::/64"), 127, "x").is_err());
    }

    #[test]
    fn marking_survives_mask_changes() {
        let mut p = PodPools::default();
        p.add(c("10.5.112.0/21"), 25, "x").unwrap();
        // A node registered when the mask was /24 covers two /25 blocks.
        assert!(p.mark(&c("10.5.112.0/24")));
        assert_eq!(p.get(&c("10.5.112.0/21")).unwrap().used(), 2);
        // One registered at /26 marks the /25 around it.
        assert!(p.mark(&c("10.5.113.64/26")));
        assert_eq!(p.allocate(Family::V4).unwrap(), c("10.5.113.128/25"));
        assert!(!p.mark(&c("10.9.0.0/24")), "outside every pool");
        p.release(&c("10.5.112.0/24"));
        assert_eq!(p.get(&c("10.5.112.0/21")).unwrap().used(), 2);
    }
}
