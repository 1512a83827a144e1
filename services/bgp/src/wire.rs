//! BGP-4 on the wire, through netgauze-bgp-pkt, behind routeplane's own message types.
//!
//! [`Codec::decode`] checks the 19-octet header itself first (RFC 4271 §6.1: marker, length, type)
//! — the library trusts the length field — then hands the frame to netgauze. Any failure comes
//! back as the [`Notification`] to send, using netgauze's mapping of its parse errors to the
//! RFC's codes. NOTIFICATION messages are framed and read here directly, so that every code and
//! subcode survives a round trip. Nothing outside this file names a netgauze type.

// Bytes from the network: no indexing, unwrap or expect that could panic (tests excepted).
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
    GracefulRestartAddressFamily, GracefulRestartCapability, MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::codec::{BgpCodec, BgpCodecDecoderError};
use netgauze_bgp_pkt::community::Community;
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::BgpNotificationMessage;
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, Communities,
    LocalPreference, MpReach, MpUnreach, MultiExitDiscriminator, NextHop, Origin as NgOrigin,
    PathAttribute, PathAttributeValue,
};
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_iana::address_family::AddressType;
use routeplane_net::{Cidr, Family};
use tokio_util::codec::{Decoder, Encoder};

pub use attrs::{Handling, Repair};

use crate::message::{
    AS_TRANS, AddPath, BgpError, Capabilities, GracefulRestart, HeaderError, Message, Nlri,
    Notification, Open, OpenError, Origin, PathAttributes, Update, UpdateError,
};

pub const HEADER_LEN: usize = 19;
/// RFC 4271 §4.1 (RFC 8654's extended messages are not offered).
pub const MAX_MESSAGE_LEN: usize = 4096;
const UPDATE_TYPE: u8 = 2;
const NOTIFICATION_TYPE: u8 = 3;

/// Why a message could not be put on the wire (a bug or an unencodable value, never peer input).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode BGP message: {0}")]
pub struct EncodeError(String);

/// One connection's codec: tracks whether 4-octet AS numbers were negotiated, and what it
/// repaired in received UPDATEs instead of failing (RFC 7606, see `attrs.rs`).
#[derive(Debug, Default)]
pub struct Codec {
    inner: BgpCodec,
    asn4: bool,
    /// Whether each side's OPEN offered 4-octet AS numbers (RFC 6793 §4: both must), as the
    /// library tracks it for its own parsing.
    asn4_sent: Option<bool>,
    asn4_received: Option<bool>,
    repairs: Vec<Repair>,
}

fn header_error(error: HeaderError, data: impl Into<Vec<u8>>) -> Notification {
    Notification::new(BgpError::Header(error), data)
}

/// RFC 4271 §4: the smallest length each message type can have.
fn min_len(kind: u8) -> usize {
    match kind {
        1 => 29,
        2 => 23,
        3 => 21,
        4 => 19,
        _ => 23,
    }
}

impl Codec {
    pub fn new() -> Codec {
        Codec::default()
    }

    /// Call once both OPENs are exchanged: AS_PATHs are then written with 4-octet numbers.
    pub fn set_asn4(&mut self, asn4: bool) {
        self.asn4 = asn4;
    }

    /// What the last decoded messages had repaired (discarded attributes, routes treated as
    /// withdrawn, host bits cleared), oldest first; emptied by the call.
    pub fn take_repairs(&mut self) -> Vec<Repair> {
        std::mem::take(&mut self.repairs)
    }

