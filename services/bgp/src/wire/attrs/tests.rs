//! RFC 7606's handling of each kind of error, through the whole decoder: what the session is
//! handed (routes kept, withdrawn, or a NOTIFICATION) for UPDATEs built byte by byte.
#![allow(clippy::indexing_slicing)]

use bytes::BytesMut;

use super::Handling;
use crate::message::{Message, Notification, Update};
use crate::wire::Codec;

const ORIGIN_IGP: &[u8] = &[0x40, 1, 1, 0];
const AS_PATH_64524: &[u8] = &[0x40, 2, 4, 2, 1, 0xfc, 0x0c]; // AS_SEQUENCE [64524], 2-octet
const NEXT_HOP: &[u8] = &[0x40, 3, 4, 10, 4, 36, 239];
const NLRI_10_5_112: &[u8] = &[24, 10, 5, 112];

/// An UPDATE message: withdrawn routes, attributes (concatenated), NLRI.
fn update(withdrawn: &[u8], attrs: &[&[u8]], nlri: &[u8]) -> BytesMut {
    let attrs = attrs.concat();
    let mut b = vec![0xffu8; 16];
    let len = 19 + 2 + withdrawn.len() + 2 + attrs.len() + nlri.len();
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    b.extend_from_slice(nlri);
    BytesMut::from(&b[..])
}

/// What a fresh codec (2-octet AS numbers: no OPENs seen) makes of the bytes, and its repairs.
fn decode(mut bytes: BytesMut) -> (Result<Update, Notification>, Vec<(Handling, String)>) {
    let mut codec = Codec::new();
    let got = match codec.decode(&mut bytes) {
        Ok(Some(Message::Update(u))) => Ok(u),
        Ok(other) => panic!("not an UPDATE: {other:?}"),
        Err(n) => Err(n),
    };
    assert!(bytes.is_empty(), "the whole message was consumed");
    let repairs = codec
        .take_repairs()
        .into_iter()
        .map(|r| (r.handling, r.attribute))
        .collect();
    (got, repairs)
}

fn prefixes(list: &[crate::message::Nlri]) -> Vec<String> {
    list.iter().map(|n| n.prefix.to_string()).collect()
}

/// The routes it announced come back as withdrawn, with nothing announced.
fn assert_withdrawn(u: &Update, want: &[&str]) {
    assert!(u.announced.is_empty() && u.attributes.is_none(), "{u:?}");
    assert_eq!(prefixes(&u.withdrawn), want);
}

#[test]
fn a_well_formed_update_passes_untouched() {
    let (u, repairs) = decode(update(
        &[],
        &[ORIGIN_IGP, AS_PATH_64524, NEXT_HOP],
        NLRI_10_5_112,
    ));
    let u = u.unwrap();
    assert_eq!(prefixes(&u.announced), ["10.5.112.0/24"]);
    assert_eq!(u.attributes.unwrap().as_path, [64524]);
    assert!(repairs.is_empty());
}

#[test]
fn malformed_route_attributes_withdraw_the_routes() {
    let cases: [(&str, &[u8]); 7] = [
        ("ORIGIN 7", &[0x40, 1, 1, 7]),
        ("AS_PATH segment type 9", &[0x40, 2, 4, 9, 1, 0xfc, 0x0c]),
        ("AS_PATH cut short", &[0x40, 2, 3, 2, 2, 0xfc]),
        ("MED of 3 octets", &[0x80, 4, 3, 0, 0, 1]),
        ("COMMUNITIES of 5 octets", &[0xc0, 8, 5, 1, 2, 3, 4, 5]),
        (
            "COMMUNITIES flagged well-known (§3 c)",
            &[0x40, 8, 4, 1, 2, 3, 4],
        ),
        (
            "LARGE_COMMUNITY of 8 octets",
            &[0xc0, 32, 8, 0, 0, 0, 1, 0, 0, 0, 2],
        ),
    ];
    for (what, bad) in cases {
        let attrs: Vec<&[u8]> = match bad[1] {
            1 => vec![bad, AS_PATH_64524, NEXT_HOP],
            2 => vec![ORIGIN_IGP, bad, NEXT_HOP],
            _ => vec![ORIGIN_IGP, AS_PATH_64524, NEXT_HOP, bad],
        };
        let (u, repairs) = decode(update(&[24, 10, 9, 9], &attrs, NLRI_10_5_112));
        let u = u.unwrap_or_else(|n| panic!("{what}: session reset with {}", n.describe()));
        // What was withdrawn anyway stays withdrawn, and the announcement joins it.
        assert_withdrawn(&u, &["10.9.9.0/24", "10.5.112.0/24"]);
        assert_eq!(repairs.len(), 1, "{what}: {repairs:?}");
        assert_eq!(repairs[0].0, Handling::TreatAsWithdraw, "{what}");
    }
}

