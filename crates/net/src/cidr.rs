//! IPv4 and IPv6 prefixes as one type: addresses are held as u128 (IPv4 in the low 32 bits) so that
//! carving, indexing and overlap tests are the same arithmetic for both families.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::NetError;

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The address with this family's `value` (low bits for IPv4).
    pub fn addr(self, value: u128) -> IpAddr {
        match self {
            // Truncation is intended: IPv4 values live in the low 32 bits.
            Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The numeric value of an address (IPv4 in the low 32 bits).
pub(crate) fn addr_value(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A prefix with its host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    family: Family,
    network: u128,
    len: u8,
}

impl Cidr {
    /// The prefix of `len` bits that contains `addr` (host bits dropped).
    pub fn containing(addr: IpAddr, len: u8) -> Option<Cidr> {
        let family = Family::of(addr);
        (len <= family.bits()).then(|| Cidr {
            family,
            network: addr_value(addr) & mask(family, len),
            len,
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn network(&self) -> IpAddr {
        self.family.addr(self.network)
    }

    /// Number of addresses, saturating at u128::MAX for ::/0.
    pub fn size(&self) -> u128 {
        pow2(self.family.bits() - self.len)
    }

    pub(crate) fn first_value(&self) -> u128 {
        self.network
    }

    pub(crate) fn last_value(&self) -> u128 {
        self.network | (!mask(self.family, self.len) & family_max(self.family))
    }

    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family
            && addr_value(addr) & mask(self.family, self.len) == self.network
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.family == other.family
            && self.first_value() <= other.last_value()
            && other.first_value() <= self.last_value()
    }

    /// How many prefixes of length `len` this one splits into (saturating).
    pub fn subnet_count(&self, len: u8) -> u128 {
        if len < self.len || len > self.family.bits() {
            return 0;
        }
        pow2(len - self.len)
    }

    /// The `index`th prefix of length `len` inside this one.
    pub fn nth_subnet(&self, len: u8, index: u128) -> Option<Cidr> {
        if index >= self.subnet_count(len) {
            return None;
        }
        let step = pow2(self.family.bits() - len);
        Some(Cidr {
            family: self.family,
            network: self.network + index * step,
            len,
        })
    }

    /// Inverse of [`Cidr::nth_subnet`].
    pub fn subnet_index(&self, sub: &Cidr) -> Option<u128> {
        if sub.family != self.family || sub.len < self.len || !self.contains_addr(sub.network()) {
            return None;
        }
        Some((sub.network - self.network) >> (self.family.bits() - sub.len))
    }

    /// The address `offset` positions after the network address.
    pub fn nth_addr(&self, offset: u128) -> Option<IpAddr> {
        (offset < self.size()).then(|| self.family.addr(self.network + offset))
    }

    /// Inverse of [`Cidr::nth_addr`].
    pub fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        self.contains_addr(addr)
            .then(|| addr_value(addr) - self.network)
    }
}

fn family_max(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

fn mask(family: Family, len: u8) -> u128 {
    let host_bits = u32::from(family.bits() - len);
    let host = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    family_max(family) & !host
}

fn pow2(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

impl FromStr for Cidr {
    type Err = NetError;

    fn from_str(text: &str) -> Result<Self, NetError> {
        let not_cidr = || NetError::NotCidr(text.to_string());
        let (addr, len) = text.trim().split_once('/').ok_or_else(not_cidr)?;
        let addr: IpAddr = addr.parse().map_err(|_| not_cidr())?;
        let len: u32 = len.parse().map_err(|_| not_cidr())?;
        let family = Family::of(addr);
        let len_u8 = u8::try_from(len)
            .ok()
            .filter(|l| *l <= family.bits())
            .ok_or(NetError::PrefixTooLong {
                text: text.to_string(),
                len,
                family,
                max: family.bits(),
            })?;
        let cidr = Cidr::containing(addr, len_u8).ok_or_else(not_cidr)?;
        if cidr.network() != addr {
            return Err(NetError::HostBitsSet {
                text: text.to_string(),
                network: cidr.to_string(),
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn seed_pool_carves_into_eight_node_cidrs() {
        let pool = c("10.5.112.0/21");
        assert_eq!(pool.subnet_count(24), 8);
        assert_eq!(pool.nth_subnet(24, 2), Some(c("10.5.114.0/24")));
        assert_eq!(pool.nth_subnet(24, 7), Some(c("10.5.119.0/24")));
        assert_eq!(pool.nth_subnet(24, 8), None);
        assert_eq!(pool.subnet_index(&c("10.5.119.0/24")), Some(7));
        assert_eq!(pool.subnet_index(&c("10.5.120.0/24")), None);
    }

    #[test]
    fn ipv6_seed_pool_carves_into_slash_120s() {
        let pool = c("fd00::/104");
        assert_eq!(pool.subnet_count(120), 65536);
        assert_eq!(pool.nth_subnet(120, 1), Some(c("fd00::100/120")));
        assert_eq!(pool.nth_subnet(120, 65535), Some(c("fd00::ff:ff00/120")));
        assert_eq!(
            c("fd00::100/120").nth_addr(1),
            Some("fd00::101".parse().unwrap())
        );
    }

    #[test]
    fn addresses_and_offsets_round_trip() {
        let node = c("10.5.114.0/24");
        assert_eq!(node.nth_addr(1), Some("10.5.114.1".parse().unwrap()));
        assert_eq!(node.nth_addr(256), None);
        assert_eq!(node.offset_of("10.5.114.255".parse().unwrap()), Some(255));
        assert_eq!(node.offset_of("10.5.115.0".parse().unwrap()), None);
        assert_eq!(node.offset_of("::1".parse().unwrap()), None);
    }

    #[test]
    fn overlap_is_symmetric_and_family_aware() {
        assert!(c("10.5.112.0/21").overlaps(&c("10.5.119.128/25")));
        assert!(c("10.5.119.128/25").overlaps(&c("10.5.112.0/21")));
        assert!(!c("10.5.112.0/21").overlaps(&c("10.5.120.0/21")));
        assert!(!c("0.0.0.0/0").overlaps(&c("::/0")));
        assert!(c("::/0").overlaps(&c("fd00::/104")));
        assert_eq!(c("::/0").size(), u128::MAX);
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
    }

    #[test]
    fn bad_cidrs_say_what_is_wrong() {
        let e = "10.5.112.1/21".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.5.112.1/21\" has host bits set: the network address of that prefix is 10.5.112.0/21"
        );
        assert!(matches!(
            "10.5.112.0/33".parse::<Cidr>(),
            Err(NetError::PrefixTooLong { len: 33, .. })
        ));
        assert!(matches!(
            "10.5.112.0".parse::<Cidr>(),
            Err(NetError::NotCidr(_))
        ));
        assert!(matches!(
            "banana/8".parse::<Cidr>(),
            Err(NetError::NotCidr(_))
        ));
        assert!(matches!(
            "fd00::/129".parse::<Cidr>(),
            Err(NetError::PrefixTooLong { .. })
        ));
    }
}
