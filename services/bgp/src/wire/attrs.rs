//! The path attributes of a received UPDATE, checked against one table ([`TABLE`]) before the
//! codec library parses them, with each error handled as RFC 7606 says:
//! - **attribute discard** (§2): the attribute is dropped, the routes kept — for attributes that do
//!   not change where traffic goes (ATOMIC_AGGREGATE, AGGREGATOR, AS4_PATH, AS4_AGGREGATOR);
//! - **treat-as-withdraw** (§2): every route the UPDATE announces is withdrawn instead — for a
//!   malformed ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF or community, a missing well-known
//!   attribute (§3 d) or a flags conflict (§3 c);
//! - **session reset** only where the routes cannot be told apart any more: lengths that disagree
//!   with the message (§4), a malformed or repeated MP_REACH_NLRI / MP_UNREACH_NLRI (§3 g, §7.11),
//!   an unrecognized well-known attribute (RFC 4271 §6.3).
//!
//! A repeated attribute other than the multiprotocol ones keeps its first copy (§3 g); unknown
//! optional attributes are dropped (routeplane passes no route on). The result is the UPDATE the
//! library then parses: the same bytes minus what was discarded, or, for treat-as-withdraw, an
//! UPDATE withdrawing what the original announced.

// Every byte here comes from the network: no indexing that could panic.
#![deny(clippy::indexing_slicing)]

use std::fmt;

use crate::message::{BgpError, Notification, UpdateError};

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const EXTENDED_LENGTH: u8 = 0x10;

pub(super) const ORIGIN: u8 = 1;
pub(super) const AS_PATH: u8 = 2;
pub(super) const NEXT_HOP: u8 = 3;
pub(super) const MULTI_EXIT_DISC: u8 = 4;
pub(super) const LOCAL_PREF: u8 = 5;
pub(super) const COMMUNITIES: u8 = 8;
pub(super) const MP_REACH_NLRI: u8 = 14;
pub(super) const MP_UNREACH_NLRI: u8 = 15;
pub(super) const AS4_PATH: u8 = 17;

/// What RFC 7606 §7 prescribes for one attribute when it is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    AttributeDiscard,
    TreatAsWithdraw,
    SessionReset,
    /// Not RFC 7606's: a prefix with host bits set taken as its network (see `wire.rs`).
    HostBitsCleared,
}

impl Handling {
    /// What a session can do instead of resetting.
    pub const REPAIRS: [Handling; 3] =
        [TreatAsWithdraw, AttributeDiscard, Handling::HostBitsCleared];

    /// The name metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            AttributeDiscard => "attribute-discard",
            TreatAsWithdraw => "treat-as-withdraw",
            SessionReset => "session-reset",
            Handling::HostBitsCleared => "host-bits-cleared",
        }
    }
}

/// How long an attribute's value may be.
#[derive(Debug, Clone, Copy)]
enum Length {
    Exactly(usize),
    /// 6 octets with 2-octet AS numbers, 8 with 4-octet ones (AGGREGATOR).
    AggregatorSized,
    /// A non-zero multiple of this many octets (the community attributes, CLUSTER_LIST).
    NonZeroMultipleOf(usize),
    /// Checked by the value's own rule.
    Any,
}

/// One row of the table: an attribute as its RFC defines it.
struct Spec {
    code: u8,
    name: &'static str,
    optional: bool,
    transitive: bool,
    length: Length,
    malformed: Handling,
}

const fn spec(
    code: u8,
    name: &'static str,
    (optional, transitive): (bool, bool),
    length: Length,
    malformed: Handling,
) -> Spec {
    Spec {
        code,
        name,
        optional,
        transitive,
        length,
        malformed,
    }
}

const WELL_KNOWN: (bool, bool) = (false, true);
const OPTIONAL_TRANSITIVE: (bool, bool) = (true, true);
const OPTIONAL_NON_TRANSITIVE: (bool, bool) = (true, false);

use Handling::{AttributeDiscard, SessionReset, TreatAsWithdraw};
use Length::{AggregatorSized, Any, Exactly, NonZeroMultipleOf};

