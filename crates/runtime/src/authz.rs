//! Who may call what: the caller's identity, taken from its client certificate, against each
//! service's table of methods.
//!
//! Identity is the certificate's SPIFFE-style URI SAN, `spiffe://<trust domain>/<role>/<name>`
//! (chosen over the CN because cert-manager, SPIRE and Istio all issue it, and a URI cannot be
//! confused with a host name). Roles: `operator` may do everything; `agent` (its name is its node's)
//! may register, renew and report pod IPs for that node only (`agent/*`: for any node — what a
//! DaemonSet sharing one Secret gets, weaker, see README); `bgp`, `ipam` and `reader` read. Any
//! certificate the CA issued may read, whatever its URI says. A caller without a certificate is
//! anonymous: health and reflection only. A plaintext listener (loopback, or `--insecure`) cannot
//! tell callers apart and lets everyone do everything — which is why it is refused elsewhere.
//!
//! A refusal is `PERMISSION_DENIED` naming the identity and the method, logged, and counted in
//! `routeplane_grpc_refused_total{method,role}`. An identity past its calls per second
//! (`ratelimit.rs`) is answered `RESOURCE_EXHAUSTED`, counted in
//! `routeplane_grpc_throttled_total{method,role}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls_pki_types::CertificateDer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::ratelimit::RateLimiter;

/// The trust domain of routeplane's own identities unless `--tls-trust-domain` says otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "routeplane";

/// The agent name of a certificate every node's agent shares (`spiffe://<domain>/agent/*`).
pub const ANY_NODE: &str = "*";

/// What a method asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, even without a certificate: health, reflection.
    Open,
    /// Any identity the CA issued.
    Read,
    /// An agent for its own node (the handler checks the name with [`Caller::for_node`]), or an
    /// operator.
    Node,
    /// routeplane-bgp (the operator state it keeps in IPAM) or an operator.
    ControlPlane,
    /// Operators only.
    Operator,
}

/// The roles a URI SAN can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Operator,
    Agent,
    Bgp,
    Ipam,
    Reader,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "operator" => Role::Operator,
            "agent" => Role::Agent,
            "bgp" => Role::Bgp,
            "ipam" => Role::Ipam,
            "reader" => Role::Reader,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Agent => "agent",
            Role::Bgp => "bgp",
            Role::Ipam => "ipam",
            Role::Reader => "reader",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A plaintext listener: nobody can be told apart, everybody may do everything.
    Local,
    /// No client certificate.
    Anonymous,
    /// A certificate the CA issued. `role` is None when its URI SAN is not a routeplane identity of
    /// this trust domain (it may still read); `id` is that URI (or a note that it has none).
    Certified {
        id: String,
        role: Option<Role>,
        name: String,
    },
}

impl Identity {
    /// The identity of a verified client certificate.
    pub fn of_certificate(cert: &CertificateDer<'_>, trust_domain: &str) -> Identity {
        let uris: Vec<&str> = webpki::EndEntityCert::try_from(cert)
            .map(|c| c.valid_uri_names().collect())
            .unwrap_or_default();
        for uri in &uris {
            if let Some((role, name)) = parse_spiffe(uri, trust_domain) {
                return Identity::Certified {
                    id: uri.to_string(),
                    role: Some(role),
                    name: name.to_string(),
                };
            }
        }
        Identity::Certified {
            id: uris
                .first()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "a certificate without a URI SAN".into()),
            role: None,
            name: String::new(),
        }
    }

    fn role_label(&self) -> &'static str {
        match self {
            Identity::Local => "local",
            Identity::Anonymous => "anonymous",
            Identity::Certified { role: Some(r), .. } => r.as_str(),
            Identity::Certified { role: None, .. } => "none",
        }
    }

    fn may(&self, access: Access) -> bool {
        match (self, access) {
            (_, Access::Open) | (Identity::Local, _) => true,
            (Identity::Anonymous, _) => false,
            (Identity::Certified { .. }, Access::Read) => true,
            (Identity::Certified { role, .. }, Access::Node) => {
                matches!(role, Some(Role::Operator | Role::Agent))
            }
            (Identity::Certified { role, .. }, Access::ControlPlane) => {
                matches!(role, Some(Role::Operator | Role::Bgp))
            }
            (Identity::Certified { role, .. }, Access::Operator) => *role == Some(Role::Operator),
        }
    }
}

