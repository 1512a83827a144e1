//! Heartbeat datagrams against a real routeplane-ipam on loopback: the session offered on the
//! Heartbeat stream, beats as UDP datagrams keeping a node alive with no message on the stream,
//! the agent told in time when its datagrams stop (and kept alive by beating on the stream), and
//! what a hostile sender can do — replays, forgeries, garbage, a closed session's datagrams —
//! keeping nothing alive, and a flood of them killing nothing.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::heartbeat_datagram::{Header, LEN, SessionKey};
use tokio::net::UdpSocket;

type Client = pb::ipam_client::IpamClient<tonic::transport::Channel>;

async fn ready(c: &Client) -> bool {
    c.clone()
        .get_node(pb::GetNodeRequest { name: "a".into() })
        .await
        .unwrap()
        .into_inner()
        .ready
}

async fn register_a(c: &mut Client) {
    c.register_node(pb::RegisterNodeRequest {
        name: "a".into(),
        addresses: vec!["10.4.94.10".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The next answer on the stream, within `limit`.
async fn answer(
    answers: &mut tonic::Streaming<pb::HeartbeatResponse>,
    limit: Duration,
) -> pb::HeartbeatResponse {
    tokio::time::timeout(limit, answers.message())
        .await
        .unwrap_or_else(|_| panic!("an answer within {limit:?}"))
        .unwrap()
        .unwrap()
}

/// IPAM beating every `interval` with node "a" registered and its Heartbeat stream open: the
/// stream's two ends, and IPAM's first answer with the datagram session it offers.
struct Beating {
    server: Server,
    c: Client,
    tx: tokio::sync::mpsc::Sender<pb::HeartbeatRequest>,
    answers: tonic::Streaming<pb::HeartbeatResponse>,
    first: pb::HeartbeatResponse,
    offer: pb::DatagramSession,
}

async fn beating(dir: &std::path::Path, interval: &str) -> Beating {
    let server = Server::start(dir, &["--heartbeat-interval", interval]);
    let mut c = server.client().await;
    register_a(&mut c).await;
    let (tx, mut answers) = common::open_heartbeat(&mut c, "a").await;
    let first = answer(&mut answers, Duration::from_secs(5)).await;
    let offer = first.datagrams.clone().expect("a datagram session offered");
    Beating {
        server,
        c,
        tx,
        answers,
        first,
        offer,
    }
}

struct Beats {
    socket: UdpSocket,
    key: SessionKey,
    id: u64,
    sequence: u64,
}

impl Beats {
    /// Datagrams of the session `offer`, to the server's UDP port.
    async fn to(server: &Server, offer: &pb::DatagramSession) -> Beats {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = u16::try_from(offer.port).expect("a port");
        socket.connect((server.grpc.ip(), port)).await.unwrap();
        Beats {
            socket,
            key: SessionKey::from_bytes(&offer.key).expect("a 32-byte key"),
            id: offer.id,
            sequence: 0,
        }
    }

    fn sealed(&mut self) -> [u8; LEN] {
        self.sequence += 1;
        Header {
            session: self.id,
            sequence: self.sequence,
        }
        .seal(&self.key)
    }

    async fn send(&self, datagram: &[u8]) {
        self.socket.send(datagram).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_keep_a_node_alive_and_nothing_forged_or_replayed_does() {
    let dir = tempfile::tempdir().unwrap();
    // Beats every 100 ms, dead after 300 ms.
    let Beating {
        server,
        c,
        tx,
        mut answers,
        first,
        offer,
    } = beating(dir.path(), "100ms").await;
    let beat = pb::HeartbeatRequest { name: "a".into() };
    assert!(first.ready && !first.datagrams_heard);
    assert_eq!(
        offer.port,
        u32::from(server.grpc.port()),
        "beside the gRPC listener"
    );
    let mut beats = Beats::to(&server, &offer).await;

    // Datagrams only, for 1.5 s (five dead intervals): heard, and the node stays Ready.
    let mut heard = false;
    for _ in 0..15 {
        let d = beats.sealed();
        beats.send(&d).await;
        if let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(100), answers.message())
            .await
            .unwrap_or(Ok(None))
        {
            heard |= a.datagrams_heard;
        }
    }
    assert!(heard, "IPAM said it hears the datagrams");
    assert!(ready(&c).await, "kept alive by datagrams alone");
    assert_eq!(server.metric("routeplane_ipam_node_deaths_total"), 0.0);
    assert!(server.metric("routeplane_ipam_heartbeat_datagrams_taken_total") >= 14.0);

    // The datagrams stop (a firewall on the UDP port): IPAM says so before the dead interval runs
    // out, and beats on the stream keep the node alive.
    let told = answer(&mut answers, Duration::from_secs(2)).await;
    assert!(!told.datagrams_heard, "{told:?}");
    tx.send(beat.clone()).await.unwrap();
    assert!(ready(&c).await, "told before the dead interval ran out");
    for _ in 0..10 {
        tx.send(beat.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready(&c).await, "kept alive on the stream");
    assert_eq!(server.metric("routeplane_ipam_node_deaths_total"), 0.0);

    // Only what a hostile sender has: the last datagram again, an old one, one under another key,
    // a flipped bit, garbage. The node dies as if silent.
    let last = beats.sealed();
    beats.send(&last).await;
    let stranger = Header {
        session: offer.id,
        sequence: u64::MAX,
    }
    .seal(&SessionKey::generate().unwrap().0);
    let mut flipped = beats.sealed();
    flipped[25] ^= 0x10;
    let silent = Instant::now();
    while ready(&c).await {
        assert!(
            silent.elapsed() < Duration::from_secs(3),
            "kept alive by forgeries"
        );
        beats.send(&last).await;
        beats.send(&stranger).await;
        beats.send(&flipped).await;
        beats.send(b"RPB1 and then some garbage").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        silent.elapsed() < Duration::from_secs(1),
        "{:?}",
        silent.elapsed()
    );
    assert_eq!(server.metric("routeplane_ipam_node_deaths_total"), 1.0);
    let refused = |why: &str| {
        server.metric(&format!(
            "routeplane_ipam_heartbeat_datagrams_refused_total{{reason=\"{why}\"}}"
        ))
    };
    assert!(refused("replayed") >= 1.0);
    assert!(refused("bad_tag") >= 2.0);
    assert!(refused("malformed") >= 1.0);

    // The stream ends: so does its session; its next datagram names none.
    drop(tx);
    drop(answers);
    let before = refused("unknown_session");
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused("unknown_session") == before {
        assert!(
            Instant::now() < deadline,
            "a closed session's datagram taken"
        );
        let d = beats.sealed();
        beats.send(&d).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!ready(&c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_while_beating_with_datagrams_has_its_stream_ended_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let Beating {
        server,
        mut c,
        tx,
        mut answers,
        offer,
        ..
    } = beating(dir.path(), "100ms").await;
    let mut beats = Beats::to(&server, &offer).await;
    c.delete_node(pb::DeleteNodeRequest {
        name: "a".into(),
        force: true,
    })
    .await
    .unwrap();
    // The next datagram's beat finds no node: the stream ends saying so (register again).
    let deadline = Instant::now() + Duration::from_secs(5);
    let ended = loop {
        assert!(Instant::now() < deadline, "the stream did not end");
        let d = beats.sealed();
        beats.send(&d).await;
        match tokio::time::timeout(Duration::from_millis(100), answers.message()).await {
            Ok(Err(status)) => break status,
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
            Ok(Ok(Some(_))) | Err(_) => {}
        }
    };
    assert_eq!(ended.code(), tonic::Code::NotFound, "{ended:?}");
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_datagrams_off_no_session_is_offered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--heartbeat-datagrams=false"]);
    let mut c = server.client().await;
    register_a(&mut c).await;
    let beats = tokio_stream::iter(vec![pb::HeartbeatRequest { name: "a".into() }]);
    let mut answers = c.heartbeat(beats).await.unwrap().into_inner();
    let first = answer(&mut answers, Duration::from_secs(5)).await;
    assert!(first.ready);
    assert_eq!(first.datagrams, None);
    assert!(
        !server
            .scrape()
            .contains("routeplane_ipam_heartbeat_datagrams"),
        "no datagram metrics without datagrams"
    );
}

/// How long the flood below lasts.
const FLOOD: Duration = Duration::from_secs(3);

/// Sends, from a socket of its own, as fast as it can for [`FLOOD`]: datagrams forged under the
/// node's own session (a tag under another key), datagrams of a session that does not exist, and
/// garbage. Returns how many the kernel took.
fn flood(to: std::net::SocketAddr, session: u64, seed: u64) -> u64 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(to).unwrap();
    let key = SessionKey::generate().unwrap().0;
    let forged = Header {
        session,
        sequence: u64::MAX - seed,
    }
    .seal(&key);
    let unknown = Header {
        session: session ^ (0x5eed << 16) ^ seed,
        sequence: 1,
    }
    .seal(&key);
    let garbage = b"RPB1\xff\xff not a heartbeat";
    let (until, mut sent) = (Instant::now() + FLOOD, 0);
    while Instant::now() < until {
        for d in [&forged[..], &unknown[..], &garbage[..]] {
            // A full queue refuses some: the flood goes on.
            if socket.send(d).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

/// A hostile sender floods the UDP port (forgeries under the node's own session, unknown
/// sessions, garbage) from two sockets for 3 s while the node beats as an agent does — one
/// datagram an interval, and on the stream too while IPAM does not say it hears them. Most
/// datagrams, the node's among them, are lost in the kernel's full queue; the node is not declared
/// dead, none of the flood is taken, and all of it that IPAM read is counted refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_flood_does_not_kill_a_node_that_beats_as_an_agent_does() {
    let dir = tempfile::tempdir().unwrap();
    // Beats every 250 ms, dead after 750 ms.
    let Beating {
        server,
        c,
        tx,
        mut answers,
        first,
        offer,
    } = beating(dir.path(), "250ms").await;
    let beat = pb::HeartbeatRequest { name: "a".into() };
    let mut beats = Beats::to(&server, &offer).await;
    let port = u16::try_from(offer.port).expect("a port");
    let to = std::net::SocketAddr::new(server.grpc.ip(), port);
    let flooders: Vec<_> = (0..2)
        .map(|seed| std::thread::spawn(move || flood(to, offer.id, seed)))
        .collect();

    // The agent, for the flood and a second after it.
    let (mut heard, mut stream_beats, mut told_unheard) = (first.datagrams_heard, 0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let end = Instant::now() + FLOOD + Duration::from_secs(1);
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                let d = beats.sealed();
                beats.send(&d).await;
                if !heard && tx.try_send(beat.clone()).is_ok() {
                    stream_beats += 1;
                }
            }
            a = answers.message() => {
                let a = a.expect("the stream stays open").expect("an answer");
                assert!(a.ready, "the node went down during the flood: {a:?}");
                if heard && !a.datagrams_heard {
                    told_unheard += 1;
                    // At once, as the agent does: the dead interval is running.
                    if tx.try_send(beat.clone()).is_ok() {
                        stream_beats += 1;
                    }
                }
                heard = a.datagrams_heard;
            }
        }
    }
    let sent: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    let refused: f64 = ["malformed", "unknown_session", "bad_tag", "replayed"]
        .iter()
        .map(|why| {
            server.metric(&format!(
                "routeplane_ipam_heartbeat_datagrams_refused_total{{reason=\"{why}\"}}"
            ))
        })
        .sum();
    let taken = server.metric("routeplane_ipam_heartbeat_datagrams_taken_total");
    println!(
        "flood: {sent} datagrams sent in {FLOOD:?}, {refused} read and refused; the node's beats: {} datagrams, {taken} taken, {stream_beats} on the stream, told unheard {told_unheard} times",
        beats.sequence
    );
    assert_eq!(server.metric("routeplane_ipam_node_deaths_total"), 0.0);
    assert!(ready(&c).await, "the node is Ready after the flood");
    assert!(
        taken <= beats.sequence as f64,
        "more taken ({taken}) than the node sent ({})",
        beats.sequence
    );
    assert!(
        refused >= 10_000.0,
        "the flood hardly reached IPAM: {refused} refused of {sent} sent"
    );
}