/// Every attribute routeplane knows, with the handling RFC 7606 §7 (and the attribute's own RFC)
/// gives it when malformed.
const TABLE: &[Spec] = &[
    // §7.1, §7.2 (RFC 4271 §5.1.1, §5.1.2)
    spec(ORIGIN, "ORIGIN", WELL_KNOWN, Exactly(1), TreatAsWithdraw),
    spec(AS_PATH, "AS_PATH", WELL_KNOWN, Any, TreatAsWithdraw),
    // §7.3
    spec(
        NEXT_HOP,
        "NEXT_HOP",
        WELL_KNOWN,
        Exactly(4),
        TreatAsWithdraw,
    ),
    // §7.4
    spec(
        4,
        "MULTI_EXIT_DISC",
        OPTIONAL_NON_TRANSITIVE,
        Exactly(4),
        TreatAsWithdraw,
    ),
    // §7.5 (discard would do from an external peer; withdraw is right for both)
    spec(
        LOCAL_PREF,
        "LOCAL_PREF",
        WELL_KNOWN,
        Exactly(4),
        TreatAsWithdraw,
    ),
    // §7.6, §7.7
    spec(
        6,
        "ATOMIC_AGGREGATE",
        WELL_KNOWN,
        Exactly(0),
        AttributeDiscard,
    ),
    spec(
        7,
        "AGGREGATOR",
        OPTIONAL_TRANSITIVE,
        AggregatorSized,
        AttributeDiscard,
    ),
    // §7.8 (RFC 1997)
    spec(
        8,
        "COMMUNITIES",
        OPTIONAL_TRANSITIVE,
        NonZeroMultipleOf(4),
        TreatAsWithdraw,
    ),
    // §7.9, §7.10 (RFC 4456)
    spec(
        9,
        "ORIGINATOR_ID",
        OPTIONAL_NON_TRANSITIVE,
        Exactly(4),
        TreatAsWithdraw,
    ),
    spec(
        10,
        "CLUSTER_LIST",
        OPTIONAL_NON_TRANSITIVE,
        NonZeroMultipleOf(4),
        TreatAsWithdraw,
    ),
    // §7.11 (RFC 4760 §7): without them the routes they carry are unknown.
    spec(
        MP_REACH_NLRI,
        "MP_REACH_NLRI",
        OPTIONAL_NON_TRANSITIVE,
        Any,
        SessionReset,
    ),
    spec(
        MP_UNREACH_NLRI,
        "MP_UNREACH_NLRI",
        OPTIONAL_NON_TRANSITIVE,
        Any,
        SessionReset,
    ),
    // §7.14 (RFC 4360)
    spec(
        16,
        "EXTENDED_COMMUNITIES",
        OPTIONAL_TRANSITIVE,
        NonZeroMultipleOf(8),
        TreatAsWithdraw,
    ),
    // RFC 6793 §6
    spec(
        AS4_PATH,
        "AS4_PATH",
        OPTIONAL_TRANSITIVE,
        Any,
        AttributeDiscard,
    ),
    spec(
        18,
        "AS4_AGGREGATOR",
        OPTIONAL_TRANSITIVE,
        Exactly(8),
        AttributeDiscard,
    ),
    // RFC 8092 §6
    spec(
        32,
        "LARGE_COMMUNITY",
        OPTIONAL_TRANSITIVE,
        NonZeroMultipleOf(12),
        TreatAsWithdraw,
    ),
];

fn lookup(code: u8) -> Option<&'static Spec> {
    TABLE.iter().find(|s| s.code == code)
}

/// The Optional and Transitive bits an attribute is sent with: the same row it is checked by.
pub(super) fn flags(code: u8) -> Option<(bool, bool)> {
    lookup(code).map(|s| (s.optional, s.transitive))
}

/// What was done to a received UPDATE instead of resetting the session, for the log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub handling: Handling,
    pub attribute: String,
    pub why: String,
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.attribute,
            self.why,
            self.handling.name()
        )
    }
}

/// An UPDATE's body (after the 19-octet header) with its errors handled.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    /// The body to parse instead of the original: without the discarded attributes, or
    /// withdrawals only. `None` when every attribute was kept: the UPDATE is parsed as it came.
    pub body: Option<Vec<u8>>,
    pub repairs: Vec<Repair>,
    /// Treat-as-withdraw applied, but the UPDATE announced nothing to withdraw.
    pub nothing_left: bool,
}

fn update_error(error: UpdateError, data: &[u8]) -> Notification {
    Notification::new(BgpError::Update(error), data)
}

fn read_u16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// One attribute as found in the list: flags, code, value and its whole encoding.
struct Raw<'a> {
    flags: u8,
    code: u8,
    value: &'a [u8],
    whole: &'a [u8],
}