#[test]
fn a_bad_next_hop_withdraws_the_routes() {
    for nh in [[0, 0, 0, 0], [224, 0, 0, 1], [255, 255, 255, 255]] {
        let next_hop = [&[0x40, 3, 4][..], &nh].concat();
        let (u, repairs) = decode(update(
            &[],
            &[ORIGIN_IGP, AS_PATH_64524, &next_hop],
            NLRI_10_5_112,
        ));
        assert_withdrawn(&u.unwrap(), &["10.5.112.0/24"]);
        assert_eq!(
            repairs,
            [(Handling::TreatAsWithdraw, "NEXT_HOP".to_string())]
        );
    }
}

#[test]
fn a_missing_well_known_attribute_withdraws_the_routes() {
    let (u, repairs) = decode(update(&[], &[ORIGIN_IGP, AS_PATH_64524], NLRI_10_5_112));
    assert_withdrawn(&u.unwrap(), &["10.5.112.0/24"]);
    assert_eq!(
        repairs,
        [(Handling::TreatAsWithdraw, "NEXT_HOP".to_string())]
    );
}

#[test]
fn informational_attributes_are_discarded_and_the_routes_kept() {
    let cases: [(&str, &[u8]); 4] = [
        ("ATOMIC_AGGREGATE with a value", &[0x40, 6, 1, 0]),
        (
            "AGGREGATOR of 5 octets",
            &[0xc0, 7, 5, 0xfc, 0x0c, 10, 0, 0],
        ),
        (
            "AS4_PATH segment type 0",
            &[0xc0, 17, 6, 0, 1, 0, 0, 0xfc, 0x0c],
        ),
        (
            "AGGREGATOR flagged non-transitive",
            &[0x80, 7, 6, 0xfc, 0x0c, 10, 0, 0, 1],
        ),
    ];
    for (what, bad) in cases {
        let (u, repairs) = decode(update(
            &[],
            &[ORIGIN_IGP, AS_PATH_64524, NEXT_HOP, bad],
            NLRI_10_5_112,
        ));
        let u = u.unwrap_or_else(|n| panic!("{what}: session reset with {}", n.describe()));
        assert_eq!(prefixes(&u.announced), ["10.5.112.0/24"], "{what}");
        assert_eq!(repairs.len(), 1, "{what}");
        assert_eq!(repairs[0].0, Handling::AttributeDiscard, "{what}");
    }
}

#[test]
fn a_repeated_attribute_keeps_its_first_copy() {
    let med = |m: u8| vec![0x80, 4, 4, 0, 0, 0, m];
    let (first, second) = (med(10), med(20));
    let (u, repairs) = decode(update(
        &[],
        &[ORIGIN_IGP, AS_PATH_64524, NEXT_HOP, &first, &second],
        NLRI_10_5_112,
    ));
    assert_eq!(u.unwrap().attributes.unwrap().med, Some(10));
    assert_eq!(
        repairs,
        [(Handling::AttributeDiscard, "MULTI_EXIT_DISC".to_string())]
    );
}

#[test]
fn an_unknown_optional_attribute_is_ignored_silently() {
    let unknown = [0xc0, 200, 2, 1, 2];
    let (u, repairs) = decode(update(
        &[],
        &[ORIGIN_IGP, AS_PATH_64524, NEXT_HOP, &unknown],
        NLRI_10_5_112,
    ));
    assert_eq!(prefixes(&u.unwrap().announced), ["10.5.112.0/24"]);
    assert!(repairs.is_empty());
}

