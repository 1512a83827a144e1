//! Hand-driven BGP peers on loopback. Two (127.0.0.2 and 127.0.0.3): one sends a malformed UPDATE
//! and must get the RFC's NOTIFICATION (UPDATE Message Error) and lose its session; the other's
//! session must not notice. One (127.0.0.4) that never closes its side: a reload's reset still
//! reaches it as a Cease, and the new session waits for the old connection's close, for a bounded
//! time, before it dials.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use routeplane_bgp::message::{Capabilities, Message, Notification, Open};
use routeplane_bgp::wire::Codec;

/// A peer that speaks just enough BGP by hand.
struct RawPeer {
    stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl RawPeer {
    fn accept(listener: &TcpListener) -> RawPeer {
        listener.set_nonblocking(false).unwrap();
        let (stream, _) = listener.accept().unwrap();
        RawPeer::over(stream)
    }

    /// A peer on a connection already accepted; reads give up after 10 s.
    fn over(stream: TcpStream) -> RawPeer {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawPeer {
            stream,
            codec: Codec::new(),
            buf: BytesMut::new(),
        }
    }

    /// The next NOTIFICATION, skipping other messages; fails if the connection closes first.
    fn notification(&mut self) -> Notification {
        loop {
            match self.recv() {
                Some(Message::Notification(n)) => return n,
                Some(_) => continue,
                None => panic!("routeplane closed the connection without a NOTIFICATION"),
            }
        }
    }

    fn send(&mut self, m: Message) {
        let mut b = BytesMut::new();
        self.codec.encode(&m, &mut b).unwrap();
        self.stream.write_all(&b).unwrap();
    }

    /// The next message, or `None` once the connection is closed.
    fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self
                .codec
                .decode(&mut self.buf)
                .expect("routeplane sends well-formed messages")
            {
                return Some(m);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// OPEN both ways, KEEPALIVE both ways: Established.
    fn establish(&mut self, id: &str) {
        assert!(
            matches!(self.recv(), Some(Message::Open(o)) if o.asn == 64513),
            "routeplane opens first"
        );
        let caps = Capabilities {
            asn4: Some(64524),
            ..Capabilities::default()
        };
        self.send(Message::Open(Open {
            asn: 64524,
            hold_time: 90,
            router_id: id.parse().unwrap(),
            capabilities: caps,
        }));
        self.send(Message::Keepalive);
        loop {
            match self.recv() {
                Some(Message::Keepalive) => return,
                Some(_) => continue,
                None => panic!("routeplane closed the session during OPEN"),
            }
        }
    }
}

fn grpcurl(addr: &str, method: &str, body: &str) -> serde_json::Value {
    routeplane_testkit::grpcurl(None, addr, method, body).unwrap_or_else(|e| panic!("{e}"))
}

fn state(addr: &str, peer: &str) -> String {
    let v = grpcurl(
        addr,
        "routeplane.bgp.v1.Bgp/GetPeer",
        &format!(r#"{{"peerAddress": "{peer}"}}"#),
    );
    v["sessionState"].as_str().unwrap_or_default().to_string()
}

/// routeplane-bgp with this bgp-config, no IPAM (none is needed to hold sessions).
fn start(config: &std::path::Path) -> routeplane_testkit::Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_routeplane-bgp"));
    command
        .args([
            "--bgp-config",
            config.to_str().unwrap(),
            "--router-id",
            "10.0.0.1",
            "--ipam",
            "http://127.0.0.1:9",
        ])
        .args([
            "--bgp-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
    routeplane_testkit::Service::start("routeplane-bgp", command)
}

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

    // An UPDATE whose ORIGIN attribute claims 200 octets in a 4-octet attribute list.
    let mut bad = vec![0xffu8; 16];
    bad.extend_from_slice(&[0, 0, 2, 0, 0, 0, 4, 0x40, 1, 200, 0]);
    let len = bad.len() as u16;
    bad[16..18].copy_from_slice(&len.to_be_bytes());
    pa.stream.write_all(&bad).unwrap();
    let answer = pa.notification();
    assert_eq!(
        answer.code,
        3,
        "UPDATE Message Error, got {}",
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
