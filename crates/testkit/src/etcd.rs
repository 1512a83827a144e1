//! A real etcd cluster on loopback for the tests of IPAM on etcd: Debian's etcd 3.4
//! (`scripts/test` installs it), one to three members, each on an address of its own in 127/8 so
//! that clusters of tests running at once never meet on a port. Members can be killed, paused
//! (SIGSTOP), resumed and restarted on their data; [`EtcdCluster::etcdctl`] asks the cluster
//! directly, to check what IPAM stored or to put it in a bad state (foreign keys, a NOSPACE alarm).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::Service;
use crate::wait::wait_for;

/// The client and peer ports every member uses, on its own address.
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

pub struct Member {
    pub name: String,
    /// Its address in 127/8.
    pub ip: String,
    scheme: &'static str,
    data: PathBuf,
    process: Option<Service>,
}

impl Member {
    /// `http://IP:2379` (`https://` with TLS), what IPAM and etcdctl dial.
    pub fn endpoint(&self) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.scheme, self.ip)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.ip)
    }

    pub fn process(&self) -> &Service {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("etcd member {} is not running", self.name))
    }
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    token: String,
    extra: Vec<String>,
    /// TLS only, client certificates required.
    tls: Option<EtcdTls>,
}

/// What TLS the members serve: their certificate, and the CA clients' certificates must chain to.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// What etcdctl presents.
    pub client: (PathBuf, PathBuf),
}

/// 127.A.B.x for the cluster's members: A.B from this process and a counter, so that test
/// binaries running at once (and clusters within one) get different addresses.
fn cluster_net() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = (std::process::id().wrapping_mul(31).wrapping_add(n * 7919)) % 60_000;
    format!("127.{}.{}", 100 + id / 250 % 150, id % 250 + 1)
}

impl EtcdCluster {
    /// Starts `n` members under `dir` and waits until the cluster answers. `extra` goes to every
    /// member (e.g. `--quota-backend-bytes=...`).
    pub fn start(dir: &Path, n: usize, extra: &[&str]) -> EtcdCluster {
        Self::start_on(dir, cluster_net(), n, extra, None)
    }

    /// The same, serving TLS only and requiring client certificates (`--client-cert-auth`):
    /// `make_tls` gets the members' addresses and makes the certificates naming them.
    pub fn start_tls(
        dir: &Path,
        n: usize,
        make_tls: impl FnOnce(&[String]) -> EtcdTls,
    ) -> EtcdCluster {
        let net = cluster_net();
        let ips: Vec<String> = (0..n).map(|i| format!("{net}.{}", i + 1)).collect();
        let tls = make_tls(&ips);
        Self::start_on(dir, net, n, &[], Some(tls))
    }

    fn start_on(
        dir: &Path,
        net: String,
        n: usize,
        extra: &[&str],
        tls: Option<EtcdTls>,
    ) -> EtcdCluster {
        assert!(
            which("etcd"),
            "etcd is not installed: scripts/test installs Debian's etcd-server"
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                ip: format!("{net}.{}", i + 1),
                scheme,
                data: dir.join(format!("etcd-m{i}")),
                process: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            token: format!("routeplane-test-{net}"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let m = &self.members[i];
        let mut args = vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", m.data.display()),
            format!("--listen-client-urls={}", m.endpoint()),
            format!("--advertise-client-urls={}", m.endpoint()),
            format!("--listen-peer-urls={}", m.peer_url()),
            format!("--initial-advertise-peer-urls={}", m.peer_url()),
            format!("--initial-cluster={}", initial.join(",")),
            format!("--initial-cluster-token={}", self.token),
            "--initial-cluster-state=new".into(),
            // Faster elections than the default 1 s, as on a LAN: leader failover in the tests
            // takes a few hundred milliseconds, like a tuned production cluster.
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ];
        args.extend(self.extra.iter().cloned());
        if let Some(tls) = &self.tls {
            args.extend([
                format!("--cert-file={}", tls.cert.display()),
                format!("--key-file={}", tls.key.display()),
                format!("--trusted-ca-file={}", tls.ca.display()),
                "--client-cert-auth".into(),
            ]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = format!("etcd {}", m.name);
        self.members[i].process = Some(Service::spawn(&name, None, Path::new("etcd"), &refs));
    }

    /// Every endpoint, comma-separated (`--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags that put routeplane-ipam's state on this cluster under `prefix`.
    pub fn ipam_flags(&self, prefix: &str) -> Vec<String> {
        [
            "--store",
            "etcd",
            "--etcd-endpoints",
            &self.endpoints(),
            "--etcd-prefix",
            prefix,
        ]
        .map(String::from)
        .to_vec()
    }

    /// etcdctl against every running member; the output, or a panic with its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_raw(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under `prefix` with its value, in key order (`etcdctl get --prefix`).
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .map(|kv| {
                let value = kv.get(1).copied().unwrap_or_default();
                (kv[0].to_string(), value.to_string())
            })
            .collect()
    }

    /// etcdctl, its status left to the caller.
    pub fn etcdctl_raw(&self, args: &[&str]) -> std::process::Output {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.process.is_some())
            .map(Member::endpoint)
            .collect();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=5s");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client.0.display()))
                .arg(format!("--key={}", tls.client.1.display()));
        }
        cmd.args(args)
            .output()
            .unwrap_or_else(|e| panic!("etcdctl: {e}"))
    }

    /// Waits up to 30 s until every running member reports healthy.
    pub fn wait_healthy(&self) {
        let running = self.members.iter().filter(|m| m.process.is_some()).count();
        wait_for("etcd healthy", Duration::from_secs(30), || {
            let out = self.etcdctl_raw(&["endpoint", "health"]);
            // etcdctl 3.4 prints the verdicts on stderr.
            out.status.success()
                && String::from_utf8_lossy(&out.stderr)
                    .matches("is healthy")
                    .count()
                    == running
        });
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> usize {
        let mut found = None;
        wait_for("an etcd leader", Duration::from_secs(15), || {
            let out = self.etcdctl_raw(&["endpoint", "status", "-w", "json"]);
            let text = String::from_utf8_lossy(&out.stdout);
            let Ok(status) = serde_json::from_str::<serde_json::Value>(&text) else {
                return false;
            };
            found = status.as_array().into_iter().flatten().find_map(|s| {
                let header = &s["Status"]["header"];
                (s["Status"]["leader"] == header["member_id"]).then(|| s["Endpoint"].clone())
            });
            found.is_some()
        });
        let endpoint = found.and_then(|e| e.as_str().map(str::to_string));
        self.members
            .iter()
            .position(|m| Some(m.endpoint()) == endpoint)
            .unwrap_or_else(|| panic!("the leader {endpoint:?} is not a member"))
    }

    /// SIGKILL to member `i`: no shutdown path runs.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill9();
        }
    }

    /// Starts member `i` again on its data (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// SIGSTOP / SIGCONT to member `i`.
    pub fn pause(&self, i: usize) {
        self.members[i].process().signal("-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.members[i].process().signal("-CONT");
    }
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_get_addresses_of_their_own() {
        let a = cluster_net();
        let b = cluster_net();
        assert_ne!(a, b);
        for net in [a, b] {
            let octets: Vec<u32> = net.split('.').map(|o| o.parse().unwrap()).collect();
            assert_eq!(octets[0], 127);
            assert!((100..250).contains(&octets[1]) && (1..=250).contains(&octets[2]));
        }
    }
}
