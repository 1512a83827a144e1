//! BGP-4 messages as routeplane reasons about them (RFC 4271 §4, with the capabilities of RFC 5492,
//! 4760, 6793, 2918, 4724 and 7911). `wire.rs` converts these to and from bytes; nothing else in the
//! service sees the codec's types.

use std::net::{IpAddr, Ipv4Addr};

use routeplane_net::{Cidr, Family};

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

/// NOTIFICATION codes and subcodes routeplane sends (RFC 4271 §4.5, §6; RFC 4486 for Cease).
pub mod codes {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const FSM_UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    pub const CEASE: u8 = 6;
    pub const CEASE_MAX_PREFIXES: u8 = 1;
    pub const CEASE_ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const CEASE_PEER_DECONFIGURED: u8 = 3;
    pub const CEASE_ADMINISTRATIVE_RESET: u8 = 4;
    pub const CEASE_CONNECTION_COLLISION: u8 = 7;
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Notification {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// A readable name, for logs and the API's "last error".
    pub fn describe(&self) -> String {
        let code = match self.code {
            1 => "Message Header Error",
            2 => "OPEN Message Error",
            3 => "UPDATE Message Error",
            4 => "Hold Timer Expired",
            5 => "Finite State Machine Error",
            6 => "Cease",
            7 => "ROUTE-REFRESH Message Error",
            _ => "unknown error code",
        };
        let sub = match (self.code, self.subcode) {
            (1, 1) => "Connection Not Synchronized",
            (1, 2) => "Bad Message Length",
            (1, 3) => "Bad Message Type",
            (2, 1) => "Unsupported Version Number",
            (2, 2) => "Bad Peer AS",
            (2, 3) => "Bad BGP Identifier",
            (2, 4) => "Unsupported Optional Parameter",
            (2, 6) => "Unacceptable Hold Time",
            (2, 7) => "Unsupported Capability",
            (3, 1) => "Malformed Attribute List",
            (3, 2) => "Unrecognized Well-known Attribute",
            (3, 3) => "Missing Well-known Attribute",
            (3, 4) => "Attribute Flags Error",
            (3, 5) => "Attribute Length Error",
            (3, 6) => "Invalid ORIGIN Attribute",
            (3, 8) => "Invalid NEXT_HOP Attribute",
            (3, 9) => "Optional Attribute Error",
            (3, 10) => "Invalid Network Field",
            (3, 11) => "Malformed AS_PATH",
            (5, 1) => "unexpected message in OpenSent",
            (5, 2) => "unexpected message in OpenConfirm",
            (5, 3) => "unexpected message in Established",
            (6, 1) => "Maximum Number of Prefixes Reached",
            (6, 2) => "Administrative Shutdown",
            (6, 3) => "Peer De-configured",
            (6, 4) => "Administrative Reset",
            (6, 5) => "Connection Rejected",
            (6, 6) => "Other Configuration Change",
            (6, 7) => "Connection Collision Resolution",
            (6, 8) => "Out of Resources",
            (6, 9) => "Hard Reset",
            _ => "",
        };
        if sub.is_empty() {
            format!("{code} ({}/{})", self.code, self.subcode)
        } else {
            format!("{code}: {sub} ({}/{})", self.code, self.subcode)
        }
    }
}
