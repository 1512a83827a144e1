//! BGP-4 messages as routeplane reasons about them (RFC 4271 §4, with the capabilities of RFC 5492,
//! 4760, 6793, 2918, 4724 and 7911). `wire.rs` converts these to and from bytes; nothing else in the
//! service sees the codec's types.

use std::net::{IpAddr, Ipv4Addr};

use routeplane_net::{Cidr, Family};

pub use crate::notification::{BgpError, Cease, FsmError, HeaderError, OpenError, UpdateError};

/// RFC 6793 §9: the 2-octet stand-in for a 4-octet AS number.
pub const AS_TRANS: u16 = 23456;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    /// RFC 2918: the peer asks us to send our Adj-RIB-Out for the family again.
    RouteRefresh(Family),
    /// RFC 4724 §2: the initial table of the family has been sent.
    EndOfRib(Family),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The speaker's AS number (4-octet; the wire carries AS_TRANS in the 2-octet field when needed).
    pub asn: u32,
    /// Seconds; 0 or at least 3 (RFC 4271 §4.2).
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Capabilities,
}

/// What an OPEN offers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// RFC 4760 multiprotocol unicast families. Empty means the peer sent none: IPv4 unicast only.
    pub families: Vec<Family>,
    /// RFC 6793: the 4-octet AS number, when the speaker supports them.
    pub asn4: Option<u32>,
    /// RFC 2918.
    pub route_refresh: bool,
    /// RFC 4724.
    pub graceful_restart: Option<GracefulRestart>,
    /// RFC 7911: per family, whether the speaker can send and receive several paths.
    pub add_path: Vec<AddPath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit: the speaker has restarted (and its routes may arrive after End-of-RIB).
    pub restarting: bool,
    /// Seconds the peer should keep our routes while we restart.
    pub restart_time: u16,
    /// The N bit (RFC 8538): a NOTIFICATION other than Hard Reset also starts graceful restart.
    pub notification: bool,
    /// Families whose forwarding state the speaker preserves, with the F bit.
    pub families: Vec<(Family, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddPath {
    pub family: Family,
    pub send: bool,
    pub receive: bool,
}

/// A prefix with its RFC 7911 path identifier, when ADD-PATH is in use for its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nlri {
    pub prefix: Cidr,
    pub path_id: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

/// The attributes routeplane sends and keeps for received routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathAttributes {
    pub origin: Origin,
    /// AS_SEQUENCE, nearest AS first. (AS_SETs received are flattened into it.)
    pub as_path: Vec<u32>,
    pub next_hop: IpAddr,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<(u16, u16)>,
}

/// One UPDATE: withdrawals and announcements of either family. IPv4 unicast uses the RFC 4271
/// fields; IPv6 travels in MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Nlri>,
    /// Present when `announced` is not empty.
    pub attributes: Option<PathAttributes>,
    pub announced: Vec<Nlri>,
}

/// A NOTIFICATION (RFC 4271 §4.5): error code, subcode and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(error: BgpError, data: impl Into<Vec<u8>>) -> Notification {
        Notification {
            code: error.code(),
            subcode: error.subcode(),
            data: data.into(),
        }
    }

    /// As it came off the wire, whatever its numbers.
    pub fn from_wire(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Notification {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }

    pub fn error(&self) -> BgpError {
        BgpError::of(self.code, self.subcode)
    }

    /// A readable name, for logs and the API's "last error".
    pub fn describe(&self) -> String {
        let (code, sub) = self.error().names();
        if sub.is_empty() {
            format!("{code} ({}/{})", self.code, self.subcode)
        } else {
            format!("{code}: {sub} ({}/{})", self.code, self.subcode)
        }
    }
}
