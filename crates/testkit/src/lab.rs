//! The seed's node network in network namespaces, for the route agent's, the CNI plugin's and the
//! benchmarks' scenarios: segment 10.4.94.0/24 (a bridge in the `ctl` namespace, where
//! routeplane-ipam listens on 10.4.94.250), optionally two routers standing in for the seed's
//! ToRs (10.4.94.1 / core 10.4.36.239, and 10.4.83.1 / core 10.4.36.250, with segment
//! 10.4.83.0/24 behind the second), nodes on either segment running real routeplane-agents, and
//! pods attached by calling routeplane-cni as a container runtime does.
//!
//! Everything is named after one [`unique_id`], so labs of tests running side by side never meet;
//! dropping the lab stops its processes, unmounts its bpffs and deletes its namespaces.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::certs::Certs;
use crate::{Netns, Service, bin, sh, unique_id, wait_for};

/// IPAM's address on segment 94 (and in the ctl namespace).
pub const IPAM_ADDR: &str = "10.4.94.250:50051";

/// The identity the lab's own grpcurl calls use.
pub const OPERATOR: &str = "operator/lab";

/// A node: its namespace, address and segment, and its agent's files.
pub struct LabNode {
    pub name: String,
    pub ns: Netns,
    pub address: String,
    pub address6: String,
    pub segment: u8,
    /// The bridge side of the node's cable (its veth peer on the segment's bridge).
    pub cable: String,
    pub socket: PathBuf,
    pub cache: PathBuf,
    pub pins: PathBuf,
}

/// A pod: its network namespace (at /var/run/netns/NAME) and what ADD answered.
pub struct Pod {
    pub ns: Netns,
    pub node: usize,
    pub container_id: String,
    pub result: serde_json::Value,
}

impl Pod {
    /// The pod's address of a family, from ADD's result.
    pub fn ip(&self, v6: bool) -> String {
        self.result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .find(|a| a.contains(':') == v6)
            .and_then(|a| a.split('/').next())
            .unwrap_or_default()
            .to_string()
    }

    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.ns.name())
    }
}

/// What the plugin printed and its exit status.
#[derive(Debug)]
pub struct CniOutput {
    pub status: i32,
    pub stdout: String,
    pub json: serde_json::Value,
}

pub struct NodeLab {
    pub id: String,
    pub ctl: Netns,
    pub routers: Vec<Netns>,
    pub nodes: Vec<LabNode>,
    pub dir: PathBuf,
    /// The lab's CA and certificates: IPAM, each node's agent, an operator (the tests' grpcurl).
    pub certs: Certs,
    _dir: tempfile::TempDir,
    pub(crate) services: Vec<Service>,
    bpffs: Vec<PathBuf>,
}

/// The seed's values, with IPv6 enabled when asked.
fn values(dual_stack: bool) -> String {
    let seed = include_str!("../../../examples/seed/values.yaml");
    if dual_stack {
        format!("{seed}\nipv6:\n  enabled: true\n")
    } else {
        seed.to_string()
    }
}

impl NodeLab {
    /// Segment 94: a bridge in `ctl` holding 10.4.94.250 and fd04:94::250.
    #[allow(clippy::new_without_default)] // it builds namespaces: no default value
    pub fn new() -> NodeLab {
        let id = unique_id();
        let ctl = Netns::new(&id, "ctl");
        ctl.ip(&["link", "add", "seg94", "type", "bridge"]);
        ctl.ip(&["addr", "add", "10.4.94.250/24", "dev", "seg94"]);
        ctl.ip(&["addr", "add", "fd04:94::250/64", "dev", "seg94", "nodad"]);
        ctl.ip(&["link", "set", "seg94", "up"]);
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Mutual TLS between the agents and IPAM, as on a real network.
        let certs = Certs::new(
            &dir.path().join("tls"),
            &["ipam/ipam@IP:10.4.94.250,IP:fd04:94::250", OPERATOR],
        );
        NodeLab {
            id,
            ctl,
            routers: Vec::new(),
            nodes: Vec::new(),
            dir: dir.path().to_path_buf(),
            certs,
            _dir: dir,
            services: Vec::new(),
            bpffs: Vec::new(),
        }
    }

    fn short(&self, what: &str) -> String {
        format!("{what}{}", self.id)
    }