#[test]
fn an_attribute_running_past_the_list_withdraws_unless_it_is_multiprotocol() {
    // A COMMUNITIES claiming 8 octets with 4 left: the last attribute, the NLRI still found.
    let (u, repairs) = decode(update(
        &[],
        &[
            ORIGIN_IGP,
            AS_PATH_64524,
            NEXT_HOP,
            &[0xc0, 8, 8, 1, 2, 3, 4],
        ],
        NLRI_10_5_112,
    ));
    assert_withdrawn(&u.unwrap(), &["10.5.112.0/24"]);
    assert_eq!(repairs[0].0, Handling::TreatAsWithdraw);
    // The same for MP_REACH_NLRI: its routes are lost, so the session resets.
    let (n, _) = decode(update(
        &[],
        &[ORIGIN_IGP, AS_PATH_64524, &[0x80, 14, 40, 0, 2, 1]],
        &[],
    ));
    assert_eq!((n.unwrap_err().code, 3), (3, 3));
}

/// The errors after which no route can be trusted, each with RFC 4271's subcode.
#[test]
fn only_unrecoverable_errors_reset_the_session() {
    let mp_unreach_v6 = [0x80u8, 15, 3, 0, 2, 1];
    let cases: [(&str, BytesMut, u8); 4] = [
        (
            "attribute list longer than the message",
            {
                let mut b = update(&[], &[ORIGIN_IGP], &[]);
                b[22] = 40; // total path attribute length
                b
            },
            1,
        ),
        (
            "MP_UNREACH_NLRI twice (§3 g)",
            update(&[], &[&mp_unreach_v6, &mp_unreach_v6], &[]),
            1,
        ),
        (
            "an unrecognized well-known attribute",
            update(&[], &[ORIGIN_IGP, &[0x40, 99, 1, 0]], NLRI_10_5_112),
            2,
        ),
        (
            "MP_REACH_NLRI too short for its next hop",
            update(
                &[],
                &[ORIGIN_IGP, AS_PATH_64524, &[0x80, 14, 5, 0, 2, 1, 16, 0]],
                &[],
            ),
            9,
        ),
    ];
    for (what, bytes, subcode) in cases {
        let (got, _) = decode(bytes);
        let n = got.expect_err(what);
        assert_eq!(
            (n.code, n.subcode),
            (3, subcode),
            "{what}: {}",
            n.describe()
        );
    }
    // RFC 4271 §6.3: the data of Unrecognized Well-known Attribute is the attribute.
    let (got, _) = decode(update(&[], &[ORIGIN_IGP, &[0x40, 99, 1, 0]], NLRI_10_5_112));
    assert_eq!(got.unwrap_err().data, [0x40, 99, 1, 0]);
}

#[test]
fn ipv6_routes_in_mp_reach_are_withdrawn_through_mp_unreach() {
    // MP_REACH_NLRI: AFI 2, SAFI 1, next hop fd00::1 (16 octets), reserved, 2001:db8::/32.
    let mut reach = vec![0x80u8, 14, 0, 0, 2, 1, 16];
    reach.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    reach.extend_from_slice(&[0, 32, 0x20, 0x01, 0x0d, 0xb8]);
    reach[2] = (reach.len() - 3) as u8;
    let bad_origin: &[u8] = &[0x40, 1, 1, 9];
    let (u, repairs) = decode(update(&[], &[bad_origin, AS_PATH_64524, &reach], &[]));
    assert_withdrawn(&u.unwrap(), &["2001:db8::/32"]);
    assert_eq!(repairs[0].0, Handling::TreatAsWithdraw);
}

#[test]
fn host_bits_are_cleared_not_fatal() {
    // A prefix is sent in as few octets as its length needs, so host bits show in the last
    // one: /23 with a third octet of 113.
    let (u, repairs) = decode(update(
        &[],
        &[ORIGIN_IGP, AS_PATH_64524, NEXT_HOP],
        &[23, 10, 5, 113],
    ));
    assert_eq!(prefixes(&u.unwrap().announced), ["10.5.112.0/23"]);
    assert_eq!(repairs, [(Handling::HostBitsCleared, "NLRI".to_string())]);
}

#[test]
fn an_update_with_only_a_bad_attribute_and_nothing_announced_is_empty() {
    let (u, repairs) = decode(update(&[], &[&[0x40, 1, 1, 7]], &[]));
    assert_eq!(u.unwrap(), Update::default());
    assert_eq!(repairs[0].0, Handling::TreatAsWithdraw);
}
