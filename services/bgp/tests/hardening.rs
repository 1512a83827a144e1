//! routeplane-bgp against peers that misbehave, on loopback (hand-driven peers, raw/mod.rs): a
//! connection from an address that is no peer is closed unread and counted; a connection that
//! brings no OPEN within the OPEN wait (or brings it a byte a second) is cut; GTSM (ttl-security)
//! drops a peer whose packets arrive with a hop too few and keeps one at 255; malformed attributes
//! withdraw routes or are discarded as RFC 7606 says while the session stays up; a peer past its
//! max-prefixes gets Cease/Maximum Number of Prefixes Reached and is held down until the restart
//! timer; a flood of prefixes costs what the README says it costs.

mod raw;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use raw::{RawPeer, config, dialled, grpcurl, start, state};
use routeplane_bgp::message::{Message, Nlri, Origin, PathAttributes, Update};

fn get_peer(grpc: &str, peer: &str) -> serde_json::Value {
    grpcurl(
        grpc,
        "routeplane.bgp.v1.Bgp/GetPeer",
        &format!(r#"{{"peerAddress": "{peer}"}}"#),
    )
}

fn metrics(server: &mut routeplane_testkit::Service) -> String {
    let addr = server.listen_addr("metrics").to_string();
    routeplane_testkit::scrape(None, &addr).unwrap()
}

fn metric(text: &str, sample: &str) -> f64 {
    routeplane_testkit::metric_sample(text, sample)
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}

fn announce(prefixes: impl IntoIterator<Item = String>) -> Message {
    Message::Update(Update {
        withdrawn: vec![],
        attributes: Some(PathAttributes {
            origin: Origin::Igp,
            as_path: vec![64524],
            next_hop: "10.4.36.239".parse().unwrap(),
            med: None,
            local_pref: None,
            communities: vec![],
        }),
        announced: prefixes
            .into_iter()
            .map(|p| Nlri {
                prefix: p.parse().unwrap(),
                path_id: None,
            })
            .collect(),
    })
}

/// An UPDATE announcing 10.5.112.0/24 with these attributes (ORIGIN, AS_PATH and NEXT_HOP first).
fn update_with(extra: &[u8]) -> Vec<u8> {
    let attrs = [
        &[0x40, 1, 1, 0][..],
        &[0x40, 2, 6, 2, 1, 0, 0, 0xfc, 0x0c],
        &[0x40, 3, 4, 10, 4, 36, 239],
        extra,
    ]
    .concat();
    let nlri = [24u8, 10, 5, 112];
    let len = 19 + 2 + 2 + attrs.len() + nlri.len();
    let mut b = vec![0xffu8; 16];
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.extend_from_slice(&[2, 0, 0]);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    b.extend_from_slice(&nlri);
    b
}

/// Whether `stream` is closed (EOF or reset) within `limit`, with nothing read first.
fn closed_unread(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// routeplane-bgp with one hand-driven peer at 127.0.0.`host` (bgp-config `keys` added to it),
/// the session Established.
struct OnePeer {
    listener: TcpListener,
    server: routeplane_testkit::Service,
    grpc: String,
    peer: RawPeer,
    _dir: tempfile::TempDir,
}

impl OnePeer {
    fn start(host: u8, keys: &str) -> OnePeer {
        let listener = TcpListener::bind(format!("127.0.0.{host}:0")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.{host}");
        let port = listener.local_addr().unwrap().port();
        let mut server = start(&config(dir.path(), &[(&address, port, keys)]));
        let grpc = server.listen_addr("gRPC").to_string();
        let mut peer = RawPeer::over(dialled(&listener));
        peer.establish(&format!("192.0.2.{host}"));
        OnePeer {
            listener,
            server,
            grpc,
            peer,
            _dir: dir,
        }
    }
}

#[test]
fn a_connection_from_an_address_that_is_no_peer_is_closed_unread_and_counted() {
    let peer = TcpListener::bind("127.0.0.20:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&config(
        dir.path(),
        &[("127.0.0.20", peer.local_addr().unwrap().port(), "")],
    ));
    let bgp = server.listen_addr("BGP");
    for n in 1..=3u8 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let stranger: SocketAddr = format!("127.0.0.{}:0", 30 + n).parse().unwrap();
        socket.bind(&stranger.into()).unwrap();
        socket.connect(&bgp.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        // It may even send a valid-looking start: nothing of it is read.
        let _ = std::io::Write::write_all(&mut stream, &[0xff; 19]);
        assert!(
            closed_unread(&mut stream, Duration::from_secs(5)),
            "a connection from 127.0.0.{} was not closed",
            30 + n
        );
    }
    routeplane_testkit::wait_for("three refusals counted", Duration::from_secs(5), || {
        metric(
            &metrics(&mut server),
            "routeplane_bgp_refused_connections_total",
        ) == 3.0
    });
    // The configured peer is unaffected.
    let mut p = RawPeer::over(dialled(&peer));
    p.establish("192.0.2.20");
}

#[test]
fn a_peer_without_an_open_within_the_open_wait_is_cut_even_a_byte_a_second() {
    let peer = TcpListener::bind("127.0.0.21:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&config(
        dir.path(),
        &[("127.0.0.21", peer.local_addr().unwrap().port(), "")],
    ));
    let mut p = RawPeer::over(dialled(&peer));
    let opened = Instant::now();
    assert!(
        matches!(p.recv(), Some(Message::Open(_))),
        "routeplane opens first"
    );
    // An OPEN's first bytes, one a second: it would take 29 s to finish.
    let n = std::thread::scope(|s| {
        let mut writer = p.stream.try_clone().unwrap();
        s.spawn(move || {
            for _ in 0..20 {
                if std::io::Write::write_all(&mut writer, &[0xff]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        p.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        p.notification()
    });
    let waited = opened.elapsed();
    assert_eq!(
        (n.code, n.subcode),
        (4, 0),
        "Hold Timer Expired, got {}",
        n.describe()
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "cut after {waited:?}, not after the 10 s OPEN wait\n{}",
        server.log()
    );
}

/// The kernel's count of segments dropped for arriving below a socket's minimum TTL.
fn min_ttl_drops() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find_map(|(n, v)| (n == "TCPMinTTLDrop").then(|| v.parse().unwrap()))
        .expect("TcpExt has TCPMinTTLDrop")
}

/// GTSM (RFC 5082): both peers have ttl-security and accept only packets sent with 255 hops left.
/// One sends with 255 and is Established (so routeplane sends with 255 too); the other's packets
/// arrive with 254, as from one router further: the kernel drops them — its SYN-ACK already — and
/// no connection to it ever completes.
#[test]
fn ttl_security_keeps_a_peer_at_255_hops_and_drops_one_a_hop_further() {
    let near = TcpListener::bind("127.0.0.22:0").unwrap();
    let far = TcpListener::bind("127.0.0.23:0").unwrap();
    near.set_ttl(255).unwrap();
    far.set_ttl(254).unwrap();
    for l in [&near, &far] {
        routeplane_bgp::sockopt::set_min_ttl(std::os::fd::AsFd::as_fd(l), false, 255).unwrap();
    }
    let drops_before = min_ttl_drops();
    let dir = tempfile::tempdir().unwrap();
    let gtsm = "    ttl-security: true\n";
    let mut server = start(&config(
        dir.path(),
        &[
            ("127.0.0.22", near.local_addr().unwrap().port(), gtsm),
            ("127.0.0.23", far.local_addr().unwrap().port(), gtsm),
        ],
    ));
    let grpc = server.listen_addr("gRPC").to_string();
    let mut p = RawPeer::over(dialled(&near));
    p.establish("192.0.2.22");
    assert_eq!(state(&grpc, "127.0.0.22"), "established");
    assert_eq!(get_peer(&grpc, "127.0.0.22")["ttlSecurity"], true);

    far.set_nonblocking(true).unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(
            far.accept().is_err(),
            "a connection to the far peer completed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        min_ttl_drops() > drops_before,
        "the kernel dropped nothing for its minimum TTL"
    );
    assert_ne!(state(&grpc, "127.0.0.23"), "established");
    drop(server);
}

#[test]
fn malformed_attributes_withdraw_or_are_discarded_and_the_session_stays_up() {
    let OnePeer {
        mut server,
        grpc,
        peer: mut p,
        ..
    } = OnePeer::start(24, "    keep-received: true\n");
    let received = || -> Vec<String> {
        let v = grpcurl(
            &grpc,
            "routeplane.bgp.v1.Bgp/ListReceived",
            r#"{"peerAddress": "127.0.0.24"}"#,
        );
        let mut list: Vec<String> = v["routes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|x| x["prefix"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        list.sort();
        list
    };
    p.send(announce([
        "10.5.112.0/24".to_string(),
        "10.5.113.0/24".to_string(),
    ]));
    routeplane_testkit::wait_for("both routes received", Duration::from_secs(5), || {
        received() == ["10.5.112.0/24", "10.5.113.0/24"]
    });

    // COMMUNITIES of 5 octets on 10.5.112.0/24: treat-as-withdraw (RFC 7606 §7.8).
    p.send_raw(&update_with(&[0xc0, 8, 5, 1, 2, 3, 4, 5]));
    routeplane_testkit::wait_for("10.5.112.0/24 withdrawn", Duration::from_secs(5), || {
        received() == ["10.5.113.0/24"]
    });
    // An AGGREGATOR of 5 octets: discarded, the route announced again and kept (§7.7).
    p.send_raw(&update_with(&[0xc0, 7, 5, 0, 0, 0xfc, 0x0c, 10]));
    routeplane_testkit::wait_for("10.5.112.0/24 back", Duration::from_secs(5), || {
        received() == ["10.5.112.0/24", "10.5.113.0/24"]
    });
    let peer = get_peer(&grpc, "127.0.0.24");
    assert_eq!(peer["sessionState"], "established", "{peer}");
    assert_eq!(peer["updateRepairs"]["treat-as-withdraw"], "1", "{peer}");
    assert_eq!(peer["updateRepairs"]["attribute-discard"], "1", "{peer}");
    let m = metrics(&mut server);
    assert_eq!(
        metric(
            &m,
            r#"routeplane_bgp_update_repairs_total{peer="127.0.0.24",handling="treat-as-withdraw"}"#
        ),
        1.0
    );
    assert!(
        server
            .log()
            .contains("malformed UPDATE from the peer, repaired"),
        "logged"
    );
    // The session still works both ways.
    p.send(Message::Keepalive);
    assert_eq!(state(&grpc, "127.0.0.24"), "established");
}

/// RFC 4486 §4 with a restart timer: the first prefix past max-prefixes ends the session with
/// Cease/1 carrying AFI, SAFI and the limit; routeplane neither dials nor accepts the peer until
/// max-prefixes-restart has passed, then comes back. Without keep-received ListReceived says how
/// to get the routes, and GetPeer still counts them.
#[test]
fn a_peer_past_max_prefixes_is_ceased_and_held_down_until_the_restart_timer() {
    let OnePeer {
        listener: peer,
        mut server,
        grpc,
        peer: mut p,
        ..
    } = OnePeer::start(25, "    max-prefixes: 3\n    max-prefixes-restart: 3s\n");
    let bgp = server.listen_addr("BGP");
    p.send(announce((0..3).map(|i| format!("10.6.{i}.0/24"))));
    routeplane_testkit::wait_for("three prefixes counted", Duration::from_secs(5), || {
        get_peer(&grpc, "127.0.0.25")["received"] == "3"
    });
    let refused = routeplane_testkit::grpcurl(
        None,
        &grpc,
        "routeplane.bgp.v1.Bgp/ListReceived",
        r#"{"peerAddress": "127.0.0.25"}"#,
    )
    .expect_err("no routes kept without keep-received");
    assert!(
        refused.contains("FailedPrecondition") && refused.contains("keep-received: true"),
        "{refused}"
    );

    p.send(announce(["10.6.3.0/24".to_string()]));
    let ceased = Instant::now();
    let n = p.notification();
    assert_eq!((n.code, n.subcode), (6, 1), "{}", n.describe());
    assert_eq!(n.data, [0, 1, 1, 0, 0, 0, 3], "AFI 1, SAFI 1, limit 3");
    assert!(p.recv().is_none(), "and closed");
    let down = get_peer(&grpc, "127.0.0.25");
    assert!(
        down["lastError"]
            .as_str()
            .unwrap()
            .contains("more than 3 prefixes"),
        "{down}"
    );
    assert_eq!(
        down["received"],
        serde_json::Value::Null,
        "nothing held while down: {down}"
    );

    // Held down: a connection from the peer is closed unread…
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.25:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&bgp.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    assert!(
        closed_unread(&mut stream, Duration::from_secs(2)),
        "accepted while held down"
    );
    // …and routeplane dials again only once the timer has run.
    let again = dialled(&peer);
    let waited = ceased.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "dialled again after {waited:?}, before max-prefixes-restart (3 s)"
    );
    let mut p = RawPeer::over(again);
    p.establish("192.0.2.25");
}

/// A peer sending 100,000 prefixes (max-prefixes raised to allow them) costs routeplane-bgp the
/// README's figure per prefix, not the routes' attributes; one more is refused.
#[test]
fn a_flood_of_prefixes_costs_what_the_readme_says() {
    const PREFIXES: u32 = 100_000;
    let OnePeer {
        server,
        grpc,
        peer: mut p,
        ..
    } = OnePeer::start(26, &format!("    max-prefixes: {PREFIXES}\n"));
    let before = server.rss_kib();
    let all: Vec<String> = (0..PREFIXES)
        .map(|i| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 0xff, i & 0xff))
        .collect();
    for chunk in all.chunks(700) {
        p.send(announce(chunk.to_vec()));
    }
    let want = PREFIXES.to_string();
    routeplane_testkit::wait_for("every prefix counted", Duration::from_secs(60), || {
        get_peer(&grpc, "127.0.0.26")["received"] == want.as_str()
    });
    let grown = server.rss_kib().saturating_sub(before);
    let per_prefix = grown * 1024 / u64::from(PREFIXES);
    eprintln!("routeplane-bgp grew {grown} KiB for {PREFIXES} prefixes: {per_prefix} bytes each");
    assert!(
        per_prefix <= 120,
        "{per_prefix} bytes per received prefix; the README promises at most 120"
    );
    p.send(announce(["11.0.0.0/32".to_string()]));
    let n = p.notification();
    assert_eq!((n.code, n.subcode), (6, 1));
}