impl Identity {
    /// Whose bucket a call is taken from (`ratelimit.rs`); none for a plaintext caller.
    fn rate_key(&self) -> Option<&str> {
        match self {
            Identity::Local => None,
            Identity::Anonymous => Some(""),
            Identity::Certified { id, .. } => Some(id),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Local => f.write_str("a plaintext caller"),
            Identity::Anonymous => f.write_str("a caller without a client certificate"),
            Identity::Certified { id, .. } => f.write_str(id),
        }
    }
}

/// `spiffe://<trust_domain>/<role>/<name>` → (role, name); the name one non-empty path segment.
fn parse_spiffe<'a>(uri: &'a str, trust_domain: &str) -> Option<(Role, &'a str)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if !domain.eq_ignore_ascii_case(trust_domain) {
        return None;
    }
    let (role, name) = path.split_once('/')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some((Role::parse(role)?, name))
}

fn needs(access: Access) -> &'static str {
    match access {
        Access::Open => "nothing",
        Access::Read => "a client certificate from the cluster's CA",
        Access::Node => {
            "the identity of that node's agent (spiffe://<trust domain>/agent/<node>) or an operator's"
        }
        Access::ControlPlane => {
            "routeplane-bgp's identity (spiffe://<trust domain>/bgp/<name>) or an operator's"
        }
        Access::Operator => "an operator identity (spiffe://<trust domain>/operator/<name>)",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    method: String,
    role: &'static str,
}

/// Refusals, counted and logged in one place.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    denied: Family<RefusalLabels, Counter>,
    throttled: Family<RefusalLabels, Counter>,
}

impl Refusals {
    /// Adds `routeplane_grpc_refused_total` and `routeplane_grpc_throttled_total` to a service's
    /// registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "routeplane_grpc_refused",
            "gRPC calls refused with PERMISSION_DENIED, by method and caller role",
            self.denied.clone(),
        );
        registry.register(
            "routeplane_grpc_throttled",
            "gRPC calls refused with RESOURCE_EXHAUSTED: the caller's identity was past its calls per second (--rate-limit)",
            self.throttled.clone(),
        );
    }

    fn labels(who: &Identity, method: &str) -> RefusalLabels {
        RefusalLabels {
            method: method.to_string(),
            role: who.role_label(),
        }
    }

    fn refuse(&self, who: &Identity, method: &str, why: &str) -> tonic::Status {
        self.denied.get_or_create(&Self::labels(who, method)).inc();
        tracing::warn!(identity = %who, %method, "gRPC call refused: {why}");
        tonic::Status::permission_denied(format!("{who} may not call {method}: {why}"))
    }

    /// Not logged one by one: a caller past its limit would flood the log (the metric counts).
    fn throttle(&self, who: &Identity, method: &str, per_second: f64) -> tonic::Status {
        self.throttled
            .get_or_create(&Self::labels(who, method))
            .inc();
        tonic::Status::resource_exhausted(format!(
            "{who} called faster than its limit of {per_second} calls/s (--rate-limit on this server): {method} refused; retry with backoff"
        ))
    }
}

/// The caller of one request, as handlers see it (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    method: String,
    refusals: Refusals,
}

impl Caller {
    /// The caller of a request; a request that did not pass the gate (a handler called directly)
    /// is anonymous.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller {
                identity: Identity::Anonymous,
                method: String::new(),
                refusals: Refusals::default(),
            })
    }

    /// Ok when the caller may see or change control-plane state ([`Access::ControlPlane`]), for a
    /// request whose access depends on what it asks (a Watch with operator entries); `what` says
    /// what, in the refusal.
    pub fn for_control_plane(&self, what: &str) -> Result<(), tonic::Status> {
        if self.identity.may(Access::ControlPlane) {
            return Ok(());
        }
        Err(self.refusals.refuse(
            &self.identity,
            &self.method,
            &format!("{what} needs {}", needs(Access::ControlPlane)),
        ))
    }

    /// Ok when the caller may act for node `node`: an operator, a plaintext caller, or that
    /// node's own agent.
    pub fn for_node(&self, node: &str) -> Result<(), tonic::Status> {
        match &self.identity {
            Identity::Local => Ok(()),
            Identity::Certified {
                role: Some(Role::Operator),
                ..
            } => Ok(()),
            Identity::Certified {
                role: Some(Role::Agent),
                name,
                ..
            } if name == node || name == ANY_NODE => Ok(()),
            who => Err(self.refusals.refuse(
                who,
                &self.method,
                &format!(
                    "it acts for node {node:?}, which needs {}",
                    needs(Access::Node)
                ),
            )),
        }
    }
}

