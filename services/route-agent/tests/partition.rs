//! A node cut off from IPAM while its link stays up (issue #13): an iptables DROP both ways inside
//! the node's namespace — the silent kind of partition, nothing closes, nothing is refused — for
//! 60 s, then healed. The agent notices by HTTP/2 keepalives, says so in GetStatus and its metrics,
//! keeps its routes meanwhile, and once healed catches up with what changed while it was away.
//! Privileged: root, ip, iptables, grpcurl.

use std::time::{Duration, Instant};

use routeplane_testkit::lab::{IPAM_ADDR, NodeLab};

fn require() {
    routeplane_testkit::privileged::require(&["ip", "iptables", "grpcurl"]);
}

mod privileged {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);
    /// How long the partition lasts (the issue's figure).
    const PARTITION: Duration = Duration::from_secs(60);

    fn routes(lab: &NodeLab, node: usize) -> String {
        NodeLab::routes(&lab.nodes[node].ns, "-4")
    }

    /// Drops (or, `heal`, stops dropping) everything between node `node` and IPAM.
    fn partition(lab: &NodeLab, node: usize, heal: bool) {
        let ipam = IPAM_ADDR.split(':').next().unwrap_or_default();
        let action = if heal { "-D" } else { "-A" };
        let ns = &lab.nodes[node].ns;
        for (chain, side) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            let (ok, out) = ns.run(&["iptables", action, chain, side, ipam, "-j", "DROP"]);
            assert!(ok, "iptables {action} {chain}: {out}");
        }
    }

    fn ready(lab: &NodeLab, name: &str) -> bool {
        lab.ipam("ListNodes", "{}").is_ok_and(|v| {
            v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["name"] == name && n["ready"] == true)
        })
    }

    #[test]
    fn a_node_cut_off_from_ipam_says_so_keeps_its_routes_and_catches_up_when_healed() {
        require();
        let mut lab = NodeLab::new();
        lab.add_node("n1", 94, 11);
        lab.add_node("n2", 94, 12);
        lab.start_ipam(false);
        lab.start_agent(0, &[]);
        lab.start_agent(1, &[]);
        lab.wait("both agents registered", LIMIT, || {
            ready(&lab, "n1") && ready(&lab, "n2")
        });
        let c2 = lab.node_allocation("n2").0[0].clone();
        lab.wait("n1 routes to n2's pod CIDR", LIMIT, || {
            routes(&lab, 0).contains(&format!("{c2} via 10.4.94.12"))
        });
        let status = lab.agent_api(0, "GetStatus", "{}");
        assert_eq!(status["ipamConnected"], true, "{status}");
        assert!(status["ipamDisconnectedSince"].is_null(), "{status}");

        partition(&lab, 0, false);
        let cut = Instant::now();
        // Keepalives: a PING after 10 s without traffic, the connection closed 10 s later.
        lab.wait("n1's agent notices the partition", LIMIT, || {
            lab.agent_api(0, "GetStatus", "{}")["ipamConnected"] != true
        });
        let noticed = cut.elapsed();
        println!("the partition was noticed after {noticed:.1?}");
        assert!(noticed <= Duration::from_secs(25), "{noticed:?}");
        let status = lab.agent_api(0, "GetStatus", "{}");
        assert!(
            status["ipamDisconnectedSince"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{status}"
        );
        assert_eq!(status["ipamDisconnects"], "1", "{status}");
        assert_eq!(
            lab.agent_metric(0, "routeplane_agent_ipam_connected"),
            Some(0.0)
        );
        assert_eq!(
            lab.agent_metric(0, "routeplane_agent_ipam_disconnects_total"),
            Some(1.0)
        );
        assert!(
            lab.agent_metric(0, "routeplane_agent_ipam_disconnected_seconds")
                .is_some_and(|s| s > 0.0),
            "{}",
            lab.agent_metrics(0)
        );

        // While n1 is away: a node joins the segment. n2 routes to it; n1 cannot know.
        lab.ipam(
            "RegisterNode",
            r#"{"name": "n3", "addresses": ["10.4.94.13"]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
        let c3 = lab.node_allocation("n3").0[0].clone();
        let to3 = format!("{c3} via 10.4.94.13");
        lab.wait("n2 routes to n3", LIMIT, || routes(&lab, 1).contains(&to3));
        assert!(!routes(&lab, 0).contains(&to3), "n1 is cut off");
        assert!(
            routes(&lab, 0).contains(&format!("{c2} via 10.4.94.12")),
            "n1 keeps its routes while cut off: {}",
            routes(&lab, 0)
        );
        lab.wait("IPAM sees n1's lease run out", LIMIT, || !ready(&lab, "n1"));
        if let Some(rest) = PARTITION.checked_sub(cut.elapsed()) {
            std::thread::sleep(rest);
        }

        partition(&lab, 0, true);
        let healed = Instant::now();
        lab.wait(
            "n1 catches up: connected, routing to n3, Ready again",
            LIMIT,
            || {
                lab.agent_api(0, "GetStatus", "{}")["ipamConnected"] == true
                    && routes(&lab, 0).contains(&to3)
                    && ready(&lab, "n1")
            },
        );
        let caught_up = healed.elapsed();
        println!("after the partition was healed, n1 was current in {caught_up:.1?}");
        assert!(caught_up <= Duration::from_secs(15), "{caught_up:?}");
        let status = lab.agent_api(0, "GetStatus", "{}");
        assert!(status["ipamDisconnectedSince"].is_null(), "{status}");
        assert_eq!(
            lab.agent_metric(0, "routeplane_agent_ipam_disconnected_seconds"),
            Some(0.0)
        );
    }
}
