//! Pods on the seed's network, in network namespaces: two segments behind two routers standing in
//! for the seed's ToRs (static routes where the ToRs have BGP; the compose e2e test has the real
//! thing), three nodes running real agents, pods attached through routeplane-cni. The seed's two
//! traceroutes from a pod, and pod-to-pod traffic on the same node, the same segment and across
//! segments, with both datapaths.

use routeplane_testkit::lab::{NodeLab, Pod};
use routeplane_testkit::wait_for;
use std::time::Duration;

fn require() {
    routeplane_testkit::privileged::require(&["ip", "grpcurl", "ping", "traceroute"]);
}

/// n94a (10.4.94.11) and n94b (10.4.94.12) on segment 94, n83a (10.4.83.11) on segment 83, each
/// with its agent on `datapath`; the routers route every pod CIDR.
fn seed_network(datapath: &str, dual_stack: bool) -> NodeLab {
    let mut lab = NodeLab::new().with_routers();
    lab.start_ipam(dual_stack);
    for (name, segment, host) in [("n94a", 94, 11), ("n94b", 94, 12), ("n83a", 83, 11)] {
        let node = lab.add_node(name, segment, host);
        let address6 = lab.nodes[node].address6.clone();
        if dual_stack {
            lab.start_agent(node, &["--datapath", datapath, "--address", &address6]);
        } else {
            lab.start_agent(node, &["--datapath", datapath]);
        }
    }
    for node in 0..3 {
        lab.wait_agent_ready(node);
    }
    lab.route_pod_cidrs();
    lab
}

fn hops(lab: &NodeLab, pod: &Pod, target: &str) -> Vec<Option<String>> {
    let hops = NodeLab::traceroute(&pod.ns, target);
    println!(
        "pod {} on node {}$ traceroute -n {target}: {hops:?}",
        pod.ip(false),
        lab.nodes[pod.node].name
    );
    hops
}

fn the_seeds_traceroutes_and_pod_traffic(datapath: &str) {
    let lab = seed_network(datapath, false);
    let a1 = lab.add_pod(0, "a1");
    let a2 = lab.add_pod(0, "a2");
    let b1 = lab.add_pod(1, "b1");
    let c1 = lab.add_pod(2, "c1");
    let router_b = lab.node_allocation("n94b").1[0].clone();
    wait_for(
        "the agents route to each other's pod CIDRs",
        Duration::from_secs(20),
        || NodeLab::ping(&a1.ns, &b1.ip(false)) && NodeLab::ping(&a1.ns, &c1.ip(false)),
    );
    // Pod to pod: the same node, the same segment, across the routers; and back.
    for (from, to) in [(&a1, &a2), (&a1, &b1), (&a1, &c1), (&c1, &a2), (&b1, &c1)] {
        assert!(
            NodeLab::ping(&from.ns, &to.ip(false)),
            "{} -> {}\n{}",
            from.ip(false),
            to.ip(false),
            lab.logs()
        );
    }
    // The seed's first traceroute: another node's router IP on the same segment.
    assert_eq!(
        hops(&lab, &a1, &router_b),
        vec![None, None, Some(router_b.clone())],
        "same segment: the node out of the pod, the node into the CIDR, the target"
    );
    // The seed's second: a pod on a node of the other segment.
    assert_eq!(
        hops(&lab, &a1, &c1.ip(false)),
        vec![
            None,
            Some("10.4.94.1".into()),
            Some("10.4.83.1".into()),
            None,
            Some(c1.ip(false))
        ],
        "across segments: node, ToR, ToR (from its segment address), node, pod"
    );
    // Pods of one node: out of one pod, into the CIDR — the node counted twice, as the rule says.
    assert_eq!(
        hops(&lab, &a1, &a2.ip(false)),
        vec![None, None, Some(a2.ip(false))]
    );
    // The nodes dropped the expiring packets, answering none: counted.
    let drops = lab
        .agent_metric(0, "routeplane_agent_ebpf_hop_drops_total")
        .unwrap_or(0.0);
    assert!(drops > 0.0, "node n94a counted its silent drops");
    let status = lab.agent_api(0, "GetStatus", "{}");
    assert_eq!(status["classifiers"], true, "{status}");
    assert_eq!(status["pods"], 2, "{status}");
    assert_eq!(status["datapath"], datapath, "{status}");

    // Every metric the README lists, and what this node's state says each must be.
    routeplane_testkit::wait_for("the pods reported to IPAM", Duration::from_secs(20), || {
        lab.agent_metric(0, "routeplane_agent_pods_report_pending") == Some(0.0)
    });
    let text = lab.agent_metrics(0);
    routeplane_testkit::assert_readme_metrics("routeplane_agent_", &text);
    let value = |sample: &str| {
        routeplane_testkit::metric_sample(&text, sample)
            .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
    };
    assert_eq!(value("routeplane_agent_pods"), 2.0);
    assert_eq!(value("routeplane_agent_synced"), 1.0);
    assert_eq!(value("routeplane_agent_ipam_connected"), 1.0);
    assert_eq!(value("routeplane_agent_feed_skipped_entries_total"), 0.0);
    assert_eq!(value("routeplane_agent_reconcile_errors_total"), 0.0);
    assert!(value("routeplane_agent_reconciles_total") >= 1.0);
    let cidr = r#"{cidr="10.5.112.0/24"}"#;
    assert_eq!(
        value(&format!("routeplane_agent_pod_ips_in_use{cidr}")),
        2.0
    );
    // 256 addresses less network, router (rp_host), broadcast and the two pods.
    assert_eq!(
        value(&format!("routeplane_agent_pod_ips_free{cidr}")),
        251.0
    );
}

mod privileged {
    use super::*;

    #[test]
    fn the_seeds_traceroutes_from_a_pod_with_the_ebpf_datapath() {
        require();
        the_seeds_traceroutes_and_pod_traffic("ebpf");
    }

    #[test]
    fn the_seeds_traceroutes_from_a_pod_with_kernel_routes() {
        require();
        the_seeds_traceroutes_and_pod_traffic("kernel");
    }

    #[test]
    fn ipv6_pods_reach_each_other_on_the_same_node_and_segment() {
        require();
        let lab = seed_network("ebpf", true);
        let a1 = lab.add_pod(0, "a1");
        let a2 = lab.add_pod(0, "a2");
        let b1 = lab.add_pod(1, "b1");
        assert!(
            !a1.ip(true).is_empty(),
            "a dual-stack pod has an IPv6 address: {}",
            a1.result
        );
        wait_for(
            "IPv6 pod to pod across the segment",
            Duration::from_secs(20),
            || NodeLab::ping(&a1.ns, &b1.ip(true)),
        );
        assert!(NodeLab::ping(&a1.ns, &a2.ip(true)), "IPv6 on one node");
        assert!(NodeLab::ping(&b1.ns, &a1.ip(true)), "and back");
    }
}
