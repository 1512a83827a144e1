use super::*;

pub(super) fn round_trip(msg: &Message, asn4: bool) -> Message {
    let mut tx = Codec::new();
    tx.set_asn4(asn4);
    let mut buf = BytesMut::new();
    tx.encode(msg, &mut buf).unwrap();
    let mut rx = Codec::new();
    if asn4 {
        // As on a real session: both codecs see an OPEN each way offering 4-octet AS numbers.
        let caps = Capabilities {
            asn4: Some(1),
            ..Default::default()
        };
        let open = Message::Open(Open {
            asn: 1,
            hold_time: 90,
            router_id: "1.1.1.1".parse().unwrap(),
            capabilities: caps,
        });
        let mut wire = BytesMut::new();
        tx.encode(&open, &mut wire).unwrap();
        rx.encode(&open, &mut BytesMut::new()).unwrap();
        rx.decode(&mut wire).unwrap();
    }
    let got = rx.decode(&mut buf).unwrap().expect("one whole message");
    assert!(buf.is_empty(), "the message was consumed whole");
    got
}

fn nlri(s: &str) -> Nlri {
    Nlri {
        prefix: s.parse().unwrap(),
        path_id: None,
    }
}

fn attrs(next_hop: &str, as_path: Vec<u32>) -> PathAttributes {
    PathAttributes {
        origin: Origin::Igp,
        as_path,
        next_hop: next_hop.parse().unwrap(),
        med: None,
        local_pref: None,
        communities: vec![],
    }
}

#[test]
fn open_with_every_capability_round_trips() {
    let open = Message::Open(Open {
        asn: 64513,
        hold_time: 90,
        router_id: "10.4.36.10".parse().unwrap(),
        capabilities: Capabilities {
            families: vec![Family::V4, Family::V6],
            asn4: Some(64513),
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: true,
                restart_time: 120,
                notification: true,
                families: vec![(Family::V4, true), (Family::V6, false)],
            }),
            add_path: vec![AddPath {
                family: Family::V4,
                send: true,
                receive: false,
            }],
        },
    });
    assert_eq!(round_trip(&open, false), open);
    let big = Message::Open(Open {
        asn: 4_200_000_001,
        hold_time: 0,
        router_id: "1.2.3.4".parse().unwrap(),
        capabilities: Capabilities {
            asn4: Some(4_200_000_001),
            ..Default::default()
        },
    });
    let Message::Open(back) = round_trip(&big, false) else {
        panic!()
    };
    assert_eq!(
        back.asn,
        u32::from(AS_TRANS),
        "the 2-octet field carries AS_TRANS"
    );
    assert_eq!(back.capabilities.asn4, Some(4_200_000_001));
}

#[test]
fn updates_of_both_families_round_trip() {
    let mut a = attrs("10.4.94.11", vec![64513]);
    a.local_pref = Some(100);
    a.med = Some(5);
    a.communities = vec![(64512, 7), (65535, 65281)];
    let v4 = Message::Update(Update {
        withdrawn: vec![nlri("10.5.119.0/24")],
        attributes: Some(a),
        announced: vec![nlri("10.5.112.0/24"), nlri("10.5.113.0/24")],
    });
    assert_eq!(round_trip(&v4, true), v4);
    let v6 = Message::Update(Update {
        withdrawn: vec![nlri("fd00::200/120")],
        attributes: Some(attrs("fd04:94::11", vec![64513, 64524])),
        announced: vec![nlri("fd00::100/120")],
    });
    assert_eq!(round_trip(&v6, true), v6);
    let ibgp = Message::Update(Update {
        withdrawn: vec![],
        attributes: Some(attrs("10.4.83.11", vec![])),
        announced: vec![nlri("10.5.115.0/24")],
    });
    assert_eq!(round_trip(&ibgp, true), ibgp, "an empty AS_PATH for iBGP");
    let only_withdraw = Message::Update(Update {
        withdrawn: vec![nlri("10.5.112.0/24"), nlri("fd00::/120")],
        attributes: None,
        announced: vec![],
    });
    assert_eq!(round_trip(&only_withdraw, true), only_withdraw);
}

