//! Driving the docker-compose stack (docker-compose.yml) from a test, and reading what it shows.
//!
//! Contract: [`Stack`] runs `docker compose` on the repository's file under the project name
//! `routeplane`; every query goes through `docker compose exec` (BIRD's birdc, traceroute, ping) or
//! grpcurl to the services' addresses on the stack's internal bridges — never to a router's
//! address from the host. The parsers of birdc, traceroute and ping output are pure and tested here.
//! A [`Stack`] dropped while its thread panics prints every container's log and tears it all down.
#![forbid(unsafe_code)]

pub mod seed;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The compose project: containers, networks and volumes carry this label value.
pub const PROJECT: &str = "routeplane";

/// The repository's root, where docker-compose.yml is.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits in the repository")
        .to_path_buf()
}

/// routeplanectl (the workspace's build) with docker/routeplanectl.yaml — the stack's addresses
/// and the operator certificate — and `args`; its stdout, or its one-line error.
pub fn routeplanectl(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(routeplane_testkit::bin("routeplanectl"))
        .arg("--config")
        .arg(repo_root().join("docker/routeplanectl.yaml"))
        .args(args)
        .output()
        .map_err(|e| format!("routeplanectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The running stack. Dropping it during a panic collects the logs and tears the stack down.
pub struct Stack {
    up: bool,
    /// The compose files, in the repository's root: docker-compose.yml, and overrides on it.
    files: &'static [&'static str],
}

/// The seed's stack: docker-compose.yml alone.
pub const SEED: &[&str] = &["docker-compose.yml"];
/// The stack with IPAM on etcd: three etcd members and two IPAM replicas.
pub const ON_ETCD: &[&str] = &["docker-compose.yml", "docker-compose.etcd.yml"];

impl Stack {
    /// Removes what an earlier run left, then `docker compose up -d` with the built images.
    pub fn up() -> Stack {
        Stack::up_with(SEED)
    }

    /// As [`Stack::up`], from `files` (docker-compose.yml and overrides).
    pub fn up_with(files: &'static [&'static str]) -> Stack {
        let stack = Stack { up: true, files };
        stack.down();
        let out = stack.compose(&["up", "-d", "--no-build", "--quiet-pull"]);
        assert!(
            out.status.success(),
            "docker compose up: {}",
            text(&out.stderr)
        );
        stack
    }

    /// `docker compose down -v`: containers, networks and the IPAM volume.
    pub fn down(&self) {
        let out = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "10"]);
        assert!(
            out.status.success(),
            "docker compose down: {}",
            text(&out.stderr)
        );
    }

    /// Tears down and reports what is left of the project (empty when nothing is).
    pub fn tear_down(mut self) -> Vec<String> {
        self.up = false;
        self.down();
        leftovers()
    }

    /// `docker compose <args>`, which must succeed.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker compose {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// A command in a service's container; its stdout, or the failure with stderr.
    pub fn exec(&self, service: &str, command: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", "-T", service];
        args.extend_from_slice(command);
        let out = self.compose(&args);
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!(
                "{service} {command:?}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            ))
        }
    }

    /// A command in a service's container, left running; its output piped.
    pub fn spawn_exec(&self, service: &str, command: &[&str]) -> std::process::Child {
        let mut args = vec!["exec", "-T", service];
        args.extend_from_slice(command);
        self.compose_command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("docker compose {args:?}: {e}"))
    }

    /// birdc on a ToR: its answer, or an error when birdc fails (BIRD down, a refused command) —
    /// never an error message taken for an answer.
    pub fn birdc(&self, tor: &str, command: &str) -> Result<String, String> {
        let mut args = vec!["birdc"];
        args.extend(command.split_whitespace());
        self.exec(tor, &args)
    }

    /// A ToR's preferred IPv4 routes.
    pub fn bird_routes(&self, tor: &str) -> Result<BTreeMap<String, BirdRoute>, String> {
        Ok(parse_bird_routes(&self.birdc(tor, "show route")?))
    }

    /// The log of one service, or of all.
    pub fn logs(&self, service: Option<&str>) -> String {
        let mut args = vec!["logs", "--no-color", "--timestamps"];
        args.extend(service);
        let out = self.compose(&args);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.up && std::thread::panicking() {
            eprintln!("\n===== logs of every container =====\n{}", self.logs(None));
            for tor in ["tor-94", "tor-83"] {
                for command in ["show protocols all", "show route"] {
                    eprintln!(
                        "===== {tor}: birdc {command} =====\n{}",
                        self.birdc(tor, command).unwrap_or_else(|e| e)
                    );
                }
            }
            let _ = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "10"]);
        }
    }
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Output {
        self.compose_command(args)
            .output()
            .unwrap_or_else(|e| panic!("docker compose {args:?}: {e}"))
    }

    fn compose_command(&self, args: &[&str]) -> Command {
        let root = repo_root();
        let mut command = Command::new("docker");
        command.arg("compose").arg("--project-directory").arg(&root);
        for file in self.files {
            command.arg("--file").arg(root.join(file));
        }
        command.args(args);
        command
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Containers, networks and volumes labelled with the project, and the DOCKER-USER rules of
/// docker/bird/bridge-forwarding still in the host's iptables.
fn leftovers() -> Vec<String> {
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let mut left = Vec::new();
    for (kind, args) in [
        (
            "container",
            vec!["ps", "-a", "--filter", &label, "--format", "{{.Names}}"],
        ),
        (
            "network",
            vec!["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
        ),
        (
            "volume",
            vec!["volume", "ls", "--filter", &label, "--format", "{{.Name}}"],
        ),
    ] {
        let out = Command::new("docker").args(&args).output().expect("docker");
        left.extend(
            text(&out.stdout)
                .lines()
                .map(|name| format!("{kind} {name}")),
        );
    }
    for ipt in ["iptables", "iptables-legacy"] {
        if let Ok(out) = Command::new(ipt).args(["-S", "DOCKER-USER"]).output() {
            left.extend(
                text(&out.stdout)
                    .lines()
                    .filter(|rule| rule.contains("-i rp-"))
                    .map(|rule| format!("{ipt} rule {rule}")),
            );
        }
    }
    left
}

/// grpcurl against a service of the stack (an address on its internal bridges), with mutual TLS as
/// the operator docker/build-images made a certificate for; the reply as JSON.
pub fn grpcurl(addr: &str, method: &str, body: &str) -> Result<serde_json::Value, String> {
    let certs = routeplane_testkit::certs::Certs::at(&repo_root().join("docker/certs"));
    routeplane_testkit::grpcurl_with(
        None,
        &certs.grpcurl_flags("operator/admin"),
        addr,
        method,
        body,
    )
}

pub use routeplane_testkit::wait_until as wait_for;

/// One preferred route in BIRD's `show route`: the protocol that gave it and the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdRoute {
    pub protocol: String,
    pub via: String,
}

/// The preferred path of each prefix in BIRD's `show route`, with the protocol that gave it and its
/// hop (`dev IFACE` for a device route).
pub fn parse_bird_routes(text: &str) -> BTreeMap<String, BirdRoute> {
    routeplane_testkit::bird::parse_routes(text)
        .into_iter()
        .filter(|p| p.preferred)
        .map(|p| {
            (
                p.prefix,
                BirdRoute {
                    protocol: p.protocol,
                    via: p.via,
                },
            )
        })
        .collect()
}

pub use routeplane_testkit::parse_traceroute;

/// ping's summary line: (transmitted, received).
pub fn parse_ping(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let numbers: Vec<u32> = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    Some((*numbers.first()?, *numbers.get(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_routes_keep_the_preferred_path_with_its_protocol_and_next_hop() {
        let text = "BIRD 2.0.12 ready.\nTable master4:\n\
            10.4.36.0/24         unicast [direct1 09:41:26.210] * (240)\n\tdev eth0\n\
            \x20                    unicast [tor94 09:41:33.635] (100) [AS64524i]\n\tvia 10.4.36.239 on eth0\n\
            10.5.112.0/24        unicast [routeplane 09:41:30.536 from 10.4.36.10] * (100) [i]\n\tvia 10.4.83.12 on eth1\n\
            10.5.113.0/24        unicast [tor94 09:41:33.679] * (100) [AS64513i]\n\tvia 10.4.36.239 on eth0\n";
        let routes = parse_bird_routes(text);
        assert_eq!(routes.len(), 3);
        assert_eq!(
            routes["10.4.36.0/24"],
            BirdRoute {
                protocol: "direct1".into(),
                via: "dev eth0".into()
            }
        );
        assert_eq!(
            routes["10.5.112.0/24"],
            BirdRoute {
                protocol: "routeplane".into(),
                via: "10.4.83.12".into()
            }
        );
        assert_eq!(routes["10.5.113.0/24"].via, "10.4.36.239");
    }

    #[test]
    fn bird_routes_skip_a_prefix_without_a_preferred_path() {
        let text = "10.5.120.7/32        unicast [routeplane 09:41:30.536 from 10.4.36.10] (100) [i]\n\tvia 10.4.83.12 on eth1\n";
        assert!(parse_bird_routes(text).is_empty());
    }

    #[test]
    fn traceroute_hops_take_the_first_answer_and_mark_silent_hops() {
        let text = "traceroute to 10.5.114.1 (10.5.114.1), 6 hops max, 60 byte packets\n \
            1  10.4.94.1  0.146 ms  0.1 ms  0.1 ms\n 2  * 10.4.36.250  0.084 ms *\n 3  * * *\n 4  10.5.114.1  0.372 ms\n";
        assert_eq!(
            parse_traceroute(text),
            vec![
                Some("10.4.94.1".into()),
                Some("10.4.36.250".into()),
                None,
                Some("10.5.114.1".into())
            ]
        );
    }

    #[test]
    fn ping_summary_gives_sent_and_received() {
        let text = "--- 10.5.114.1 ping statistics ---\n150 packets transmitted, 147 received, 2% packet loss, time 15012ms\n";
        assert_eq!(parse_ping(text), Some((150, 147)));
        assert_eq!(parse_ping("PING 10.5.114.1\n"), None);
    }
}
