//! Heartbeat datagrams at IPAM (the format and why: routeplane-runtime's `heartbeat_datagram.rs`):
//! the sessions offered on open Heartbeat streams, the UDP socket that takes their beats, and the
//! sweep that tells an agent when its datagrams stopped arriving.
//!
//! Contract: a session lives exactly as long as its Heartbeat stream's task holds its
//! [`SessionGuard`]. A datagram renews its node's lease as a beat on the stream does — only when
//! it names an open session, carries that session's tag and a sequence above every one taken
//! before; anything else is counted (`routeplane_ipam_heartbeat_datagrams_refused_total`) and
//! dropped without a word (no answer to forge, no log line to flood). What a beat finds is
//! answered on the session's stream when it changed: the node's state, and whether datagrams are
//! heard — so an agent whose datagrams stop arriving is told in time to beat on the stream again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::heartbeat_datagram::{self as datagram, Header, Refused, SessionKey};
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::IpamError;
use crate::ipam::{Begun, Ipam};
use crate::state::Beat;

/// Where a session's answers go: its Heartbeat stream's response.
pub type Answers = mpsc::Sender<Result<pb::HeartbeatResponse, Status>>;

/// Datagrams silent this many intervals make a heard session unheard: with the sweep every half
/// interval the agent is told within two intervals, and beats on the stream before the dead
/// interval (three by default) runs out.
const SILENT_INTERVALS: f64 = 1.5;

/// The most sessions told per sweep, as a share of those open (at least [`UNHEARD_MIN`]). Telling
/// is for one agent's UDP path broken (a firewall); when many go silent together IPAM or the
/// network is loaded, their beats are merely late, and telling them all would add an answer and
/// stream beats per node to the load — the mass-expiry guard (`state/liveness.rs`) is what covers
/// that case.
const UNHEARD_SHARE: usize = 50;
const UNHEARD_MIN: usize = 10;

/// Counts by outcome, for metrics.
#[derive(Debug, Default)]
pub struct DatagramStats {
    pub taken: AtomicU64,
    /// Agents told their datagrams stopped arriving (they beat on the stream until heard again).
    pub unheard: AtomicU64,
    /// By [`Refused`], in the order of [`REFUSALS`].
    pub refused: [AtomicU64; 4],
}

/// Every refusal, in the order of [`DatagramStats::refused`].
pub const REFUSALS: [Refused; 4] = [
    Refused::Malformed,
    Refused::UnknownSession,
    Refused::BadTag,
    Refused::Replayed,
];