    /// The two routers: r94 (10.4.94.1 on segment 94, 10.4.36.239 on the core) and r83
    /// (10.4.36.250 on the core, 10.4.83.1 on segment 83, a bridge it holds). Each knows the
    /// other's segment; `ctl` reaches segment 83 through r94.
    pub fn with_routers(mut self) -> NodeLab {
        let r94 = Netns::new(&self.id, "r94");
        let r83 = Netns::new(&self.id, "r83");
        let (a, b) = (self.short("rg"), self.short("rb"));
        crate::netns::veth(&r94, &a, &self.ctl, &b);
        self.ctl.ip(&["link", "set", &b, "master", "seg94"]);
        r94.ip(&["addr", "add", "10.4.94.1/24", "dev", &a]);
        let (c1, c2) = (self.short("rc"), self.short("rd"));
        crate::netns::veth(&r94, &c1, &r83, &c2);
        r94.ip(&["addr", "add", "10.4.36.239/24", "dev", &c1]);
        r83.ip(&["addr", "add", "10.4.36.250/24", "dev", &c2]);
        r83.ip(&["link", "add", "seg83", "type", "bridge"]);
        r83.ip(&["addr", "add", "10.4.83.1/24", "dev", "seg83"]);
        r83.ip(&["link", "set", "seg83", "up"]);
        for r in [&r94, &r83] {
            r.sysctl("net.ipv4.ip_forward=1");
        }
        r94.ip(&["route", "add", "10.4.83.0/24", "via", "10.4.36.250"]);
        r83.ip(&[
            "route",
            "add",
            "10.4.94.0/24",
            "via",
            "10.4.36.239",
            "src",
            "10.4.83.1",
        ]);
        self.ctl
            .ip(&["route", "add", "10.4.83.0/24", "via", "10.4.94.1"]);
        self.routers = vec![r94, r83];
        self
    }

