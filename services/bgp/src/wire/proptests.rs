//! Property tests of the wire codec, with proptest's shrinking: every message routeplane can build
//! comes back from encode → decode unchanged, and bytes of any shape — random, or a valid message
//! with bytes overwritten or cut — decode to a message, to "wait for more" or to a NOTIFICATION of
//! RFC 4271's codes, never to a panic. The case counts are the suite's fixed budget;
//! `PROPTEST_CASES=100000 cargo test -p routeplane-bgp proptests` runs a longer campaign.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use routeplane_testkit::hostile::config;

use super::*;

/// A unicast IPv4 address a router could name as next hop or identifier (not 0/8, loopback,
/// multicast or reserved).
fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..=222, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| {
        // 127 (loopback) moved to 223, so that every draw is a case.
        Ipv4Addr::new(if a == 127 { 223 } else { a }, b, c, d)
    })
}

/// A global or unique-local IPv6 address.
fn unicast_v6() -> impl Strategy<Value = Ipv6Addr> {
    (
        prop_oneof![Just(0x2000u128), Just(0xfd00u128)],
        any::<u128>(),
    )
        .prop_map(|(top, rest)| Ipv6Addr::from((top << 112) | (rest >> 16)))
}

/// A unicast prefix: one whose network address is multicast is no unicast NLRI (the codec
/// refuses to encode it; received, it is a malformed UPDATE), so such a draw has its top bit
/// cleared — built so, not filtered, so that long runs do not run out of draws.
fn prefix(family: Family) -> impl Strategy<Value = Nlri> {
    (any::<u128>(), 0..=family.bits()).prop_map(move |(bits, len)| {
        let top = 1u128 << (family.bits() - 1);
        let within = |bits: u128| {
            Cidr::containing(family.addr(bits), len).expect("len within the family's width")
        };
        let mut prefix = within(bits);
        if prefix.network().is_multicast() {
            prefix = within(bits & !top);
        }
        Nlri {
            prefix,
            path_id: None,
        }
    })
}

fn attributes(family: Family) -> impl Strategy<Value = PathAttributes> {
    let next_hop = match family {
        Family::V4 => unicast_v4().prop_map(IpAddr::V4).boxed(),
        Family::V6 => unicast_v6().prop_map(IpAddr::V6).boxed(),
    };
    (
        prop_oneof![
            Just(Origin::Igp),
            Just(Origin::Egp),
            Just(Origin::Incomplete)
        ],
        prop::collection::vec(1u32.., 0..8),
        next_hop,
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        prop::collection::vec(any::<(u16, u16)>(), 0..6),
    )
        .prop_map(
            |(origin, as_path, next_hop, med, local_pref, communities)| PathAttributes {
                origin,
                as_path,
                next_hop,
                med,
                local_pref,
                communities,
            },
        )
}

/// An UPDATE as routeplane sends them: withdrawals of either family (IPv4 ones first, as they
/// travel in the RFC 4271 field and IPv6 ones in MP_UNREACH_NLRI), announcements of one family
/// with a next hop of that family, and never empty (an empty UPDATE is IPv4's End-of-RIB).
fn update() -> impl Strategy<Value = Update> {
    prop_oneof![Just(Family::V4), Just(Family::V6)]
        .prop_flat_map(|family| {
            (
                prop::collection::vec(prefix(Family::V4), 0..20),
                prop::collection::vec(prefix(Family::V6), 0..10),
                prop::collection::vec(prefix(family), 0..20),
                attributes(family),
            )
        })
        .prop_filter("not End-of-RIB", |(w4, w6, announced, _)| {
            !(w4.is_empty() && w6.is_empty() && announced.is_empty())
        })
        .prop_map(|(mut withdrawn, w6, announced, attributes)| {
            withdrawn.extend(w6);
            Update {
                withdrawn,
                attributes: (!announced.is_empty()).then_some(attributes),
                announced,
            }
        })
}

/// Encoded and decoded as on a session with 4-octet AS numbers (OPENs exchanged first); a
/// refusal on either side fails the case (the helper panics, which proptest catches and shrinks).
fn round_trip(msg: &Message) -> Message {
    super::tests::round_trip(msg, true)
}

/// A valid message's bytes, for the mutation property.
fn valid_bytes() -> impl Strategy<Value = Vec<u8>> {
    update().prop_map(|u| {
        let mut codec = Codec::new();
        codec.set_asn4(true);
        let mut buf = BytesMut::new();
        codec
            .encode(&Message::Update(u), &mut buf)
            .expect("a generated UPDATE encodes");
        buf.to_vec()
    })
}

