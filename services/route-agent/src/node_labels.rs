//! The node's labels from its Kubernetes Node object (`--kubernetes`), for IPAM and BGP's
//! node-selectors: read at start, then followed, so that labelling a node
//! (`kubectl label node worker-83-1 kubernetes/route=bgp-peer-83`) moves its pod CIDR to the
//! peers that select it. `--label` flags are applied on top of the Node's labels.

use std::collections::BTreeMap;

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

/// The Node's labels now.
pub async fn fetch(client: &Client, name: &str) -> Result<BTreeMap<String, String>, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    Ok(api.get(name).await?.labels().clone())
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
    use http::{Request, Response};
    use kube::client::Body;

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

    /// Over kube's mocked API: the agent asks for its own Node and takes its labels.
    #[tokio::test]
    async fn the_labels_come_from_the_nodes_own_object() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let server = async {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(
                (request.method().as_str(), request.uri().path()),
                ("GET", "/api/v1/nodes/worker-83-1")
            );
            let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "worker-83-1", "labels": {"kubernetes/route": "bgp-peer-83"}}});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&node).unwrap()))
                    .unwrap(),
            );
        };
        let (labels, ()) = tokio::join!(fetch(&client, "worker-83-1"), server);
        assert_eq!(
            labels.unwrap(),
            BTreeMap::from([("kubernetes/route".to_string(), "bgp-peer-83".to_string())])
        );
    }
}