#[test]
fn end_of_rib_for_each_family() {
    assert_eq!(
        round_trip(&Message::EndOfRib(Family::V4), true),
        Message::EndOfRib(Family::V4)
    );
    assert_eq!(
        round_trip(&Message::EndOfRib(Family::V6), true),
        Message::EndOfRib(Family::V6)
    );
    assert_eq!(
        encoded_len(&Message::EndOfRib(Family::V4), true).unwrap(),
        23
    );
}

#[test]
fn a_two_octet_peer_gets_as_trans_and_as4_path() {
    let msg = Message::Update(Update {
        withdrawn: vec![],
        attributes: Some(attrs("10.4.94.11", vec![4_200_000_001, 64513])),
        announced: vec![nlri("10.5.112.0/24")],
    });
    assert_eq!(
        round_trip(&msg, false),
        msg,
        "AS4_PATH restores the real numbers"
    );
}

#[test]
fn keepalive_route_refresh_and_notification_round_trip() {
    assert_eq!(round_trip(&Message::Keepalive, true), Message::Keepalive);
    assert_eq!(
        round_trip(&Message::RouteRefresh(Family::V6), true),
        Message::RouteRefresh(Family::V6)
    );
    for (code, sub) in [(6, 2), (2, 2), (4, 0), (3, 11), (6, 9), (200, 77)] {
        let n = Message::Notification(Notification::from_wire(code, sub, vec![1, 2, 3]));
        assert_eq!(round_trip(&n, true), n);
    }
    let mut buf = BytesMut::new();
    Codec::new().encode(&Message::Keepalive, &mut buf).unwrap();
    assert_eq!(buf.len(), 19);
}

fn header(len: u16, kind: u8) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_slice(&[0xff; 16]);
    b.put_u16(len);
    b.put_u8(kind);
    b
}

fn err(mut buf: BytesMut) -> (u8, u8) {
    let n = Codec::new().decode(&mut buf).expect_err("must be refused");
    (n.code, n.subcode)
}

#[test]
fn header_errors_are_the_rfc_notifications() {
    let mut bad_marker = header(19, 4);
    bad_marker[3] = 0;
    assert_eq!(err(bad_marker), (1, 1));
    assert_eq!(err(header(18, 4)), (1, 2));
    assert_eq!(err(header(4097, 2)), (1, 2));
    assert_eq!(
        err(header(20, 4)),
        (1, 2),
        "a KEEPALIVE is exactly 19 octets"
    );
    assert_eq!(
        err(header(22, 2)),
        (1, 2),
        "an UPDATE is at least 23 octets"
    );
    let n = Codec::new().decode(&mut header(19, 9)).unwrap_err();
    assert_eq!(
        (n.code, n.subcode, n.data),
        (1, 3, vec![9]),
        "the data is the bad type"
    );
}

#[test]
fn partial_messages_wait_for_the_rest() {
    let mut whole = BytesMut::new();
    let mut c = Codec::new();
    c.encode(&Message::Keepalive, &mut whole).unwrap();
    c.encode(&Message::RouteRefresh(Family::V4), &mut whole)
        .unwrap();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in whole.iter() {
        buf.put_u8(*b);
        while let Some(m) = c.decode(&mut buf).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(
        got,
        vec![Message::Keepalive, Message::RouteRefresh(Family::V4)]
    );
}

#[test]
fn updates_whose_lengths_disagree_are_malformed_attribute_lists() {
    // RFC 7606 §4: withdrawn routes or path attributes longer than the message leave no way to
    // find the NLRI, the one case where the session must reset (attrs.rs has the others).
    for (withdrawn_len, attrs_len) in [(40, 0), (0, 40)] {
        let mut b = header(0, 2);
        b.put_u16(withdrawn_len);
        if withdrawn_len == 0 {
            b.put_u16(attrs_len);
        }
        b.put_slice(&[24, 10, 5, 112]);
        let len = b.len() as u16;
        b[16..18].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            err(b),
            (3, 1),
            "UPDATE Message Error/Malformed Attribute List"
        );
    }
}

