//! Which replica serves: one leader per prefix, elected under an etcd lease.
//!
//! Every replica on a prefix campaigns for its `leader` key: a transaction that creates it, bound
//! to the replica's lease, only if it does not exist. The winner serves; the others wait as
//! standbys — not listening, so that probes, a Kubernetes Service and clients with several
//! endpoints find only the leader — and campaign again as soon as the key is gone. The leader
//! keeps its lease alive every third of its TTL; a leader that dies (SIGKILL, power) frees the key
//! when the lease runs out, one that stops (SIGTERM) revokes it at once. Every write the leader
//! makes also compares the key's create revision with the one it won (`journal.rs`): a leader
//! that was paused past its lease and resumes cannot write, even before it notices.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use routeplane_runtime::shutdown::Shutdown;
use tokio::sync::watch;

use super::{EtcdSettings, connect, etcd_error};
use crate::error::{IpamError, Result};

/// Won leadership: the key's create revision, which every write compares against, and whether
/// the lease is still held.
pub struct Leadership {
    pub create_revision: i64,
    /// The leader key under the prefix.
    key: Vec<u8>,
    lease: i64,
    client: Client,
    /// Turns true when the lease is lost (expired, revoked, or not renewed in time).
    pub lost: watch::Receiver<bool>,
}

/// How often a standby looks whether the leader's key is gone.
const STANDBY_POLL: Duration = Duration::from_millis(200);

impl Leadership {
    /// Writes the address this replica answers on into the leader key (the standbys log it):
    /// known only once the listener is bound, after the campaign.
    pub async fn announce(&mut self, addr: &str) {
        let key = self.key.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                self.create_revision,
            )])
            .and_then([TxnOp::put(
                key,
                addr,
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        if let Err(e) = self.client.txn(txn).await {
            tracing::warn!(error = %e, "could not write this replica's address into the leader key");
        }
    }

    /// Gives the key up at once (graceful stop): a standby takes over without waiting for the
    /// lease to run out.
    pub async fn resign(mut self) {
        if let Err(e) = self.client.lease_revoke(self.lease).await {
            tracing::warn!(error = %e, "could not revoke the leadership lease; it runs out by itself");
        }
    }
}

/// Campaigns until this replica leads (or shutdown): `me` is what standbys log as the leader
/// (its gRPC address).
pub async fn campaign(
    settings: &EtcdSettings,
    me: &str,
    ttl: Duration,
    shutdown: &Shutdown,
) -> Result<Leadership> {
    let mut client = connect(settings).await?;
    let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| etcd_error(settings, "did not grant a lease", e))?
        .id();
    let lost = match keep_alive(client.clone(), settings.clone(), lease, ttl).await {
        Ok(lost) => lost,
        Err(e) => {
            // Best effort: an orphan lease would otherwise live until its TTL.
            let _ = client.lease_revoke(lease).await;
            return Err(e);
        }
    };
    let won = stand_by_until_leading(&mut client, settings, me, lease, &lost, shutdown).await;
    match won {
        Ok(create_revision) => Ok(Leadership {
            create_revision,
            key: settings.key(super::LEADER),
            lease,
            client,
            lost,
        }),
        Err(e) => {
            // Not leading after all (etcd failed, or shutdown): give the lease up, which also
            // ends its keep-alive task.
            let _ = client.lease_revoke(lease).await;
            Err(e)
        }
    }
}

/// The campaign proper: tries to create the leader key, and while another replica holds it,
/// waits; returns the key's create revision once this replica holds it.
async fn stand_by_until_leading(
    client: &mut Client,
    settings: &EtcdSettings,
    me: &str,
    lease: i64,
    lost: &watch::Receiver<bool>,
    shutdown: &Shutdown,
) -> Result<i64> {
    let key = settings.key(super::LEADER);
    let mut last_seen: Option<Vec<u8>> = None;
    loop {
        if *lost.borrow() {
            return Err(IpamError::Storage(
                "the leadership lease was lost while campaigning".into(),
            ));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                me,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = client
            .txn(txn)
            .await
            .map_err(|e| etcd_error(settings, "did not answer a campaign", e))?;
        if answer.succeeded() {
            tracing::info!(prefix = %settings.prefix, "leading: this replica serves the prefix");
            return Ok(answer.header().map_or(0, |h| h.revision()));
        }
        let leader = answer.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        if leader.is_some() && leader != last_seen {
            let shown = String::from_utf8_lossy(leader.as_deref().unwrap_or_default()).into_owned();
            tracing::info!(leader = %shown, prefix = %settings.prefix, "standby: another replica leads; taking over when its lease ends");
            last_seen = leader;
        }
        tokio::select! {
            () = tokio::time::sleep(STANDBY_POLL) => {}
            () = shutdown.wait() => return Err(IpamError::Unavailable("stopped while standing by".into())),
        }
    }
}

/// Renews `lease` every third of `ttl`; the receiver turns true once it is lost.
async fn keep_alive(
    mut client: Client,
    settings: EtcdSettings,
    lease: i64,
    ttl: Duration,
) -> Result<watch::Receiver<bool>> {
    let (mut keeper, mut answers) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| etcd_error(&settings, "did not keep a lease alive", e))?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(ttl / 3).await;
            let answer = async {
                keeper.keep_alive().await?;
                answers.message().await
            };
            match tokio::time::timeout(ttl / 3, answer).await {
                Ok(Ok(Some(a))) if a.ttl() > 0 => renewed = tokio::time::Instant::now(),
                Ok(Ok(Some(_))) => {
                    tracing::error!("the leadership lease has expired");
                    break;
                }
                other => {
                    tracing::warn!(answer = ?other.map(|r| r.map(|_| ())), "a lease renewal failed");
                    // Counted from the last renewal: the lease may still hold.
                    if renewed.elapsed() >= ttl {
                        tracing::error!("the leadership lease was not renewed within its TTL");
                        break;
                    }
                }
            }
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}
