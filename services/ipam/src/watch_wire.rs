//! The Watch RPC on the wire, with each live event encoded once for all its watchers.
//!
//! Through the generated server every watcher converted every event to protobuf (addresses and
//! CIDRs formatted as text, labels copied) and encoded it again: at 5,000 watchers, 5,000 times
//! per change, about a tenth of IPAM's CPU in a fan-out. [`WatchOnce`] wraps the generated
//! `IpamServer`: a call to `/routeplane.ipam.v1.Ipam/Watch` is served here with a codec that writes
//! messages already encoded ([`EncodedEvent`]); every other method goes to the generated server
//! unchanged. The bytes are the same `WatchEvent` a client decodes — only who encodes them, and
//! how often, differs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes};
use futures::Stream;
use prost::Message as _;
use routeplane_api::ipam::v1 as pb;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstDecoder;

use crate::grpc::{IpamGrpc, event_message, watch_messages};
use crate::ipam::WatchItem;
use crate::model::{Revision, RevisionedEvent};

const WATCH_PATH: &str = "/routeplane.ipam.v1.Ipam/Watch";

/// A `WatchEvent` already encoded.
#[derive(Clone, Debug)]
pub struct EncodedEvent(Bytes);

/// How many of the latest live events are kept encoded: a burst's batch (up to 256 events,
/// `ipam/watch_feed.rs`) is taken by every watcher in turn, so each of its events must still be
/// here when the next watcher comes to it. They are the newest eighth of the events the feed's broadcast keeps
/// anyway (4,096 by default, `--watch-buffer`), so at most that much again in memory.
const KEPT: usize = 512;

/// The latest live events, encoded, by revision. Watchers take the same events one after another,
/// so nearly every one is encoded once; a watcher further behind (replaying) encodes its own.
#[derive(Default)]
pub struct EncodedEvents {
    latest: Mutex<VecDeque<(Revision, Bytes)>>,
}

impl EncodedEvents {
    /// An item's messages, encoded: live events (alone or in a batch) from the kept ones where
    /// they are; snapshots and bookmarks, which are each watcher's own, afresh.
    pub fn encode(&self, item: WatchItem) -> Vec<EncodedEvent> {
        match item {
            WatchItem::Event(e) => vec![self.event(&e)],
            WatchItem::Events(events) => events.iter().map(|e| self.event(e)).collect(),
            other => watch_messages(other)
                .iter()
                .map(|m| EncodedEvent(m.encode_to_vec().into()))
                .collect(),
        }
    }

    fn event(&self, e: &RevisionedEvent) -> EncodedEvent {
        {
            let latest = self.latest();
            // Kept in revision order.
            if let Ok(i) = latest.binary_search_by_key(&e.revision, |(r, _)| *r) {
                return EncodedEvent(latest[i].1.clone());
            }
        }
        // Encoded outside the lock: two threads missing together both encode, harmlessly.
        let bytes = Bytes::from(event_message(e).encode_to_vec());
        let mut latest = self.latest();
        // Only newer than all kept: an older one is a watcher replaying alone.
        if latest.back().is_none_or(|(r, _)| *r < e.revision) {
            if latest.len() == KEPT {
                latest.pop_front();
            }
            latest.push_back((e.revision, bytes.clone()));
        }
        EncodedEvent(bytes)
    }

    fn latest(&self) -> std::sync::MutexGuard<'_, VecDeque<(Revision, Bytes)>> {
        // A cache: whatever a panicked holder left is valid entries in order.
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub type EncodedStream = Pin<Box<dyn Stream<Item = Result<EncodedEvent, Status>> + Send>>;

/// Writes an [`EncodedEvent`] as it is; reads a `WatchRequest` as protobuf.
#[derive(Default)]
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = EncodedEvent;
    type Decode = pb::WatchRequest;
    type Encoder = Verbatim;
    type Decoder = ProstDecoder<pb::WatchRequest>;

    fn encoder(&mut self) -> Verbatim {
        Verbatim
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

struct Verbatim;

impl Encoder for Verbatim {
    type Item = EncodedEvent;
    type Error = Status;

    fn encode(&mut self, item: EncodedEvent, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item.0);
        Ok(())
    }
}

/// The generated server, with Watch served by [`IpamGrpc::watch_encoded`].
#[derive(Clone)]
pub struct WatchOnce {
    grpc: Arc<IpamGrpc>,
    generated: pb::ipam_server::IpamServer<IpamGrpc>,
}

impl WatchOnce {
    pub fn new(grpc: IpamGrpc) -> WatchOnce {
        let grpc = Arc::new(grpc);
        WatchOnce {
            generated: pb::ipam_server::IpamServer::from_arc(grpc.clone())
                .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES),
            grpc,
        }
    }
}

