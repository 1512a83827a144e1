//! Address ranges as MetalLB's `address-pools` write them: a CIDR or `FIRST-LAST`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::cidr::addr_value;
use crate::{Cidr, Family, NetError};

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange {
    family: Family,
    first: u128,
    last: u128,
    /// Kept so that a range written as a CIDR is shown as one.
    cidr: Option<Cidr>,
}

impl IpRange {
    pub fn family(&self) -> Family {
        self.family
    }

    pub fn first(&self) -> IpAddr {
        self.family.addr(self.first)
    }

    pub fn last(&self) -> IpAddr {
        self.family.addr(self.last)
    }

    /// Number of addresses (saturating).
    pub fn size(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family && (self.first..=self.last).contains(&addr_value(addr))
    }

    pub fn overlaps_cidr(&self, cidr: &Cidr) -> bool {
        cidr.family() == self.family
            && cidr.first_value() <= self.last
            && self.first <= cidr.last_value()
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        other.family == self.family && other.first <= self.last && self.first <= other.last
    }

    pub fn nth(&self, offset: u128) -> Option<IpAddr> {
        (offset <= self.last - self.first).then(|| self.family.addr(self.first + offset))
    }

    pub fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        self.contains(addr).then(|| addr_value(addr) - self.first)
    }
}

impl From<Cidr> for IpRange {
    fn from(cidr: Cidr) -> Self {
        IpRange {
            family: cidr.family(),
            first: cidr.first_value(),
            last: cidr.last_value(),
            cidr: Some(cidr),
        }
    }
}

impl FromStr for IpRange {
    type Err = NetError;

    fn from_str(text: &str) -> Result<Self, NetError> {
        if text.contains('/') {
            return Ok(text.parse::<Cidr>()?.into());
        }
        let bad = || NetError::NotRange(text.to_string());
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
        if Family::of(a) != Family::of(b) {
            return Err(NetError::MixedFamilies(text.to_string()));
        }
        let (first, last) = (addr_value(a), addr_value(b));
        if first > last {
            return Err(NetError::Backwards(text.to_string()));
        }
        Ok(IpRange {
            family: Family::of(a),
            first,
            last,
            cidr: None,
        })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cidr {
            Some(c) => c.fmt(f),
            None => write!(f, "{}-{}", self.first(), self.last()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metallb_forms_parse() {
        let r: IpRange = "10.5.120.10-10.5.120.20".parse().unwrap();
        assert_eq!(r.size(), 11);
        assert_eq!(r.nth(10), Some("10.5.120.20".parse().unwrap()));
        assert_eq!(r.nth(11), None);
        assert_eq!(r.to_string(), "10.5.120.10-10.5.120.20");
        let c: IpRange = "10.5.120.0/24".parse().unwrap();
        assert_eq!(c.size(), 256);
        assert_eq!(c.to_string(), "10.5.120.0/24");
        let spaced: IpRange = "fd01::1 - fd01::ff".parse().unwrap();
        assert_eq!(spaced.offset_of("fd01::2".parse().unwrap()), Some(1));
    }

    #[test]
    fn overlap_with_pod_pool_is_seen() {
        let seed: IpRange = "10.5.112.0/21".parse().unwrap();
        assert!(seed.overlaps_cidr(&"10.5.112.0/21".parse().unwrap()));
        let moved: IpRange = "10.5.120.0-10.5.127.255".parse().unwrap();
        assert!(!moved.overlaps_cidr(&"10.5.112.0/21".parse().unwrap()));
        assert!(moved.overlaps(&"10.5.127.255/32".parse().unwrap()));
    }

    #[test]
    fn bad_ranges_are_named() {
        assert_eq!(
            "1.2.3.4-::1".parse::<IpRange>(),
            Err(NetError::MixedFamilies("1.2.3.4-::1".into()))
        );
        assert_eq!(
            "1.2.3.9-1.2.3.4".parse::<IpRange>(),
            Err(NetError::Backwards("1.2.3.9-1.2.3.4".into()))
        );
        assert!(matches!(
            "pool-a".parse::<IpRange>(),
            Err(NetError::NotRange(_))
        ));
    }
}
