//! Real agents and a real IPAM in the seed's node network (testkit's NodeLab): direct routes on
//! one L2 segment, never to another; the seed's two traceroutes from a node; an agent restarted
//! under a ping; IPv6 pod CIDRs; the eBPF datapath on a pod interface, surviving the agent's
//! restart and gone with its uninstall. Privileged: root, ip, grpcurl, traceroute, ping.

use std::process::{Command, Stdio};
use std::time::Duration;

use routeplane_testkit::Netns;
use routeplane_testkit::lab::NodeLab;

const LIMIT: Duration = Duration::from_secs(20);

fn require() {
    routeplane_testkit::privileged::require(&["ip", "grpcurl", "traceroute", "ping"]);
}

/// An IPAM call that must succeed.
fn ipam(lab: &NodeLab, method: &str, body: &str) -> serde_json::Value {
    lab.ipam(method, body)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()))
}

fn routes(lab: &NodeLab, node: usize) -> String {
    NodeLab::routes(&lab.nodes[node].ns, "-4")
}

fn routes6(lab: &NodeLab, node: usize) -> String {
    NodeLab::routes(&lab.nodes[node].ns, "-6")
}

fn node_count(lab: &NodeLab) -> usize {
    ipam(lab, "ListNodes", "{}")["nodes"]
        .as_array()
        .map_or(0, Vec::len)
}

/// A node's first pod CIDR and router IP of a family.
fn allocation(lab: &NodeLab, name: &str, v6: bool) -> (String, String) {
    let (cidrs, routers) = lab.node_allocation(name);
    let pick = |list: Vec<String>| {
        list.into_iter()
            .find(|a| a.contains(':') == v6)
            .unwrap_or_else(|| {
                panic!(
                    "{name} has no {} allocation",
                    if v6 { "IPv6" } else { "IPv4" }
                )
            })
    };
    (pick(cidrs), pick(routers))
}

mod privileged {
    use super::*;

    /// Segment 94 with n1 (10.4.94.11) and n2 (10.4.94.12), their agents running.
    fn two_nodes(dual_stack: bool, extra: &[&str]) -> NodeLab {
        let mut lab = NodeLab::new();
        lab.add_node("n1", 94, 11);
        lab.add_node("n2", 94, 12);
        lab.start_ipam(dual_stack);
        for node in 0..2 {
            let (address, address6) = (
                lab.nodes[node].address.clone(),
                lab.nodes[node].address6.clone(),
            );
            let mut args = extra.to_vec();
            if dual_stack {
                args.extend(["--address", &address, "--address", &address6]);
            }
            lab.start_agent(node, &args);
        }
        lab.wait("both agents registered", LIMIT, || node_count(&lab) == 2);
        lab
    }