/// Checks an UPDATE body. `asn4`: AS numbers are 4 octets (RFC 6793, negotiated).
pub fn check(body: &[u8], asn4: bool) -> Result<Checked, Notification> {
    // §4: lengths that do not add up leave no way to find the NLRI: session reset.
    let malformed_list = || update_error(UpdateError::MalformedAttributeList, &[]);
    let withdrawn_len = read_u16(body, 0).ok_or_else(malformed_list)?;
    let attrs_at = 2 + withdrawn_len;
    let attrs_len = read_u16(body, attrs_at).ok_or_else(malformed_list)?;
    let nlri_at = attrs_at + 2 + attrs_len;
    let (withdrawn, attrs, nlri) = match (
        body.get(2..attrs_at),
        body.get(attrs_at + 2..nlri_at),
        body.get(nlri_at..),
    ) {
        (Some(w), Some(a), Some(n)) => (w, a, n),
        _ => return Err(malformed_list()),
    };

    let mut kept: Vec<&[u8]> = Vec::new();
    let mut repairs = Vec::new();
    let mut withdraw = false;
    let mut seen = std::collections::BTreeSet::new();
    let mut mp_reach: Option<&[u8]> = None;
    let mut mp_unreach: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    while pos < attrs.len() {
        let raw = match split_attribute(attrs, pos) {
            Some((raw, next)) => {
                pos = next;
                raw
            }
            None => {
                // §4: an attribute running past the list is the last one; the NLRI can still be
                // found, unless the attribute was (or may have been) a multiprotocol one.
                let code = attrs.get(pos + 1).copied();
                if matches!(code, None | Some(MP_REACH_NLRI | MP_UNREACH_NLRI)) {
                    return Err(malformed_list());
                }
                let name = code.and_then(lookup).map_or("attribute", |s| s.name);
                repairs.push(Repair {
                    handling: TreatAsWithdraw,
                    attribute: format!("{name} (type {})", code.unwrap_or(0)),
                    why: "its length runs past the attribute list".into(),
                });
                withdraw = true;
                break;
            }
        };
        let first = seen.insert(raw.code);
        let Some(spec) = lookup(raw.code) else {
            if raw.flags & OPTIONAL == 0 {
                // RFC 4271 §6.3: the data is the unrecognized attribute.
                return Err(update_error(
                    UpdateError::UnrecognizedWellKnownAttribute,
                    raw.whole,
                ));
            }
            continue;
        };
        if !first {
            // §3 g
            if matches!(raw.code, MP_REACH_NLRI | MP_UNREACH_NLRI) {
                return Err(malformed_list());
            }
            repairs.push(Repair {
                handling: AttributeDiscard,
                attribute: spec.name.into(),
                why: "repeated; the first copy is kept".into(),
            });
            continue;
        }
        match problem(spec, &raw, asn4) {
            None => {
                match raw.code {
                    MP_REACH_NLRI => mp_reach = Some(raw.value),
                    MP_UNREACH_NLRI => mp_unreach.push(raw.whole),
                    _ => {}
                }
                kept.push(raw.whole);
            }
            Some(why) => match spec.malformed {
                SessionReset => {
                    return Err(update_error(UpdateError::OptionalAttributeError, raw.whole));
                }
                handling => {
                    withdraw |= handling == TreatAsWithdraw;
                    repairs.push(Repair {
                        handling,
                        attribute: spec.name.into(),
                        why,
                    });
                }
            },
        }
    }

    // §3 d: a well-known attribute missing from an UPDATE that announces routes.
    let announces = !nlri.is_empty() || mp_reach.is_some();
    if announces && !withdraw {
        let needed: &[u8] = if nlri.is_empty() {
            &[ORIGIN, AS_PATH]
        } else {
            &[ORIGIN, AS_PATH, NEXT_HOP]
        };
        if let Some(missing) = needed.iter().find(|c| !seen.contains(*c)) {
            let name = lookup(*missing).map_or("attribute", |s| s.name);
            repairs.push(Repair {
                handling: TreatAsWithdraw,
                attribute: name.into(),
                why: "missing from an UPDATE that announces routes".into(),
            });
            withdraw = true;
        }
    }

    if withdraw {
        return Ok(as_withdrawal(
            withdrawn,
            nlri,
            mp_reach,
            &mp_unreach,
            repairs,
        ));
    }
    let len: usize = kept.iter().map(|a| a.len()).sum();
    // The common case, a well-formed UPDATE: no copy.
    let body = (len != attrs.len()).then(|| {
        let mut out = Vec::with_capacity(body.len());
        out.extend_from_slice(&(withdrawn_len as u16).to_be_bytes());
        out.extend_from_slice(withdrawn);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        for a in kept {
            out.extend_from_slice(a);
        }
        out.extend_from_slice(nlri);
        out
    });
    Ok(Checked {
        body,
        repairs,
        nothing_left: false,
    })
}

/// The attribute at `pos`, and where the next one starts; `None` if it runs past the list.
fn split_attribute(attrs: &[u8], pos: usize) -> Option<(Raw<'_>, usize)> {
    let flags = *attrs.get(pos)?;
    let code = *attrs.get(pos + 1)?;
    let (len, header) = if flags & EXTENDED_LENGTH != 0 {
        (read_u16(attrs, pos + 2)?, 4)
    } else {
        (usize::from(*attrs.get(pos + 2)?), 3)
    };
    let end = pos + header + len;
    Some((
        Raw {
            flags,
            code,
            value: attrs.get(pos + header..end)?,
            whole: attrs.get(pos..end)?,
        },
        end,
    ))
}

