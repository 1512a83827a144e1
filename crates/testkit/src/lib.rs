//! The one harness of routeplane's tests and benchmarks.
//!
//! Contract: [`process`] finds workspace binaries and runs them (in a namespace if asked), keeping
//! their output and reading the addresses they listen on; [`netns`] makes network namespaces
//! whose names are unique per test and that go away with their owner; [`lab`] builds the seed's
//! node network from them, with real agents and pods attached through routeplane-cni;
//! [`containerd`] runs a real container runtime that attaches containers through a node's CNI
//! configuration; [`ipam`] runs routeplane-ipam on loopback; [`etcd`] a real etcd cluster on
//! loopback; [`disk`] is a small ext4 disk to fill (ENOSPC) or fail read-only; [`wait`] waits
//! for an
//! event instead of sleeping; [`bird`] asks BIRD through birdc, a refused command being an error;
//! [`privileged`] makes a root-only test fail — never pass — where it cannot run, and names the
//! module (`privileged::`) by which `scripts/test --unprivileged` leaves such tests out; [`sh`]
//! runs a set-up command and fails with its stderr; [`grpcurl`] makes one call with the real
//! grpcurl and gives the reply as JSON or the failure as text ([`grpcurl_with`] over mutual TLS,
//! with [`certs`] made by scripts/certs).
#![forbid(unsafe_code)]

pub mod bird;
pub mod certs;
pub mod containerd;
pub mod disk;
pub mod etcd;
pub mod hostile;
pub mod ipam;
pub mod lab;
pub mod netns;
pub mod privileged;
pub mod process;
pub mod tors;
pub mod wait;

use std::process::Command;

pub use netns::{Netns, unique_id};
pub use process::{Service, bin};
pub use wait::{longest_gap, wait_for, wait_until};

/// Runs a set-up command (ip, mount, sysctl…); a failure panics with its stderr.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `program`, to run inside network namespace `netns` when given (`ip netns exec NS program`).
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// One unary call with the real grpcurl (scripts/test installs it), inside the network namespace
/// `netns` when given, to a plaintext server at `addr`: the reply as JSON, or grpcurl's complaint.
pub fn grpcurl(
    netns: Option<&str>,
    addr: &str,
    method: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    grpcurl_with(netns, &["-plaintext".to_string()], addr, method, body)
}

/// As [`grpcurl`], with grpcurl's security flags given (`-plaintext`, or
/// [`certs::Certs::grpcurl_flags`] for mutual TLS).
pub fn grpcurl_with(
    netns: Option<&str>,
    security: &[String],
    addr: &str,
    method: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    let out = command_in(netns, "grpcurl")
        .args(security)
        .args(["-max-time", "10", "-d", body, addr, method])
        .output()
        .map_err(|e| format!("grpcurl (scripts/test installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "grpcurl {addr} {method} {body}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{method}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// How the tests run traceroute: numeric, two probes a hop one at a time, a second each, eight
/// hops at most (followed by the target).
pub const TRACEROUTE: [&str; 10] = [
    "traceroute",
    "-n",
    "-q",
    "2",
    "-w",
    "1",
    "-N",
    "1",
    "-m",
    "8",
];

/// traceroute -n: per hop, the first address that answered (None for a hop of `*` only).
pub fn parse_traceroute(text: &str) -> Vec<Option<String>> {
    text.lines()
        .skip_while(|l| l.starts_with("traceroute"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.next()?.parse::<u32>().ok()?;
            Some(
                words
                    .find(|w| w.parse::<std::net::IpAddr>().is_ok())
                    .map(str::to_string),
            )
        })
        .collect()
}

/// One sample of a Prometheus text exposition (`name{labels} value`): the value of the line whose
/// name and labels are exactly `sample`.
pub fn metric_sample(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The README: what it promises is checked against what the services do.
pub const README: &str = include_str!("../../../README.md");

/// The metric names the README lists in backticks starting with `prefix` (labels cut off; a
/// pattern such as `routeplane_bgp_*` is prose, not a name).
pub fn readme_metrics(prefix: &str) -> Vec<&'static str> {
    let mut names: Vec<&str> = README
        .split('`')
        .filter(|w| w.starts_with(prefix))
        .map(|w| w.split('{').next().unwrap_or(w))
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Fails, naming it, for each metric the README lists under `prefix` that `exposition` lacks.
pub fn assert_readme_metrics(prefix: &str, exposition: &str) {
    let listed = readme_metrics(prefix);
    assert!(!listed.is_empty(), "the README lists no {prefix}* metric");
    let missing: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|name| {
            !exposition.lines().any(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with([' ', '{']))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the README lists {missing:?}, which /metrics does not have:\n{exposition}"
    );
}

/// GET /metrics over plain HTTP/1.0 from `addr`, inside network namespace `netns` when given.
pub fn scrape(netns: Option<&str>, addr: &str) -> Result<String, String> {
    http_get(netns, addr, "/metrics")
}

/// GET `path` over plain HTTP/1.0 from `addr` (inside `netns` when given): the whole answer,
/// headers included, if its status is 200.
pub fn http_get(netns: Option<&str>, addr: &str, path: &str) -> Result<String, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr} is not HOST:PORT"))?;
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 10 cat <&3"
    );
    let out = command_in(netns, "bash")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && text.starts_with("HTTP/1.") && text.contains(" 200 ") {
        Ok(text)
    } else {
        Err(format!(
            "GET http://{addr}{path}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod readme_tests {
    use super::*;

    #[test]
    fn the_readme_lists_each_services_metrics() {
        for (prefix, at_least) in [
            ("routeplane_ipam_", 15),
            ("routeplane_bgp_", 7),
            ("routeplane_agent_", 14),
        ] {
            let names = readme_metrics(prefix);
            assert!(names.len() >= at_least, "{prefix}: {names:?}");
        }
    }

    #[test]
    fn a_listed_metric_missing_from_metrics_is_named() {
        let r = std::panic::catch_unwind(|| {
            assert_readme_metrics(
                "routeplane_bgp_",
                "routeplane_bgp_session_up{peer=\"x\"} 1\n",
            )
        });
        let e = r.expect_err("most are missing");
        let text = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("routeplane_bgp_ipam_connected"), "{text}");
        assert!(!text.contains("\"routeplane_bgp_session_up\""), "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Here, not in `privileged`: the filter `privileged::` would leave them out of unprivileged runs.
    #[test]
    fn a_missing_tool_is_named() {
        assert_eq!(
            privileged::missing_tools(&["sh", "routeplane-no-such-tool"]),
            vec!["routeplane-no-such-tool"]
        );
    }

    #[test]
    #[should_panic(expected = "belongs in a `mod privileged`")]
    fn a_privileged_test_outside_the_privileged_module_fails() {
        privileged::require(&[]);
    }

    #[test]
    fn a_sample_is_found_by_its_exact_name_and_labels() {
        let text = "# HELP x\nrouteplane_x_total{peer=\"a\"} 3\nrouteplane_x_total 7\nrouteplane_x_totals 9\n";
        assert_eq!(metric_sample(text, "routeplane_x_total"), Some(7.0));
        assert_eq!(
            metric_sample(text, "routeplane_x_total{peer=\"a\"}"),
            Some(3.0)
        );
        assert_eq!(metric_sample(text, "routeplane_y"), None);
    }

    #[test]
    fn the_readme_metric_names_leave_out_patterns_and_labels() {
        let names = readme_metrics("routeplane_bgp_");
        assert!(names.contains(&"routeplane_bgp_session_up"), "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
            "{names:?}"
        );
    }
}
