//! LoadBalancer IPs from bgp-config's `address-pools`, as MetalLB allocates them: a requested
//! address, a named pool, or the first `auto-assign` pool with room; `avoid-buggy-ips` skips IPv4
//! .0 and .255 addresses. One owner per address, checked through a reverse index.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use routeplane_config::AddressPool;
use routeplane_net::{Family, IpRange};

use crate::address_set::AddressSet;
use crate::error::{IpamError, Result};
use crate::model::ServiceIp;
use crate::pod_pools::PodPools;

#[derive(Debug, Clone)]
pub struct ServicePool {
    pub config: AddressPool,
    /// One set per range of `config.addresses`.
    taken: Vec<AddressSet>,
}

impl ServicePool {
    fn reserved(&self, range: &IpRange, offset: u128) -> bool {
        self.config.avoid_buggy_ips && buggy(range, offset)
    }

    pub fn total(&self) -> u128 {
        self.config
            .addresses
            .iter()
            .map(|r| r.size())
            .fold(0u128, u128::saturating_add)
    }

    pub fn used(&self) -> u128 {
        self.taken.iter().map(|s| s.len() as u128).sum()
    }

    fn locate(&self, ip: IpAddr) -> Option<(usize, u128)> {
        self.config
            .addresses
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.offset_of(ip).map(|o| (i, o)))
    }

    fn allocate(&mut self, family: Option<Family>) -> Option<IpAddr> {
        for i in 0..self.config.addresses.len() {
            let range = self.config.addresses[i];
            if family.is_some_and(|f| f != range.family()) {
                continue;
            }
            let avoid = self.config.avoid_buggy_ips;
            let offset = self.taken[i].allocate(range.size(), |o| avoid && buggy(&range, o));
            if let Some(o) = offset {
                return range.nth(o);
            }
        }
        None
    }
}

/// MetalLB's avoid-buggy-ips: IPv4 addresses ending in .0 or .255, which some clients mistreat.
fn buggy(range: &IpRange, offset: u128) -> bool {
    matches!(range.nth(offset), Some(IpAddr::V4(a)) if matches!(a.octets()[3], 0 | 255))
}

#[derive(Debug, Clone, Default)]
pub struct ServicePools {
    pools: Vec<ServicePool>,
    by_service: BTreeMap<String, ServiceIp>,
    owner_of: HashMap<IpAddr, String>,
}

impl ServicePools {
    /// Builds the pools, refusing any range that overlaps a pod CIDR pool.
    pub fn new(config: &[AddressPool], pod_pools: &PodPools) -> Result<ServicePools> {
        for (i, pool) in config.iter().enumerate() {
            for range in &pool.addresses {
                if let Some(pod) = pod_pools.iter().find(|p| range.overlaps_cidr(&p.cidr)) {
                    return Err(IpamError::Config(format!(
                        "bgp-config address-pools[{i}] {:?}: {range} overlaps the pod CIDR pool {} ({}): an address in both could be given to a pod and to a Service at once. Move the LoadBalancer pool off the pod CIDRs (routeplane's default bgp-config uses 10.5.120.0/21 for the seed's 10.5.112.0/21 pod pool)",
                        pool.name, pod.cidr, pod.source
                    )));
                }
                if let Some(other) = config[..i]
                    .iter()
                    .find(|o| o.addresses.iter().any(|r| r.overlaps(range)))
                {
                    return Err(IpamError::Config(format!(
                        "bgp-config address-pools[{i}] {:?}: {range} overlaps address-pool {:?}: LoadBalancer pools must be disjoint",
                        pool.name, other.name
                    )));
                }
            }
        }
        Ok(ServicePools {
            pools: config
                .iter()
                .map(|c| ServicePool {
                    taken: vec![AddressSet::default(); c.addresses.len()],
                    config: c.clone(),
                })
                .collect(),
            ..Default::default()
        })
    }

    pub fn pools(&self) -> impl Iterator<Item = &ServicePool> {
        self.pools.iter()
    }

    pub fn all(&self) -> impl Iterator<Item = &ServiceIp> {
        self.by_service.values()
    }

    pub fn get(&self, service: &str) -> Option<&ServiceIp> {
        self.by_service.get(service)
    }

    /// The pool and range holding `ip`, if any: AddPoolCidr checks new pod pools against it.
    pub fn range_overlapping(&self, cidr: &routeplane_net::Cidr) -> Option<(&str, IpRange)> {
        self.pools.iter().find_map(|p| {
            p.config
                .addresses
                .iter()
                .find(|r| r.overlaps_cidr(cidr))
                .map(|r| (p.config.name.as_str(), *r))
        })
    }

