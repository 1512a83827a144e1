//! What the agent takes from its own Kubernetes Node object (`--kubernetes`): its labels, for
//! IPAM and BGP's node-selectors — read at start, then followed, so that labelling a node
//! (`kubectl label node worker-83-1 kubernetes/route=bgp-peer-83`) moves its pod CIDR to the
//! peers that select it; `--label` flags apply on top — and, unless `--address` is given, its
//! addresses: the InternalIPs (ExternalIPs where it has none), the same ones routeplane-ipam's
//! Kubernetes mode reads, so the two never register the node differently.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use routeplane_runtime::shutdown::Shutdown;
use tokio::sync::watch;

/// The labels the node registers with: the Node's, with `--label` flags overriding.
pub fn effective(
    node: &BTreeMap<String, String>,
    flags: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut labels = node.clone();
    labels.extend(flags.iter().cloned());
    labels
}

/// The Node's labels and addresses now.
pub async fn fetch(
    client: &Client,
    name: &str,
) -> Result<(BTreeMap<String, String>, Vec<IpAddr>), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let node = api.get(name).await?;
    Ok((
        node.labels().clone(),
        routeplane_kubernetes::node_addresses(&node),
    ))
}

/// Follows the Node named `name`, sending its effective labels whenever they change, until
/// shutdown. API errors are retried with backoff.
pub async fn follow(
    client: Client,
    name: String,
    flags: Vec<(String, String)>,
    labels: watch::Sender<BTreeMap<String, String>>,
    shutdown: Shutdown,
) {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(node)) => {
                    let now = effective(node.labels(), &flags);
                    labels.send_if_modified(|held| {
                        let changed = *held != now;
                        if changed {
                            tracing::info!(node = %name, labels = ?now, "node labels changed in the Kubernetes API");
                            *held = now;
                        }
                        changed
                    });
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching this node's Node object; retrying"),
                None => return,
            },
            () = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routeplane_kubernetes::mock::MockApi;

    #[test]
    fn flags_override_the_node_labels() {
        let node = BTreeMap::from([
            ("kubernetes/route".to_string(), "bgp-peer-94".to_string()),
            ("zone".to_string(), "a".to_string()),
        ]);
        let labels = effective(
            &node,
            &[("kubernetes/route".to_string(), "bgp-peer-83".to_string())],
        );
        assert_eq!(labels["kubernetes/route"], "bgp-peer-83");
        assert_eq!(labels["zone"], "a");
    }

    /// Over kube's mocked API: the agent asks for its own Node and takes its labels and address.
    #[tokio::test]
    async fn the_labels_come_from_the_nodes_own_object() {
        let (client, mut api) = MockApi::new();
        let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "worker-83-1", "labels": {"kubernetes/route": "bgp-peer-83"}},
            "status": {"addresses": [{"type": "Hostname", "address": "worker-83-1"}, {"type": "InternalIP", "address": "10.4.83.11"}]}});
        let server = async {
            api.expect("GET", "/api/v1/nodes/worker-83-1", 200, node)
                .await;
        };
        let (fetched, ()) = tokio::join!(fetch(&client, "worker-83-1"), server);
        let (labels, addresses) = fetched.unwrap();
        assert_eq!(
            labels,
            BTreeMap::from([("kubernetes/route".to_string(), "bgp-peer-83".to_string())])
        );
        assert_eq!(addresses, vec!["10.4.83.11".parse::<IpAddr>().unwrap()]);
    }
}
