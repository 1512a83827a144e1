//! routeplane-cni called as a container runtime calls it (CNI_* in the environment, the network
//! configuration on stdin), against real routeplane-agents and routeplane-ipam in network
//! namespaces (testkit's lab): what ADD wires, what DEL, CHECK, GC, STATUS and VERSION answer, and
//! every kind of bad input, each answered with the spec's error JSON naming the value, leaving
//! nothing half-wired.

use std::time::Duration;

use routeplane_testkit::lab::{NodeLab, Pod};
use routeplane_testkit::{Netns, wait_for, wait_until};

fn require() {
    routeplane_testkit::privileged::require(&["ip", "grpcurl", "ping"]);
}

/// A lab with IPAM and one node (n1, 10.4.94.11) whose agent serves ADD.
fn one_node(extra: &[&str]) -> NodeLab {
    let mut lab = NodeLab::new();
    lab.start_ipam(false);
    lab.add_node("n1", 94, 11);
    lab.start_agent(0, extra);
    lab.wait_agent_ready(0);
    lab
}

/// One bad invocation: what it is, command, container, netns, ifname, stdin, the error code, and
/// words its message must hold.
type BadInput<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    String,
    u64,
    &'a str,
);

fn host_links(lab: &NodeLab, node: usize) -> Vec<String> {
    let (_, out) = lab.nodes[node].ns.run(&["ip", "-o", "link", "show"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or_default().to_string())
        .filter(|n| n.starts_with("rp") && n.len() == 14)
        .collect()
}

mod privileged {
    use super::*;

    #[test]
    fn add_wires_the_pod_check_confirms_it_and_del_takes_it_all_away() {
        require();
        let lab = one_node(&[]);
        let (cidrs, routers) = lab.node_allocation("n1");
        let pod = lab.add_pod(0, "busybox");
        let ip = pod.ip(false);
        let r = &pod.result;
        assert_eq!(r["cniVersion"], "1.1.0", "{r}");
        assert!(cidrs[0].starts_with("10.5.11"), "{cidrs:?}");
        assert_eq!(r["ips"][0]["address"], format!("{ip}/32"), "{r}");
        assert_eq!(r["ips"][0]["gateway"], routers[0], "{r}");
        assert_eq!(r["ips"][0]["interface"], 1, "{r}");
        assert_eq!(r["interfaces"][1]["name"], "eth0", "{r}");
        assert_eq!(r["interfaces"][1]["sandbox"], pod.netns_path(), "{r}");
        assert_eq!(
            r["routes"][0],
            serde_json::json!({"dst": "0.0.0.0/0", "gw": routers[0]})
        );
        let host = r["interfaces"][0]["name"].as_str().unwrap().to_string();

        // Inside: eth0 with the /32 and a default route via the router IP; outside: the way back.
        let (_, inside) = pod.ns.run(&["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert!(inside.contains(&format!("inet {ip}/32")), "{inside}");
        let inside = NodeLab::routes(&pod.ns, "-4");
        assert!(
            inside.contains(&format!("default via {} dev eth0", routers[0])),
            "{inside}"
        );
        let outside = NodeLab::routes(&lab.nodes[0].ns, "-4");
        assert!(
            outside.contains(&format!("{ip} dev {host} proto 194 scope link")),
            "{outside}"
        );
        assert!(
            NodeLab::ping(&pod.ns, &routers[0]),
            "the pod reaches its node's router IP"
        );
        assert!(
            NodeLab::ping(&lab.nodes[0].ns, &ip),
            "the node reaches the pod"
        );

        let check = lab.check_pod(&pod);
        assert_eq!(
            (check.status, check.stdout.as_str()),
            (0, ""),
            "{}",
            lab.logs()
        );

        // IPAM's view catches up: the attachment, handed out by the agent.
        let owner = format!("{}/eth0", pod.container_id);
        wait_until("IPAM lists the pod", Duration::from_secs(10), || {
            let ips = lab.ipam_pod_ips("n1");
            match ips.get(&owner) {
                Some((have, by)) if have == &vec![ip.clone()] && by == "agent" => Ok(()),
                _ => Err(format!("{ips:?}")),
            }
        });

        let del = lab.del_pod(&pod);
        assert_eq!((del.status, del.stdout.as_str()), (0, ""));
        assert!(host_links(&lab, 0).is_empty(), "the veth pair is gone");
        assert!(
            !NodeLab::routes(&lab.nodes[0].ns, "-4").contains(&ip),
            "and the host route"
        );
        let again = lab.del_pod(&pod);
        assert_eq!(again.status, 0, "DEL twice is fine: {}", again.stdout);
        let check = lab.check_pod(&pod);
        assert_eq!(
            check.json["code"], 3,
            "CHECK of a pod gone: {}",
            check.stdout
        );
        wait_until("IPAM forgets the pod", Duration::from_secs(10), || {
            let ips = lab.ipam_pod_ips("n1");
            if ips.is_empty() {
                Ok(())
            } else {
                Err(format!("{ips:?}"))
            }
        });
    }

    #[test]
    fn bad_input_gets_the_spec_error_naming_the_value_and_leaves_nothing_behind() {
        require();
        let lab = one_node(&[]);
        let target = Netns::new(&lab.id, "target");
        let netns = format!("/var/run/netns/{}", target.name());
        let conf = lab.conf("1.1.0");
        let cases: Vec<BadInput> = vec![
            (
                "malformed stdin",
                "ADD",
                "c1",
                &netns,
                "eth0",
                "{not json".into(),
                6,
                "not valid JSON",
            ),
            (
                "truncated stdin",
                "ADD",
                "c1",
                &netns,
                "eth0",
                conf[..20].to_string(),
                6,
                "not valid JSON",
            ),
            (
                "empty stdin",
                "ADD",
                "c1",
                &netns,
                "eth0",
                String::new(),
                6,
                "not valid JSON",
            ),
            (
                "unknown cniVersion",
                "ADD",
                "c1",
                &netns,
                "eth0",
                lab.conf("2.0.0"),
                1,
                "cniVersion \"2.0.0\" is not supported",
            ),
            (
                "no CNI_CONTAINERID",
                "ADD",
                "",
                &netns,
                "eth0",
                conf.clone(),
                4,
                "CNI_CONTAINERID is not set",
            ),
            (
                "no CNI_NETNS",
                "ADD",
                "c1",
                "",
                "eth0",
                conf.clone(),
                4,
                "CNI_NETNS is not set",
            ),
            (
                "no CNI_IFNAME",
                "ADD",
                "c1",
                &netns,
                "",
                conf.clone(),
                4,
                "CNI_IFNAME is not set",
            ),
            (
                "a netns that does not exist",
                "ADD",
                "c1",
                "/var/run/netns/no-such-pod",
                "eth0",
                conf.clone(),
                3,
                "/var/run/netns/no-such-pod does not exist",
            ),
            (
                "a relative netns",
                "ADD",
                "c1",
                "netns/x",
                "eth0",
                conf.clone(),
                7,
                "network namespace \"netns/x\"",
            ),
            (
                "a container ID with a slash",
                "ADD",
                "c/../1",
                &netns,
                "eth0",
                conf.clone(),
                7,
                "container ID \"c/../1\"",
            ),
            (
                "an interface name too long",
                "ADD",
                "c1",
                &netns,
                "eth0123456789abcd",
                conf.clone(),
                7,
                "interface name \"eth0123456789abcd\"",
            ),
            (
                "CHECK of an unknown container",
                "CHECK",
                "c9",
                &netns,
                "eth0",
                conf.clone(),
                3,
                "c9/eth0 is not attached",
            ),
            (
                "CHECK on CNI 0.3.1",
                "CHECK",
                "c9",
                &netns,
                "eth0",
                lab.conf("0.3.1"),
                1,
                "cniVersion 0.4.0 or later",
            ),
            (
                "GC without valid attachments",
                "GC",
                "",
                "",
                "",
                conf.clone(),
                7,
                "cni.dev/valid-attachments",
            ),
            (
                "an unknown verb",
                "FROB",
                "c1",
                &netns,
                "eth0",
                conf.clone(),
                4,
                "CNI_COMMAND \"FROB\"",
            ),
        ];
        for (what, command, id, ns, ifname, stdin, code, words) in cases {
            let out = lab.cni(0, command, id, ns, ifname, &[], &stdin);
            assert_ne!(out.status, 0, "{what}: exit status {}", out.stdout);
            assert_eq!(out.json["code"], code, "{what}: {}", out.stdout);
            let msg = out.json["msg"].as_str().unwrap_or_default();
            assert!(
                msg.contains(words),
                "{what}: {msg:?} should name it ({words})"
            );
            assert!(out.json["cniVersion"].is_string(), "{what}: {}", out.stdout);
        }
        assert!(
            host_links(&lab, 0).is_empty(),
            "nothing half-wired: {:?}",
            host_links(&lab, 0)
        );
        assert_eq!(
            lab.attachments(0)["attachments"],
            serde_json::Value::Null,
            "no address held: {}",
            lab.attachments(0)
        );
        let (_, inside) = target.run(&["ip", "-o", "link", "show"]);
        assert_eq!(
            inside.lines().count(),
            1,
            "only lo in the target namespace: {inside}"
        );

        // ADD twice: the same answer, no second address.
        let first = lab.cni(0, "ADD", "c1", &netns, "eth0", &[], &conf);
        let second = lab.cni(0, "ADD", "c1", &netns, "eth0", &[], &conf);
        assert_eq!(first.status, 0, "{}", first.stdout);
        assert_eq!(first.json, second.json, "ADD twice answers the same");
        assert_eq!(
            lab.attachments(0)["attachments"].as_array().map(Vec::len),
            Some(1)
        );
        // The same container in another namespace is refused, naming both.
        let other = Netns::new(&lab.id, "other");
        let moved = lab.cni(
            0,
            "ADD",
            "c1",
            &format!("/var/run/netns/{}", other.name()),
            "eth0",
            &[],
            &conf,
        );
        assert_eq!(moved.json["code"], 7, "{}", moved.stdout);
        assert!(
            moved.json["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("already attached in network namespace"),
            "{}",
            moved.stdout
        );

        // A route deleted by hand: CHECK names it (and the reconciler puts it back).
        let ip = first.json["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        lab.nodes[0].ns.ip(&["route", "del", &format!("{ip}/32")]);
        let check = lab.cni(0, "CHECK", "c1", &netns, "eth0", &[], &conf);
        assert_eq!(check.json["code"], 101, "{}", check.stdout);
        assert!(
            check.json["msg"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("the host route {ip}/32")),
            "{}",
            check.stdout
        );
        wait_for(
            "the reconciler restores the pod's route",
            Duration::from_secs(10),
            || lab.cni(0, "CHECK", "c1", &netns, "eth0", &[], &conf).status == 0,
        );
        // And the default route inside, deleted by hand, is named too.
        target.ip(&["route", "del", "default"]);
        let check = lab.cni(0, "CHECK", "c1", &netns, "eth0", &[], &conf);
        assert_eq!(check.json["code"], 101, "{}", check.stdout);
        assert!(
            check.json["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("no default route"),
            "{}",
            check.stdout
        );
    }

    #[test]
    fn pods_start_while_ipam_is_down_and_ipam_catches_up_when_it_returns() {
        require();
        let mut lab = one_node(&[]);
        lab.stop_ipam();
        let pods: Vec<Pod> = (0..3)
            .map(|i| lab.add_pod(0, &format!("down{i}")))
            .collect();
        for p in &pods {
            assert!(
                NodeLab::ping(&lab.nodes[0].ns, &p.ip(false)),
                "{} is wired",
                p.ip(false)
            );
        }
        assert_eq!(
            lab.attachments(0)["reportPending"],
            true,
            "{}",
            lab.attachments(0)
        );
        // The agent restarts meanwhile: it keeps its pods and its cached allocation.
        lab.stop("n1");
        lab.start_agent(0, &[]);
        lab.wait_agent_ready(0);
        let after = lab.add_pod(0, "down3");
        let mut ips: Vec<String> = pods.iter().map(|p| p.ip(false)).collect();
        assert!(
            !ips.contains(&after.ip(false)),
            "no address twice across the restart"
        );
        ips.push(after.ip(false));
        lab.start_ipam(false);
        wait_until("IPAM learns the four pods", Duration::from_secs(20), || {
            let held: Vec<String> = lab
                .ipam_pod_ips("n1")
                .values()
                .flat_map(|(ips, _)| ips.clone())
                .collect();
            let mut want = ips.clone();
            want.sort();
            let mut got = held.clone();
            got.sort();
            if got == want {
                Ok(())
            } else {
                Err(format!("IPAM holds {held:?}, the node {ips:?}"))
            }
        });
        wait_for(
            "the report is no longer pending",
            Duration::from_secs(10),
            || lab.attachments(0)["reportPending"] != true,
        );
        // IPAM now refuses to hand out pod IPs of its own on this node.
        let refused = lab.ipam(
            "AllocatePodIP",
            r#"{"node": "n1", "owner": "default/manual"}"#,
        );
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("FailedPrecondition") && e.contains("route agent")),
            "{refused:?}"
        );
    }

    #[test]
    fn an_agent_killed_during_adds_loses_none_of_the_answered_and_gc_leaks_nothing() {
        require();
        let mut lab = one_node(&[]);
        let netns: Vec<Netns> = (0..20)
            .map(|i| Netns::new(&lab.id, &format!("k{i}")))
            .collect();
        let conf = lab.conf("1.1.0");
        // Twenty ADDs at once; the agent is killed while they run.
        let answers = std::thread::scope(|scope| {
            let runs: Vec<_> = netns
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let (lab, conf) = (&lab, &conf);
                    scope.spawn(move || {
                        let id = format!("{}k{i}", lab.id);
                        let out = lab.cni(
                            0,
                            "ADD",
                            &id,
                            &format!("/var/run/netns/{}", ns.name()),
                            "eth0",
                            &[],
                            conf,
                        );
                        (id, out)
                    })
                })
                .collect();
            // Killed once some are on disk: answered ones, persisted-not-answered ones (in the
            // middle of their ADD) and ones not yet begun.
            let records = lab.nodes[0].cache.join("pods");
            wait_for("ADDs under way", Duration::from_secs(10), || {
                std::fs::read_dir(&records).map_or(0, |d| d.count()) >= 6
            });
            lab.service("n1").expect("the agent runs").signal("-KILL");
            runs.into_iter()
                .map(|r| r.join().unwrap())
                .collect::<Vec<_>>()
        });
        let answered: Vec<(String, String)> = answers
            .iter()
            .filter(|(_, o)| o.status == 0)
            .map(|(id, o)| {
                (
                    id.clone(),
                    o.json["ips"][0]["address"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        for (id, o) in answers.iter().filter(|(_, o)| o.status != 0) {
            assert!(
                [11, 999].contains(&o.json["code"].as_u64().unwrap_or(0)),
                "{id}: an interrupted ADD answers with the spec's error: {}",
                o.stdout
            );
        }
        lab.kill9("n1");
        lab.start_agent(0, &[]);
        lab.wait_agent_ready(0);
        // Every answered ADD is still there, with its address.
        let held = lab.attachments(0);
        for (id, address) in &answered {
            let found = held["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["containerId"] == id.as_str());
            let ip = address.split('/').next().unwrap_or_default();
            assert!(
                found.is_some_and(|a| a["ips"][0] == ip),
                "{id} ({address}) was answered and must survive: {held}"
            );
        }
        // The runtime lists what it started; GC releases the rest.
        let valid: Vec<serde_json::Value> = answered
            .iter()
            .map(|(id, _)| serde_json::json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        let gc_conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "routeplane", "type": "routeplane-cni",
            "cni.dev/valid-attachments": valid,
        });
        let gc = lab.cni(0, "GC", "", "", "", &[], &gc_conf.to_string());
        assert_eq!(gc.status, 0, "{}", gc.stdout);
        let held = lab.attachments(0);
        assert_eq!(
            held["attachments"].as_array().map_or(0, Vec::len),
            answered.len(),
            "after GC the node holds exactly the answered attachments: {held}"
        );
        assert_eq!(
            host_links(&lab, 0).len(),
            answered.len(),
            "and their veths only"
        );
        let free = lab.agent_api(0, "GetStatus", "{}")["podIpsFree"]
            .as_str()
            .unwrap_or_default()
            .parse::<u64>()
            .unwrap_or(0);
        assert_eq!(free, 253 - answered.len() as u64, "no address leaked");
        println!("{} of 20 ADDs answered before the kill", answered.len());
    }

    #[test]
    fn a_full_node_cidr_is_refused_naming_node_cidr_and_usage() {
        require();
        let mut lab = NodeLab::new();
        // /29 per node: 5 pod addresses (network, router and broadcast excluded).
        lab.start_ipam_with("ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 10.5.112.0/24\n    clusterPoolIPv4MaskSize: 29\nipv4:\n  enabled: true\n");
        lab.add_node("n1", 94, 11);
        lab.start_agent(0, &[]);
        lab.wait_agent_ready(0);
        let pods: Vec<Pod> = (0..5).map(|i| lab.add_pod(0, &format!("f{i}"))).collect();
        let status = lab.cni(0, "STATUS", "", "", "", &[], &lab.conf("1.1.0"));
        assert_eq!(
            status.json["code"], 50,
            "a full node is not available: {}",
            status.stdout
        );
        let extra = Netns::new(&lab.id, "f5");
        let out = lab.cni(
            0,
            "ADD",
            "full",
            &format!("/var/run/netns/{}", extra.name()),
            "eth0",
            &[],
            &lab.conf("1.1.0"),
        );
        assert_eq!(out.json["code"], 100, "{}", out.stdout);
        let msg = out.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("node n1's pod CIDR 10.5.112.0/29 is full: 5 of 5 pod IPs in use"),
            "{msg}"
        );
        assert_eq!(
            host_links(&lab, 0).len(),
            5,
            "nothing half-wired for the refused one"
        );
        // One goes, one fits again.
        assert_eq!(lab.del_pod(&pods[0]).status, 0);
        let again = lab.cni(
            0,
            "ADD",
            "full",
            &format!("/var/run/netns/{}", extra.name()),
            "eth0",
            &[],
            &lab.conf("1.1.0"),
        );
        assert_eq!(again.status, 0, "{}", again.stdout);
        assert_eq!(
            again.json["ips"][0]["address"],
            pods[0].result["ips"][0]["address"]
        );
    }

    #[test]
    fn without_its_agent_the_plugin_says_try_again_later_and_status_not_available() {
        require();
        let mut lab = NodeLab::new();
        lab.start_ipam(false);
        lab.add_node("n1", 94, 11);
        let target = Netns::new(&lab.id, "early");
        let netns = format!("/var/run/netns/{}", target.name());
        let add = lab.cni(0, "ADD", "early", &netns, "eth0", &[], &lab.conf("1.1.0"));
        assert_eq!(add.json["code"], 11, "{}", add.stdout);
        assert!(
            add.json["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("does not answer on"),
            "{}",
            add.stdout
        );
        let status = lab.cni(0, "STATUS", "", "", "", &[], &lab.conf("1.1.0"));
        assert_eq!(status.json["code"], 50, "{}", status.stdout);
        // VERSION needs no agent.
        let version = lab.cni(0, "VERSION", "", "", "", &[], &lab.conf("0.4.0"));
        assert_eq!(version.status, 0);
        assert_eq!(version.json["cniVersion"], "0.4.0");
        assert_eq!(
            version.json["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        // IPAM down at the agent's first start: no pod CIDR yet, so not yet (11), not an error.
        lab.stop_ipam();
        lab.start_agent(0, &[]);
        routeplane_testkit::wait_for(
            "the agent's socket answers",
            Duration::from_secs(10),
            || lab.nodes[0].socket.exists(),
        );
        let add = lab.cni(0, "ADD", "early", &netns, "eth0", &[], &lab.conf("1.1.0"));
        assert_eq!(add.json["code"], 11, "{}", add.stdout);
        assert!(
            add.json["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("no pod CIDR yet"),
            "{}",
            add.stdout
        );
        lab.start_ipam(false);
        lab.wait_agent_ready(0);
        let add = lab.cni(0, "ADD", "early", &netns, "eth0", &[], &lab.conf("1.1.0"));
        assert_eq!(add.status, 0, "{}", add.stdout);
    }

    #[test]
    fn results_follow_the_configurations_version() {
        require();
        let lab = one_node(&[]);
        for version in ["0.3.1", "0.4.0", "1.0.0"] {
            let ns = Netns::new(&lab.id, &format!("v{}", version.replace('.', "")));
            let out = lab.cni(
                0,
                "ADD",
                &format!("v{}", version.replace('.', "")),
                &format!("/var/run/netns/{}", ns.name()),
                "eth0",
                &[],
                &lab.conf(version),
            );
            assert_eq!(out.status, 0, "{version}: {}", out.stdout);
            assert_eq!(out.json["cniVersion"], version);
            let has_version = out.json["ips"][0].get("version").is_some();
            assert_eq!(has_version, version != "1.0.0", "{version}: {}", out.stdout);
        }
    }

    #[test]
    fn a_node_given_another_cidr_adopts_it_and_never_serves_the_old_one() {
        require();
        let lab = one_node(&[]);
        let pod = lab.add_pod(0, "old");
        let (old_cidrs, old_routers) = lab.node_allocation("n1");
        // IPAM forgets the node (deleted with force, as after a lost state) and gives its CIDR to
        // another node: the agent must learn its new CIDR and drop the old one. The agent is frozen
        // meanwhile: its next heartbeat (within 750 ms) would register it again at once and take a
        // CIDR before the intruder does.
        let agent = lab.service("n1").expect("n1's agent runs");
        agent.signal("-STOP");
        lab.ipam("DeleteNode", r#"{"name": "n1", "force": true}"#)
            .unwrap();
        // IPAM hands node CIDRs out round the pool: seven others first, then the intruder gets
        // n1's; one of the seven goes again, leaving room for n1.
        for i in 0..7 {
            lab.ipam(
                "RegisterNode",
                &format!(
                    r#"{{"name": "filler{i}", "addresses": ["10.4.94.{}"]}}"#,
                    100 + i
                ),
            )
            .unwrap();
        }
        let intruder = lab
            .ipam(
                "RegisterNode",
                r#"{"name": "intruder", "addresses": ["10.4.94.99"]}"#,
            )
            .unwrap();
        assert_eq!(
            intruder["podCidrs"][0],
            old_cidrs[0].as_str(),
            "{}",
            lab.logs()
        );
        lab.ipam("DeleteNode", r#"{"name": "filler0", "force": true}"#)
            .unwrap();
        agent.signal("-CONT");
        let (new_cidrs, new_routers) =
            wait_until("n1 registered again", Duration::from_secs(20), || match lab
                .ipam("GetNode", r#"{"name": "n1"}"#)
            {
                Ok(_) => Ok(lab.node_allocation("n1")),
                Err(e) => Err(e),
            })
            .0;
        assert_ne!(new_cidrs, old_cidrs, "n1 has a CIDR of its own again");
        wait_for(
            "the agent serves the new CIDR",
            Duration::from_secs(20),
            || {
                let status = lab.agent_api(0, "GetStatus", "{}");
                status["podCidrs"][0] == new_cidrs[0].as_str()
            },
        );
        let (_, addrs) = lab.nodes[0]
            .ns
            .run(&["ip", "-4", "addr", "show", "dev", "rp_host"]);
        assert!(
            addrs.contains(&format!("inet {}/32", new_routers[0])),
            "{addrs}"
        );
        assert!(
            !addrs.contains(&old_routers[0]),
            "the old router IP is gone: {addrs}"
        );
        // The old CIDR is the intruder's now: n1 routes it to the intruder, not to itself.
        wait_for(
            "the old CIDR routed to its new owner, the old pod's address not at all",
            Duration::from_secs(10),
            || {
                let routes = NodeLab::routes(&lab.nodes[0].ns, "-4");
                routes.contains(&format!("{} via 10.4.94.99", old_cidrs[0]))
                    && !routes.contains(&format!("{} dev rp_host", old_cidrs[0]))
                    && !routes.contains(&format!("{} dev", pod.ip(false)))
            },
        );
        // The pod on the old CIDR was unwired: its address may be the intruder's now.
        let check = lab.check_pod(&pod);
        assert_eq!(check.json["code"], 3, "{}", check.stdout);
        assert!(
            host_links(&lab, 0).is_empty(),
            "its veth went: {:?}",
            host_links(&lab, 0)
        );
        lab.wait_agent_ready(0);
        let fresh = lab.add_pod(0, "new");
        let new_cidr: routeplane_net::Cidr = new_cidrs[0].parse().unwrap();
        assert!(
            new_cidr.contains_addr(fresh.ip(false).parse().unwrap()),
            "{}",
            fresh.result
        );
        wait_until(
            "IPAM has exactly the new pod for n1",
            Duration::from_secs(10),
            || {
                let held = lab.ipam_pod_ips("n1");
                if held.len() == 1 && held.values().all(|(ips, _)| ips == &vec![fresh.ip(false)]) {
                    Ok(())
                } else {
                    Err(format!("{held:?}"))
                }
            },
        );
    }
}
