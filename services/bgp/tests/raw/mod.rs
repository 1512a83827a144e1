//! A BGP peer driven by hand on loopback (127.0.0.x), and routeplane-bgp started against it with
//! no IPAM: for tests that send what no real router would.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use routeplane_bgp::message::{Capabilities, Message, Notification, Open};
use routeplane_bgp::wire::Codec;

/// A peer that speaks just enough BGP by hand.
pub struct RawPeer {
    pub stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl RawPeer {
    pub fn accept(listener: &TcpListener) -> RawPeer {
        listener.set_nonblocking(false).unwrap();
        let (stream, _) = listener.accept().unwrap();
        RawPeer::over(stream)
    }

    /// A peer on a connection already accepted; reads give up after 10 s.
    pub fn over(stream: TcpStream) -> RawPeer {
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
    pub fn notification(&mut self) -> Notification {
        loop {
            match self.recv() {
                Some(Message::Notification(n)) => return n,
                Some(_) => continue,
                None => panic!("routeplane closed the connection without a NOTIFICATION"),
            }
        }
    }

    /// Bytes as they are, well-formed or not.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, m: Message) {
        let mut b = BytesMut::new();
        self.codec.encode(&m, &mut b).unwrap();
        self.stream.write_all(&b).unwrap();
    }

    /// The next message, or `None` once the connection is closed.
    pub fn recv(&mut self) -> Option<Message> {
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
    pub fn establish(&mut self, id: &str) {
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
        // Both OPENs offered 4-octet AS numbers: our AS_PATHs carry them from now on.
        self.codec.set_asn4(true);
        loop {
            match self.recv() {
                Some(Message::Keepalive) => return,
                Some(_) => continue,
                None => panic!("routeplane closed the session during OPEN"),
            }
        }
    }
}

pub fn grpcurl(addr: &str, method: &str, body: &str) -> serde_json::Value {
    routeplane_testkit::grpcurl(None, addr, method, body).unwrap_or_else(|e| panic!("{e}"))
}

pub fn state(addr: &str, peer: &str) -> String {
    let v = grpcurl(
        addr,
        "routeplane.bgp.v1.Bgp/GetPeer",
        &format!(r#"{{"peerAddress": "{peer}"}}"#),
    );
    v["sessionState"].as_str().unwrap_or_default().to_string()
}

/// routeplane-bgp with this bgp-config, no IPAM (none is needed to hold sessions).
pub fn start(config: &std::path::Path) -> routeplane_testkit::Service {
    let command = routeplane_testkit::ipam::bgp_command(
        config,
        "http://127.0.0.1:9",
        &["--router-id", "10.0.0.1"],
    );
    routeplane_testkit::Service::start("routeplane-bgp", command)
}

/// A bgp-config whose peers are hand-driven ones listening at `(address, port)`, each with more
/// keys (`extra`, YAML lines indented by four spaces).
pub fn config(dir: &std::path::Path, peers: &[(&str, u16, &str)]) -> std::path::PathBuf {
    let path = dir.join("bgp.yaml");
    let mut text = String::from("peers:\n");
    for (ip, port, extra) in peers {
        text.push_str(&format!(
            "  - peer-address: {ip}\n    peer-port: {port}\n    peer-asn: 64524\n    my-asn: 64513\n{extra}"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// The connection routeplane-bgp opens to `listener`, within 10 s.
pub fn dialled(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match listener.accept() {
            Ok((s, _)) => return s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("routeplane-bgp did not connect within 10 s: {e}"),
        }
    }
}
