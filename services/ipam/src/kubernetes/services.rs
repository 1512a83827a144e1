//! Services of type LoadBalancer, without I/O: which IPAM calls and which status a Service needs.
//!
//! A LoadBalancer Service gets an address from the bgp-config address-pools — the one in
//! `spec.loadBalancerIP` when set, from the pool named by the annotation [`POOL_ANNOTATION`]
//! (MetalLB's) when set — and shows it in `status.loadBalancer.ingress`. A Service that stops being
//! LoadBalancer, or is deleted, gives it back. An address that cannot be had (taken, outside every
//! pool, pool full) becomes a Warning event on the Service, whose ingress stays empty (`<pending>`).

use std::net::IpAddr;

use crate::model::ServiceIp;

/// MetalLB's annotation naming the address pool, honoured as MetalLB honours it.
pub const POOL_ANNOTATION: &str = "metallb.universe.tf/address-pool";

/// What IPAM needs of a Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeService {
    /// "namespace/name", IPAM's Service key.
    pub key: String,
    pub load_balancer: bool,
    /// `spec.loadBalancerIP`, as written (it may not parse).
    pub requested_ip: Option<String>,
    pub pool: Option<String>,
    /// The IPs in `status.loadBalancer.ingress`.
    pub ingress: Vec<String>,
}

/// One step towards what the Service asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAction {
    Allocate {
        pool: Option<String>,
        ip: Option<IpAddr>,
    },
    Release,
    /// Make `status.loadBalancer.ingress` exactly these IPs.
    SetIngress(Vec<IpAddr>),
    /// A Warning event on the Service.
    Warn {
        reason: &'static str,
        message: String,
    },
}

/// The steps for `service`, given what IPAM holds for it. After an Allocate, the caller sets the
/// ingress to what IPAM gave (or warns with IPAM's error).
pub fn plan(service: &KubeService, held: Option<&ServiceIp>) -> Vec<ServiceAction> {
    let mut steps = Vec::new();
    if !service.load_balancer {
        if held.is_some() {
            steps.push(ServiceAction::Release);
        }
        if !service.ingress.is_empty() {
            steps.push(ServiceAction::SetIngress(vec![]));
        }
        return steps;
    }
    let requested = match service.requested_ip.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                steps.push(ServiceAction::Warn {
                    reason: "InvalidLoadBalancerIP",
                    message: format!(
                        "spec.loadBalancerIP {text:?} of {} is not an IP address: give one from the bgp-config address-pools, or leave it empty",
                        service.key
                    ),
                });
                return steps;
            }
        },
    };
    let fits = |h: &ServiceIp| {
        requested.is_none_or(|ip| ip == h.ip) && service.pool.as_deref().is_none_or(|p| p == h.pool)
    };
    match held {
        Some(h) if fits(h) => {
            if service.ingress != [h.ip.to_string()] {
                steps.push(ServiceAction::SetIngress(vec![h.ip]));
            }
        }
        Some(_) => {
            steps.push(ServiceAction::Release);
            steps.push(ServiceAction::Allocate {
                pool: service.pool.clone(),
                ip: requested,
            });
        }
        None => steps.push(ServiceAction::Allocate {
            pool: service.pool.clone(),
            ip: requested,
        }),
    }
    steps
}

/// After a full list of the Services: the IPAM keys no listed LoadBalancer Service holds — Services
/// deleted, or changed away from LoadBalancer, while routeplane-ipam was not watching (it restarts
/// with `Recreate`). In Kubernetes mode the Services are the record of LoadBalancer IPs.
pub fn orphaned<'a>(
    listed: &std::collections::BTreeSet<String>,
    held: impl IntoIterator<Item = &'a ServiceIp>,
) -> Vec<String> {
    held.into_iter()
        .filter(|h| !listed.contains(&h.service))
        .map(|h| h.service.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(requested: Option<&str>, pool: Option<&str>, ingress: &[&str]) -> KubeService {
        KubeService {
            key: "default/web".into(),
            load_balancer: true,
            requested_ip: requested.map(Into::into),
            pool: pool.map(Into::into),
            ingress: ingress.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn held(ip: &str, pool: &str) -> ServiceIp {
        ServiceIp {
            service: "default/web".into(),
            ip: ip.parse().unwrap(),
            pool: pool.into(),
        }
    }

    #[test]
    fn a_new_load_balancer_asks_for_an_address_as_requested() {
        assert_eq!(
            plan(&lb(None, None, &[]), None),
            vec![ServiceAction::Allocate {
                pool: None,
                ip: None
            }]
        );
        assert_eq!(
            plan(&lb(Some("10.5.120.53"), Some("default"), &[]), None),
            vec![ServiceAction::Allocate {
                pool: Some("default".into()),
                ip: Some("10.5.120.53".parse().unwrap())
            }]
        );
    }

    #[test]
    fn a_held_address_is_shown_once_and_then_left_alone() {
        let h = held("10.5.120.7", "default");
        assert_eq!(
            plan(&lb(None, None, &[]), Some(&h)),
            vec![ServiceAction::SetIngress(vec![h.ip])]
        );
        assert!(plan(&lb(None, None, &["10.5.120.7"]), Some(&h)).is_empty());
    }

    #[test]
    fn a_changed_request_trades_the_address() {
        let h = held("10.5.120.7", "default");
        assert_eq!(
            plan(&lb(Some("10.5.120.9"), None, &["10.5.120.7"]), Some(&h)),
            vec![
                ServiceAction::Release,
                ServiceAction::Allocate {
                    pool: None,
                    ip: Some("10.5.120.9".parse().unwrap())
                }
            ]
        );
    }

    #[test]
    fn a_service_no_longer_load_balancer_gives_its_address_back_and_clears_its_status() {
        let mut s = lb(None, None, &["10.5.120.7"]);
        s.load_balancer = false;
        assert_eq!(
            plan(&s, Some(&held("10.5.120.7", "default"))),
            vec![ServiceAction::Release, ServiceAction::SetIngress(vec![])]
        );
        s.ingress.clear();
        assert!(plan(&s, None).is_empty());
    }

    #[test]
    fn addresses_of_services_gone_while_not_watching_are_orphaned() {
        let listed: std::collections::BTreeSet<String> = ["default/web".to_string()].into();
        let gone = ServiceIp {
            service: "default/gone".into(),
            ip: "10.5.120.8".parse().unwrap(),
            pool: "default".into(),
        };
        assert_eq!(
            orphaned(&listed, [&held("10.5.120.7", "default"), &gone]),
            vec!["default/gone".to_string()]
        );
    }

    #[test]
    fn an_unparsable_request_is_a_warning_not_an_allocation() {
        let steps = plan(&lb(Some("10.5.120.300"), None, &[]), None);
        assert!(
            matches!(&steps[..], [ServiceAction::Warn { reason: "InvalidLoadBalancerIP", message }] if message.contains("10.5.120.300"))
        );
    }
}