impl NamedService for WatchOnce {
    const NAME: &'static str = <pb::ipam_server::IpamServer<IpamGrpc> as NamedService>::NAME;
}

struct WatchCall(Arc<IpamGrpc>);

impl ServerStreamingService<pb::WatchRequest> for WatchCall {
    type Response = EncodedEvent;
    type ResponseStream = EncodedStream;
    type Future = std::future::Ready<Result<Response<EncodedStream>, Status>>;

    fn call(&mut self, req: Request<pb::WatchRequest>) -> Self::Future {
        std::future::ready(self.0.watch_encoded(req))
    }
}

impl Service<http::Request<tonic::body::Body>> for WatchOnce {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return self.generated.call(req);
        }
        let call = WatchCall(self.grpc.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WatchCodec)
                .apply_max_message_size_config(Some(routeplane_api::MAX_MESSAGE_BYTES), None);
            Ok(grpc.server_streaming(call, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, RevisionedEvent};

    fn event(revision: Revision, name: &str) -> WatchItem {
        WatchItem::Event(Arc::new(RevisionedEvent {
            revision,
            event: Event::NodeDeleted {
                name: name.to_string(),
                pod_cidrs: vec!["10.0.0.0/26".to_string()],
            },
        }))
    }

    fn bytes(item: WatchItem) -> Vec<Vec<u8>> {
        watch_messages(item)
            .iter()
            .map(|m| m.encode_to_vec())
            .collect()
    }

    #[test]
    fn events_are_encoded_as_the_generated_server_would_and_once() {
        let cache = EncodedEvents::default();
        let first = cache.encode(event(7, "a"));
        assert_eq!(
            first.iter().map(|e| e.0.to_vec()).collect::<Vec<_>>(),
            bytes(event(7, "a"))
        );
        // The second watcher gets the same buffer, not a copy.
        let second = cache.encode(event(7, "a"));
        assert_eq!(first[0].0.as_ptr(), second[0].0.as_ptr());
        // A batch is its events one by one, those encoded before taken as they were.
        let WatchItem::Event(seven) = event(7, "a") else {
            unreachable!()
        };
        let WatchItem::Event(eight) = event(8, "b") else {
            unreachable!()
        };
        let batch = cache.encode(WatchItem::Events(vec![seven, eight]));
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].0.as_ptr(), first[0].0.as_ptr());
        assert_eq!(vec![batch[1].0.to_vec()], bytes(event(8, "b")));
        // The next watcher through the same batch encodes nothing again, the first event included.
        let WatchItem::Event(seven) = event(7, "a") else {
            unreachable!()
        };
        let WatchItem::Event(eight) = event(8, "b") else {
            unreachable!()
        };
        let again = cache.encode(WatchItem::Events(vec![seven, eight]));
        assert_eq!(again[0].0.as_ptr(), first[0].0.as_ptr());
        assert_eq!(again[1].0.as_ptr(), batch[1].0.as_ptr());
        // A bookmark is never taken from what is kept.
        let bookmark = cache.encode(WatchItem::Progress(8));
        assert_eq!(
            pb::WatchEvent::decode(&bookmark[0].0[..]).unwrap(),
            watch_messages(WatchItem::Progress(8))[0]
        );
    }

    #[test]
    fn the_latest_events_are_kept_and_no_more() {
        let cache = EncodedEvents::default();
        let first = cache.encode(event(1, "a"));
        for r in 2..=KEPT as Revision {
            cache.encode(event(r, "a"));
        }
        // All kept: the first still shared.
        assert_eq!(
            cache.encode(event(1, "a"))[0].0.as_ptr(),
            first[0].0.as_ptr()
        );
        cache.encode(event(KEPT as Revision + 1, "a"));
        assert_eq!(cache.latest().len(), KEPT);
        // The oldest went: encoded again, and not kept (older than every kept one).
        assert_ne!(
            cache.encode(event(1, "a"))[0].0.as_ptr(),
            first[0].0.as_ptr()
        );
        assert_eq!(cache.latest().front().map(|(r, _)| *r), Some(2));
    }
}