/// Why an attribute is malformed, if it is.
fn problem(spec: &Spec, raw: &Raw<'_>, asn4: bool) -> Option<String> {
    // §3 c: the Optional and Transitive bits must be what the attribute's RFC says.
    let optional = raw.flags & OPTIONAL != 0;
    let transitive = raw.flags & TRANSITIVE != 0;
    if optional != spec.optional || transitive != spec.transitive {
        return Some(format!(
            "flags 0x{:02x} contradict a{} {} attribute",
            raw.flags,
            if spec.optional {
                "n optional"
            } else {
                " well-known"
            },
            if spec.transitive {
                "transitive"
            } else {
                "non-transitive"
            }
        ));
    }
    let len = raw.value.len();
    let length_ok = match spec.length {
        Exactly(n) => len == n,
        AggregatorSized => len == if asn4 { 8 } else { 6 },
        NonZeroMultipleOf(n) => len > 0 && len.is_multiple_of(n),
        Any => true,
    };
    if !length_ok {
        return Some(format!("length {len} is not valid for it"));
    }
    match raw.code {
        ORIGIN => match raw.value {
            [o] if *o > 2 => Some(format!("ORIGIN {o} is not IGP, EGP or INCOMPLETE")),
            _ => None,
        },
        AS_PATH => as_path_problem(raw.value, if asn4 { 4 } else { 2 }),
        AS4_PATH => as_path_problem(raw.value, 4),
        NEXT_HOP => {
            let nh = <[u8; 4]>::try_from(raw.value)
                .map(std::net::Ipv4Addr::from)
                .ok()?;
            // §7.3 with RFC 4271 §6.3: not a host address a route can point at.
            (nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast())
                .then(|| format!("{nh} is not a host address"))
        }
        // AFI, SAFI, next-hop length, next hop, reserved octet, then the NLRI.
        MP_REACH_NLRI => match raw.value.get(3) {
            Some(nh_len) if len >= 5 + usize::from(*nh_len) => None,
            _ => Some(format!("length {len} cannot hold its next hop")),
        },
        MP_UNREACH_NLRI => (len < 3).then(|| format!("length {len} cannot hold AFI and SAFI")),
        _ => None,
    }
}

/// §7.2 (RFC 4271 §4.3): segments of type 1 to 4, each with at least one AS, filling the value.
fn as_path_problem(mut value: &[u8], asn_len: usize) -> Option<String> {
    while !value.is_empty() {
        let (kind, count) = match value {
            [kind, count, ..] => (*kind, usize::from(*count)),
            _ => return Some("a segment header is cut short".into()),
        };
        if !(1..=4).contains(&kind) {
            return Some(format!("segment type {kind} is not a known one"));
        }
        if count == 0 {
            return Some("a segment holds no AS number".into());
        }
        value = match value.get(2 + count * asn_len..) {
            Some(rest) => rest,
            None => return Some(format!("a segment of {count} AS numbers is cut short")),
        };
    }
    None
}

/// The UPDATE that withdraws what `nlri` and `mp_reach` announced (with what was withdrawn anyway).
fn as_withdrawal(
    withdrawn: &[u8],
    nlri: &[u8],
    mp_reach: Option<&[u8]>,
    mp_unreach: &[&[u8]],
    repairs: Vec<Repair>,
) -> Checked {
    let nothing_left = nlri.is_empty() && mp_reach.is_none();
    let mut attrs: Vec<u8> = mp_unreach.concat();
    // MP_REACH_NLRI: AFI, SAFI, next-hop length, next hop, reserved, NLRI (its length checked).
    let unreach = mp_reach.and_then(|reach| {
        let nh_len = usize::from(*reach.get(3)?);
        Some([reach.get(..3)?, reach.get(5 + nh_len..)?].concat())
    });
    if let Some(value) = unreach {
        attrs.extend_from_slice(&[OPTIONAL | EXTENDED_LENGTH, MP_UNREACH_NLRI]);
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(&value);
    }
    let mut w = withdrawn.to_vec();
    w.extend_from_slice(nlri);
    let mut body = Vec::with_capacity(4 + w.len() + attrs.len());
    body.extend_from_slice(&(w.len() as u16).to_be_bytes());
    body.extend_from_slice(&w);
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    Checked {
        body: Some(body),
        repairs,
        nothing_left,
    }
}

#[cfg(test)]
mod tests;