/// What decoding `bytes` gives, or the panic as an error.
fn decode_all(bytes: &[u8], asn4: bool) -> Result<(), String> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = Codec::new();
    codec.set_asn4(asn4);
    // Every message in the buffer, as a session's read loop takes them; bounded by its length.
    for _ in 0..=bytes.len() / HEADER_LEN {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| codec.decode(&mut buf)))
                .map_err(|_| format!("the decoder panicked on {bytes:02x?}"))?;
        match outcome {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            Err(n) if (1..=7).contains(&n.code) => return Ok(()),
            Err(n) => return Err(format!("NOTIFICATION code {} is no RFC's: {n:?}", n.code)),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_update_we_build_comes_back_unchanged(u in update()) {
        let msg = Message::Update(u);
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn route_refresh_and_end_of_rib_come_back_unchanged(
        v6 in any::<bool>(),
        refresh in any::<bool>(),
    ) {
        let family = if v6 { Family::V6 } else { Family::V4 };
        let msg = if refresh { Message::RouteRefresh(family) } else { Message::EndOfRib(family) };
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn notifications_come_back_unchanged(
        code in 1u8..=6,
        subcode in any::<u8>(),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let msg = Message::Notification(Notification { code, subcode, data });
        prop_assert_eq!(round_trip(&msg), msg);
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(
        kind in 1u8..=5,
        body in prop::collection::vec(any::<u8>(), 0..200),
        asn4 in any::<bool>(),
    ) {
        let mut bytes = vec![0xff; 16];
        bytes.extend_from_slice(&u16::try_from(HEADER_LEN + body.len()).unwrap_or(u16::MAX).to_be_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        prop_assert_eq!(decode_all(&bytes, asn4), Ok(()));
    }

    #[test]
    fn a_valid_update_overwritten_or_cut_never_panics(
        (bytes, edits, cut) in valid_bytes().prop_flat_map(|b| {
            let len = b.len();
            (
                Just(b),
                prop::collection::vec((16..len, any::<u8>()), 1..6),
                prop::option::of(HEADER_LEN..=len),
            )
        }),
        asn4 in any::<bool>(),
    ) {
        let mut bytes = bytes;
        for (at, value) in edits {
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        prop_assert_eq!(decode_all(&bytes, asn4), Ok(()));
    }

    #[test]
    fn any_bytes_at_all_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        asn4 in any::<bool>(),
    ) {
        prop_assert_eq!(decode_all(&bytes, asn4), Ok(()));
    }
}

/// An IPv4 UPDATE's bytes (2-octet AS numbers) announcing `prefixes`, with `extra` appended to
/// its path attributes.
fn update_bytes_with(prefixes: &[Nlri], extra: &[u8]) -> Vec<u8> {
    let u = Message::Update(Update {
        withdrawn: vec![],
        attributes: Some(PathAttributes {
            origin: Origin::Igp,
            as_path: vec![64524],
            next_hop: "10.4.36.239".parse().expect("an address"),
            med: None,
            local_pref: None,
            communities: vec![],
        }),
        announced: prefixes.to_vec(),
    });
    let mut buf = BytesMut::new();
    Codec::new().encode(&u, &mut buf).expect("encodes");
    let attrs_len = usize::from(u16::from_be_bytes([buf[21], buf[22]]));
    let attrs_end = 23 + attrs_len;
    let mut out = buf[..attrs_end].to_vec();
    out.extend_from_slice(extra);
    out.extend_from_slice(&buf[attrs_end..]);
    let total = u16::try_from(out.len()).expect("fits");
    out[16..18].copy_from_slice(&total.to_be_bytes());
    let attrs = u16::try_from(attrs_len + extra.len()).expect("fits");
    out[21..23].copy_from_slice(&attrs.to_be_bytes());
    out
}

proptest! {
    #![proptest_config(config(2048))]

    /// RFC 7606's promise, whatever one extra attribute holds (any flags, a known or unknown type
    /// code, any length and value): the routes are announced with their own attributes intact,
    /// or all withdrawn, or the session resets with an UPDATE Message Error — never some routes,
    /// never changed attributes, never a panic.
    #[test]
    fn one_bad_attribute_leaves_all_routes_or_none(
        prefixes in prop::collection::vec(prefix(Family::V4), 1..20),
        flags in any::<u8>(),
        code in prop_oneof![
            prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 32]),
            any::<u8>(),
        ],
        value in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut prefixes = prefixes;
        prefixes.sort();
        prefixes.dedup();
        // A short attribute, without the extended-length bit: its header is three octets.
        let extra = [&[flags & !0x10, code, value.len() as u8][..], &value].concat();
        let bytes = update_bytes_with(&prefixes, &extra);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut codec = Codec::new();
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| codec.decode(&mut buf)))
            .map_err(|_| TestCaseError::fail(format!("panicked on {bytes:02x?}")))?;
        match got {
            Ok(Some(Message::Update(u))) if !u.announced.is_empty() => {
                let mut announced = u.announced.clone();
                announced.sort();
                if code == 14 {
                    // A well-formed MP_REACH_NLRI by chance announces routes of its own.
                    prop_assert!(prefixes.iter().all(|p| announced.contains(p)));
                } else {
                    prop_assert_eq!(announced, prefixes);
                }
                let a = u.attributes.expect("announced routes have attributes");
                prop_assert_eq!((a.as_path, a.next_hop), (vec![64524], "10.4.36.239".parse::<IpAddr>().expect("an address")));
            }
            Ok(Some(Message::Update(u))) => {
                let mut withdrawn = u.withdrawn.clone();
                withdrawn.sort();
                prop_assert_eq!(withdrawn, prefixes, "treat-as-withdraw takes them all");
            }
            Ok(other) => prop_assert!(false, "not an UPDATE: {:?}", other),
            Err(n) => prop_assert!(matches!(n.error(), BgpError::Update(_)), "{}", n.describe()),
        }
    }
}