    /// Takes one message off the front of `buf`, if a whole one is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Notification> {
        let Some((marker, [len_hi, len_lo, kind])) = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.split_first_chunk::<16>())
            .and_then(|(m, rest)| Some((m, <[u8; 3]>::try_from(rest).ok()?)))
        else {
            return Ok(None);
        };
        if marker.iter().any(|b| *b != 0xff) {
            return Err(header_error(HeaderError::ConnectionNotSynchronized, []));
        }
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if !(1..=5).contains(&kind) {
            return Err(header_error(HeaderError::BadMessageType, [kind]));
        }
        let fixed = matches!(kind, 4 | 5);
        if len > MAX_MESSAGE_LEN || len < min_len(kind) || (fixed && len != min_len(kind)) {
            return Err(header_error(
                HeaderError::BadMessageLength,
                [len_hi, len_lo],
            ));
        }
        if buf.len() < len {
            return Ok(None);
        }
        if kind == NOTIFICATION_TYPE {
            let frame = buf.split_to(len);
            return Ok(Some(Message::Notification(notification_in(&frame))));
        }
        if kind == UPDATE_TYPE {
            return self.decode_update(buf.split_to(len)).map(Some);
        }
        let decoded = self.inner_decode(buf)?;
        if let Some(Message::Open(o)) = &decoded {
            self.asn4_received = Some(o.capabilities.asn4.is_some());
        }
        Ok(decoded)
    }

    /// An UPDATE's attributes checked and repaired as RFC 7606 says, then parsed.
    fn decode_update(&mut self, mut frame: BytesMut) -> Result<Message, Notification> {
        let asn4 = self.asn4_sent == Some(true) && self.asn4_received == Some(true);
        let checked = attrs::check(frame.get(HEADER_LEN..).unwrap_or_default(), asn4)?;
        self.repairs.extend(checked.repairs);
        if checked.nothing_left {
            return Ok(Message::Update(Update::default()));
        }
        if let Some(body) = checked.body {
            frame = BytesMut::with_capacity(HEADER_LEN + body.len());
            frame.put_slice(&[0xff; 16]);
            // No longer than the frame it came from, which fitted in MAX_MESSAGE_LEN.
            frame.put_u16((HEADER_LEN + body.len()) as u16);
            frame.put_u8(UPDATE_TYPE);
            frame.put_slice(&body);
        }
        match self.inner_decode(&mut frame)? {
            Some(m) => Ok(m),
            None => Err(header_error(HeaderError::BadMessageLength, [])),
        }
    }

    fn inner_decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Notification> {
        match self.inner.decode(buf) {
            Ok(Some((msg, _ignored))) => from_netgauze(msg, &mut self.repairs).map(Some),
            Ok(None) => Ok(None),
            Err(BgpCodecDecoderError::BgpMessageParsingError(e)) => {
                Err(notification_of(BgpNotificationMessage::from(e)))
            }
            Err(e) => Err(Notification::new(
                BgpError::Header(HeaderError::Other(0)),
                e.to_string().into_bytes(),
            )),
        }
    }

    /// Appends one message to `buf`.
    pub fn encode(&mut self, msg: &Message, buf: &mut BytesMut) -> Result<(), EncodeError> {
        if let Message::Open(o) = msg {
            self.asn4_sent = Some(o.capabilities.asn4.is_some());
        }
        if let Message::Notification(n) = msg {
            let len = HEADER_LEN + 2 + n.data.len();
            let len16 = u16::try_from(len)
                .ok()
                .filter(|l| usize::from(*l) <= MAX_MESSAGE_LEN)
                .ok_or_else(|| EncodeError(format!("NOTIFICATION of {len} bytes")))?;
            buf.put_slice(&[0xff; 16]);
            buf.put_u16(len16);
            buf.put_u8(NOTIFICATION_TYPE);
            buf.put_u8(n.code);
            buf.put_u8(n.subcode);
            buf.put_slice(&n.data);
            return Ok(());
        }
        let start = buf.len();
        let ng = to_netgauze(msg, self.asn4)?;
        self.inner
            .encode(ng, buf)
            .map_err(|e| EncodeError(e.to_string()))?;
        if buf.len() - start > MAX_MESSAGE_LEN {
            buf.truncate(start);
            return Err(EncodeError(format!(
                "message exceeds {MAX_MESSAGE_LEN} bytes"
            )));
        }
        Ok(())
    }
}

/// The bytes one message takes on the wire (for packing UPDATEs).
pub fn encoded_len(msg: &Message, asn4: bool) -> Result<usize, EncodeError> {
    let mut codec = Codec {
        asn4,
        ..Codec::default()
    };
    let mut buf = BytesMut::new();
    codec.encode(msg, &mut buf)?;
    Ok(buf.len())
}

/// Octets one NLRI adds to an UPDATE (RFC 4271 §4.3; RFC 7911 adds a 4-octet path identifier).
pub fn nlri_len(n: &Nlri) -> usize {
    1 + usize::from(n.prefix.prefix_len()).div_ceil(8) + if n.path_id.is_some() { 4 } else { 0 }
}

/// Code, subcode and data of a netgauze NOTIFICATION, read back from its own encoding.
fn notification_of(n: BgpNotificationMessage) -> Notification {
    let mut buf = BytesMut::new();
    let mut codec = BgpCodec::default();
    match codec.encode(BgpMessage::Notification(n), &mut buf) {
        Ok(()) => notification_in(&buf),
        _ => Notification::new(BgpError::Header(HeaderError::Other(0)), []),
    }
}

