//! The agent's one connection to IPAM (issue #15, scale): registration, the heartbeat, the Watch
//! feed and pod reports ride a single mutual-TLS HTTP/2 connection, so that 5,000 nodes cost IPAM
//! 5,000 connections, not twice that plus a new one per pod report; after IPAM restarts, the agent
//! is back on one connection, beating and following. Its beats come as heartbeat datagrams (UDP
//! beside that connection, not another connection), before and after the restart. Privileged:
//! root, ip, ss, grpcurl.

use std::time::Duration;

use routeplane_testkit::lab::{IPAM_ADDR, NodeLab};

fn require() {
    routeplane_testkit::privileged::require(&["ip", "ss", "grpcurl"]);
}

mod privileged {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    /// Established TCP connections from node `node`'s namespace to IPAM.
    fn connections_to_ipam(lab: &NodeLab, node: usize) -> Vec<String> {
        let (host, port) = IPAM_ADDR.split_once(':').unwrap();
        let (ok, out) = lab.nodes[node].ns.run(&[
            "ss",
            "-tnH",
            "state",
            "established",
            "dst",
            host,
            "dport",
            "=",
            &format!(":{port}"),
        ]);
        assert!(ok, "ss: {out}");
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    fn ready(lab: &NodeLab) -> bool {
        lab.ipam("GetNode", r#"{"name": "n1"}"#)
            .is_ok_and(|v| v["ready"] == true)
    }

    /// IPAM's count of open Heartbeat streams.
    fn beating(lab: &NodeLab) -> bool {
        let metrics =
            routeplane_testkit::scrape(Some(lab.ctl.name()), "127.0.0.1:9951").unwrap_or_default();
        routeplane_testkit::metric_sample(&metrics, "routeplane_ipam_heartbeat_streams")
            == Some(1.0)
    }

    /// IPAM's count of heartbeat datagrams taken.
    fn datagrams_taken(lab: &NodeLab) -> f64 {
        let metrics =
            routeplane_testkit::scrape(Some(lab.ctl.name()), "127.0.0.1:9951").unwrap_or_default();
        routeplane_testkit::metric_sample(
            &metrics,
            "routeplane_ipam_heartbeat_datagrams_taken_total",
        )
        .unwrap_or(0.0)
    }

    /// The node's beats come as datagrams (UDP, from the node's namespace to IPAM's): the count
    /// grows by three from what it is now.
    fn beating_with_datagrams(lab: &NodeLab) {
        let from = datagrams_taken(lab);
        lab.wait("n1's beats taken as heartbeat datagrams", LIMIT, || {
            datagrams_taken(lab) >= from + 3.0
        });
    }

    /// The count once it has held still for a second (a connection being replaced shows two for
    /// a moment), within LIMIT.
    fn steady_connections(lab: &NodeLab) -> Vec<String> {
        let mut last = connections_to_ipam(lab, 0);
        for _ in 0..30 {
            std::thread::sleep(Duration::from_secs(1));
            let now = connections_to_ipam(lab, 0);
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }

    #[test]
    fn registration_heartbeat_watch_and_pod_reports_share_one_connection() {
        require();
        let mut lab = NodeLab::new();
        lab.add_node("n1", 94, 11);
        lab.start_ipam(false);
        lab.start_agent(0, &[]);
        lab.wait("n1 registered and beating", LIMIT, || {
            ready(&lab) && beating(&lab)
        });
        lab.wait("n1's agent follows the feed", LIMIT, || {
            lab.agent_metric(0, "routeplane_agent_synced") == Some(1.0)
        });
        lab.wait_agent_ready(0);
        beating_with_datagrams(&lab);
        // A pod: its IP reported to IPAM (SyncPodIPs) on the same connection.
        let pod = lab.add_pod(0, "web");
        lab.wait("the pod reported to IPAM", LIMIT, || {
            !lab.ipam_pod_ips("n1").is_empty()
        });
        let held = steady_connections(&lab);
        assert_eq!(
            held.len(),
            1,
            "one connection to IPAM for registration, heartbeat, Watch and reports: {held:#?}\n{}",
            lab.logs()
        );

        // IPAM restarts: the agent comes back on one connection, beating and following.
        let disconnects = lab
            .agent_metric(0, "routeplane_agent_ipam_disconnects_total")
            .unwrap_or(0.0);
        lab.stop_ipam();
        lab.start_ipam(false);
        lab.wait("the feed lost and found again", LIMIT, || {
            lab.agent_metric(0, "routeplane_agent_ipam_disconnects_total")
                .is_some_and(|d| d > disconnects)
                && lab.agent_metric(0, "routeplane_agent_ipam_connected") == Some(1.0)
        });
        lab.wait("n1 beating at the restarted IPAM", LIMIT, || {
            ready(&lab) && beating(&lab)
        });
        beating_with_datagrams(&lab);
        let held = steady_connections(&lab);
        assert_eq!(
            held.len(),
            1,
            "one connection again after IPAM's restart: {held:#?}\n{}",
            lab.logs()
        );
        lab.del_pod(&pod);
    }
}
