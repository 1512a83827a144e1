//! Validated prefix types shared by every routeplane service.
//!
//! Contract: a [`Cidr`] always has its host bits clear and a prefix length valid for its family, and
//! an [`IpRange`] never crosses families and never runs backwards — so code that holds one never
//! re-checks it. Parsing errors name the offending text and say what would be valid.
#![forbid(unsafe_code)]

mod cidr;
mod range;

pub use cidr::{Cidr, Family};
pub use range::IpRange;

/// Why a prefix or range did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not a CIDR: expected ADDRESS/PREFIX such as 10.5.112.0/21 or fd00::/104")]
    NotCidr(String),
    #[error("{text:?}: prefix length {len} is too long for {family} (at most {max})")]
    PrefixTooLong {
        text: String,
        len: u32,
        family: Family,
        max: u8,
    },
    #[error("{text:?} has host bits set: the network address of that prefix is {network}")]
    HostBitsSet { text: String, network: String },
    #[error(
        "{0:?} is not an address range: expected a CIDR (10.5.120.0/24) or FIRST-LAST (10.5.120.10-10.5.120.20)"
    )]
    NotRange(String),
    #[error("{0:?} mixes IPv4 and IPv6 addresses")]
    MixedFamilies(String),
    #[error("{0:?} runs backwards: its first address is after its last")]
    Backwards(String),
}