/// The code, subcode and data of a NOTIFICATION's frame (at least 21 octets, checked by the
/// header's minimum length).
fn notification_in(frame: &[u8]) -> Notification {
    match frame.get(HEADER_LEN..) {
        Some([code, subcode, data @ ..]) => Notification::from_wire(*code, *subcode, data),
        _ => Notification::new(BgpError::Header(HeaderError::BadMessageLength), []),
    }
}

fn family_of(t: AddressType) -> Option<Family> {
    match t {
        AddressType::Ipv4Unicast => Some(Family::V4),
        AddressType::Ipv6Unicast => Some(Family::V6),
        _ => None,
    }
}

fn address_type(f: Family) -> AddressType {
    match f {
        Family::V4 => AddressType::Ipv4Unicast,
        Family::V6 => AddressType::Ipv6Unicast,
    }
}

/// A prefix as sent; one with host bits set (10.0.0.1/24) is taken as its network (10.0.0.0/24)
/// and the repair noted, as BIRD and GoBGP take it, instead of ending the session.
fn prefix_of(
    addr: IpAddr,
    network: IpAddr,
    len: u8,
    path_id: Option<u32>,
    repairs: &mut Vec<Repair>,
) -> Result<Nlri, Notification> {
    let prefix = Cidr::containing(network, len).ok_or_else(|| {
        Notification::new(
            BgpError::Update(UpdateError::InvalidNetworkField),
            format!("{addr}/{len}").into_bytes(),
        )
    })?;
    if prefix.network() != addr {
        repairs.push(Repair {
            handling: Handling::HostBitsCleared,
            attribute: "NLRI".into(),
            why: format!("{addr}/{len} has host bits set; taken as {prefix}"),
        });
    }
    Ok(Nlri { prefix, path_id })
}

fn v4_nlri(a: &Ipv4UnicastAddress, repairs: &mut Vec<Repair>) -> Result<Nlri, Notification> {
    let net = a.network().address();
    let (addr, network) = (IpAddr::V4(net.addr()), IpAddr::V4(net.network()));
    prefix_of(addr, network, net.prefix_len(), a.path_id(), repairs)
}

fn v6_nlri(a: &Ipv6UnicastAddress, repairs: &mut Vec<Repair>) -> Result<Nlri, Notification> {
    let net = a.network().address();
    let (addr, network) = (IpAddr::V6(net.addr()), IpAddr::V6(net.network()));
    prefix_of(addr, network, net.prefix_len(), a.path_id(), repairs)
}

/// Every prefix of a list, converted.
fn all<T>(
    list: &[T],
    convert: fn(&T, &mut Vec<Repair>) -> Result<Nlri, Notification>,
    repairs: &mut Vec<Repair>,
) -> Result<Vec<Nlri>, Notification> {
    list.iter().map(|a| convert(a, repairs)).collect()
}

fn from_netgauze(msg: BgpMessage, repairs: &mut Vec<Repair>) -> Result<Message, Notification> {
    Ok(match msg {
        BgpMessage::Open(open) => Message::Open(open_from(&open)?),
        BgpMessage::Update(update) => update_from(&update, repairs)?,
        BgpMessage::Notification(n) => Message::Notification(notification_of(n)),
        BgpMessage::KeepAlive => Message::Keepalive,
        BgpMessage::RouteRefresh(rr) => match family_of(rr.address_type()) {
            Some(f) => Message::RouteRefresh(f),
            // RFC 7313 §5: a ROUTE-REFRESH for a family not negotiated is ignored; IPv4 is harmless.
            None => Message::RouteRefresh(Family::V4),
        },
    })
}

fn open_from(open: &BgpOpenMessage) -> Result<Open, Notification> {
    if open.version() != 4 {
        // RFC 4271 §6.2: the data is the largest version we support.
        return Err(Notification::new(
            BgpError::Open(OpenError::UnsupportedVersion),
            4u16.to_be_bytes(),
        ));
    }
    let mut caps = Capabilities::default();
    for cap in open.capabilities() {
        match cap {
            BgpCapability::MultiProtocolExtensions(mp) => {
                caps.families.extend(family_of(mp.address_type()))
            }
            BgpCapability::FourOctetAs(a) => caps.asn4 = Some(a.asn4()),
            BgpCapability::RouteRefresh
            | BgpCapability::EnhancedRouteRefresh
            | BgpCapability::CiscoRouteRefresh => caps.route_refresh = true,
            BgpCapability::GracefulRestartCapability(gr) => {
                caps.graceful_restart = Some(GracefulRestart {
                    restarting: gr.restart(),
                    restart_time: gr.time(),
                    notification: gr.graceful_notification(),
                    families: gr
                        .address_families()
                        .iter()
                        .filter_map(|f| Some((family_of(f.address_type())?, f.forwarding_state())))
                        .collect(),
                })
            }
            BgpCapability::AddPath(ap) => {
                caps.add_path
                    .extend(ap.address_families().iter().filter_map(|f| {
                        Some(AddPath {
                            family: family_of(f.address_type())?,
                            send: f.send(),
                            receive: f.receive(),
                        })
                    }))
            }
            _ => {}
        }
    }
    Ok(Open {
        asn: u32::from(open.my_as()),
        hold_time: open.hold_time(),
        router_id: open.bgp_id(),
        capabilities: caps,
    })
}

