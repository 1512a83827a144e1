//! What routeplane's services share in Kubernetes mode (`--kubernetes`).
//!
//! Contract: [`client`] connects with the in-cluster service account or KUBECONFIG and says which
//! was missing when neither works; [`node_addresses`] is the one reading of a Node's addresses —
//! its InternalIPs, or its ExternalIPs where it has none — so that routeplane-ipam and the route
//! agent never register a node differently. With the feature `mock`, [`mock::MockApi`] is kube's
//! own test tooling (the real client over a mocked API server) for the services' tests.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

/// The API client from the in-cluster service account or KUBECONFIG.
pub async fn client() -> Result<kube::Client, String> {
    kube::Client::try_default().await.map_err(|e| {
        format!("--kubernetes: no Kubernetes API credentials (in-cluster service account or KUBECONFIG): {e}")
    })
}

/// A Node's InternalIP addresses, or its ExternalIPs where it has no InternalIP; unparsable
/// entries are skipped.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let of_type = |kind: &str| -> Vec<IpAddr> {
        listed
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    let internal = of_type("InternalIP");
    if internal.is_empty() {
        of_type("ExternalIP")
    } else {
        internal
    }
}

#[cfg(feature = "mock")]
pub mod mock {
    //! The mocked API server: each expectation takes the client's next request, checks it and
    //! answers it, so a test states exactly which calls a controller makes, in order.

    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    /// Where a test answers a request it took with [`MockApi::next`].
    pub type Reply = tower_test::mock::SendResponse<Response<Body>>;

    pub struct MockApi(Handle);

    impl MockApi {
        /// A client whose every request comes to the returned MockApi.
        pub fn new() -> (kube::Client, MockApi) {
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            (kube::Client::new(service, "default"), MockApi(handle))
        }

        /// The next request, within 10 s (else the test fails, naming what it waited for).
        pub async fn next(&mut self, waiting_for: &str) -> (Request<Body>, Reply) {
            tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("no request came; expected {waiting_for}"))
                .expect("the client is gone")
        }

        /// Takes the next request, checks its method and path, answers `status` with `reply`,
        /// and returns the request's JSON body (Null when empty).
        pub async fn expect(
            &mut self,
            method: &str,
            path: &str,
            status: u16,
            reply: Value,
        ) -> Value {
            let (request, send) = self.next(&format!("{method} {path}")).await;
            assert_eq!(
                (request.method().as_str(), request.uri().path()),
                (method, path),
                "the request made"
            );
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            answer(send, status, &reply);
            if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).expect("a JSON body")
            }
        }
    }

    /// Answers a request taken with [`MockApi::next`]: a JSON body, or raw bytes (a watch stream).
    pub fn answer(send: Reply, status: u16, reply: &Value) {
        answer_bytes(send, status, serde_json::to_vec(reply).expect("JSON"));
    }

    pub fn answer_bytes(send: Reply, status: u16, body: Vec<u8>) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(body))
            .expect("a response");
        send.send_response(response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addresses: &[(&str, &str)]) -> Node {
        let listed: Vec<_> = addresses
            .iter()
            .map(|(t, a)| serde_json_value(t, a))
            .collect();
        Node {
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                addresses: Some(listed),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn serde_json_value(kind: &str, address: &str) -> k8s_openapi::api::core::v1::NodeAddress {
        k8s_openapi::api::core::v1::NodeAddress {
            type_: kind.into(),
            address: address.into(),
        }
    }

    #[test]
    fn internal_ips_are_the_node_addresses() {
        let n = node(&[
            ("Hostname", "w1"),
            ("InternalIP", "10.4.94.11"),
            ("ExternalIP", "192.0.2.7"),
            ("InternalIP", "fd04:94::11"),
        ]);
        assert_eq!(
            node_addresses(&n),
            vec![
                "10.4.94.11".parse::<IpAddr>().unwrap(),
                "fd04:94::11".parse().unwrap()
            ]
        );
    }

    #[test]
    fn without_an_internal_ip_the_external_ones_are_used() {
        let n = node(&[
            ("Hostname", "edge-1"),
            ("ExternalIP", "192.0.2.7"),
            ("InternalIP", "not-an-ip"),
        ]);
        assert_eq!(
            node_addresses(&n),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_node_without_status_has_no_address() {
        assert!(node_addresses(&Node::default()).is_empty());
    }
}
