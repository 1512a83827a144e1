//! Hand-driven BGP peers on loopback. Two (127.0.0.2 and 127.0.0.3): one sends a malformed UPDATE
//! and must get the RFC's NOTIFICATION (UPDATE Message Error) and lose its session; the other's
//! session must not notice. One (127.0.0.4) that never closes its side: a reload's reset still
//! reaches it as a Cease, and the new session waits for the old connection's close, for a bounded
//! time, before it dials.

mod raw;

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use raw::{RawPeer, grpcurl, start, state};
use routeplane_bgp::message::Message;

#[test]
fn a_malformed_update_gets_a_notification_and_other_sessions_stay_up() {
    let a = TcpListener::bind("127.0.0.2:0").unwrap();
    let b = TcpListener::bind("127.0.0.3:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bgp.yaml");
    let peer = |ip: &str, port: u16| {
        format!(
            "  - peer-address: {ip}\n    peer-port: {port}\n    peer-asn: 64524\n    my-asn: 64513\n"
        )
    };
    std::fs::write(
        &config,
        format!(
            "peers:\n{}{}",
            peer("127.0.0.2", a.local_addr().unwrap().port()),
            peer("127.0.0.3", b.local_addr().unwrap().port())
        ),
    )
    .unwrap();
    let mut server = start(&config);
    let grpc = server.listen_addr("gRPC").to_string();

    let mut pa = RawPeer::accept(&a);
    pa.establish("192.0.2.2");
    let mut pb = RawPeer::accept(&b);
    pb.establish("192.0.2.3");
    routeplane_testkit::wait_for("both sessions established", Duration::from_secs(10), || {
        state(&grpc, "127.0.0.2") == "established" && state(&grpc, "127.0.0.3") == "established"
    });

    // An UPDATE whose path attributes claim 40 octets where the message has 4: no way to find
    // its routes, one of the few errors RFC 7606 (§4) still resets the session for.
    let mut bad = vec![0xffu8; 16];
    bad.extend_from_slice(&[0, 0, 2, 0, 0, 0, 40, 0x40, 1, 1, 0]);
    let len = bad.len() as u16;
    bad[16..18].copy_from_slice(&len.to_be_bytes());
    pa.stream.write_all(&bad).unwrap();
    let answer = pa.notification();
    assert_eq!(
        (answer.code, answer.subcode),
        (3, 1),
        "UPDATE Message Error/Malformed Attribute List, got {}",
        answer.describe()
    );
    assert!(pa.recv().is_none(), "and closes the connection");

    // The other session did not notice: still Established, still answering.
    pb.send(Message::Keepalive);
    assert_eq!(state(&grpc, "127.0.0.3"), "established");
    let a_state = grpcurl(
        &grpc,
        "routeplane.bgp.v1.Bgp/GetPeer",
        r#"{"peerAddress": "127.0.0.2"}"#,
    );
    assert_ne!(a_state["sessionState"], "established");
    assert!(
        a_state["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("UPDATE Message Error"),
        "{a_state}"
    );
    drop(server);
}

#[test]
fn a_reset_reaches_a_peer_that_never_closes_and_the_new_session_waits_for_the_old_one() {
    let listener = TcpListener::bind("127.0.0.4:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bgp.yaml");
    let peer = format!(
        "peers:\n  - peer-address: 127.0.0.4\n    peer-port: {port}\n    peer-asn: 64524\n    my-asn: 64513\n"
    );
    std::fs::write(&config, &peer).unwrap();
    let server = start(&config);
    let mut old = RawPeer::accept(&listener);
    old.establish("192.0.2.4");

    std::fs::write(&config, format!("{peer}    hold-time: 30s\n")).unwrap();
    server.signal("-HUP");
    let cease = old.notification();
    assert_eq!(
        (cease.code, cease.subcode),
        (6, 6),
        "Cease/Other Configuration Change, got {}",
        cease.describe()
    );
    assert!(old.recv().is_none(), "our side closed after the Cease");
    // This peer keeps its side open: for a while (the old connection waits up to 1 s for the
    // peer to close) nothing dials it again…
    listener.set_nonblocking(true).unwrap();
    let quiet_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet_until {
        assert!(
            listener.accept().is_err(),
            "a new session dialled while the old connection was still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // …but not for ever: the new session comes, with the new hold time.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!(
                "no new session within 10 s of the reset: {e}\n{}",
                server.log()
            ),
        }
    };
    let mut new = RawPeer::over(stream);
    assert!(
        matches!(new.recv(), Some(Message::Open(o)) if o.hold_time == 30),
        "the new session opens with hold time 30"
    );
    drop(old);
}
