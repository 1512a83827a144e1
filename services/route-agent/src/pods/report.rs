//! Reporting this node's pods to routeplane-ipam (SyncPodIPs): the whole set of attachments, with
//! a generation that grows with every change, after each change (a burst of ADDs makes one
//! report) and every [`REFRESH`] — so that IPAM's ListPodIPs stays the cluster's view, IPAM's
//! reserved addresses reach the allocator, and a report lost while IPAM was down is made again
//! when it returns. IPAM being down never stops a pod: this only catches up.

use std::sync::Arc;
use std::time::Duration;

use routeplane_api::ipam::v1 as pb;
use routeplane_runtime::link::Link;
use routeplane_runtime::shutdown::Shutdown;

use super::PodNetwork;

/// How often the set is reported even when nothing changed.
pub const REFRESH: Duration = Duration::from_secs(30);
/// A burst of changes within this much time goes in one report.
const GATHER: Duration = Duration::from_millis(50);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Reports until shutdown.
pub async fn run(pods: Arc<PodNetwork>, ipam: Arc<Link>, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let (_, pending) = pods.reported();
        if !pending {
            tokio::select! {
                () = pods.changed.notified() => {}
                () = tokio::time::sleep(REFRESH) => {}
                () = shutdown.wait() => return,
            }
            tokio::time::sleep(GATHER).await;
        }
        let Some((node, generation, cidrs, attachments)) = pods.report() else {
            tokio::select! {
                () = pods.changed.notified() => continue,
                () = shutdown.wait() => return,
            }
        };
        let request = pb::SyncPodIPsRequest {
            node,
            generation,
            allocations: attachments
                .iter()
                .map(|a| pb::PodIpAllocation {
                    node: String::new(),
                    owner: a.owner(),
                    ips: a.ips.iter().map(ToString::to_string).collect(),
                    pod: a.pod.clone(),
                    managed_by: "agent".into(),
                })
                .collect(),
        };
        let answer = ipam
            .call_within(CALL_TIMEOUT, |channel| async move {
                pb::ipam_client::IpamClient::new(channel)
                    .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES)
                    .sync_pod_i_ps(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await;
        match answer {
            Ok(r) if r.accepted => {
                let reserved = r
                    .reserved
                    .iter()
                    .flat_map(|a| a.ips.iter().filter_map(|ip| ip.parse().ok()))
                    .collect();
                match pods.accepted(generation, cidrs, reserved) {
                    Ok(()) => {
                        tracing::debug!(
                            generation,
                            pods = attachments.len(),
                            "pods reported to IPAM"
                        );
                        backoff = Duration::from_millis(200);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the accepted report could not be recorded");
                        pods.report_failed(e.to_string());
                    }
                }
            }
            Ok(r) => {
                tracing::info!(
                    ours = generation,
                    theirs = r.generation,
                    "IPAM holds a newer report of this node (the agent's state was replaced): continuing above it"
                );
                pods.rebase(r.generation);
                continue;
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), error = %s.message(), "reporting pods to IPAM failed; retrying");
                pods.report_failed(format!("{:?}: {}", s.code(), s.message()));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