#[test]
fn nlri_lengths_match_the_encoding() {
    let base = encoded_len(
        &Message::Update(Update {
            withdrawn: vec![],
            attributes: Some(attrs("10.4.94.11", vec![64513])),
            announced: vec![nlri("10.5.112.0/24")],
        }),
        true,
    )
    .unwrap();
    let two = encoded_len(
        &Message::Update(Update {
            withdrawn: vec![],
            attributes: Some(attrs("10.4.94.11", vec![64513])),
            announced: vec![nlri("10.5.112.0/24"), nlri("10.6.0.0/15")],
        }),
        true,
    )
    .unwrap();
    assert_eq!(two - base, nlri_len(&nlri("10.6.0.0/15")));
    assert_eq!(
        nlri_len(&Nlri {
            prefix: "10.5.112.7/32".parse().unwrap(),
            path_id: Some(3)
        }),
        9
    );
    assert_eq!(nlri_len(&nlri("fd00::/104")), 14);
}

/// xorshift64*: a fixed-seed generator, so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn samples() -> Vec<BytesMut> {
    let mut out = Vec::new();
    let mut c = Codec::new();
    c.set_asn4(true);
    let msgs = [
        Message::Update(Update {
            withdrawn: vec![nlri("10.5.119.0/24")],
            attributes: Some(attrs("10.4.94.11", vec![64513, 64524])),
            announced: vec![nlri("10.5.112.0/24")],
        }),
        Message::Update(Update {
            withdrawn: vec![],
            attributes: Some(attrs("fd04::1", vec![64513])),
            announced: vec![nlri("fd00::100/120")],
        }),
        Message::Open(Open {
            asn: 64513,
            hold_time: 90,
            router_id: "10.0.0.1".parse().unwrap(),
            capabilities: Capabilities {
                families: vec![Family::V4, Family::V6],
                asn4: Some(64513),
                route_refresh: true,
                ..Default::default()
            },
        }),
        Message::RouteRefresh(Family::V4),
    ];
    for m in &msgs {
        let mut b = BytesMut::new();
        c.encode(m, &mut b).unwrap();
        out.push(b);
    }
    out
}

#[test]
fn arbitrary_and_mutated_bytes_never_panic() {
    let mut rng = Rng(0x0005_eed0_fb9e);
    let samples = samples();
    let mut outcomes = [0usize; 3];
    for case in 0..20_000 {
        let mut buf = if case % 4 == 0 {
            // Random bytes behind a valid marker, so that decoding reaches past the header.
            let len = (rng.next() % 120) as usize;
            let mut b = BytesMut::from(&[0xffu8; 16][..]);
            b.put_u16(19 + len as u16);
            b.put_u8(1 + (rng.next() % 5) as u8);
            (0..len).for_each(|_| b.put_u8(rng.next() as u8));
            b
        } else {
            let mut b = samples[case % samples.len()].clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = 16 + (rng.next() as usize) % (b.len() - 16);
                b[i] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(5) {
                b.truncate(19 + (rng.next() as usize) % (b.len() - 18));
            }
            b
        };
        let mut codec = Codec::new();
        codec.set_asn4(case % 2 == 0);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| codec.decode(&mut buf)));
        match result {
            Ok(Ok(Some(_))) => outcomes[0] += 1,
            Ok(Ok(None)) => outcomes[1] += 1,
            Ok(Err(n)) => {
                assert!(
                    (1..=7).contains(&n.code),
                    "case {case}: a NOTIFICATION code outside RFC 4271's: {n:?}"
                );
                outcomes[2] += 1;
            }
            Err(_) => panic!("case {case}: the decoder panicked on {:02x?}", &buf[..]),
        }
    }
    assert!(
        outcomes.iter().all(|n| *n > 100),
        "every outcome was exercised: {outcomes:?}"
    );
}