impl DatagramStats {
    fn refuse(&self, why: Refused) {
        let at = REFUSALS.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[at].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Session {
    node: String,
    key: SessionKey,
    /// The highest sequence taken.
    sequence: u64,
    heard_at: Option<Instant>,
    /// What the agent was last told.
    told: Told,
    answers: Answers,
}

/// What an agent was last told on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    pub beat: Beat,
    pub heard: bool,
}

/// The sessions of the open Heartbeat streams, and the UDP port their datagrams go to.
#[derive(Debug)]
pub struct Sessions {
    port: u16,
    interval: Duration,
    table: Mutex<HashMap<u64, Session>>,
    next: AtomicU64,
    pub stats: DatagramStats,
}

/// An offered session; dropping it ends the session.
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    pub id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl Sessions {
    pub fn new(port: u16, interval: Duration) -> Sessions {
        // Ids start at a random point: a datagram of IPAM's previous life names no session here
        // (its tag would not match anyway).
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Sessions {
            port,
            interval,
            table: Mutex::new(HashMap::new()),
            next: AtomicU64::new(u64::from_be_bytes(seed) >> 1),
            stats: DatagramStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Session>> {
        // Entries are replaced whole: whatever a panicked holder left is consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for `node`'s stream, whose state `beat` the first answer tells; the offer
    /// goes in that answer.
    pub fn open(
        self: &Arc<Self>,
        node: &str,
        beat: Beat,
        answers: Answers,
    ) -> Result<(SessionGuard, pb::DatagramSession), IpamError> {
        let (key, bytes) = SessionKey::generate().map_err(|_| {
            IpamError::Unavailable("no random bytes for a heartbeat session key".into())
        })?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Session {
                node: node.to_string(),
                key,
                sequence: 0,
                heard_at: None,
                told: Told { beat, heard: false },
                answers,
            },
        );
        let offer = pb::DatagramSession {
            port: u32::from(self.port),
            id,
            key: bytes.to_vec(),
        };
        Ok((
            SessionGuard {
                sessions: self.clone(),
                id,
            },
            offer,
        ))
    }

    /// Checks a datagram; the node whose beat it is.
    fn take(&self, bytes: &[u8], now: Instant) -> Result<(u64, String), Refused> {
        let header = Header::read(bytes)?;
        let mut table = self.lock();
        let session = table
            .get_mut(&header.session)
            .ok_or(Refused::UnknownSession)?;
        datagram::verify(bytes, &session.key)?;
        if header.sequence <= session.sequence {
            return Err(Refused::Replayed);
        }
        session.sequence = header.sequence;
        session.heard_at = Some(now);
        Ok((header.session, session.node.clone()))
    }

    /// What a beat of the session found (a datagram's, or the stream's when `heard` is None):
    /// the answer to queue when it changes what the agent was told.
    pub fn found(&self, id: u64, beat: Beat, heard: Option<bool>) -> Option<(Answers, Told)> {
        let mut table = self.lock();
        let session = table.get_mut(&id)?;
        let now = Told {
            beat,
            heard: heard.unwrap_or(session.told.heard),
        };
        (now != session.told).then(|| {
            session.told = now;
            (session.answers.clone(), now)
        })
    }

    /// Ends a session at once (its node is gone): its datagrams are refused from now on.
    fn close(&self, id: u64) -> Option<Answers> {
        self.lock().remove(&id).map(|s| s.answers)
    }

    /// Heard sessions whose datagrams stopped: told so, to beat on the stream.
    fn sweep(&self, now: Instant) -> Vec<(Answers, Told)> {
        let silent = self.interval.mul_f64(SILENT_INTERVALS);
        let mut table = self.lock();
        let most = (table.len() / UNHEARD_SHARE).max(UNHEARD_MIN);
        let mut told = Vec::new();
        for s in table.values_mut() {
            if told.len() == most {
                break;
            }
            let quiet = s
                .heard_at
                .is_none_or(|at| now.saturating_duration_since(at) > silent);
            if s.told.heard && quiet {
                s.told.heard = false;
                told.push((s.answers.clone(), s.told));
            }
        }
        told
    }
}

/// The receive buffer asked for: 100 ms at 5,000 nodes queues ~700 datagrams, each ~1 KB of
/// kernel memory; the kernel caps it at net.core.rmem_max (212,992 bytes by default: ~30 ms of
/// beats at 5,000 nodes, three times the reader's pause; a lost beat costs nothing while the next
/// arrives).
const RECEIVE_BUFFER: usize = 4 << 20;

/// Binds the datagram socket beside the gRPC listener: the same address and port number.
pub fn bind(grpc: SocketAddr) -> Result<std::net::UdpSocket, IpamError> {
    let refused = |e: std::io::Error| {
        IpamError::Unavailable(format!(
            "cannot take heartbeat datagrams on UDP {grpc} (the gRPC listener's address): {e}; free that UDP port or start with --heartbeat-datagrams=false"
        ))
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(grpc),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(refused)?;
    // Not fatal: the default buffer works, with more beats lost to a stall.
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    socket.set_nonblocking(true).map_err(refused)?;
    socket.bind(&grpc.into()).map_err(refused)?;
    Ok(socket.into())
}

/// The reader thread drains the socket, then rests this long, so that each read takes a batch: at
/// 5,000 nodes it wakes 100 times a second instead of 6,667 (a wake-up, with the read that finds
/// the queue empty, cost more than the beat). A beat is judged up to 10 ms late: nothing, against
/// a dead interval of 2.25 s — and 10 ms of beats fit the socket's default buffer many times.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How long the end of a session's stream waits for room in its queue (an agent not reading).
const END_WAIT: Duration = Duration::from_secs(10);

/// The most datagrams read in one go.
const BATCH_MOST: usize = 4096;

/// Starts taking datagrams: a thread of its own reads the socket, so that beats are taken off
/// the kernel's queue however busy the async runtime is (a datagram not read before the queue
/// fills is lost — unlike a beat on a TCP stream, which waits), and a task sweeps for silence.
/// Both stop when IPAM shuts down.
pub fn start(
    socket: std::net::UdpSocket,
    sessions: Arc<Sessions>,
    ipam: Arc<Ipam>,
) -> Result<(), IpamError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(sweep(sessions.clone(), ipam.clone()));
    std::thread::Builder::new()
        .name("heartbeat-datagrams".into())
        .spawn(move || read(&socket, &sessions, &ipam, &runtime))
        .map(|_| ())
        .map_err(|e| {
            IpamError::Unavailable(format!("cannot start the heartbeat datagram reader: {e}"))
        })
}

fn read(
    socket: &std::net::UdpSocket,
    sessions: &Arc<Sessions>,
    ipam: &Arc<Ipam>,
    runtime: &tokio::runtime::Handle,
) {
    let mut buf = [0u8; 512];
    while !ipam.is_shutting_down() {
        let now = Instant::now();
        for _ in 0..BATCH_MOST {
            let len = match socket.recv_from(&mut buf) {
                Ok((len, _from)) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // A datagram the kernel could not hand over whole (or an ICMP error): the next.
                Err(_) => continue,
            };
            match sessions.take(&buf[..len], now) {
                Ok((id, node)) => {
                    sessions.stats.taken.fetch_add(1, Ordering::Relaxed);
                    beat(id, &node, sessions, ipam, runtime);
                }
                Err(why) => sessions.stats.refuse(why),
            }
        }
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// Renews the node's lease; a beat that revives it waits for its flush on the runtime, not here.
fn beat(
    id: u64,
    node: &str,
    sessions: &Arc<Sessions>,
    ipam: &Arc<Ipam>,
    runtime: &tokio::runtime::Handle,
) {
    match ipam.heartbeat_now(node) {
        Ok(Begun::Done(beat)) => tell(sessions, ipam, id, Ok(beat), runtime),
        Ok(flushing) => {
            let (sessions, ipam, handle) = (sessions.clone(), ipam.clone(), runtime.clone());
            runtime.spawn(async move {
                let found = ipam.finish(flushing).await;
                tell(&sessions, &ipam, id, found, &handle);
            });
        }
        Err(e) => tell(sessions, ipam, id, Err(e), runtime),
    }
}

/// Answers on the session's stream what a datagram's beat found, when it changed anything.
fn tell(
    sessions: &Sessions,
    ipam: &Ipam,
    id: u64,
    found: Result<Beat, IpamError>,
    runtime: &tokio::runtime::Handle,
) {
    match found {
        Ok(beat) => {
            if let Some((answers, told)) = sessions.found(id, beat, Some(true)) {
                let _ = answers.try_send(Ok(crate::heartbeat::answer(ipam, told, None)));
            }
        }
        // Its node is gone (deleted): the stream ends with why, as a beat on it would. Waiting
        // for room if need be: the session is closed, so an agent not told would go on sending
        // datagrams nobody takes instead of beating or registering again.
        Err(e) => {
            if let Some(answers) = sessions.close(id) {
                let status: Status = e.into();
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(END_WAIT, answers.send(Err(status))).await;
                });
            }
        }
    }
}

/// Every half interval: agents whose datagrams went silent are told, to beat on the stream.
async fn sweep(sessions: Arc<Sessions>, ipam: Arc<Ipam>) {
    let mut tick = tokio::time::interval(sessions.interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept = Instant::now();
    let stopping = ipam.shutting_down();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // After a stall of IPAM's own (late by a whole interval) silence proves nothing.
        let stalled = now.saturating_duration_since(swept) > sessions.interval;
        swept = now;
        if stalled {
            continue;
        }
        for (answers, told) in sessions.sweep(now) {
            sessions.stats.unheard.fetch_add(1, Ordering::Relaxed);
            let _ = answers.try_send(Ok(crate::heartbeat::answer(&ipam, told, None)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: Beat = Beat {
        ready: true,
        held_down: false,
    };

    fn sessions() -> Arc<Sessions> {
        Arc::new(Sessions::new(4000, Duration::from_millis(100)))
    }

    fn seal(offer: &pb::DatagramSession, sequence: u64) -> [u8; datagram::LEN] {
        let key = SessionKey::from_bytes(&offer.key).expect("a 32-byte key");
        Header {
            session: offer.id,
            sequence,
        }
        .seal(&key)
    }

    #[test]
    fn a_session_takes_its_own_datagrams_in_sequence_only() {
        let s = sessions();
        let (tx, _rx) = mpsc::channel(4);
        let (_guard, offer) = s.open("n1", READY, tx).expect("opened");
        assert_eq!(offer.port, 4000);
        assert_eq!(offer.key.len(), datagram::KEY_LEN);
        let now = Instant::now();
        assert_eq!(s.take(&seal(&offer, 1), now), Ok((offer.id, "n1".into())));
        assert_eq!(s.take(&seal(&offer, 1), now), Err(Refused::Replayed));
        assert_eq!(s.take(&seal(&offer, 5), now), Ok((offer.id, "n1".into())));
        assert_eq!(
            s.take(&seal(&offer, 3), now),
            Err(Refused::Replayed),
            "an old one, late"
        );
        let mut forged = seal(&offer, 9);
        forged[30] ^= 1;
        assert_eq!(s.take(&forged, now), Err(Refused::BadTag));
        assert_eq!(
            s.take(&seal(&offer, 6), now),
            Ok((offer.id, "n1".into())),
            "a forgery moves nothing"
        );
        let other = pb::DatagramSession {
            id: offer.id + 1,
            ..offer.clone()
        };
        assert_eq!(s.take(&seal(&other, 7), now), Err(Refused::UnknownSession));
        assert_eq!(s.take(b"hello", now), Err(Refused::Malformed));
    }

    #[test]
    fn a_session_ends_with_its_guard() {
        let s = sessions();
        let (tx, _rx) = mpsc::channel(4);
        let (guard, offer) = s.open("n1", READY, tx).expect("opened");
        drop(guard);
        assert_eq!(
            s.take(&seal(&offer, 1), Instant::now()),
            Err(Refused::UnknownSession)
        );
    }

    #[test]
    fn the_agent_is_told_when_datagrams_are_heard_and_when_they_stop() {
        let s = sessions();
        let (tx, _rx) = mpsc::channel(4);
        let (_guard, offer) = s.open("n1", READY, tx).expect("opened");
        let start = Instant::now();
        let heard = |ready| {
            s.found(
                offer.id,
                Beat {
                    ready,
                    held_down: false,
                },
                Some(true),
            )
            .map(|(_, t)| t)
        };
        assert_eq!(
            heard(true),
            Some(Told {
                beat: READY,
                heard: true
            }),
            "the first datagram heard"
        );
        assert_eq!(heard(true), None, "nothing new");
        assert!(
            s.found(offer.id, READY, None).is_none(),
            "a stream beat leaves heard as it was"
        );
        s.take(&seal(&offer, 1), start).expect("taken");
        assert!(
            s.sweep(start + Duration::from_millis(140)).is_empty(),
            "within 1.5 intervals"
        );
        let told = s.sweep(start + Duration::from_millis(160));
        assert_eq!(told.len(), 1, "silent past 1.5 intervals");
        assert!(!told[0].1.heard);
        assert!(
            s.sweep(start + Duration::from_secs(9)).is_empty(),
            "told once"
        );
        assert_eq!(
            heard(false).map(|t| (t.heard, t.beat.ready)),
            Some((true, false))
        );
    }

    #[test]
    fn many_sessions_silent_together_are_told_a_few_at_a_time() {
        let s = sessions();
        let start = Instant::now();
        let mut guards = Vec::new();
        for i in 0..1000 {
            let (tx, rx) = mpsc::channel(4);
            let (guard, offer) = s.open(&format!("n{i}"), READY, tx).expect("opened");
            s.take(&seal(&offer, 1), start).expect("taken");
            s.found(offer.id, READY, Some(true)).expect("heard");
            guards.push((guard, rx));
        }
        let late = start + Duration::from_secs(1);
        assert_eq!(s.sweep(late).len(), 20, "a fiftieth of 1,000 per sweep");
        assert_eq!(s.sweep(late).len(), 20, "the next ones at the next sweep");
        let (tx, _rx) = mpsc::channel(4);
        let few = sessions();
        let (_g, offer) = few.open("n", READY, tx).expect("opened");
        few.take(&seal(&offer, 1), start).expect("taken");
        few.found(offer.id, READY, Some(true)).expect("heard");
        assert_eq!(few.sweep(late).len(), 1, "a small cluster is told at once");
    }
}