fn update_from(
    update: &BgpUpdateMessage,
    repairs: &mut Vec<Repair>,
) -> Result<Message, Notification> {
    let mut out = Update {
        withdrawn: all(update.withdraw_routes(), v4_nlri, repairs)?,
        announced: all(update.nlri(), v4_nlri, repairs)?,
        attributes: None,
    };
    let mut origin = None;
    let mut as_path: Option<Vec<u32>> = None;
    let mut as4_path: Option<Vec<u32>> = None;
    let (mut next_hop, mut med, mut local_pref, mut communities) = (None, None, None, Vec::new());
    let mut mp_unreach_v6_empty = false;
    for attr in update.path_attributes() {
        match attr.value() {
            PathAttributeValue::Origin(o) => {
                origin = Some(match o {
                    NgOrigin::IGP => Origin::Igp,
                    NgOrigin::EGP => Origin::Egp,
                    NgOrigin::Incomplete => Origin::Incomplete,
                })
            }
            PathAttributeValue::AsPath(p) => as_path = Some(Vec::<u32>::from(p.clone())),
            PathAttributeValue::As4Path(p) => {
                as4_path = Some(
                    p.segments()
                        .iter()
                        .flat_map(|s| s.as_numbers().iter().copied())
                        .collect(),
                )
            }
            PathAttributeValue::NextHop(n) => next_hop = Some(IpAddr::V4(n.next_hop())),
            PathAttributeValue::MultiExitDiscriminator(m) => med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => local_pref = Some(l.metric()),
            PathAttributeValue::Communities(c) => {
                communities = c
                    .communities()
                    .iter()
                    .map(|c| ((c.value() >> 16) as u16, c.value() as u16))
                    .collect()
            }
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                nlri,
                ..
            }) => {
                next_hop = Some(IpAddr::V6(*next_hop_global));
                out.announced.extend(all(nlri, v6_nlri, repairs)?);
            }
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast {
                next_hop: nh, nlri, ..
            }) => {
                next_hop = Some(*nh);
                out.announced.extend(all(nlri, v4_nlri, repairs)?);
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => {
                mp_unreach_v6_empty = nlri.is_empty();
                out.withdrawn.extend(all(nlri, v6_nlri, repairs)?);
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri }) => {
                out.withdrawn.extend(all(nlri, v4_nlri, repairs)?);
            }
            _ => {}
        }
    }
    if out.announced.is_empty() {
        if out.withdrawn.is_empty() && update.path_attributes().is_empty() {
            return Ok(Message::EndOfRib(Family::V4));
        }
        if out.withdrawn.is_empty() && mp_unreach_v6_empty {
            return Ok(Message::EndOfRib(Family::V6));
        }
        return Ok(Message::Update(out));
    }
    // RFC 4271 §6.3: announcements need ORIGIN, AS_PATH and a next hop.
    let missing = |type_code: u8| {
        Notification::new(
            BgpError::Update(UpdateError::MissingWellKnownAttribute),
            [type_code],
        )
    };
    let origin = origin.ok_or_else(|| missing(1))?;
    let mut as_path = as_path.ok_or_else(|| missing(2))?;
    // RFC 6793 §4.2.3: a 2-octet speaker's path carries AS_TRANS; AS4_PATH holds the real tail.
    if let Some(real) = as4_path
        && real.len() <= as_path.len()
    {
        let keep = as_path.len() - real.len();
        as_path.truncate(keep);
        as_path.extend(real);
    }
    out.attributes = Some(PathAttributes {
        origin,
        as_path,
        next_hop: next_hop.ok_or_else(|| missing(3))?,
        med,
        local_pref,
        communities,
    });
    Ok(Message::Update(out))
}