/// The table of one service: its methods' access; methods it does not list need an operator.
pub type Policy = fn(method: &str) -> Access;

/// The tower layer that checks every call before the service sees it.
#[derive(Clone)]
pub struct Gate {
    service: &'static str,
    policy: Policy,
    trust_domain: Arc<str>,
    plaintext: bool,
    refusals: Refusals,
    limiter: Option<Arc<RateLimiter>>,
}

impl Gate {
    /// For `service` (its full gRPC name) with `policy`; `plaintext` when the listener has no TLS;
    /// `limiter` for calls per second per identity.
    pub fn new(
        service: &'static str,
        policy: Policy,
        trust_domain: &str,
        plaintext: bool,
        refusals: Refusals,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Gate {
        Gate {
            service,
            policy,
            trust_domain: trust_domain.into(),
            plaintext,
            refusals,
            limiter,
        }
    }

    fn identity(&self, extensions: &http::Extensions) -> Identity {
        if self.plaintext {
            return Identity::Local;
        }
        let certs = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        match certs.as_deref().and_then(|c| c.first()) {
            Some(leaf) => Identity::of_certificate(leaf, &self.trust_domain),
            None => Identity::Anonymous,
        }
    }

    /// The access `path` (`/package.Service/Method`) needs.
    fn access(&self, path: &str) -> Access {
        let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
            return Access::Operator;
        };
        match service {
            s if s == self.service => (self.policy)(method),
            "grpc.health.v1.Health"
            | "grpc.reflection.v1.ServerReflection"
            | "grpc.reflection.v1alpha.ServerReflection" => Access::Open,
            _ => Access::Operator,
        }
    }

