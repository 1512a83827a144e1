//! A connection's writer: one task per BGP connection owns the socket's write half, takes encoded
//! messages from a bounded queue and writes each batch under a deadline — the session's hold time
//! (RFC 4271 §4.4: a peer that takes no KEEPALIVE from us for that long would drop the session
//! itself). A peer that stops reading without closing (a wedged control plane, a host whose
//! receive window stays shut) would otherwise block the session's write for ever, and with it its
//! hold timer, its commands (DeletePeer, reload, shutdown) and everything after. Instead the write
//! fails at the deadline, the writer ends with the reason, and the session takes it as the
//! connection failing. The queue bounds what waits in memory for a slow peer: a session whose
//! queue is full waits, at most until the deadline.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Batches (each up to 64 messages) that may wait for the socket.
pub const WRITE_QUEUE: usize = 16;

/// The deadline before a hold time is negotiated, and with hold time 0 (no keepalives): RFC 4271
/// §8's "large value" for the hold timer before the peer's OPEN, 4 minutes.
pub const DEADLINE_WITHOUT_HOLD_TIME: Duration = Duration::from_secs(240);

struct Batch {
    bytes: BytesMut,
    deadline: Duration,
}

pub struct Writer {
    queue: mpsc::Sender<Batch>,
    failed: Option<oneshot::Receiver<String>>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer task on `half`.
    pub fn spawn(half: OwnedWriteHalf) -> Writer {
        let (queue, batches) = mpsc::channel(WRITE_QUEUE);
        let (failure, failed) = oneshot::channel();
        let task = tokio::spawn(run(half, batches, failure));
        Writer {
            queue,
            failed: Some(failed),
            task,
        }
    }

    /// Queues `bytes`, to be written within `deadline`; waits while the queue is full (until the
    /// writer gets room or fails). The error is why the connection can no longer be written to.
    pub async fn send(&mut self, bytes: BytesMut, deadline: Duration) -> Result<(), String> {
        if self.queue.send(Batch { bytes, deadline }).await.is_ok() {
            return Ok(());
        }
        Err(self.failure())
    }

    /// Why the writer ended, once it has.
    fn failure(&mut self) -> String {
        match self.failed.as_mut().map(|f| f.try_recv()) {
            Some(Ok(reason)) => {
                self.failed = None;
                reason
            }
            _ => "the connection's writer has ended".into(),
        }
    }

    /// Resolves when the writer has failed, with the reason; pends for ever otherwise.
    pub async fn failed(&mut self) -> String {
        let reason = match self.failed.as_mut() {
            Some(failed) => failed.await,
            None => return std::future::pending().await,
        };
        self.failed = None;
        match reason {
            Ok(reason) => reason,
            // Ended without failing: only when closed, and then nobody waits here.
            Err(_) => std::future::pending().await,
        }
    }

    /// Closes the queue: what it holds is still written (each batch under its deadline), then
    /// the connection is half-closed (our FIN). The task to wait for — bounded by the caller, and
    /// aborted when it will not wait longer (dropping the socket).
    pub fn close(self) -> JoinHandle<()> {
        drop(self.queue);
        self.task
    }
}

async fn run(
    mut half: OwnedWriteHalf,
    mut batches: mpsc::Receiver<Batch>,
    failure: oneshot::Sender<String>,
) {
    while let Some(batch) = batches.recv().await {
        let why = match tokio::time::timeout(batch.deadline, half.write_all(&batch.bytes)).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("writing to the peer failed: {e}"),
            Err(_) => format!(
                "the peer took none of our data for {:?} (the hold time): it stopped reading",
                batch.deadline
            ),
        };
        let _ = failure.send(why);
        return;
    }
    let _ = half.shutdown().await;
}

#[cfg(test)]
mod tests {
    use tokio::net::tcp::OwnedReadHalf;

    use super::*;

    /// A peer that never reads: the writer fails at the deadline, and a session waiting for room
    /// in the queue hears why instead of waiting for ever.
    /// A writer on a loopback connection, and the peer's end of it.
    async fn writer_to_a_peer() -> (Writer, tokio::net::TcpStream, OwnedReadHalf) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        let (read, half) = client.into_split();
        (Writer::spawn(half), peer, read)
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_fails_the_writer_at_the_deadline() {
        // The peer: accepted, never read.
        let (mut writer, _peer, _read) = writer_to_a_peer().await;
        let deadline = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let mut sent = 0usize;
        let reason = loop {
            match writer
                .send(BytesMut::from(&[0u8; 65536][..]), deadline)
                .await
            {
                Ok(()) => sent += 1,
                Err(reason) => break reason,
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still taking data after {sent} batches"
            );
        };
        assert!(reason.contains("stopped reading"), "{reason}");
        assert!(sent >= WRITE_QUEUE, "the queue filled first: {sent}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Closing writes what was queued, then half-closes: the peer reads it all, then EOF.
    #[tokio::test]
    async fn closing_flushes_the_queue_then_sends_fin() {
        use tokio::io::AsyncReadExt;
        let (mut writer, mut peer, _read) = writer_to_a_peer().await;
        for i in 0..4u8 {
            writer
                .send(BytesMut::from(&[i; 1000][..]), Duration::from_secs(5))
                .await
                .unwrap();
        }
        writer.close().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4000);
        assert_eq!(got[3999], 3);
    }
}
