//! The Heartbeat stream (fast failure detection; ipam.proto): the route agent beats every
//! interval, each beat renews the node's lease for the dead interval (`state/liveness.rs`), and
//! the lease clock (`lease_clock.rs`) declares a node that stops beating dead.
//!
//! Contract: the first beat names a registered node the caller may act for, or the stream is
//! refused (NOT_FOUND, PERMISSION_DENIED) before any beat counts; every later beat names the same
//! node (INVALID_ARGUMENT ends the stream otherwise). IPAM answers the first beat with the timers
//! and then only when the node's state changes (it came back, it is held down), so that thousands
//! of agents beating cost one read each, not a read and a write. With datagrams on, the first
//! answer offers a session, and the agent's beats come as UDP datagrams instead
//! (`heartbeat_datagrams.rs`); the stream stays open to carry the answers and to end the session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::authz::Caller;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::heartbeat_datagrams::{SessionGuard, Sessions, Told};
use crate::ipam::Ipam;
use crate::state::Beat;

/// How long a stream may stay open without its first beat: an agent sends it at once, and a
/// caller that does not holds one of its connection's stream slots for nothing.
const FIRST_BEAT: std::time::Duration = std::time::Duration::from_secs(5);

pub type HeartbeatStream = ReceiverStream<Result<pb::HeartbeatResponse, Status>>;

/// Keeps the open-streams gauge honest however the stream ends.
struct Open(Arc<Ipam>);

impl Open {
    fn new(ipam: Arc<Ipam>) -> Open {
        ipam.liveness_stats()
            .heartbeat_streams
            .fetch_add(1, Ordering::Relaxed);
        Open(ipam)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .liveness_stats()
            .heartbeat_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer telling `told`; the first also offers the datagram session.
pub(crate) fn answer(
    ipam: &Ipam,
    told: Told,
    offer: Option<pb::DatagramSession>,
) -> pb::HeartbeatResponse {
    let config = ipam.liveness();
    let millis = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    pb::HeartbeatResponse {
        interval_ms: millis(config.heartbeat_interval),
        dead_after_ms: millis(config.dead_after()),
        ready: told.beat.ready,
        held_down: told.beat.held_down,
        datagrams: offer,
        datagrams_heard: told.heard,
    }
}

/// What the agent was last told, where the stream's task keeps it: in its datagram session, or
/// here when IPAM takes no datagrams.
enum Telling {
    Session(Arc<Sessions>, SessionGuard),
    Stream(Told),
}

impl Telling {
    /// A beat on the stream found `beat`: the answer to send, if it changed anything.
    fn found(&mut self, beat: Beat) -> Option<Told> {
        match self {
            Telling::Session(sessions, guard) => {
                sessions.found(guard.id, beat, None).map(|(_, t)| t)
            }
            Telling::Stream(told) => (told.beat != beat).then(|| {
                told.beat = beat;
                *told
            }),
        }
    }
}

pub async fn serve(
    ipam: Arc<Ipam>,
    datagrams: Option<Arc<Sessions>>,
    req: Request<Streaming<pb::HeartbeatRequest>>,
) -> Result<Response<HeartbeatStream>, Status> {
    let caller = Caller::of(&req);
    let mut beats = req.into_inner();
    let first = tokio::time::timeout(FIRST_BEAT, beats.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no first beat within {FIRST_BEAT:?} of opening the Heartbeat stream: send HeartbeatRequest{{name}} at once"
            ))
        })??
        .ok_or_else(|| {
            Status::invalid_argument(
                "the Heartbeat stream ended before its first beat: send HeartbeatRequest{name} first",
            )
        })?;
    let name = first.name;
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "name is required: the first beat names the node",
        ));
    }
    caller.for_node(&name)?;
    let beat = ipam.heartbeat(&name).await?;
    // Room for the first answer and the changes queued behind it; a change that finds it full
    // (the agent stopped reading) is dropped, and the next one tells the state as it is then.
    let (tx, rx) = mpsc::channel(8);
    let told = Told { beat, heard: false };
    let (mut telling, offer) = match datagrams {
        Some(sessions) => {
            let (guard, offer) = sessions.open(&name, beat, tx.clone())?;
            (Telling::Session(sessions, guard), Some(offer))
        }
        None => (Telling::Stream(told), None),
    };
    tx.try_send(Ok(answer(&ipam, told, offer)))
        .map_err(|_| Status::internal("the Heartbeat answer could not be queued"))?;
    let open = Open::new(ipam);
    tokio::spawn(async move {
        let ipam = open.0.clone();
        // Ends when the agent ends the stream or its connection dies: the lease runs on and the
        // lease clock judges; the datagram session ends with it (`telling` dropped). Each message
        // read is a beat; a slow reader only delays reading. On shutdown it ends at once,
        // UNAVAILABLE: the agent beats on at the next IPAM. (One shutdown future for the
        // stream's life, not one registered and dropped per beat.)
        let stopping = ipam.shutting_down();
        tokio::pin!(stopping);
        loop {
            let beat = tokio::select! {
                beat = beats.message() => beat,
                () = &mut stopping => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "routeplane-ipam is shutting down: beat on at the next one",
                        )))
                        .await;
                    return;
                }
            };
            let Ok(Some(beat)) = beat else { break };
            if beat.name != name {
                let _ = tx
                    .send(Err(Status::invalid_argument(format!(
                        "beat for node {:?} on the Heartbeat stream of node {name:?}: a stream beats for the node its first beat named",
                        beat.name
                    ))))
                    .await;
                return;
            }
            match ipam.heartbeat(&name).await {
                Ok(now) => {
                    if let Some(told) = telling.found(now)
                        && tx.send(Ok(answer(&ipam, told, None))).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
        drop(telling);
        drop(open);
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}
