//! The Heartbeat stream (fast failure detection; ipam.proto): the route agent beats every
//! interval, each beat renews the node's lease for the dead interval (`state/liveness.rs`), and
//! the lease clock (`lease_clock.rs`) declares a node that stops beating dead.
//!
//! Contract: the first beat names a registered node the caller may act for, or the stream is
//! refused (NOT_FOUND, PERMISSION_DENIED) before any beat counts; every later beat names the same
//! node (INVALID_ARGUMENT ends the stream otherwise). IPAM answers the first beat with the timers
//! and then only when the node's state changes (it came back, it is held down), so that thousands
//! of agents beating cost one read each, not a read and a write.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::authz::Caller;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

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

fn answer(ipam: &Ipam, beat: Beat) -> pb::HeartbeatResponse {
    let config = ipam.liveness();
    let millis = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    pb::HeartbeatResponse {
        interval_ms: millis(config.heartbeat_interval),
        dead_after_ms: millis(config.dead_after()),
        ready: beat.ready,
        held_down: beat.held_down,
    }
}

pub async fn serve(
    ipam: Arc<Ipam>,
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
    let mut last = ipam.heartbeat(&name).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(Ok(answer(&ipam, last)))
        .map_err(|_| Status::internal("the Heartbeat answer could not be queued"))?;
    let open = Open::new(ipam);
    tokio::spawn(async move {
        let ipam = open.0.clone();
        // Ends when the agent ends the stream or its connection dies: the lease runs on and the
        // lease clock judges. Each message read is a beat; a slow reader only delays reading.
        // On shutdown it ends at once, UNAVAILABLE: the agent beats on at the next IPAM. (One
        // shutdown future for the stream's life, not one registered and dropped per beat.)
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
                Ok(now) if now == last => {}
                Ok(now) => {
                    last = now;
                    if tx.send(Ok(answer(&ipam, now))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
        drop(open);
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}