/// A path attribute to send, its flags from the table received ones are checked against
/// (`attrs.rs`): one place says what each attribute is. The multiprotocol ones take the extended
/// length, as their NLRI may pass 255 octets.
fn attr(code: u8, value: PathAttributeValue) -> Result<PathAttribute, EncodeError> {
    let (optional, transitive) = attrs::flags(code)
        .ok_or_else(|| EncodeError(format!("path attribute type {code} is not in the table")))?;
    let extended = matches!(code, attrs::MP_REACH_NLRI | attrs::MP_UNREACH_NLRI);
    PathAttribute::from(optional, transitive, false, extended, value)
        .map_err(|(_, e)| EncodeError(format!("{e:?}")))
}

fn to_netgauze(msg: &Message, asn4: bool) -> Result<BgpMessage, EncodeError> {
    Ok(match msg {
        Message::Open(open) => BgpMessage::Open(open_to(open)),
        Message::Update(update) => BgpMessage::Update(update_to(update, asn4)?),
        Message::EndOfRib(Family::V4) => {
            BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], vec![]))
        }
        Message::EndOfRib(Family::V6) => {
            let unreach = attr(
                attrs::MP_UNREACH_NLRI,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: Box::new([]) }),
            )?;
            BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![unreach], vec![]))
        }
        Message::Keepalive => BgpMessage::KeepAlive,
        Message::RouteRefresh(f) => BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
            address_type(*f),
            RouteRefreshSubcode::NormalRequest,
        )),
        Message::Notification(_) => {
            return Err(EncodeError(
                "NOTIFICATION is framed by Codec::encode".into(),
            ));
        }
    })
}

fn open_to(open: &Open) -> BgpOpenMessage {
    let c = &open.capabilities;
    let mut caps: Vec<BgpCapability> = c
        .families
        .iter()
        .map(|f| {
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                address_type(*f),
            ))
        })
        .collect();
    if c.route_refresh {
        caps.push(BgpCapability::RouteRefresh);
    }
    if let Some(asn) = c.asn4 {
        caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(asn)));
    }
    if let Some(gr) = &c.graceful_restart {
        let families: Vec<GracefulRestartAddressFamily> = gr
            .families
            .iter()
            .map(|(f, fwd)| GracefulRestartAddressFamily::new(*fwd, address_type(*f)))
            .collect();
        caps.push(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(
                gr.restarting,
                gr.notification,
                gr.restart_time,
                families,
            ),
        ));
    }
    if !c.add_path.is_empty() {
        let families: Vec<AddPathAddressFamily> = c
            .add_path
            .iter()
            .map(|a| AddPathAddressFamily::new(address_type(a.family), a.send, a.receive))
            .collect();
        caps.push(BgpCapability::AddPath(AddPathCapability::new(families)));
    }
    let my_as = u16::try_from(open.asn).unwrap_or(AS_TRANS);
    BgpOpenMessage::new(
        my_as,
        open.hold_time,
        open.router_id,
        vec![BgpOpenMessageParameter::new_capabilities(caps)],
    )
}

fn v4_addr(n: &Nlri) -> Result<Ipv4UnicastAddress, EncodeError> {
    let IpAddr::V4(addr) = n.prefix.network() else {
        return Err(EncodeError(format!("{} is not IPv4", n.prefix)));
    };
    let net =
        ipnet::Ipv4Net::new(addr, n.prefix.prefix_len()).map_err(|e| EncodeError(e.to_string()))?;
    Ok(Ipv4UnicastAddress::new(
        n.path_id,
        Ipv4Unicast::from_net(net).map_err(|e| EncodeError(format!("{e:?}")))?,
    ))
}

fn v6_addr(n: &Nlri) -> Result<Ipv6UnicastAddress, EncodeError> {
    let IpAddr::V6(addr) = n.prefix.network() else {
        return Err(EncodeError(format!("{} is not IPv6", n.prefix)));
    };
    let net =
        ipnet::Ipv6Net::new(addr, n.prefix.prefix_len()).map_err(|e| EncodeError(e.to_string()))?;
    Ok(Ipv6UnicastAddress::new(
        n.path_id,
        Ipv6Unicast::from_net(net).map_err(|e| EncodeError(format!("{e:?}")))?,
    ))
}

