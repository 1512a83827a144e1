//! `--probe`: a service checks its own `grpc.health.v1` and exits, for Kubernetes exec probes.
//!
//! Kubernetes' built-in `grpc:` probe needs 1.24 or later (GA in 1.27); an exec probe that runs the
//! service's own binary works on every version, the seed's 1.22 among them, and needs no extra
//! binary in the image. The check dials the listen address's port on loopback (the server may
//! listen on 0.0.0.0) and succeeds only on SERVING for the service's name. With `--tls-*` it dials
//! with TLS, checking the server's certificate for 127.0.0.1 (scripts/certs puts it in every one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::dial::Dialer;
use crate::tls::{Security, Tls, TlsArgs};

/// Where a probe dials for a server listening on `listen`: the same port on loopback when the
/// server listens on every address, else the address itself.
pub fn probe_target(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// Checks `service` on the server listening on `listen`, within `timeout`. Ok when SERVING;
/// otherwise what was wrong, for the probe's output (kubectl describe shows it).
pub async fn check(
    listen: SocketAddr,
    service: &str,
    timeout: Duration,
    dialer: &Dialer,
    tls: bool,
) -> Result<(), String> {
    let target = probe_target(listen);
    let url = format!("{}://{target}", if tls { "https" } else { "http" });
    let call = async {
        let channel = dialer
            .connect(&url)
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|e| format!("{target}: health check of {service}: {}", e.message()))
    };
    let reply = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("{target}: no answer within {timeout:?}"))??;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        status => Err(format!("{target}: {service} is {}", status.as_str_name())),
    }
}

/// `--probe`'s whole run: the check with a 5 s limit, over TLS when the service has certificates;
/// its failure printed to stderr.
pub async fn exit_code(listen: SocketAddr, service: &str, tls: &TlsArgs) -> std::process::ExitCode {
    let (security, is_tls) = match tls.files().map(Tls::load) {
        Some(Ok(t)) => (Security::Tls(std::sync::Arc::new(t)), true),
        Some(Err(e)) => {
            eprintln!("probe: {e}");
            return std::process::ExitCode::FAILURE;
        }
        // The server itself decided whether plaintext may be served here.
        None => (Security::Plaintext { insecure: true }, false),
    };
    let dialer = Dialer::new(security);
    match check(listen, service, Duration::from_secs(5), &dialer, is_tls).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("probe: {why}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_dials_loopback_for_a_wildcard_listener_and_the_address_otherwise() {
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(probe_target(any), "127.0.0.1:50051".parse().unwrap());
        let any6: SocketAddr = "[::]:50052".parse().unwrap();
        assert_eq!(probe_target(any6), "[::1]:50052".parse().unwrap());
        let one: SocketAddr = "10.4.36.5:50051".parse().unwrap();
        assert_eq!(probe_target(one), one);
    }

    #[tokio::test]
    async fn a_probe_of_a_closed_port_fails_and_names_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let dialer = Dialer::loopback_only();
        let err = check(
            addr,
            "routeplane.ipam.v1.Ipam",
            Duration::from_secs(2),
            &dialer,
            false,
        )
        .await
        .unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
