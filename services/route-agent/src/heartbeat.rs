//! This node's heartbeat: a stream to routeplane-ipam carrying a beat every interval IPAM asks
//! for (750 ms by default), so that IPAM declares the node dead within its dead interval (2.25 s) of
//! the last beat — when this agent is killed, the node freezes or its link is cut — rather than
//! after the KeepAlive lease (20 s). See ipam.proto's Heartbeat. When IPAM offers a datagram
//! session, each beat is also a UDP datagram, and once IPAM says it hears them the stream carries
//! beats only while it does not (a firewall on the UDP port): the stream stays the fallback.
//! Until IPAM's first answer arrives the stream beats every 250 ms ([`beating_until`]).
//!
//! Contract: [`run`] returns only when the stream ends, saying why: the node is not registered
//! (register again), IPAM has no Heartbeat (fall back to KeepAlive), or a failure to retry. A beat
//! that cannot be queued because the last one is still unsent is dropped, not queued: a beat says
//! "alive now", and a backlog of old ones would say nothing true.

use std::time::Duration;

use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::dial::Peer;
use routeplane_runtime::heartbeat_datagram::{self, Header, SessionKey};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::registration::Identity;

/// Why a heartbeat stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// IPAM does not know this node (NOT_FOUND): register again.
    NotRegistered,
    /// IPAM predates Heartbeat (UNIMPLEMENTED): renew with KeepAlive instead.
    Unsupported,
    /// The stream could not be opened (IPAM unreachable, restarting, refusing): try again shortly.
    Failed(String),
    /// The stream was open and beating, then ended: a new outage, worth a warning of its own.
    Lost(String),
}

fn ended(status: &tonic::Status) -> Ended {
    match status.code() {
        tonic::Code::NotFound => Ended::NotRegistered,
        tonic::Code::Unimplemented => Ended::Unsupported,
        _ => Ended::Failed(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// One warning per outage: when a stream that was beating ends, and when the first attempt to open
/// one fails — not for every retry after it (one every few seconds while IPAM is away).
#[derive(Debug, Default)]
pub struct Outage {
    warned: bool,
}

impl Outage {
    /// Whether this end of a stream deserves a warning.
    pub fn warn(&mut self, ended: &Ended) -> bool {
        match ended {
            Ended::Lost(_) => {
                self.warned = true;
                true
            }
            Ended::Failed(_) => !std::mem::replace(&mut self.warned, true),
            Ended::NotRegistered | Ended::Unsupported => false,
        }
    }
}

/// The interval IPAM asked for, within bounds a hostile or broken answer cannot push past.
pub fn interval(answer: &pb::HeartbeatResponse) -> Duration {
    Duration::from_millis(u64::from(answer.interval_ms))
        .clamp(Duration::from_millis(50), Duration::from_secs(10))
}

/// Opens the stream on the agent's connection to IPAM and beats until it ends; a stream that
/// failed or was lost makes the next one dial again (a new connection, or another replica).
pub async fn run(id: &Identity) -> Ended {
    let leased = match id.ipam.channel().await {
        Ok(l) => l,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let ended = beat(leased.channel.clone(), &leased.peer, &id.name).await;
    if matches!(ended, Ended::Failed(_) | Ended::Lost(_)) {
        id.ipam.failed(&leased);
    }
    ended
}

async fn beat(channel: tonic::transport::Channel, peer: &Peer, name: &str) -> Ended {
    let mut client = pb::ipam_client::IpamClient::new(channel);
    let beat = pb::HeartbeatRequest {
        name: name.to_string(),
    };
    let (tx, rx) = mpsc::channel(1);
    // The first beat names the node; IPAM answers once it has taken it.
    if tx.try_send(beat.clone()).is_err() {
        return Ended::Failed("the first beat could not be queued".into());
    }
    let first = beating_until(&tx, &beat, async {
        let mut answers = client
            .heartbeat(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = answers.message().await?;
        Ok::<_, tonic::Status>((answers, first))
    })
    .await;
    let (mut answers, first) = match first {
        Ok((answers, Some(a))) => (answers, a),
        Ok((_, None)) => return Ended::Failed("IPAM ended the Heartbeat stream at once".into()),
        Err(s) => return ended(&s),
    };
    let every = interval(&first);
    let mut datagrams = match &first.datagrams {
        Some(offer) => match Datagrams::open(peer.get(), offer).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "cannot send heartbeat datagrams to IPAM: beating on the stream");
                None
            }
        },
        None => None,
    };
    tracing::info!(interval = ?every, dead_after_ms = first.dead_after_ms, datagrams = datagrams.is_some(), "beating on IPAM's Heartbeat stream");
    report(None, &first);
    let port = first.datagrams.as_ref().map_or(0, |d| d.port);
    let mut told = first;
    let mut warned_unheard = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let sent = datagrams.as_mut().map(Datagrams::send);
                // On the stream too until IPAM hears the datagrams, and whenever one cannot go.
                if !told.datagrams_heard || !matches!(sent, Some(Ok(()))) {
                    // Full: the last beat is still unsent (a stalled connection); this one is
                    // dropped.
                    let _ = tx.try_send(beat.clone());
                }
            }
            answer = answers.message() => match answer {
                Ok(Some(a)) => {
                    report(Some(&told), &a);
                    if datagrams.is_some() && told.datagrams_heard != a.datagrams_heard {
                        if a.datagrams_heard {
                            tracing::debug!("IPAM hears this node's heartbeat datagrams: beating with those only");
                        } else {
                            if !std::mem::replace(&mut warned_unheard, true) {
                                tracing::warn!("IPAM stopped hearing this node's heartbeat datagrams (UDP port {port}): beating on the stream until it hears them again");
                            }
                            // At once: the dead interval is running.
                            let _ = tx.try_send(beat.clone());
                        }
                    }
                    told = a;
                }
                Ok(None) => return Ended::Lost("IPAM ended the Heartbeat stream".into()),
                Err(s) => return match ended(&s) {
                    Ended::Failed(e) => Ended::Lost(e),
                    other => other,
                },
            },
        }
    }
}

