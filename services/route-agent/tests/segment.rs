//! Real agents and a real IPAM in network namespaces the test creates: one L2 segment (a bridge)
//! with two nodes, and a third node registered on another segment. Needs root: skips loudly
//! without it, fails without it under ROUTEPLANE_REQUIRE_PRIVILEGED=1.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use routeplane_testkit::sh;

fn require() {
    routeplane_testkit::privileged::require(&["ip", "grpcurl", "traceroute", "ping"]);
}

/// Sets a kernel parameter inside a namespace.
fn sysctl(ns: &str, setting: &str) {
    sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", setting]);
}

fn bin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_routeplane-agent")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test does)",
        p.display()
    );
    p
}

struct Lab {
    ns: Vec<String>,
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
    /// bpffs mounts the test made: unmounted at the end, which detaches and frees what the
    /// agents pinned there.
    bpffs: Vec<PathBuf>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for dir in &self.bpffs {
            let _ = Command::new("umount").arg("-l").arg(dir).output();
        }
    }
}

impl Lab {
    fn new() -> Lab {
        let id = routeplane_testkit::unique_id();
        let ns: Vec<String> = ["ctl", "n1", "n2"]
            .iter()
            .map(|n| format!("rpa-{id}-{n}"))
            .collect();
        for n in &ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "-n", &ns[0], "link", "add", "seg", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &ns[0],
            "addr",
            "add",
            "10.4.94.250/24",
            "dev",
            "seg",
        ]);
        sh(&["ip", "-n", &ns[0], "link", "set", "seg", "up"]);
        for (i, addr) in [(1, "10.4.94.11/24"), (2, "10.4.94.12/24")] {
            let (a, b) = (format!("rpn{id}{i}"), format!("rpb{id}{i}"));
            sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
            sh(&["ip", "link", "set", &a, "netns", &ns[i]]);
            sh(&["ip", "link", "set", &b, "netns", &ns[0]]);
            sh(&["ip", "-n", &ns[i], "addr", "add", addr, "dev", &a]);
            sh(&[
                "ip",
                "-n",
                &ns[i],
                "addr",
                "add",
                &format!("fd04:94::{i}1/64"),
                "dev",
                &a,
                "nodad",
            ]);
            sh(&["ip", "-n", &ns[i], "link", "set", &a, "up"]);
            sh(&["ip", "-n", &ns[0], "link", "set", &b, "master", "seg", "up"]);
        }
        Lab {
            ns,
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            bpffs: Vec::new(),
        }
    }

    /// Adds a router (namespace 3: 10.4.94.1 here, 10.4.83.1 on a second segment) and a node on
    /// that segment (namespace 4: 10.4.83.21); every namespace routes by default through it.
    fn with_router(mut self) -> Lab {
        let id = self.ns[0]
            .trim_start_matches("rpa-")
            .trim_end_matches("-ctl")
            .to_string();
        for n in ["r", "n3"] {
            let name = format!("rpa-{id}-{n}");
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            sh(&["ip", "netns", "add", &name]);
            sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
            self.ns.push(name);
        }
        let (ctl, r, n3) = (self.ns[0].clone(), self.ns[3].clone(), self.ns[4].clone());
        let (ra, rb) = (format!("rpr{id}a"), format!("rpr{id}b"));
        sh(&[
            "ip", "link", "add", &ra, "type", "veth", "peer", "name", &rb,
        ]);
        sh(&["ip", "link", "set", &ra, "netns", &r]);
        sh(&["ip", "link", "set", &rb, "netns", &ctl]);
        sh(&["ip", "-n", &r, "addr", "add", "10.4.94.1/24", "dev", &ra]);
        sh(&["ip", "-n", &r, "link", "set", &ra, "up"]);
        sh(&["ip", "-n", &ctl, "link", "set", &rb, "master", "seg", "up"]);
        sh(&["ip", "-n", &r, "link", "add", "seg83", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            "10.4.83.1/24",
            "dev",
            "seg83",
        ]);
        sh(&["ip", "-n", &r, "link", "set", "seg83", "up"]);
        let (na, nb) = (format!("rpn{id}3"), format!("rpb{id}3"));
        sh(&[
            "ip", "link", "add", &na, "type", "veth", "peer", "name", &nb,
        ]);
        sh(&["ip", "link", "set", &na, "netns", &n3]);
        sh(&["ip", "link", "set", &nb, "netns", &r]);
        sh(&["ip", "-n", &n3, "addr", "add", "10.4.83.21/24", "dev", &na]);
        sh(&["ip", "-n", &n3, "link", "set", &na, "up"]);
        sh(&["ip", "-n", &r, "link", "set", &nb, "master", "seg83", "up"]);
        sysctl(&r, "net.ipv4.ip_forward=1");
        for i in [0, 1, 2] {
            sh(&[
                "ip",
                "-n",
                &self.ns[i],
                "route",
                "add",
                "default",
                "via",
                "10.4.94.1",
            ]);
        }
        sh(&[
            "ip",
            "-n",
            &n3,
            "route",
            "add",
            "default",
            "via",
            "10.4.83.1",
        ]);
        self
    }

    /// `traceroute -n` from a node: the hops' addresses, in order.
    fn traceroute(&self, node: usize, target: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns[node],
                "traceroute",
                "-n",
                "-q",
                "1",
                "-w",
                "1",
                "-m",
                "5",
                target,
            ])
            .output()
            .expect("traceroute (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    }

    fn spawn(&mut self, tag: &str, ns: usize, program: PathBuf, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{tag}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[ns]])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((tag.to_string(), child));
    }

    /// IPAM in the control namespace, on the seed's values (`dual_stack`: with ipv6.enabled),
    /// answering before this returns.
    fn ipam(&mut self, dual_stack: bool) {
        let data = self.dir.path().join("ipam");
        let mut args = vec![
            "--data-dir".to_string(),
            data.to_str().unwrap().to_string(),
            "--grpc-listen".into(),
            "10.4.94.250:50051".into(),
            "--metrics-listen".into(),
            "127.0.0.1:9951".into(),
        ];
        if dual_stack {
            let values = self.dir.path().join("values.yaml");
            let seed = include_str!("../../../examples/seed/values.yaml");
            std::fs::write(&values, format!("{seed}\nipv6:\n  enabled: true\n")).unwrap();
            args.extend(["--values".to_string(), values.to_str().unwrap().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn("ipam", 0, bin("routeplane-ipam"), &args);
        let ns = self.ns[0].clone();
        self.wait("IPAM answers", || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "grpcurl",
                    "-plaintext",
                    "10.4.94.250:50051",
                    "list",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    fn agent(&mut self, node: usize, addr: &str) {
        self.agent_with(node, addr, &[]);
    }

    fn agent_with(&mut self, node: usize, addr: &str, extra: &[&str]) {
        let cache = self.dir.path().join(format!("cache{node}"));
        let socket = self.dir.path().join(format!("agent{node}.sock"));
        let name = format!("n{node}");
        let args = [
            "--cni-socket",
            socket.to_str().unwrap(),
            "--ipam",
            "http://10.4.94.250:50051",
            "--node-name",
            &name,
            "--address",
            addr,
            "--reconcile-interval",
            "1s",
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        let mut args = args.to_vec();
        args.extend(extra);
        self.spawn(&name, node, bin("routeplane-agent"), &args);
    }

    /// SIGTERM to a process, waiting until it has exited.
    fn stop(&mut self, tag: &str) {
        let i = self.children.iter().position(|(t, _)| t == tag).unwrap();
        let (_, mut child) = self.children.remove(i);
        sh(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{tag} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn routes(&self, node: usize) -> String {
        self.route_table(node, "-4")
    }

    fn routes6(&self, node: usize) -> String {
        self.route_table(node, "-6")
    }

    fn route_table(&self, node: usize, family: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns[node], family, "route", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn grpc(&self, method: &str, body: &str) -> serde_json::Value {
        routeplane_testkit::grpcurl(Some(&self.ns[0]), "10.4.94.250:50051", method, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A call on a node's agent API (it listens on :50053 inside the node's namespace).
    fn agent_api(&self, node: usize, method: &str, body: &str) -> serde_json::Value {
        let method = format!("routeplane.agent.v1.Agent/{method}");
        routeplane_testkit::grpcurl(Some(&self.ns[node]), "127.0.0.1:50053", &method, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// One sample of a node agent's /metrics (scraped inside its namespace).
    fn metric(&self, node: usize, name: &str) -> Option<u64> {
        let get = "exec 3<>/dev/tcp/127.0.0.1/9953; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns[node], "bash", "-c", get])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn log(&self, tag: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{tag}.log"))).unwrap_or_default()
    }

    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "{what}\nn1 routes:\n{}\nn2 routes:\n{}\nn1.log:\n{}\nn2.log:\n{}\nipam.log:\n{}",
                self.routes(1),
                self.routes(2),
                self.log("n1"),
                self.log("n2"),
                self.log("ipam")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cidr_of(&self, node: &str) -> String {
        let v = self.grpc(
            "routeplane.ipam.v1.Ipam/GetNode",
            &format!(r#"{{"name": "{node}"}}"#),
        );
        v["podCidrs"][0].as_str().unwrap_or_default().to_string()
    }
}

mod privileged {
    use super::*;

    #[test]
    fn direct_routes_on_one_segment_reconciled_and_never_touching_others() {
        require();
        let mut lab = Lab::new();
        lab.ipam(false);
        lab.agent(1, "10.4.94.11");
        lab.agent(2, "10.4.94.12");
        // A node on the other segment: nobody here may route to it directly.
        lab.grpc(
            "routeplane.ipam.v1.Ipam/RegisterNode",
            r#"{"name": "n3", "addresses": ["10.4.83.21"]}"#,
        );
        lab.wait("both agents registered", || {
            lab.grpc("routeplane.ipam.v1.Ipam/ListNodes", "{}")["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 3)
        });
        let (c1, c2, c3) = (lab.cidr_of("n1"), lab.cidr_of("n2"), lab.cidr_of("n3"));
        let to2 = format!("{c2} via 10.4.94.12");
        lab.wait("n1 routes to n2's pod CIDR, n2 to n1's", || {
            lab.routes(1).contains(&to2) && lab.routes(2).contains(&format!("{c1} via 10.4.94.11"))
        });
        assert!(
            lab.routes(1).contains("proto 194"),
            "routes carry our protocol: {}",
            lab.routes(1)
        );
        assert!(
            !lab.routes(1).contains(&c3),
            "n3 is on another segment: its CIDR follows the default route"
        );

        // Someone else's route stays; ours, deleted by hand, comes back with the periodic reconcile.
        sh(&[
            "ip",
            "-n",
            &lab.ns[1],
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            "10.4.94.12",
        ]);
        sh(&["ip", "-n", &lab.ns[1], "route", "del", &c2]);
        lab.wait("the deleted route is repaired", || {
            lab.routes(1).contains(&to2)
        });
        assert!(
            lab.routes(1).contains("10.99.0.0/24 via 10.4.94.12"),
            "a foreign route is never touched"
        );

        // Stopping the agent leaves its routes; a node deleted meanwhile is swept at the next start.
        lab.stop("n1");
        assert!(
            lab.routes(1).contains(&to2),
            "routes stay while the agent is down"
        );
        lab.stop("n2");
        lab.grpc(
            "routeplane.ipam.v1.Ipam/DeleteNode",
            r#"{"name": "n2", "force": true}"#,
        );
        lab.agent(1, "10.4.94.11");
        lab.wait("the stale route to the deleted node is swept", || {
            !lab.routes(1).contains(&c2)
        });
        assert!(
            lab.routes(1).contains("10.99.0.0/24 via 10.4.94.12"),
            "and the foreign route is still there"
        );
    }

    #[test]
    fn the_seeds_two_traceroutes() {
        require();
        let mut lab = Lab::new().with_router();
        lab.ipam(false);
        lab.agent(1, "10.4.94.11");
        lab.agent_with(2, "10.4.94.12", &["--remote-gateway", "10.4.94.1"]);
        lab.agent(4, "10.4.83.21");
        lab.wait("three agents registered", || {
            lab.grpc("routeplane.ipam.v1.Ipam/ListNodes", "{}")["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 3)
        });
        // The ToRs learn every pod CIDR over BGP; this router stands in for them with static routes.
        let node = |n: &str| {
            lab.grpc(
                "routeplane.ipam.v1.Ipam/GetNode",
                &format!(r#"{{"name": "{n}"}}"#),
            )
        };
        let (n2, n3) = (node("n2"), node("n4"));
        for (n, via) in [
            ("n1", "10.4.94.11"),
            ("n2", "10.4.94.12"),
            ("n4", "10.4.83.21"),
        ] {
            let cidr = node(n)["podCidrs"][0].as_str().unwrap().to_string();
            sh(&["ip", "-n", &lab.ns[3], "route", "add", &cidr, "via", via]);
        }
        let router2 = n2["routerIps"][0].as_str().unwrap().to_string();
        let router3 = n3["routerIps"][0].as_str().unwrap().to_string();
        let cidr2 = n2["podCidrs"][0].as_str().unwrap().to_string();
        lab.wait("n1 has its direct route to n2's pod CIDR", || {
            lab.routes(1).contains(&format!("{cidr2} via 10.4.94.12"))
        });
        assert!(
            lab.routes(2).contains("rp_host"),
            "the node's own pod CIDR goes to its router interface: {}",
            lab.routes(2)
        );

        // Same segment: the target is the first hop.
        assert_eq!(
            lab.traceroute(1, &router2),
            vec![router2.clone()],
            "same segment: one hop"
        );
        // Other segment: through the router (the seed's 10.4.94.1), then the target.
        assert_eq!(
            lab.traceroute(1, &router3),
            vec!["10.4.94.1".to_string(), router3.clone()],
            "other segment: via the router"
        );

        // The agent says the same through its API.
        let direct = lab.agent_api(
            1,
            "ExplainRoute",
            &format!(r#"{{"destination": "{router2}"}}"#),
        );
        let text = direct["explanation"].as_str().unwrap_or_default();
        assert_eq!(direct["kind"], "direct", "{direct}");
        assert!(
            text.contains("via 10.4.94.12") && text.contains("same L2 segment as node n2"),
            "{direct}"
        );
        let far = lab.agent_api(
            1,
            "ExplainRoute",
            &format!(r#"{{"destination": "{router3}"}}"#),
        );
        let text = far["explanation"].as_str().unwrap_or_default();
        assert_eq!(far["kind"], "default", "{far}");
        assert!(
            text.contains("default route via 10.4.94.1")
                && text.contains("node n4 (10.4.83.21) is on another segment; the ToR learned"),
            "{far}"
        );
        let status = lab.agent_api(1, "GetStatus", "{}");
        assert_eq!(
            (
                status["node"].as_str(),
                status["synced"].as_bool(),
                status["routesInstalled"].as_u64()
            ),
            (Some("n1"), Some(true), Some(2)),
            "the direct route to n2's pod CIDR and n1's own to its router interface: {status}"
        );
        let routes = lab.agent_api(1, "ListRoutes", "{}");
        let listed: Vec<(String, String)> = routes["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["node"].as_str().unwrap_or_default().to_string(),
                    r["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert!(
            listed.contains(&("n2".into(), "node n2 is on the same L2 segment".into()))
                && listed.contains(&(
                    "n1".into(),
                    "this node's pod CIDR, to its router interface".into()
                )),
            "{routes}"
        );

        // Its metrics agree (scraped inside n1's namespace).
        let scrape = Command::new("ip")
        .args(["netns", "exec", &lab.ns[1], "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9953; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"])
        .output()
        .unwrap();
        let body = String::from_utf8_lossy(&scrape.stdout);
        assert!(
            body.lines()
                .any(|l| l == "routeplane_agent_routes_installed 2"),
            "{body}"
        );
        assert!(
            body.lines().any(|l| l == "routeplane_agent_synced 1"),
            "{body}"
        );

        // n2 was told to route other segments through 10.4.94.1 itself; n1 leaves them to its default.
        let cidr4 = n3["podCidrs"][0].as_str().unwrap().to_string();
        lab.wait(
            "n2 routes the far node's CIDR through the configured gateway",
            || lab.routes(2).contains(&format!("{cidr4} via 10.4.94.1")),
        );
        assert!(!lab.routes(1).contains(&cidr4), "{}", lab.routes(1));
    }

    #[test]
    fn restarting_an_agent_drops_no_ping() {
        require();
        let mut lab = Lab::new();
        lab.ipam(false);
        lab.agent(1, "10.4.94.11");
        lab.agent(2, "10.4.94.12");
        lab.wait("both agents registered", || {
            lab.grpc("routeplane.ipam.v1.Ipam/ListNodes", "{}")["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 2)
        });
        let n2 = lab.grpc("routeplane.ipam.v1.Ipam/GetNode", r#"{"name": "n2"}"#);
        let (cidr2, router2) = (
            n2["podCidrs"][0].as_str().unwrap().to_string(),
            n2["routerIps"][0].as_str().unwrap().to_string(),
        );
        lab.wait("n1 routes to n2's pod CIDR", || {
            lab.routes(1).contains(&format!("{cidr2} via 10.4.94.12"))
        });
        // 80 pings over 4 s while n1's agent stops and starts again.
        let ping = Command::new("ip")
            .args([
                "netns", "exec", &lab.ns[1], "ping", "-q", "-i", "0.05", "-c", "80", "-W", "1",
                &router2,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        lab.stop("n1");
        lab.agent(1, "10.4.94.11");
        let out = ping.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("80 packets transmitted, 80 received"),
            "pings were lost across the restart:\n{text}\n{}",
            lab.log("n1")
        );
    }

    #[test]
    fn ipv6_pod_cidrs_get_direct_routes_too() {
        require();
        let mut lab = Lab::new();
        lab.ipam(true);
        lab.agent_with(1, "10.4.94.11", &["--address", "fd04:94::11"]);
        lab.agent_with(2, "10.4.94.12", &["--address", "fd04:94::21"]);
        lab.wait("both agents registered", || {
            lab.grpc("routeplane.ipam.v1.Ipam/ListNodes", "{}")["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 2)
        });
        let n2 = lab.grpc("routeplane.ipam.v1.Ipam/GetNode", r#"{"name": "n2"}"#);
        let v6 = n2["podCidrs"][1].as_str().unwrap().to_string();
        let router6 = n2["routerIps"][1].as_str().unwrap().to_string();
        lab.wait("n1 has an IPv6 route to n2's IPv6 pod CIDR", || {
            lab.routes6(1).contains(&format!("{v6} via fd04:94::21"))
        });
        let ping = Command::new("ip")
            .args([
                "netns", "exec", &lab.ns[1], "ping", "-6", "-c", "2", "-W", "2", &router6,
            ])
            .output()
            .unwrap();
        assert!(
            ping.status.success(),
            "n2's IPv6 router IP answers: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }

    #[test]
    fn ebpf_forwards_a_pods_packets_with_no_kernel_route() {
        require();
        let mut lab = Lab::new();
        lab.ipam(true);
        // n1's allocation first (the agent's own registration returns the same), to address the pod.
        let n1 = lab.grpc(
            "routeplane.ipam.v1.Ipam/RegisterNode",
            r#"{"name": "n1", "addresses": ["10.4.94.11", "fd04:94::11"]}"#,
        );
        let router1 = n1["routerIps"][0].as_str().unwrap().to_string();
        let cidr1: routeplane_net::Cidr = n1["podCidrs"][0].as_str().unwrap().parse().unwrap();
        let cidr1_v6: routeplane_net::Cidr = n1["podCidrs"][1].as_str().unwrap().parse().unwrap();
        let pod_ip = cidr1.nth_addr(10).unwrap().to_string();
        let pod_ip6 = cidr1_v6.nth_addr(10).unwrap().to_string();

        // A pod behind n1: its own namespace, a veth to n1, default route through n1's router IP.
        let id = lab.ns[0]
            .trim_start_matches("rpa-")
            .trim_end_matches("-ctl")
            .to_string();
        let pod = format!("rpa-{id}-pod");
        let _ = Command::new("ip").args(["netns", "del", &pod]).output();
        sh(&["ip", "netns", "add", &pod]);
        lab.ns.push(pod.clone());
        // No duplicate address detection on the pod link: its addresses are usable at once.
        for ns in [&lab.ns[1], &pod] {
            sysctl(ns, "net.ipv6.conf.default.accept_dad=0");
        }
        let (host_side, pod_side) = (format!("vp{id}"), format!("pe{id}"));
        sh(&[
            "ip", "-n", &lab.ns[1], "link", "add", &host_side, "type", "veth", "peer", "name",
            &pod_side,
        ]);
        sh(&[
            "ip", "-n", &lab.ns[1], "link", "set", &pod_side, "netns", &pod,
        ]);
        sh(&[
            "ip",
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            &pod_side,
        ]);
        sh(&["ip", "-n", &pod, "link", "set", &pod_side, "up"]);
        sh(&["ip", "-n", &pod, "route", "add", &router1, "dev", &pod_side]);
        sh(&["ip", "-n", &pod, "route", "add", "default", "via", &router1]);
        // IPv6: the pod's default router is a link-local address answered by a static neighbour
        // entry (the node's veth end), as a CNI would set it up.
        sh(&[
            "ip",
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{pod_ip6}/128"),
            "dev",
            &pod_side,
            "nodad",
        ]);
        let host_mac = Command::new("ip")
            .args(["-n", &lab.ns[1], "-o", "link", "show", &host_side])
            .output()
            .unwrap();
        let host_mac = String::from_utf8_lossy(&host_mac.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap()
            .to_string();
        sh(&[
            "ip",
            "-n",
            &pod,
            "-6",
            "neigh",
            "add",
            "fe80::1",
            "lladdr",
            &host_mac,
            "dev",
            &pod_side,
            "nud",
            "permanent",
        ]);
        sh(&[
            "ip", "-n", &pod, "-6", "route", "add", "default", "via", "fe80::1", "dev", &pod_side,
        ]);
        sh(&["ip", "-n", &lab.ns[1], "link", "set", &host_side, "up"]);
        sysctl(&lab.ns[1], "net.ipv4.ip_forward=1");
        // The way back to the pod, both families.
        for host in [format!("{pod_ip}/32"), format!("{pod_ip6}/128")] {
            sh(&[
                "ip", "-n", &lab.ns[1], "route", "add", &host, "dev", &host_side,
            ]);
        }
        sysctl(&lab.ns[1], "net.ipv6.conf.all.forwarding=1");

        // A bpffs of the test's own (this machine may have none on /sys/fs/bpf, and `ip netns exec`
        // remounts /sys anyway); unmounting it at the end frees whatever is pinned there.
        let bpffs = lab.dir.path().join("bpffs");
        std::fs::create_dir(&bpffs).unwrap();
        sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().unwrap()]);
        lab.bpffs.push(bpffs.clone());
        let pins = bpffs.join("routeplane");
        let ebpf_args = [
            "--datapath",
            "ebpf",
            "--pod-interface",
            &host_side,
            "--bpf-pin-dir",
            pins.to_str().unwrap(),
            "--address",
            "fd04:94::11",
        ];
        lab.agent_with(2, "10.4.94.12", &["--address", "fd04:94::21"]);
        lab.agent_with(1, "10.4.94.11", &ebpf_args);
        let n2 = lab.grpc("routeplane.ipam.v1.Ipam/GetNode", r#"{"name": "n2"}"#);
        let (cidr2, router2) = (
            n2["podCidrs"][0].as_str().unwrap().to_string(),
            n2["routerIps"][0].as_str().unwrap().to_string(),
        );
        let (cidr2_v6, router2_v6) = (
            n2["podCidrs"][1].as_str().unwrap().to_string(),
            n2["routerIps"][1].as_str().unwrap().to_string(),
        );
        lab.wait("n2 routes back to n1's pod CIDRs", || {
            lab.routes(2).contains(&format!("{cidr1} via 10.4.94.11"))
                && lab
                    .routes6(2)
                    .contains(&format!("{cidr1_v6} via fd04:94::11"))
        });
        let ping = |to: &str| {
            Command::new("ip")
                .args(["netns", "exec", &pod, "ping", "-c", "1", "-W", "1", to])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let both = || ping(&router2) && ping(&router2_v6);
        lab.wait(
            "the pod reaches n2's router IP through the eBPF map",
            || ping(&router2),
        );
        lab.wait("and n2's IPv6 router IP through the IPv6 map", || {
            ping(&router2_v6)
        });
        let no_kernel_route = |lab: &Lab| {
            assert!(
                !lab.routes(1).contains(&cidr2) && !lab.routes6(1).contains(&cidr2_v6),
                "n1 has no kernel route to n2's pod CIDRs: {}{}",
                lab.routes(1),
                lab.routes6(1)
            );
        };
        no_kernel_route(&lab);
        // The counters are read at each reconcile (every second here).
        let forwarded = |lab: &Lab| {
            lab.metric(1, "routeplane_agent_ebpf_forwarded_packets_total")
                .unwrap_or(0)
        };
        lab.wait("the forwarded counter moves", || forwarded(&lab) > 0);

        // The API shows the map entry and explains the path through it, with the counters.
        let routes = lab.agent_api(1, "ListRoutes", "{}");
        let entry = |cidr: &str| {
            routes["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["destination"] == cidr)
                .unwrap_or_else(|| panic!("no entry for {cidr}: {routes}"))
                .clone()
        };
        for (cidr, gateway) in [(&cidr2, "10.4.94.12"), (&cidr2_v6, "fd04:94::21")] {
            let e = entry(cidr);
            assert_eq!(e["datapath"], "ebpf", "{e}");
            assert_eq!(e["node"], "n2", "{e}");
            assert_eq!(e["gateway"], gateway, "{e}");
        }
        let why = lab.agent_api(
            1,
            "ExplainRoute",
            &format!(r#"{{"destination": "{router2}"}}"#),
        );
        assert_eq!(why["datapath"], "ebpf", "{why}");
        assert!(
            why["explanation"]
                .as_str()
                .unwrap_or("")
                .starts_with("eBPF"),
            "{why}"
        );
        let explained: u64 = why["ebpfForwardedPackets"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(explained > 0, "{why}");

        // Stopped, the agent leaves the classifier and the map pinned: the pod still gets through.
        lab.stop("n1");
        assert!(
            pins.join("rp_routes_v4").exists() && pins.join(format!("link-{host_side}")).exists(),
            "maps and link pinned in {}",
            pins.display()
        );
        assert!(both(), "forwarding continues while the agent is down");

        // Restarted, it takes the pinned link and map over; the counters carry on from the old run.
        let before = explained;
        lab.agent_with(1, "10.4.94.11", &ebpf_args);
        lab.wait(
            "the restarted agent reports the counters it inherited",
            || forwarded(&lab) > before,
        );
        assert!(both(), "forwarding after the restart");
        assert!(
            lab.log("n1")
                .contains("classifier swapped into the pinned link"),
            "{}",
            lab.log("n1")
        );
        no_kernel_route(&lab);

        // Uninstalled, nothing carries the packet any more: the control for everything above.
        lab.stop("n1");
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns[1]])
            .arg(bin("routeplane-agent"))
            .args(["--uninstall-ebpf", "--bpf-pin-dir", pins.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!pins.exists(), "{} removed", pins.display());
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !ping(&router2) && !ping(&router2_v6),
            "with the classifier uninstalled and no kernel route, the pod cannot reach n2"
        );
    }
}