    /// The caller of a request to `path`, or the refusal to answer with.
    pub fn check(
        &self,
        path: &str,
        extensions: &http::Extensions,
    ) -> Result<Caller, tonic::Status> {
        let identity = self.identity(extensions);
        let access = self.access(path);
        if !identity.may(access) {
            return Err(self.refusals.refuse(
                &identity,
                path,
                &format!("it needs {}", needs(access)),
            ));
        }
        if let (Some(limiter), Some(key)) = (&self.limiter, identity.rate_key())
            && !limiter.admit(key, Instant::now())
        {
            return Err(self
                .refusals
                .throttle(&identity, path, limiter.per_second()));
        }
        Ok(Caller {
            identity,
            method: path.to_string(),
            refusals: self.refusals.clone(),
        })
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

/// A service behind the [`Gate`].
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: Gate,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.gate.check(request.uri().path(), request.extensions()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certified(role: Option<Role>, name: &str) -> Identity {
        Identity::Certified {
            id: format!("spiffe://routeplane/x/{name}"),
            role,
            name: name.into(),
        }
    }

    #[test]
    fn spiffe_ids_name_a_role_and_one_name_in_our_trust_domain_only() {
        let p = |u| parse_spiffe(u, "routeplane");
        assert_eq!(
            p("spiffe://routeplane/agent/node-1"),
            Some((Role::Agent, "node-1"))
        );
        assert_eq!(
            p("spiffe://ROUTEPLANE/operator/alice"),
            Some((Role::Operator, "alice"))
        );
        assert_eq!(
            p("spiffe://other/operator/alice"),
            None,
            "another trust domain"
        );
        assert_eq!(p("spiffe://routeplane/root/alice"), None, "no such role");
        assert_eq!(p("spiffe://routeplane/agent/"), None, "empty name");
        assert_eq!(p("spiffe://routeplane/agent/a/b"), None, "two segments");
        assert_eq!(p("https://routeplane/agent/a"), None);
        assert_eq!(p("spiffe://routeplane"), None);
    }

    #[test]
    fn each_access_admits_exactly_the_identities_the_docs_promise() {
        let everyone = [
            Identity::Local,
            Identity::Anonymous,
            certified(None, "x"),
            certified(Some(Role::Reader), "r"),
            certified(Some(Role::Bgp), "b"),
            certified(Some(Role::Ipam), "i"),
            certified(Some(Role::Agent), "n"),
            certified(Some(Role::Operator), "o"),
        ];
        let admitted = |access| -> Vec<&'static str> {
            everyone
                .iter()
                .filter(|i| i.may(access))
                .map(|i| i.role_label())
                .collect()
        };
        assert_eq!(admitted(Access::Open).len(), everyone.len());
        assert_eq!(
            admitted(Access::Read),
            [
                "local", "none", "reader", "bgp", "ipam", "agent", "operator"
            ]
        );
        assert_eq!(admitted(Access::Node), ["local", "agent", "operator"]);
        assert_eq!(admitted(Access::Operator), ["local", "operator"]);
    }

    #[test]
    fn an_agent_acts_for_its_own_node_only_and_the_refusal_names_both() {
        let refusals = Refusals::default();
        let caller = |identity| Caller {
            identity,
            method: "/routeplane.ipam.v1.Ipam/RegisterNode".into(),
            refusals: refusals.clone(),
        };
        let agent = caller(certified(Some(Role::Agent), "node-1"));
        assert!(agent.for_node("node-1").is_ok());
        let refused = agent.for_node("node-2").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let message = refused.message();
        assert!(
            message.contains("spiffe://routeplane/x/node-1"),
            "{message}"
        );
        assert!(message.contains("RegisterNode"), "{message}");
        assert!(message.contains("\"node-2\""), "{message}");
        assert!(
            caller(certified(Some(Role::Operator), "o"))
                .for_node("node-2")
                .is_ok()
        );
        assert!(
            caller(certified(Some(Role::Agent), ANY_NODE))
                .for_node("node-2")
                .is_ok()
        );
        assert!(caller(Identity::Local).for_node("node-2").is_ok());
        assert!(
            caller(certified(Some(Role::Bgp), "node-2"))
                .for_node("node-2")
                .is_err()
        );
        let mut text = String::new();
        let mut registry = Registry::default();
        refusals.register(&mut registry);
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("routeplane_grpc_refused_total{method=\"/routeplane.ipam.v1.Ipam/RegisterNode\",role=\"agent\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn health_and_reflection_are_open_and_unknown_services_need_an_operator() {
        let gate = Gate::new(
            "routeplane.ipam.v1.Ipam",
            |m| {
                if m == "ListNodes" {
                    Access::Read
                } else {
                    Access::Operator
                }
            },
            DEFAULT_TRUST_DOMAIN,
            false,
            Refusals::default(),
            None,
        );
        let none = http::Extensions::new();
        assert!(gate.check("/grpc.health.v1.Health/Check", &none).is_ok());
        assert!(
            gate.check(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                &none
            )
            .is_ok()
        );
        let refused = gate
            .check("/routeplane.ipam.v1.Ipam/ListNodes", &none)
            .unwrap_err();
        assert!(refused.message().starts_with("a caller without a client certificate may not call /routeplane.ipam.v1.Ipam/ListNodes"), "{}", refused.message());
        assert_eq!(
            gate.access("/routeplane.bgp.v1.Bgp/ListPeers"),
            Access::Operator
        );
        assert_eq!(gate.access("garbage"), Access::Operator);
    }

    /// Past its limit an identity is answered RESOURCE_EXHAUSTED and counted; a plaintext
    /// listener is never limited.
    #[test]
    fn a_caller_past_its_rate_is_throttled_and_counted() {
        let refusals = Refusals::default();
        let limited = |plaintext| {
            Gate::new(
                "routeplane.ipam.v1.Ipam",
                |_| Access::Read,
                DEFAULT_TRUST_DOMAIN,
                plaintext,
                refusals.clone(),
                RateLimiter::new(1).map(Arc::new),
            )
        };
        let gate = limited(false);
        let none = http::Extensions::new();
        let health = "/grpc.health.v1.Health/Check";
        assert!(gate.check(health, &none).is_ok() && gate.check(health, &none).is_ok());
        let refused = gate.check(health, &none).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("faster than its limit of 1 calls/s"),
            "{}",
            refused.message()
        );
        let mut text = String::new();
        let mut registry = Registry::default();
        refusals.register(&mut registry);
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("routeplane_grpc_throttled_total{method=\"/grpc.health.v1.Health/Check\",role=\"anonymous\"} 1"),
            "{text}"
        );
        let plain = limited(true);
        assert!((0..10).all(|_| plain.check(health, &none).is_ok()));
    }
}