    /// Re-marks a persisted allocation at startup. False when the address is in no configured pool
    /// (the pool was changed): the Service keeps it all the same until it releases it.
    pub fn restore(&mut self, ip: ServiceIp) -> bool {
        let mut in_pool = false;
        for pool in &mut self.pools {
            if let Some((i, o)) = pool.locate(ip.ip) {
                pool.taken[i].insert(o);
                in_pool = true;
            }
        }
        self.owner_of.insert(ip.ip, ip.service.clone());
        self.by_service.insert(ip.service.clone(), ip);
        in_pool
    }

    /// Returns the Service's address and whether it is new. Idempotent per Service.
    pub fn allocate(
        &mut self,
        service: &str,
        pool: Option<&str>,
        ip: Option<IpAddr>,
        family: Option<Family>,
    ) -> Result<(ServiceIp, bool)> {
        if let Some(held) = self.by_service.get(service) {
            if ip.is_some_and(|ip| ip != held.ip) || pool.is_some_and(|p| p != held.pool) {
                return Err(IpamError::FailedPrecondition(format!(
                    "service {service} already holds {} from pool {:?}; release it first to get another address",
                    held.ip, held.pool
                )));
            }
            return Ok((held.clone(), false));
        }
        let names = || {
            self.pools
                .iter()
                .map(|p| format!("{:?}", p.config.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pool_index = match pool {
            Some(name) => Some(
                self.pools
                    .iter()
                    .position(|p| p.config.name == name)
                    .ok_or_else(|| {
                        IpamError::NotFound(format!(
                            "address-pool {name:?} does not exist; pools are: {}",
                            names()
                        ))
                    })?,
            ),
            None => None,
        };
        let (index, addr) = match ip {
            Some(ip) => (self.take_requested(service, pool_index, ip)?, ip),
            None => self.take_any(pool_index, family)?,
        };
        let assigned = ServiceIp {
            service: service.to_string(),
            ip: addr,
            pool: self.pools[index].config.name.clone(),
        };
        self.owner_of.insert(addr, service.to_string());
        self.by_service
            .insert(service.to_string(), assigned.clone());
        Ok((assigned, true))
    }

    fn take_requested(
        &mut self,
        service: &str,
        pool_index: Option<usize>,
        ip: IpAddr,
    ) -> Result<usize> {
        if let Some(owner) = self.owner_of.get(&ip) {
            return Err(IpamError::AlreadyExists(format!(
                "{ip} is already held by service {owner}; ask for another address or none"
            )));
        }
        let found = self
            .pools
            .iter()
            .enumerate()
            .filter(|(i, _)| pool_index.is_none_or(|p| p == *i))
            .find_map(|(i, p)| p.locate(ip).map(|(r, o)| (i, r, o)));
        let Some((i, r, o)) = found else {
            let scope: Vec<String> = self
                .pools
                .iter()
                .enumerate()
                .filter(|(i, _)| pool_index.is_none_or(|p| p == *i))
                .map(|(_, p)| {
                    format!(
                        "{:?} {}",
                        p.config.name,
                        p.config
                            .addresses
                            .iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                })
                .collect();
            return Err(IpamError::InvalidArgument(format!(
                "{ip} for service {service} is in no address-pool it may come from; pools: {}",
                if scope.is_empty() {
                    "none configured".to_string()
                } else {
                    scope.join("; ")
                }
            )));
        };
        let pool = &mut self.pools[i];
        let range = pool.config.addresses[r];
        if pool.reserved(&range, o) {
            return Err(IpamError::InvalidArgument(format!(
                "{ip} ends in .0 or .255, which pool {:?} avoids (avoid-buggy-ips: true); pick another address",
                pool.config.name
            )));
        }
        pool.taken[r].insert(o);
        Ok(i)
    }

    fn take_any(
        &mut self,
        pool_index: Option<usize>,
        family: Option<Family>,
    ) -> Result<(usize, IpAddr)> {
        let candidates: Vec<usize> = match pool_index {
            Some(i) => vec![i],
            None => (0..self.pools.len())
                .filter(|i| self.pools[*i].config.auto_assign)
                .collect(),
        };
        for i in &candidates {
            if let Some(ip) = self.pools[*i].allocate(family) {
                return Ok((*i, ip));
            }
        }
        let fam = family.map(|f| format!("{f} ")).unwrap_or_default();
        let state: Vec<String> = candidates
            .iter()
            .map(|i| {
                let p = &self.pools[*i];
                format!("{:?} ({} of {} used)", p.config.name, p.used(), p.total())
            })
            .collect();
        Err(IpamError::Exhausted(if state.is_empty() {
            format!(
                "no auto-assign address-pool can give a {fam}LoadBalancer IP; add one to bgp-config address-pools, or name a pool"
            )
        } else {
            format!(
                "no free {fam}LoadBalancer IP in {}; add addresses to the pool in bgp-config or release unused Service IPs",
                state.join(", ")
            )
        }))
    }

    pub fn release(&mut self, service: &str) -> Option<ServiceIp> {
        let held = self.by_service.remove(service)?;
        self.owner_of.remove(&held.ip);
        for pool in &mut self.pools {
            if let Some((i, o)) = pool.locate(held.ip) {
                pool.taken[i].remove(o);
            }
        }
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routeplane_config::BgpConfig;

    fn pools(yaml: &str) -> Result<ServicePools> {
        let mut pods = PodPools::default();
        pods.add(
            "10.5.112.0/21".parse().unwrap(),
            24,
            "ipam.operator.clusterPoolIPv4PodCIDR",
        )
        .unwrap();
        ServicePools::new(&BgpConfig::parse(yaml, "t").unwrap().address_pools, &pods)
    }

    #[test]
    fn seed_pool_overlapping_pod_cidrs_is_refused_plainly() {
        let seed = include_str!("../../../examples/seed/bgp-config.yaml");
        let e = pools(seed).unwrap_err().to_string();
        assert!(e.contains("10.5.112.0/21 overlaps the pod CIDR pool 10.5.112.0/21 (ipam.operator.clusterPoolIPv4PodCIDR)"), "{e}");
        assert!(
            e.contains("could be given to a pod and to a Service at once"),
            "{e}"
        );
    }

    #[test]
    fn requested_named_and_auto_assign() {
        let mut s = pools(
            "address-pools:\n- {name: a, protocol: bgp, auto-assign: false, addresses: [10.9.0.0/30]}\n- {name: b, protocol: bgp, avoid-buggy-ips: true, addresses: [10.9.1.254-10.9.2.1]}\n",
        )
        .unwrap();
        let (x, new) = s.allocate("default/x", None, None, None).unwrap();
        assert!(new);
        assert_eq!(
            (x.ip.to_string(), x.pool.as_str()),
            ("10.9.1.254".into(), "b"),
            "a is not auto-assign"
        );
        let (y, _) = s.allocate("default/y", None, None, None).unwrap();
        assert_eq!(y.ip.to_string(), "10.9.2.1", ".255 and .0 skipped");
        let e = s.allocate("default/z", None, None, None).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted(_)), "{e}");
        assert!(e.to_string().contains("\"b\" (2 of 4 used)"), "{e}");
        let (z, _) = s.allocate("default/z", Some("a"), None, None).unwrap();
        assert_eq!(z.ip.to_string(), "10.9.0.0");
        assert_eq!(
            s.allocate("default/x", None, None, None).unwrap(),
            (x.clone(), false),
            "idempotent"
        );
        let e = s
            .allocate("default/x", None, Some("10.9.0.1".parse().unwrap()), None)
            .unwrap_err();
        assert!(matches!(e, IpamError::FailedPrecondition(_)), "{e}");
        let e = s
            .allocate("default/w", None, Some("10.9.0.0".parse().unwrap()), None)
            .unwrap_err();
        assert!(
            e.to_string().contains("already held by service default/z"),
            "{e}"
        );
        let e = s
            .allocate("default/w", None, Some("10.9.2.0".parse().unwrap()), None)
            .unwrap_err();
        assert!(e.to_string().contains("avoid-buggy-ips"), "{e}");
        let e = s
            .allocate("default/w", None, Some("10.8.0.1".parse().unwrap()), None)
            .unwrap_err();
        assert!(e.to_string().contains("in no address-pool"), "{e}");
        let e = s.allocate("default/w", Some("c"), None, None).unwrap_err();
        assert!(
            matches!(e, IpamError::NotFound(_)) && e.to_string().contains("\"a\", \"b\""),
            "{e}"
        );
        assert_eq!(s.release("default/x"), Some(x));
        assert_eq!(s.release("default/x"), None);
        let (w, _) = s
            .allocate("default/w", None, Some("10.9.1.254".parse().unwrap()), None)
            .unwrap();
        assert_eq!(w.pool, "b");
    }

    #[test]
    fn family_and_restore() {
        let mut s = pools(
            "address-pools:\n- {name: d, protocol: bgp, addresses: [10.9.0.0/31, 'fd09::/127']}\n",
        )
        .unwrap();
        let (v6, _) = s.allocate("ns/a", None, None, Some(Family::V6)).unwrap();
        assert_eq!(v6.ip.to_string(), "fd09::");
        assert!(s.restore(ServiceIp {
            service: "ns/b".into(),
            ip: "fd09::1".parse().unwrap(),
            pool: "d".into()
        }));
        assert!(
            s.allocate("ns/c", None, None, Some(Family::V6)).is_err(),
            "restored address is taken"
        );
        assert!(!s.restore(ServiceIp {
            service: "ns/o".into(),
            ip: "10.77.0.1".parse().unwrap(),
            pool: "gone".into()
        }));
        assert_eq!(s.get("ns/o").unwrap().pool, "gone");
        assert_eq!(s.pools().next().unwrap().used(), 2);
    }
}
