//! One connection to another service, shared by every caller in the process: a route agent's
//! registration, heartbeat and Watch ride one HTTP/2 connection to IPAM (streams multiplex) rather
//! than one connection each.
//!
//! Why: at 5,000 nodes every connection IPAM holds costs memory (~100 KB with TLS), an HTTP/2
//! keepalive PING every 10 s when it is idle, and a TLS handshake whenever IPAM restarts — the
//! agents' second connection doubled all three for nothing (README, scale).
//!
//! Contract: [`Link::channel`] hands out the current channel, dialling it (one dial at a time:
//! callers that arrive meanwhile wait for that one) when there is none. A caller whose call or
//! stream failed for the connection's sake tells [`Link::failed`] with the [`Leased`] it used: the
//! next caller dials afresh — so a list of replicas is walked again and a new leader found — while
//! a failure reported on a channel already replaced changes nothing.

use std::sync::{Mutex, PoisonError};

use tonic::transport::Channel;

use crate::dial::{DialError, Dialer, Peer};

/// A channel from the link, and which connection it was.
#[derive(Clone, Debug)]
pub struct Leased {
    pub channel: Channel,
    /// The address the connection reached (of several replicas, the one that accepted).
    pub peer: Peer,
    generation: u64,
}

pub struct Link {
    dialer: Dialer,
    list: String,
    current: Mutex<Option<Leased>>,
    /// Held while dialling, so that a herd of callers makes one connection.
    dialling: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("list", &self.list).finish()
    }
}

impl Link {
    /// A link to `list` (one URL, or several comma-separated: see [`Dialer::connect`]); nothing is
    /// dialled until a caller asks.
    pub fn new(dialer: Dialer, list: &str) -> Link {
        Link {
            dialer,
            list: list.to_string(),
            current: Mutex::new(None),
            dialling: tokio::sync::Mutex::new(0),
        }
    }

    pub fn list(&self) -> &str {
        &self.list
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Leased>> {
        // An Option replaced whole: whatever a panicked holder left is consistent.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared channel, dialled first if there is none.
    pub async fn channel(&self) -> Result<Leased, DialError> {
        if let Some(leased) = self.lock().clone() {
            return Ok(leased);
        }
        let mut generation = self.dialling.lock().await;
        // Dialled by the caller this one waited for.
        if let Some(leased) = self.lock().clone() {
            return Ok(leased);
        }
        let (channel, peer) = self.dialer.connect_peer(&self.list).await?;
        *generation += 1;
        let leased = Leased {
            channel,
            peer,
            generation: *generation,
        };
        *self.lock() = Some(leased.clone());
        Ok(leased)
    }

    /// Runs `call` on the shared channel; a failure that may be the connection's is reported
    /// ([`Link::failed`]), and a failure to dial comes back UNAVAILABLE naming it.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let leased = self
            .channel()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let result = call(leased.channel.clone()).await;
        if let Err(status) = &result
            && connection_failure(status)
        {
            self.failed(&leased);
        }
        result
    }

    /// [`Link::call`] with at most `limit` for the answer: past it the call ends
    /// DEADLINE_EXCEEDED and the connection is reported failed, as for any connection failure —
    /// a timeout around [`Link::call`] would drop the call before it could report, and a stalled
    /// connection (a frozen replica, a path that drops everything) would serve the next call too.
    pub async fn call_within<T, F, Fut>(
        &self,
        limit: std::time::Duration,
        call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.call(|channel| async move {
            tokio::time::timeout(limit, call(channel))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(format!(
                        "no answer within {limit:?}"
                    )))
                })
        })
        .await
    }

    /// `leased` failed for its connection's sake: the next caller dials again, unless it was
    /// replaced already.
    pub fn failed(&self, leased: &Leased) {
        let mut current = self.lock();
        if current
            .as_ref()
            .is_some_and(|c| c.generation == leased.generation)
        {
            *current = None;
        }
    }
}

/// Whether a call's failure may be the connection's (or the server's: a replica stepping down
/// answers UNAVAILABLE), so that the next caller should dial again rather than reuse it. A refusal
/// on the merits (NOT_FOUND, PERMISSION_DENIED, ABORTED…) is not.
pub fn connection_failure(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::DeadlineExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener that counts the connections it accepts and keeps them open.
    async fn counting() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        (url, accepted)
    }

    /// The listener's count once it has seen `at_least` (bounded), and a moment more for any
    /// connection beyond.
    async fn settled(accepted: &AtomicUsize, at_least: usize) -> usize {
        for _ in 0..100 {
            if accepted.load(Ordering::SeqCst) >= at_least {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn callers_share_one_connection_until_it_fails() {
        let (url, accepted) = counting().await;
        let link = Arc::new(Link::new(Dialer::loopback_only(), &url));
        // A herd of callers at once: one dial.
        let herd: Vec<_> = (0..20)
            .map(|_| {
                let link = link.clone();
                tokio::spawn(async move { link.channel().await.unwrap() })
            })
            .collect();
        let mut leased = Vec::new();
        for h in herd {
            leased.push(h.await.unwrap());
        }
        assert_eq!(settled(&accepted, 1).await, 1);
        assert!(leased.iter().all(|l| l.generation == leased[0].generation));

        link.failed(&leased[0]);
        let again = link.channel().await.unwrap();
        assert_ne!(again.generation, leased[0].generation);
        assert_eq!(settled(&accepted, 2).await, 2);
        // A late report about the old connection does not drop the new one.
        link.failed(&leased[5]);
        let same = link.channel().await.unwrap();
        assert_eq!(same.generation, again.generation);
        assert_eq!(settled(&accepted, 2).await, 2);
    }

    #[tokio::test]
    async fn a_call_without_an_answer_in_time_ends_and_the_next_caller_dials_again() {
        let (url, accepted) = counting().await;
        let link = Link::new(Dialer::loopback_only(), &url);
        let before = link.channel().await.unwrap();
        let limit = std::time::Duration::from_millis(200);
        let status = link
            .call_within(limit, |_channel| {
                std::future::pending::<Result<(), tonic::Status>>()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("200ms"), "{status}");
        let after = link.channel().await.unwrap();
        assert_ne!(after.generation, before.generation, "dialled again");
        assert_eq!(settled(&accepted, 2).await, 2);
        // An answer in time leaves the connection as it is.
        let answer = link
            .call_within(limit, |_channel| async { Ok::<_, tonic::Status>(7) })
            .await;
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(link.channel().await.unwrap().generation, after.generation);
    }

    #[tokio::test]
    async fn a_failed_dial_is_reported_and_the_next_caller_dials_again() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let link = Link::new(Dialer::loopback_only(), &format!("http://127.0.0.1:{port}"));
        let e = link.channel().await.unwrap_err().to_string();
        assert!(e.contains(&port.to_string()), "{e}");
        assert!(link.lock().is_none(), "nothing kept from a failed dial");
    }
}