    #[test]
    fn direct_routes_on_one_segment_reconciled_and_never_touching_others() {
        require();
        let mut lab = two_nodes(false, &[]);
        // A node on the other segment: nobody here may route to it directly.
        ipam(
            &lab,
            "RegisterNode",
            r#"{"name": "n3", "addresses": ["10.4.83.21"]}"#,
        );
        let c1 = allocation(&lab, "n1", false).0;
        let c2 = allocation(&lab, "n2", false).0;
        let c3 = allocation(&lab, "n3", false).0;
        let to2 = format!("{c2} via 10.4.94.12");
        lab.wait("n1 routes to n2's pod CIDR, n2 to n1's", LIMIT, || {
            routes(&lab, 0).contains(&to2)
                && routes(&lab, 1).contains(&format!("{c1} via 10.4.94.11"))
        });
        assert!(
            routes(&lab, 0).contains("proto 194"),
            "routes carry our protocol: {}",
            routes(&lab, 0)
        );
        assert!(
            !routes(&lab, 0).contains(&c3),
            "n3 is on another segment: its CIDR follows the default route"
        );

        // Someone else's route stays; ours, deleted by hand, comes back with the periodic reconcile.
        let n1 = &lab.nodes[0].ns;
        n1.ip(&["route", "add", "10.99.0.0/24", "via", "10.4.94.12"]);
        n1.ip(&["route", "del", &c2]);
        lab.wait("the deleted route is repaired", LIMIT, || {
            routes(&lab, 0).contains(&to2)
        });
        assert!(
            routes(&lab, 0).contains("10.99.0.0/24 via 10.4.94.12"),
            "a foreign route is never touched"
        );

        // Stopping the agent leaves its routes; a node deleted meanwhile is swept at the next start.
        lab.stop("n1");
        assert!(
            routes(&lab, 0).contains(&to2),
            "routes stay while the agent is down"
        );
        lab.stop("n2");
        ipam(&lab, "DeleteNode", r#"{"name": "n2", "force": true}"#);
        lab.start_agent(0, &[]);
        lab.wait(
            "the stale route to the deleted node is swept",
            LIMIT,
            || !routes(&lab, 0).contains(&c2),
        );
        assert!(
            routes(&lab, 0).contains("10.99.0.0/24 via 10.4.94.12"),
            "and the foreign route is still there"
        );
    }

    #[test]
    fn the_seeds_two_traceroutes() {
        require();
        let mut lab = NodeLab::new().with_routers();
        lab.add_node("n1", 94, 11);
        lab.add_node("n2", 94, 12);
        lab.add_node("n4", 83, 21);
        lab.start_ipam(false);
        lab.start_agent(0, &[]);
        lab.start_agent(1, &["--remote-gateway", "10.4.94.1"]);
        lab.start_agent(2, &[]);
        lab.wait("three agents registered", LIMIT, || node_count(&lab) == 3);
        // The ToRs learn every pod CIDR over BGP; the routers stand in for them with static routes.
        lab.route_pod_cidrs();
        let (cidr2, router2) = allocation(&lab, "n2", false);
        let (cidr4, router4) = allocation(&lab, "n4", false);
        lab.wait("n1 has its direct route to n2's pod CIDR", LIMIT, || {
            routes(&lab, 0).contains(&format!("{cidr2} via 10.4.94.12"))
        });
        assert!(
            routes(&lab, 1).contains("rp_host"),
            "the node's own pod CIDR goes to its router interface: {}",
            routes(&lab, 1)
        );

        let n1 = &lab.nodes[0].ns;
        // Same segment: straight to n2, which counts as a hop into its pod CIDR and answers for
        // none (the seed's hop rule: a silent `*`), then the target.
        assert_eq!(
            NodeLab::traceroute(n1, &router2),
            vec![None, Some(router2.clone())],
            "same segment: n2 directly"
        );
        // Other segment: through the seed's 10.4.94.1 and the other ToR (answering from its
        // segment's gateway), n4 silent, then the target.
        assert_eq!(
            NodeLab::traceroute(n1, &router4),
            vec![
                Some("10.4.94.1".to_string()),
                Some("10.4.83.1".to_string()),
                None,
                Some(router4.clone())
            ],
            "other segment: via the routers"
        );
        assert!(
            lab.agent_metric(1, "routeplane_agent_ebpf_hop_drops_total") > Some(0.0),
            "n2's silence is the hop rule, counted"
        );
        // The agent says the same through its API.
        let direct = lab.agent_api(
            0,
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
            0,
            "ExplainRoute",
            &format!(r#"{{"destination": "{router4}"}}"#),
        );
        let text = far["explanation"].as_str().unwrap_or_default();
        assert_eq!(far["kind"], "default", "{far}");
        assert!(
            text.contains("default route via 10.4.94.1")
                && text.contains("node n4 (10.4.83.21) is on another segment; the ToR learned"),
            "{far}"
        );
        let status = lab.agent_api(0, "GetStatus", "{}");
        assert_eq!(
            (
                status["node"].as_str(),
                status["synced"].as_bool(),
                status["routesInstalled"].as_u64()
            ),
            (Some("n1"), Some(true), Some(2)),
            "the direct route to n2's pod CIDR and n1's own to its router interface: {status}"
        );
        let listed = lab.agent_api(0, "ListRoutes", "{}");
        let listed: Vec<(String, String)> = listed["routes"]
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
            "{listed:?}"
        );
        // Its metrics agree.
        assert_eq!(
            lab.agent_metric(0, "routeplane_agent_routes_installed"),
            Some(2.0)
        );
        assert_eq!(lab.agent_metric(0, "routeplane_agent_synced"), Some(1.0));

        // n2 was told to route other segments through 10.4.94.1 itself; n1 leaves them to its default.
        lab.wait(
            "n2 routes the far node's CIDR through the configured gateway",
            LIMIT,
            || routes(&lab, 1).contains(&format!("{cidr4} via 10.4.94.1")),
        );
        assert!(!routes(&lab, 0).contains(&cidr4), "{}", routes(&lab, 0));
    }

    #[test]
    fn restarting_an_agent_drops_no_ping() {
        require();
        let mut lab = two_nodes(false, &[]);
        let (cidr2, router2) = allocation(&lab, "n2", false);
        lab.wait("n1 routes to n2's pod CIDR", LIMIT, || {
            routes(&lab, 0).contains(&format!("{cidr2} via 10.4.94.12"))
        });
        // 200 pings over 10 s, each answer a line in a file, while n1's agent stops and starts.
        let replies = lab.path("ping.txt");
        let mut ping = Command::new("ip")
            .args(["netns", "exec", lab.nodes[0].ns.name()])
            .args(["ping", "-i", "0.05", "-c", "200", "-W", "1", &router2])
            .stdout(std::fs::File::create(&replies).expect("ping's output file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        let answered = || {
            std::fs::read_to_string(&replies)
                .unwrap_or_default()
                .matches("bytes from")
                .count()
        };
        lab.wait("the ping is answered before the restart", LIMIT, || {
            answered() >= 5
        });
        lab.stop("n1");
        lab.start_agent(0, &[]);
        lab.wait("the restarted agent has synced", LIMIT, || {
            lab.agent_metric(0, "routeplane_agent_synced") == Some(1.0)
        });
        assert!(
            ping.try_wait().expect("ping's status").is_none(),
            "the ping still runs once the restarted agent has synced: the restart is covered"
        );
        let status = ping.wait().expect("ping's status");
        let text = std::fs::read_to_string(&replies).unwrap_or_default();
        assert!(
            status.success() && text.contains("200 packets transmitted, 200 received"),
            "pings were lost across the restart:\n{text}\n{}",
            lab.logs()
        );
    }

    #[test]
    fn ipv6_pod_cidrs_get_direct_routes_too() {
        require();
        let lab = two_nodes(true, &[]);
        let (v6, router6) = allocation(&lab, "n2", true);
        lab.wait("n1 has an IPv6 route to n2's IPv6 pod CIDR", LIMIT, || {
            routes6(&lab, 0).contains(&format!("{v6} via fd04:94::12"))
        });
        let (ok, out) = lab.nodes[0]
            .ns
            .run(&["ping", "-6", "-c", "2", "-W", "2", &router6]);
        assert!(ok, "n2's IPv6 router IP answers: {out}");
    }

    /// A pod behind n1 wired by hand: its namespace, a veth to n1, routes through n1's router IP
    /// (IPv6: a link-local router answered by a static neighbour entry, as a CNI sets it up).
    fn hand_made_pod(lab: &NodeLab, pod_ip: &str, pod_ip6: &str, router1: &str) -> (Netns, String) {
        let pod = Netns::new(&lab.id, "pod");
        let n1 = &lab.nodes[0].ns;
        // No duplicate address detection on the pod link: its addresses are usable at once.
        n1.sysctl("net.ipv6.conf.default.accept_dad=0");
        pod.sysctl("net.ipv6.conf.default.accept_dad=0");
        let (host_side, pod_side) = (format!("vp{}", lab.id), format!("pe{}", lab.id));
        routeplane_testkit::netns::veth(n1, &host_side, &pod, &pod_side);
        pod.ip(&["addr", "add", &format!("{pod_ip}/32"), "dev", &pod_side]);
        pod.ip(&["route", "add", router1, "dev", &pod_side]);
        pod.ip(&["route", "add", "default", "via", router1]);
        pod.ip(&[
            "addr",
            "add",
            &format!("{pod_ip6}/128"),
            "dev",
            &pod_side,
            "nodad",
        ]);
        let (_, link) = n1.run(&["ip", "-o", "link", "show", &host_side]);
        let host_mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("the veth's MAC address")
            .to_string();
        pod.ip(&[
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
        pod.ip(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", &pod_side,
        ]);
        n1.sysctl("net.ipv4.ip_forward=1");
        n1.sysctl("net.ipv6.conf.all.forwarding=1");
        // The way back to the pod, both families.
        for host in [format!("{pod_ip}/32"), format!("{pod_ip6}/128")] {
            n1.ip(&["route", "add", &host, "dev", &host_side]);
        }
        (pod, host_side)
    }

    #[test]
    fn ebpf_forwards_a_pods_packets_with_no_kernel_route() {
        require();
        let mut lab = NodeLab::new();
        lab.add_node("n1", 94, 11);
        lab.add_node("n2", 94, 12);
        lab.start_ipam(true);
        // n1's allocation first (the agent's own registration returns the same), to address the pod.
        let n1 = ipam(
            &lab,
            "RegisterNode",
            r#"{"name": "n1", "addresses": ["10.4.94.11", "fd04:94::11"]}"#,
        );
        let router1 = n1["routerIps"][0].as_str().unwrap_or_default().to_string();
        let cidr1: routeplane_net::Cidr = n1["podCidrs"][0]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap();
        let cidr1_v6: routeplane_net::Cidr = n1["podCidrs"][1]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap();
        let pod_ip = cidr1.nth_addr(10).unwrap().to_string();
        let pod_ip6 = cidr1_v6.nth_addr(10).unwrap().to_string();
        let (pod, host_side) = hand_made_pod(&lab, &pod_ip, &pod_ip6, &router1);

        let pins = lab.nodes[0].pins.clone();
        let ebpf_args = [
            "--datapath",
            "ebpf",
            "--pod-interface",
            &host_side,
            "--address",
            "10.4.94.11",
            "--address",
            "fd04:94::11",
        ];
        lab.start_agent(1, &["--address", "10.4.94.12", "--address", "fd04:94::12"]);
        lab.start_agent(0, &ebpf_args);
        lab.wait("both agents registered", LIMIT, || node_count(&lab) == 2);
        let (cidr2, router2) = allocation(&lab, "n2", false);
        let (cidr2_v6, router2_v6) = allocation(&lab, "n2", true);
        lab.wait("n2 routes back to n1's pod CIDRs", LIMIT, || {
            routes(&lab, 1).contains(&format!("{cidr1} via 10.4.94.11"))
                && routes6(&lab, 1).contains(&format!("{cidr1_v6} via fd04:94::11"))
        });
        let both = || NodeLab::ping(&pod, &router2) && NodeLab::ping(&pod, &router2_v6);
        lab.wait(
            "the pod reaches n2's router IP through the eBPF map",
            LIMIT,
            || NodeLab::ping(&pod, &router2),
        );
        lab.wait(
            "and n2's IPv6 router IP through the IPv6 map",
            LIMIT,
            || NodeLab::ping(&pod, &router2_v6),
        );
        let no_kernel_route = |lab: &NodeLab| {
            assert!(
                !routes(lab, 0).contains(&cidr2) && !routes6(lab, 0).contains(&cidr2_v6),
                "n1 has no kernel route to n2's pod CIDRs: {}{}",
                routes(lab, 0),
                routes6(lab, 0)
            );
        };
        no_kernel_route(&lab);
        // The counters are read at each reconcile (every second here).
        let forwarded = |lab: &NodeLab| {
            lab.agent_metric(0, "routeplane_agent_ebpf_forwarded_packets_total")
                .unwrap_or(0.0)
        };
        lab.wait("the forwarded counter moves", LIMIT, || {
            forwarded(&lab) > 0.0
        });

        // The API shows the map entry and explains the path through it, with the counters.
        let listed = lab.agent_api(0, "ListRoutes", "{}");
        let entry = |cidr: &str| {
            listed["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["destination"] == cidr)
                .unwrap_or_else(|| panic!("no entry for {cidr}: {listed}"))
                .clone()
        };
        for (cidr, gateway) in [(&cidr2, "10.4.94.12"), (&cidr2_v6, "fd04:94::12")] {
            let e = entry(cidr);
            assert_eq!(e["datapath"], "ebpf", "{e}");
            assert_eq!(e["node"], "n2", "{e}");
            assert_eq!(e["gateway"], gateway, "{e}");
        }
        let why = lab.agent_api(
            0,
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
        let explained: f64 = why["ebpfForwardedPackets"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        assert!(explained > 0.0, "{why}");

        // Stopped, the agent leaves the classifier and the map pinned: the pod still gets through.
        lab.stop("n1");
        assert!(
            pins.join("rp_routes_v4").exists() && pins.join(format!("link-{host_side}")).exists(),
            "maps and link pinned in {}",
            pins.display()
        );
        assert!(both(), "forwarding continues while the agent is down");

        // Restarted, it takes the pinned link and map over; the counters carry on from the old run.
        lab.start_agent(0, &ebpf_args);
        lab.wait(
            "the restarted agent reports the counters it inherited",
            LIMIT,
            || forwarded(&lab) > explained,
        );
        assert!(both(), "forwarding after the restart");
        assert!(
            lab.service("n1")
                .is_some_and(|s| s.log().contains("classifier swapped into the pinned link")),
            "{}",
            lab.logs()
        );
        no_kernel_route(&lab);

        // Uninstalled, nothing carries the packet any more: the control for everything above.
        lab.stop("n1");
        let (ok, out) = lab.nodes[0].ns.run(&[
            routeplane_testkit::bin("routeplane-agent")
                .to_str()
                .unwrap_or_default(),
            "--uninstall-ebpf",
            "--bpf-pin-dir",
            pins.to_str().unwrap_or_default(),
        ]);
        assert!(ok, "uninstall: {out}");
        assert!(!pins.exists(), "{} removed", pins.display());
        lab.wait(
            "with the classifier uninstalled and no kernel route, the pod cannot reach n2",
            LIMIT,
            || !NodeLab::ping(&pod, &router2) && !NodeLab::ping(&pod, &router2_v6),
        );
        // And it stays so: not a moment's loss.
        assert!(!both());
    }
}