/// How often the stream beats until IPAM's first answer says how often IPAM wants beats: a third
/// of IPAM's default interval (750 ms), so that an IPAM set to an interval down to this is still
/// beaten within its dead interval.
pub const BEFORE_THE_ANSWER: Duration = Duration::from_millis(250);

/// Awaits `answer` — the stream's response and its first message — beating on the stream every
/// [`BEFORE_THE_ANSWER`] meanwhile. IPAM's lease runs from the first beat, but its answer goes out
/// on the connection that carries this node's Watch feed too, behind whatever IPAM is writing it:
/// a burst of events (a rack of 500 nodes coming back at 5,000 nodes) held first answers for
/// longer than the dead interval, and nodes that waited for them unbeating were declared dead
/// again as they returned. Beats IPAM has not read yet wait in the stream (the first is the
/// only one read before the answer is queued) and count when read; a beat that finds the last
/// still queued is dropped, as on the beating stream.
pub async fn beating_until<T>(
    tx: &mpsc::Sender<pb::HeartbeatRequest>,
    beat: &pb::HeartbeatRequest,
    answer: impl std::future::Future<Output = T>,
) -> T {
    let mut tick = tokio::time::interval(BEFORE_THE_ANSWER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now, and the first beat is queued already.
    tick.tick().await;
    tokio::pin!(answer);
    loop {
        tokio::select! {
            a = &mut answer => return a,
            _ = tick.tick() => {
                let _ = tx.try_send(beat.clone());
            }
        }
    }
}

/// This node's heartbeat datagrams (routeplane-runtime's `heartbeat_datagram.rs`): one a tick to
/// the session IPAM offered, at the address of the IPAM dialled.
struct Datagrams {
    socket: tokio::net::UdpSocket,
    key: SessionKey,
    session: u64,
    sequence: u64,
}

impl Datagrams {
    /// To `peer`, the address of the IPAM this stream is open to (the replica that accepted it,
    /// not whatever its name resolves to first).
    async fn open(
        peer: Option<std::net::SocketAddr>,
        offer: &pb::DatagramSession,
    ) -> Result<Datagrams, String> {
        let key = SessionKey::from_bytes(&offer.key).ok_or_else(|| {
            format!(
                "IPAM offered a {}-byte session key where {} are due",
                offer.key.len(),
                heartbeat_datagram::KEY_LEN
            )
        })?;
        let port = u16::try_from(offer.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("IPAM offered UDP port {}: not a port", offer.port))?;
        let to = std::net::SocketAddr::new(
            peer.ok_or("the address of IPAM's connection is not known")?
                .ip(),
            port,
        );
        let any: std::net::SocketAddr = if to.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(any)
            .await
            .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        socket
            .connect(to)
            .await
            .map_err(|e| format!("cannot address UDP {to}: {e}"))?;
        Ok(Datagrams {
            socket,
            key,
            session: offer.id,
            sequence: 0,
        })
    }

    /// Sends the next beat; an error (no route, or ICMP port unreachable reported from the last
    /// one) means this beat goes on the stream.
    fn send(&mut self) -> std::io::Result<()> {
        self.sequence += 1;
        let datagram = Header {
            session: self.session,
            sequence: self.sequence,
        }
        .seal(&self.key);
        self.socket.try_send(&datagram).map(|_| ())
    }
}

/// Logs the node's state when it changed (answers also come when only `datagrams_heard` did).
fn report(before: Option<&pb::HeartbeatResponse>, answer: &pb::HeartbeatResponse) {
    let state = |a: &pb::HeartbeatResponse| (a.ready, a.held_down);
    if before.is_some_and(|b| state(b) == state(answer)) {
        return;
    }
    match state(answer) {
        (true, _) => tracing::info!("IPAM counts this node Ready"),
        (false, true) => tracing::warn!(
            "IPAM holds this node down for flapping (it died and came back too often): its prefixes stay withdrawn until that decays"
        ),
        (false, false) => tracing::warn!("IPAM counts this node NotReady"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outage_is_warned_of_once() {
        let (failed, lost) = (Ended::Failed("refused".into()), Ended::Lost("reset".into()));
        let mut o = Outage::default();
        assert!(o.warn(&failed), "IPAM away at start");
        assert!(
            !o.warn(&failed) && !o.warn(&failed),
            "its retries are quiet"
        );
        assert!(o.warn(&lost), "beating again, then lost: a new outage");
        assert!(!o.warn(&failed), "and its retries quiet");
        assert!(o.warn(&lost), "every loss of a beating stream");
        assert!(!o.warn(&Ended::NotRegistered));
    }

    #[test]
    fn the_interval_ipam_asks_for_is_bounded() {
        let ask = |ms| pb::HeartbeatResponse {
            interval_ms: ms,
            ..Default::default()
        };
        assert_eq!(interval(&ask(500)), Duration::from_millis(500));
        assert_eq!(interval(&ask(0)), Duration::from_millis(50), "no busy loop");
        assert_eq!(interval(&ask(u32::MAX)), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn beats_go_on_while_the_first_answer_is_late() {
        let (tx, mut rx) = mpsc::channel(1);
        let beat = pb::HeartbeatRequest { name: "n1".into() };
        tx.try_send(beat.clone()).unwrap();
        assert_eq!(rx.recv().await, Some(beat.clone()), "the first beat");
        // IPAM reads beats as they come while its answer is 3 s late (past a dead interval of
        // 2.25 s): each read is a renewal.
        let reader = tokio::spawn(async move {
            let mut at = Vec::new();
            while let Some(b) = rx.recv().await {
                assert_eq!(b.name, "n1");
                at.push(tokio::time::Instant::now());
            }
            at
        });
        let start = tokio::time::Instant::now();
        let answer = beating_until(&tx, &beat, async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "the answer"
        })
        .await;
        assert_eq!(answer, "the answer");
        let answered = tokio::time::Instant::now();
        drop(tx);
        let at = reader.await.unwrap();
        // At 250, 500, … 2,750 ms, and at 3 s unless the answer came first.
        assert!(
            (11..=12).contains(&at.len()),
            "a beat every 250 ms for 3 s: {at:?}"
        );
        let mut last = start;
        for t in at.into_iter().chain([answered]) {
            assert!(t - last <= BEFORE_THE_ANSWER, "no gap longer than 250 ms");
            last = t;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_answer_sends_no_extra_beat() {
        let (tx, mut rx) = mpsc::channel(1);
        let beat = pb::HeartbeatRequest { name: "n1".into() };
        assert_eq!(beating_until(&tx, &beat, async { 7 }).await, 7);
        assert!(rx.try_recv().is_err(), "the first beat alone");
    }

    #[test]
    fn refusals_say_what_to_do_next() {
        assert_eq!(
            ended(&tonic::Status::not_found("node n1 is not registered")),
            Ended::NotRegistered
        );
        assert_eq!(ended(&tonic::Status::unimplemented("")), Ended::Unsupported);
        assert!(matches!(
            ended(&tonic::Status::unavailable("down")),
            Ended::Failed(m) if m.contains("down")
        ));
    }
}