fn update_to(u: &Update, asn4: bool) -> Result<BgpUpdateMessage, EncodeError> {
    let (w4, w6): (Vec<&Nlri>, Vec<&Nlri>) = u
        .withdrawn
        .iter()
        .partition(|n| n.prefix.family() == Family::V4);
    let (a4, a6): (Vec<&Nlri>, Vec<&Nlri>) = u
        .announced
        .iter()
        .partition(|n| n.prefix.family() == Family::V4);
    let mut attrs = Vec::new();
    if !w6.is_empty() {
        let nlri = w6
            .iter()
            .map(|n| v6_addr(n))
            .collect::<Result<Vec<_>, _>>()?;
        attrs.push(attr(
            attrs::MP_UNREACH_NLRI,
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: nlri.into() }),
        )?);
    }
    if let Some(a) = &u.attributes {
        let origin = match a.origin {
            Origin::Igp => NgOrigin::IGP,
            Origin::Egp => NgOrigin::EGP,
            Origin::Incomplete => NgOrigin::Incomplete,
        };
        attrs.push(attr(attrs::ORIGIN, PathAttributeValue::Origin(origin))?);
        if asn4 {
            let segs = if a.as_path.is_empty() {
                vec![]
            } else {
                vec![As4PathSegment::new(
                    AsPathSegmentType::AsSequence,
                    a.as_path.clone(),
                )]
            };
            attrs.push(attr(
                attrs::AS_PATH,
                PathAttributeValue::AsPath(AsPath::As4PathSegments(segs.into())),
            )?);
        } else {
            // RFC 6793 §4.2.2: a 2-octet peer gets AS_TRANS for large numbers and the real path in AS4_PATH.
            let two: Vec<u16> = a
                .as_path
                .iter()
                .map(|n| u16::try_from(*n).unwrap_or(AS_TRANS))
                .collect();
            let segs = if two.is_empty() {
                vec![]
            } else {
                vec![As2PathSegment::new(AsPathSegmentType::AsSequence, two)]
            };
            attrs.push(attr(
                attrs::AS_PATH,
                PathAttributeValue::AsPath(AsPath::As2PathSegments(segs.into())),
            )?);
            if a.as_path.iter().any(|n| *n > u32::from(u16::MAX)) {
                let seg = As4PathSegment::new(AsPathSegmentType::AsSequence, a.as_path.clone());
                attrs.push(attr(
                    attrs::AS4_PATH,
                    PathAttributeValue::As4Path(As4Path::new(vec![seg])),
                )?);
            }
        }
        if !a4.is_empty() {
            let IpAddr::V4(nh) = a.next_hop else {
                return Err(EncodeError(format!(
                    "IPv4 routes need an IPv4 next hop, not {}",
                    a.next_hop
                )));
            };
            attrs.push(attr(
                attrs::NEXT_HOP,
                PathAttributeValue::NextHop(NextHop::new(nh)),
            )?);
        }
        if let Some(med) = a.med {
            attrs.push(attr(
                attrs::MULTI_EXIT_DISC,
                PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(med)),
            )?);
        }
        if let Some(lp) = a.local_pref {
            attrs.push(attr(
                attrs::LOCAL_PREF,
                PathAttributeValue::LocalPreference(LocalPreference::new(lp)),
            )?);
        }
        if !a.communities.is_empty() {
            let cs: Vec<Community> = a
                .communities
                .iter()
                .map(|(hi, lo)| Community::new((u32::from(*hi) << 16) | u32::from(*lo)))
                .collect();
            attrs.push(attr(
                attrs::COMMUNITIES,
                PathAttributeValue::Communities(Communities::new(cs)),
            )?);
        }
        if !a6.is_empty() {
            let IpAddr::V6(nh) = a.next_hop else {
                return Err(EncodeError(format!(
                    "IPv6 routes need an IPv6 next hop, not {}",
                    a.next_hop
                )));
            };
            let nlri = a6
                .iter()
                .map(|n| v6_addr(n))
                .collect::<Result<Vec<_>, _>>()?;
            attrs.push(attr(
                attrs::MP_REACH_NLRI,
                PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                    next_hop_global: nh,
                    next_hop_local: None,
                    nlri: nlri.into(),
                }),
            )?);
        }
    } else if !a4.is_empty() || !a6.is_empty() {
        return Err(EncodeError("announcements without path attributes".into()));
    }
    let withdrawn = w4
        .iter()
        .map(|n| v4_addr(n))
        .collect::<Result<Vec<_>, _>>()?;
    let nlri = a4
        .iter()
        .map(|n| v4_addr(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BgpUpdateMessage::new(withdrawn, attrs, nlri))
}

mod attrs;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