    /// A node on segment 94 or 83 at host number `host` (10.4.SEG.HOST, fd04:SEG::HOST).
    pub fn add_node(&mut self, name: &str, segment: u8, host: u8) -> usize {
        let index = self.nodes.len();
        self.certs.make(&[&format!("agent/{name}")], None);
        let ns = Netns::new(&self.id, name);
        let (inside, outside) = (
            self.short(&format!("n{index}")),
            self.short(&format!("b{index}")),
        );
        let (address, address6) = (
            format!("10.4.{segment}.{host}"),
            format!("fd04:{segment}::{host}"),
        );
        let bridge_ns = match segment {
            94 => &self.ctl,
            83 => self
                .routers
                .get(1)
                .expect("segment 83 is behind the routers: call with_routers first"),
            other => panic!("the lab has segments 94 and 83, not {other}"),
        };
        crate::netns::veth(&ns, &inside, bridge_ns, &outside);
        bridge_ns.ip(&["link", "set", &outside, "master", &format!("seg{segment}")]);
        ns.ip(&["addr", "add", &format!("{address}/24"), "dev", &inside]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{address6}/64"),
            "dev",
            &inside,
            "nodad",
        ]);
        if !self.routers.is_empty() {
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.4.{segment}.1"),
            ]);
        }
        let files = self.dir.join(name);
        std::fs::create_dir_all(&files).expect("the node's directory");
        // The agent's bpffs: `ip netns exec` remounts /sys, so it lives in the lab's directory.
        let bpffs = files.join("bpffs");
        std::fs::create_dir_all(&bpffs).expect("the bpffs mount point");
        sh(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            bpffs.to_str().unwrap_or_default(),
        ]);
        self.bpffs.push(bpffs.clone());
        self.nodes.push(LabNode {
            name: name.to_string(),
            ns,
            address,
            address6,
            segment,
            cable: outside,
            socket: files.join("agent.sock"),
            cache: files.join("cache"),
            pins: bpffs.join("routeplane"),
        });
        index
    }

    /// routeplane-ipam in `ctl` on the seed's values (IPv6 too when asked), answering on return.
    pub fn start_ipam(&mut self, dual_stack: bool) {
        self.start_ipam_with(&values(dual_stack));
    }

    /// routeplane-ipam in `ctl` on the values given (the same data directory each time).
    pub fn start_ipam_with(&mut self, values: &str) {
        self.start_ipam_args(values, &[]);
    }

    /// As [`NodeLab::start_ipam_with`], with `extra` flags after the lab's own.
    pub fn start_ipam_args(&mut self, values: &str, extra: &[&str]) {
        let values_file = self.dir.join("values.yaml");
        std::fs::write(&values_file, values).expect("values.yaml");
        let data = self.dir.join("ipam");
        let mut args: Vec<String> = [
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--values",
            values_file.to_str().unwrap_or_default(),
            "--grpc-listen",
            IPAM_ADDR,
            "--metrics-listen",
            "127.0.0.1:9951",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.certs.service_flags("ipam/ipam"));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut ipam = Service::spawn(
            "ipam",
            Some(self.ctl.name()),
            &bin("routeplane-ipam"),
            &args,
        );
        ipam.listen_addr("gRPC");
        self.services.push(ipam);
    }

    /// Stops routeplane-ipam (SIGTERM, waited for).
    pub fn stop_ipam(&mut self) {
        self.stop("ipam");
    }

    /// The arguments an agent of node `node` runs with, before `extra`.
    pub fn agent_args(&self, node: usize) -> Vec<String> {
        let n = &self.nodes[node];
        let (cert, key) = self.certs.pair(&format!("agent/{}", n.name));
        [
            "--ipam",
            &format!("https://{IPAM_ADDR}"),
            "--tls-ca",
            self.certs.ca().to_str().unwrap_or_default(),
            "--tls-cert",
            cert.to_str().unwrap_or_default(),
            "--tls-key",
            key.to_str().unwrap_or_default(),
            "--node-name",
            &n.name,
            "--address",
            &n.address,
            "--reconcile-interval",
            "1s",
            "--cache-dir",
            n.cache.to_str().unwrap_or_default(),
            "--cni-socket",
            n.socket.to_str().unwrap_or_default(),
            "--bpf-pin-dir",
            n.pins.to_str().unwrap_or_default(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// routeplane-agent on node `node` (named after it), with `extra` arguments (a flag among
    /// them replaces the lab's own of the same name).
    pub fn start_agent(&mut self, node: usize, extra: &[&str]) {
        let mut args = Vec::new();
        let mut own = self.agent_args(node).into_iter();
        while let Some(flag) = own.next() {
            let value = own.next().unwrap_or_default();
            if !extra.contains(&flag.as_str()) {
                args.extend([flag, value]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let n = &self.nodes[node];
        let agent = Service::spawn(&n.name, Some(n.ns.name()), &bin("routeplane-agent"), &args);
        self.services.push(agent);
    }

    /// Waits until node `node`'s agent serves ADD (CNI STATUS answers 0).
    pub fn wait_agent_ready(&self, node: usize) {
        let what = format!("{}'s agent serves ADD", self.nodes[node].name);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(&what, Duration::from_secs(30), || {
                self.cni(node, "STATUS", "", "", "eth0", &[], &self.conf("1.1.0"))
                    .status
                    == 0
            })
        }));
        if result.is_err() {
            panic!("{what}: not within 30 s\n{}", self.logs());
        }
    }

    /// Polls `check` until it holds or `limit` passes; then fails with what it waited for, every
    /// node's routes and every process's output.
    pub fn wait(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(what, limit, &mut check)
        }));
        if let Err(e) = result {
            let routes: String = self
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "===== {} routes =====\n{}{}",
                        n.name,
                        NodeLab::routes(&n.ns, "-4"),
                        NodeLab::routes(&n.ns, "-6")
                    )
                })
                .collect();
            panic!(
                "{}\n{routes}{}",
                e.downcast_ref::<String>().cloned().unwrap_or_default(),
                self.logs()
            );
        }
    }

    /// Pulls node `node`'s cable (`cut`) or plugs it back: its veth peer on the segment's bridge
    /// goes down or up. The node sees its carrier go and keeps its addresses and routes, as with a
    /// real cable; nothing it sends arrives anywhere.
    pub fn cut(&self, node: usize, cut: bool) {
        let n = &self.nodes[node];
        let bridge_ns = match n.segment {
            83 => &self.routers[1],
            _ => &self.ctl,
        };
        bridge_ns.ip(&["link", "set", &n.cable, if cut { "down" } else { "up" }]);
    }

    /// SIGTERM to a process started by the lab (an agent by its node's name, "ipam"), waited for.
    pub fn stop(&mut self, name: &str) {
        let index = self
            .services
            .iter()
            .rposition(|s| s.name() == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let mut s = self.services.remove(index);
        s.terminate();
    }

    /// SIGKILL to a process started by the lab: no shutdown path runs.
    pub fn kill9(&mut self, name: &str) {
        if let Some(index) = self.services.iter().rposition(|s| s.name() == name) {
            let mut s = self.services.remove(index);
            s.kill9();
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().rev().find(|s| s.name() == name)
    }

    /// Every process's output, for a failure message.
    pub fn logs(&self) -> String {
        self.services
            .iter()
            .map(|s| format!("===== {} =====\n{}", s.name(), s.log()))
            .collect()
    }

    /// The network configuration a runtime passes routeplane-cni (the conflist's plugin with the
    /// network's name and version), for node... every node's socket is named by `cni`.
    pub fn conf(&self, version: &str) -> String {
        format!(r#"{{"cniVersion": "{version}", "name": "routeplane", "type": "routeplane-cni"}}"#)
    }

    /// routeplane-cni executed as a runtime does: in the node's namespace, CNI_* in its
    /// environment (plus `env`), `stdin` as its configuration — with the node's agent socket
    /// added as `agentSocket` when the configuration is JSON without one.
    #[allow(clippy::too_many_arguments)]
    pub fn cni(
        &self,
        node: usize,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        env: &[(&str, &str)],
        stdin: &str,
    ) -> CniOutput {
        let n = &self.nodes[node];
        let stdin = match serde_json::from_str::<serde_json::Value>(stdin) {
            Ok(mut v) if v.is_object() && v.get("agentSocket").is_none() => {
                v["agentSocket"] = serde_json::json!(n.socket);
                v.to_string()
            }
            _ => stdin.to_string(),
        };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", n.ns.name()])
            .arg(bin("routeplane-cni"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", "/opt/cni/bin");
        for (k, v) in [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
        ] {
            if !v.is_empty() {
                c.env(k, v);
            }
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("routeplane-cni runs");
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits before reading all of it is what some tests want to see.
            let _ = input.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("routeplane-cni ends");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        CniOutput {
            status: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
            stdout,
        }
    }

    /// A pod on node `node`: its network namespace created (named after the lab and `name`),
    /// then ADD as a runtime calls it (CNI 1.1.0, eth0, the pod's name in CNI_ARGS). Fails the
    /// test with the plugin's answer and the logs when ADD fails.
    pub fn add_pod(&self, node: usize, name: &str) -> Pod {
        let ns = Netns::new(&self.id, name);
        let container_id = format!("{}{name}", self.id);
        let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let out = self.cni(
            node,
            "ADD",
            &container_id,
            &format!("/var/run/netns/{}", ns.name()),
            "eth0",
            &[("CNI_ARGS", &args)],
            &self.conf("1.1.0"),
        );
        assert_eq!(
            out.status,
            0,
            "ADD of {name} on node {node}: {}\n{}",
            out.stdout,
            self.logs()
        );
        Pod {
            ns,
            node,
            container_id,
            result: out.json,
        }
    }

    /// CHECK of a pod, as a runtime calls it.
    pub fn check_pod(&self, pod: &Pod) -> CniOutput {
        self.cni(
            pod.node,
            "CHECK",
            &pod.container_id,
            &pod.netns_path(),
            "eth0",
            &[],
            &self.conf("1.1.0"),
        )
    }

    /// DEL of a pod, as a runtime calls it.
    pub fn del_pod(&self, pod: &Pod) -> CniOutput {
        self.cni(
            pod.node,
            "DEL",
            &pod.container_id,
            &pod.netns_path(),
            "eth0",
            &[],
            &self.conf("1.1.0"),
        )
    }

    /// One call to routeplane-ipam with grpcurl (from `ctl`).
    pub fn ipam(&self, method: &str, body: &str) -> Result<serde_json::Value, String> {
        self.operator_call(
            IPAM_ADDR,
            &format!("routeplane.ipam.v1.Ipam/{method}"),
            body,
        )
    }

    /// One grpcurl call from `ctl` as the lab's operator to `addr`'s `service/method`.
    pub(crate) fn operator_call(
        &self,
        addr: &str,
        method: &str,
        body: &str,
    ) -> Result<serde_json::Value, String> {
        crate::grpcurl_with(
            Some(self.ctl.name()),
            &self.certs.grpcurl_flags(OPERATOR),
            addr,
            method,
            body,
        )
    }

    /// A node's pod CIDRs and router IPs, as IPAM has them.
    pub fn node_allocation(&self, name: &str) -> (Vec<String>, Vec<String>) {
        let v = self
            .ipam("GetNode", &format!(r#"{{"name": "{name}"}}"#))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let list = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        (list("podCidrs"), list("routerIps"))
    }

    /// The routers learn every node's pod CIDRs, as the ToRs do over BGP: from their own
    /// segment's nodes directly, the other segment's through the other router — and reply from
    /// their segment's gateway address, as the seed's ToRs do.
    pub fn route_pod_cidrs(&self) {
        let [r94, r83] = &self.routers[..] else {
            panic!("route_pod_cidrs needs with_routers");
        };
        for n in &self.nodes {
            let (cidrs, _) = self.node_allocation(&n.name);
            for cidr in cidrs.iter().filter(|c| !c.contains(':')) {
                let (home, away, via_core, src) = if n.segment == 94 {
                    (r94, r83, "10.4.36.239", "10.4.83.1")
                } else {
                    (r83, r94, "10.4.36.250", "10.4.94.1")
                };
                home.ip(&["route", "replace", cidr, "via", &n.address]);
                away.ip(&["route", "replace", cidr, "via", via_core, "src", src]);
            }
        }
    }

    /// The routes of a family (`-4`, `-6`) in a namespace, as `ip route show` prints them.
    pub fn routes(ns: &Netns, family: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", ns.name(), family, "route", "show"])
            .output()
            .expect("ip route");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `traceroute -n` from a namespace: per hop, the address that answered first (None: `*`).
    pub fn traceroute(ns: &Netns, target: &str) -> Vec<Option<String>> {
        let mut args = crate::TRACEROUTE.to_vec();
        args.push(target);
        crate::parse_traceroute(&ns.run(&args).1)
    }

    /// Whether one ping from a namespace to `target` is answered within a second.
    pub fn ping(ns: &Netns, target: &str) -> bool {
        ns.run(&["ping", "-c", "1", "-W", "1", target]).0
    }

    /// A metric of node `node`'s agent (scraped inside its namespace).
    pub fn agent_metric(&self, node: usize, sample: &str) -> Option<f64> {
        crate::metric_sample(&self.agent_metrics(node), sample)
    }

    /// Node `node`'s agent's /metrics (empty when it does not answer).
    pub fn agent_metrics(&self, node: usize) -> String {
        crate::scrape(Some(self.nodes[node].ns.name()), "127.0.0.1:9953").unwrap_or_default()
    }

    /// One call on node `node`'s agent API (inside its namespace).
    pub fn agent_api(&self, node: usize, method: &str, body: &str) -> serde_json::Value {
        crate::grpcurl_with(
            Some(self.nodes[node].ns.name()),
            &self.certs.grpcurl_flags(OPERATOR),
            "127.0.0.1:50053",
            &format!("routeplane.agent.v1.Agent/{method}"),
            body,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The attachments node `node`'s agent holds (ListAttachments on its socket).
    pub fn attachments(&self, node: usize) -> serde_json::Value {
        let out = Command::new("grpcurl")
            .args([
                "-plaintext",
                "-max-time",
                "10",
                "-authority",
                "localhost",
                "-unix",
            ])
            .arg(&self.nodes[node].socket)
            .args(["routeplane.agent.v1.Cni/ListAttachments"])
            .output()
            .expect("grpcurl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ListAttachments: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// ListPodIPs of a node as (owner, ips, managed_by), sorted.
    pub fn ipam_pod_ips(&self, node: &str) -> BTreeMap<String, (Vec<String>, String)> {
        let v = self
            .ipam("ListPodIPs", &format!(r#"{{"node": "{node}"}}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        v["allocations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["owner"].as_str().unwrap_or_default().to_string(),
                    (
                        a["ips"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect(),
                        a["managedBy"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn bpffs(&self) -> &[PathBuf] {
        &self.bpffs
    }

    pub fn node_dir(&self, node: usize) -> &Path {
        self.nodes[node].cache.parent().unwrap_or(Path::new("/"))
    }
}

impl Drop for NodeLab {
    fn drop(&mut self) {
        // Processes first (they run inside the namespaces), then what they pinned, then the
        // namespaces (with the fields).
        self.services.clear();
        for dir in &self.bpffs {
            let _ = Command::new("umount").arg("-l").arg(dir).output();
        }
    }
}
