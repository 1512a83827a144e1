//! The seed's network as docker-compose.yml brings it up: two BIRD ToRs, routeplane-ipam,
//! routeplane-bgp and four nodes, checked from the routers' side (what BIRD learned), from the
//! nodes' side (traceroute, ping) and through the services' gRPC APIs with grpcurl — then stopped
//! and restarted piece by piece. Needs root, a running dockerd, Docker Compose v2 and the images
//! of docker/build-images; scripts/test provides all of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use routeplane_e2e::seed::{
    Allocations, NODES, TOR_83, TOR_94, Tor, ipam_nodes_at, require_stack,
    routers_learn_every_node, routers_route_every_node,
};
use routeplane_e2e::{Stack, grpcurl, parse_ping, parse_traceroute, routeplanectl, wait_for};

const IPAM: &str = "10.4.36.5:50051";
const BGP: &str = "10.4.36.10:50052";
/// The IPAM lease TTL (20 s) and routeplane-bgp's withdraw grace (0 s), both left at their defaults
/// by the stack: a stopped agent drains its node and leaves it a lease TTL to come back.
const LEASE_TTL_PLUS_GRACE: Duration = Duration::from_secs(20);

fn ipam_nodes() -> Result<Allocations, String> {
    ipam_nodes_at(IPAM)
}

fn peer_states() -> Result<BTreeMap<String, String>, String> {
    let reply = grpcurl(BGP, "routeplane.bgp.v1.Bgp/ListPeers", "{}")?;
    Ok(reply["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["peerAddress"].as_str().unwrap_or_default().to_string(),
                p["sessionState"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn established(peers: &[&str]) -> Result<(), String> {
    let states = peer_states()?;
    match peers
        .iter()
        .find(|p| states.get(**p).map(String::as_str) != Some("established"))
    {
        None => Ok(()),
        Some(p) => Err(format!("{p} is not established: {states:?}")),
    }
}

fn traceroute(stack: &Stack, from: &str, to: &str) -> Vec<Option<String>> {
    let out = stack
        .exec(from, &[&routeplane_testkit::TRACEROUTE[..], &[to]].concat())
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{from}$ traceroute -n {to}\n{out}");
    parse_traceroute(&out)
}

/// Whether neither ToR has a route for `prefix`.
fn withdrawn_at_both(stack: &Stack, prefix: &str) -> Result<(), String> {
    for t in [&TOR_94, &TOR_83] {
        if stack.bird_routes(t.service)?.contains_key(prefix) {
            return Err(format!("{} still routes {prefix}", t.service));
        }
    }
    Ok(())
}

fn bird_session_established(stack: &Stack, tor: &Tor) -> bool {
    stack
        .birdc(tor.service, "show protocols routeplane")
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .any(|l| l.starts_with("routeplane") && l.contains("Established"))
}

/// The seed's absent peers (.238, .251) are sessions that cannot connect; the ToRs' are up.
fn absent_peers_are_not_established() {
    let states = peer_states().expect("ListPeers");
    for absent in ["10.4.36.238", "10.4.36.251"] {
        let state = states.get(absent).map(String::as_str);
        assert!(
            matches!(state, Some("connect" | "active" | "idle")),
            "{absent}: {state:?} in {states:?}"
        );
    }
    established(&["10.4.36.239", "10.4.36.250"]).expect("sessions with both ToRs");
}

/// Every service answers grpcurl from the host, over the internal bridges (IPAM and BGP
/// already have; here the agent).
fn services_answer_grpcurl_from_the_host(nodes: &Allocations) {
    let status = grpcurl(
        "10.4.94.11:50053",
        "routeplane.agent.v1.Agent/GetStatus",
        "{}",
    )
    .expect("agent GetStatus");
    assert_eq!(status["node"], "node-94-1", "{status}");
    assert_eq!(
        status["podCidrs"][0].as_str(),
        Some(nodes["node-94-1"].0[0].as_str()),
        "{status}"
    );
}

/// routeplanectl from the host, as the README shows it: the nodes IPAM has, the sessions, and what
/// an established peer was sent — the node CIDRs of its peer group.
fn routeplanectl_shows_the_stack(nodes: &Allocations) {
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = routeplanectl(&all).unwrap_or_else(|e| panic!("routeplanectl {args:?}: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let listed = json(&["nodes"]);
    let names: Vec<&str> = listed["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names,
        nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        "{listed}"
    );
    let peers = json(&["peers"]);
    let up: Vec<&str> = peers["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "established")
        .filter_map(|p| p["peer"].as_str())
        .collect();
    assert!(!up.is_empty(), "{peers}");
    let sent = json(&["routes", "advertised", "--peer", up[0]]);
    let prefixes: Vec<&str> = sent["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["prefix"].as_str())
        .collect();
    assert!(
        nodes
            .values()
            .any(|(cidrs, _)| cidrs.iter().any(|c| prefixes.contains(&c.as_str()))),
        "{} was sent {prefixes:?}",
        up[0]
    );
    let table = routeplanectl(&["ipam", "show"]).expect("ipam show");
    assert!(
        table.contains("pod CIDR pools") && table.contains("node-94-1"),
        "{table}"
    );
}

/// From a node (its own stack, no pod): the target node counts as one hop on the way into its
/// pod CIDR and answers none that run out there; the ToRs answer from their segment gateways.
/// The stack's nodes run the eBPF datapath, whose maps serve pods: a node's own packets for
/// another node's pod CIDR have no kernel route and follow the default route to the ToR, which
/// learned the CIDR over BGP — on the same segment too.
fn node_traceroutes_follow_the_hop_rule(stack: &Stack, nodes: &Allocations) {
    let router_ip = |node: &str| nodes[node].1[0].clone();
    let same = traceroute(stack, "node-94-1", &router_ip("node-94-2"));
    assert_eq!(
        same,
        vec![
            Some(TOR_94.gateway.into()),
            None,
            Some(router_ip("node-94-2"))
        ],
        "same segment, from the node itself: the ToR, the target node's hop, the target"
    );
    let across = traceroute(stack, "node-94-1", &router_ip("node-83-1"));
    assert_eq!(
        across,
        vec![
            Some(TOR_94.gateway.into()),
            Some(TOR_83.gateway.into()),
            None,
            Some(router_ip("node-83-1"))
        ]
    );
    let back = traceroute(stack, "node-83-2", &router_ip("node-94-1"));
    assert_eq!(
        back,
        vec![
            Some(TOR_83.gateway.into()),
            Some(TOR_94.gateway.into()),
            None,
            Some(router_ip("node-94-1"))
        ]
    );
}

/// The pods every node starts through routeplane-cni (docker/pod): node -> its pods' addresses,
/// once each node has both and IPAM lists them as the agent's.
fn pods_are_attached_and_reported() -> BTreeMap<String, Vec<String>> {
    let (pods, took) = wait_for(
        "two pods on every node, reported to IPAM",
        Duration::from_secs(60),
        || {
            let mut all = BTreeMap::new();
            for (node, _, _) in NODES {
                let reply = grpcurl(
                    IPAM,
                    "routeplane.ipam.v1.Ipam/ListPodIPs",
                    &format!(r#"{{"node": "{node}"}}"#),
                )?;
                let ips: Vec<String> = reply["allocations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["managedBy"] == "agent")
                    .filter_map(|a| a["ips"][0].as_str().map(str::to_string))
                    .collect();
                if ips.len() != 2 {
                    return Err(format!("{node}: {reply}"));
                }
                all.insert(node.to_string(), ips);
            }
            Ok(all)
        },
    );
    println!("pods reported to IPAM after {took:?}: {pods:?}");
    pods
}

/// The address of a pod on a node, as the pod itself has it (`pod ip`).
fn pod_ip(stack: &Stack, node: &str, pod: &str) -> String {
    stack
        .exec(node, &["pod", "ip", pod])
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_string()
}

fn pod_traceroute(stack: &Stack, node: &str, pod: &str, to: &str) -> Vec<Option<String>> {
    let out = stack
        .exec(
            node,
            &[
                &["pod", "exec", pod][..],
                &routeplane_testkit::TRACEROUTE[..],
                &[to],
            ]
            .concat(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{node}/{pod}$ traceroute -n {to}\n{out}");
    parse_traceroute(&out)
}

fn pod_pings(stack: &Stack, node: &str, pod: &str, to: &str) -> bool {
    stack
        .exec(
            node,
            &["pod", "exec", pod, "ping", "-c", "2", "-W", "2", to],
        )
        .is_ok()
}

/// The seed's proof, from a pod: its two traceroutes, and pods reaching each other on one node,
/// on one segment and across the ToRs.
fn pods_follow_the_seed(stack: &Stack, nodes: &Allocations) {
    let router_ip = |node: &str| nodes[node].1[0].clone();
    let here = pod_ip(stack, "node-94-1", "pod-2");
    let same_segment = pod_ip(stack, "node-94-2", "pod-1");
    let across = pod_ip(stack, "node-83-1", "pod-1");
    for to in [&here, &same_segment, &across, &router_ip("node-83-2")] {
        assert!(
            pod_pings(stack, "node-94-1", "pod-1", to),
            "node-94-1/pod-1 -> {to}"
        );
    }
    assert!(
        pod_pings(stack, "node-83-2", "pod-2", &here),
        "and back across"
    );
    assert_eq!(
        pod_traceroute(stack, "node-94-1", "pod-1", &router_ip("node-94-2")),
        vec![None, None, Some(router_ip("node-94-2"))],
        "the seed's first traceroute: * * target"
    );
    assert_eq!(
        pod_traceroute(stack, "node-94-1", "pod-1", &across),
        vec![
            None,
            Some(TOR_94.gateway.into()),
            Some(TOR_83.gateway.into()),
            None,
            Some(across.clone())
        ],
        "the seed's second traceroute: * ToR ToR * pod"
    );
}

/// A LoadBalancer IP, reached from a pod on the other segment: the ToRs carry it to the node they
/// learned it from, where the Service's address is bound (as kube-proxy binds it to kube-ipvs0).
fn pods_reach_a_load_balancer_ip(stack: &Stack) {
    let lb = grpcurl(
        IPAM,
        "routeplane.ipam.v1.Ipam/AllocateServiceIP",
        r#"{"service": "default/e2e-pods"}"#,
    )
    .expect("AllocateServiceIP");
    let ip = lb["ip"].as_str().expect("an ip").to_string();
    let prefix = format!("{ip}/32");
    let (via, _) = wait_for(
        "the LoadBalancer IP at tor-83",
        Duration::from_secs(20),
        || {
            stack
                .bird_routes(TOR_83.service)?
                .remove(&prefix)
                .map(|r| r.via)
                .ok_or_else(|| format!("tor-83 has no {prefix}"))
        },
    );
    let (node, _, _) = NODES
        .iter()
        .find(|(_, addr, _)| *addr == via)
        .unwrap_or_else(|| panic!("{prefix} at tor-83 via {via}, no node of the stack"));
    stack
        .exec(node, &["ip", "addr", "add", &prefix, "dev", "lo"])
        .expect("binding the Service's address on its node");
    assert!(
        pod_pings(stack, "node-94-1", "pod-1", &ip),
        "node-94-1/pod-1 reaches LoadBalancer {ip} on {node}"
    );
    let _ = stack.exec(node, &["ip", "addr", "del", &prefix, "dev", "lo"]);
    grpcurl(
        IPAM,
        "routeplane.ipam.v1.Ipam/ReleaseServiceIP",
        r#"{"service": "default/e2e-pods"}"#,
    )
    .expect("ReleaseServiceIP");
}

/// A LoadBalancer IP reaches both ToRs with one of their own nodes as next hop; released, it goes.
fn load_balancer_ip_comes_and_goes(stack: &Stack) {
    let lb = grpcurl(
        IPAM,
        "routeplane.ipam.v1.Ipam/AllocateServiceIP",
        r#"{"service": "default/e2e-lb"}"#,
    )
    .expect("AllocateServiceIP");
    let lb_prefix = format!("{}/32", lb["ip"].as_str().expect("an ip"));
    let ((), took) = wait_for(
        "the LoadBalancer IP at both ToRs",
        Duration::from_secs(20),
        || {
            for tor in [&TOR_94, &TOR_83] {
                let route = stack.bird_routes(tor.service)?.remove(&lb_prefix);
                let own_node = |via: &str| {
                    NODES
                        .iter()
                        .any(|(_, addr, home)| *addr == via && home.service == tor.service)
                };
                match route {
                    Some(r) if r.protocol == "routeplane" && own_node(&r.via) => {}
                    other => return Err(format!("{}: {lb_prefix} is {other:?}", tor.service)),
                }
            }
            Ok(())
        },
    );
    println!("LoadBalancer {lb_prefix} at both ToRs after {took:?}");
    grpcurl(
        IPAM,
        "routeplane.ipam.v1.Ipam/ReleaseServiceIP",
        r#"{"service": "default/e2e-lb"}"#,
    )
    .expect("ReleaseServiceIP");
    let ((), took) = wait_for(
        "the released LoadBalancer IP withdrawn",
        Duration::from_secs(20),
        || withdrawn_at_both(stack, &lb_prefix),
    );
    println!("LoadBalancer {lb_prefix} withdrawn from both ToRs after {took:?}");
}

/// A stopped agent: its CIDR is withdrawn within lease TTL + grace; back, it has the same one.
fn stopped_agent_is_withdrawn_and_returns(stack: &Stack, nodes: &Allocations) {
    let cidr = nodes["node-94-2"].0[0].clone();
    stack.run(&["stop", "node-94-2"]);
    let ((), took) = wait_for(
        "node-94-2's CIDR withdrawn",
        LEASE_TTL_PLUS_GRACE + Duration::from_secs(5),
        || withdrawn_at_both(stack, &cidr),
    );
    println!(
        "agent of node-94-2 stopped: {cidr} withdrawn from both ToRs after {took:?} (lease TTL + grace = {LEASE_TTL_PLUS_GRACE:?})"
    );
    stack.run(&["start", "node-94-2"]);
    let (again, _) = wait_for("node-94-2 Ready again", Duration::from_secs(60), ipam_nodes);
    assert_eq!(&again, nodes, "a returning node keeps its pod CIDR");
    let ((), took) = wait_for("node-94-2's CIDR back", Duration::from_secs(60), || {
        routers_route_every_node(stack, nodes)
    });
    println!("agent of node-94-2 back: {cidr} at both ToRs again after {took:?}");
    // Its pods died with the node (their namespaces with its container): the agent was told (GC)
    // and the node started them again, reported to IPAM, reachable.
    let pods = pods_are_attached_and_reported();
    for ip in &pods["node-94-2"] {
        assert!(
            pod_pings(stack, "node-83-1", "pod-1", ip),
            "node-83-1/pod-1 -> node-94-2's pod {ip}"
        );
    }
}

/// IPAM restarts from its volume with nothing changed, and the routes stay.
fn ipam_restart_changes_nothing(stack: &Stack, nodes: &Allocations) {
    grpcurl(
        IPAM,
        "routeplane.ipam.v1.Ipam/AllocateServiceIP",
        r#"{"service": "default/e2e-kept"}"#,
    )
    .expect("AllocateServiceIP");
    let services =
        grpcurl(IPAM, "routeplane.ipam.v1.Ipam/ListServiceIPs", "{}").expect("ListServiceIPs");
    let pods = pods_are_attached_and_reported();
    stack.run(&["restart", "ipam"]);
    let (after, _) = wait_for(
        "IPAM back with four Ready nodes",
        Duration::from_secs(60),
        ipam_nodes,
    );
    assert_eq!(&after, nodes, "node allocations after an IPAM restart");
    assert_eq!(
        grpcurl(IPAM, "routeplane.ipam.v1.Ipam/ListServiceIPs", "{}").expect("ListServiceIPs"),
        services
    );
    routers_route_every_node(stack, nodes).expect("routes after an IPAM restart");
    assert_eq!(
        pods_are_attached_and_reported(),
        pods,
        "pod IPs after an IPAM restart"
    );
}

/// By now the absent peers have been retried for a while: at the connect-retry pace (5 s, two
/// state changes per attempt), not in a loop.
fn absent_peers_retry_at_their_pace(stack: &Stack, started: Instant) {
    let secs = started.elapsed().as_secs();
    let log = stack.logs(Some("bgp"));
    for absent in ["10.4.36.238", "10.4.36.251"] {
        let lines = log.lines().filter(|l| l.contains(absent)).count() as u64;
        println!("{absent} (absent): {lines} log lines in {secs} s");
        assert!(
            lines <= 2 * (secs / 5 + 1) + 2,
            "{absent}: {lines} log lines in {secs} s:\n{log}"
        );
    }
}

/// routeplane-bgp restarts: graceful restart keeps the routes at the ToRs, and a ping across
/// segments running meanwhile loses at most a few packets.
fn bgp_restart_keeps_traffic_flowing(stack: &Stack, nodes: &Allocations) {
    let router_ip = |node: &str| nodes[node].1[0].clone();
    // routeplane-bgp restarts: graceful restart keeps the routes at the ToRs, and a ping across
    // segments running meanwhile loses at most a few packets.
    let target = router_ip("node-83-1");
    let mut ping = stack.spawn_exec(
        "node-94-1",
        &["ping", "-n", "-i", "0.1", "-c", "250", "-W", "1", &target],
    );
    // What ping prints, line by line, as it prints it.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        use std::io::BufRead;
        let out = ping.stdout.take().expect("ping's stdout");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let answered = |lines: &std::sync::Mutex<Vec<String>>| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("bytes from"))
            .count()
    };
    wait_for("the ping is answered", Duration::from_secs(10), || {
        if answered(&lines) >= 5 {
            Ok(())
        } else {
            Err(format!("{:?}", lines.lock().unwrap()))
        }
    });
    stack.run(&["stop", "bgp"]);
    for tor in [&TOR_94, &TOR_83] {
        assert!(
            !bird_session_established(stack, tor),
            "{}: session still up with routeplane-bgp stopped",
            tor.service
        );
    }
    // Each ToR noticed, and holds our routes under graceful restart instead of flushing them.
    wait_for(
        "both ToRs in graceful restart",
        Duration::from_secs(10),
        || {
            for tor in [&TOR_94, &TOR_83] {
                let state = stack.birdc(tor.service, "show protocols all routeplane")?;
                if !state.contains("Neighbor graceful restart active") {
                    return Err(format!("{}: {state}", tor.service));
                }
            }
            Ok(())
        },
    );
    routers_route_every_node(stack, nodes)
        .expect("the ToRs keep the routes while routeplane-bgp is down");
    stack.run(&["start", "bgp"]);
    wait_for(
        "sessions with both ToRs again",
        Duration::from_secs(60),
        || established(&["10.4.36.239", "10.4.36.250"]),
    );
    wait_for(
        "every pod CIDR at both ToRs after the restart",
        Duration::from_secs(30),
        || routers_route_every_node(stack, nodes),
    );
    let status = ping.wait().expect("ping");
    reader.join().expect("ping's reader");
    let text = lines.lock().unwrap().join("\n");
    let (sent, received) =
        parse_ping(&text).unwrap_or_else(|| panic!("no ping summary ({status}): {text}"));
    println!(
        "ping node-94-1 -> {target} across segments while routeplane-bgp restarted: {sent} sent, {} lost",
        sent - received
    );
    assert!(sent >= 100, "ping ran: {text}");
    assert!(
        sent - received <= 5,
        "lost {} of {sent} packets across the routeplane-bgp restart",
        sent - received
    );
}

mod privileged {
    use super::*;

    #[test]
    fn the_compose_stack_routes_the_seeds_network_and_survives_restarts() {
        require_stack(&[]);
        let stack = Stack::up();
        let started = Instant::now();
        let nodes = routers_learn_every_node(&stack, IPAM);
        absent_peers_are_not_established();
        services_answer_grpcurl_from_the_host(&nodes);
        routeplanectl_shows_the_stack(&nodes);
        node_traceroutes_follow_the_hop_rule(&stack, &nodes);
        pods_are_attached_and_reported();
        pods_follow_the_seed(&stack, &nodes);
        pods_reach_a_load_balancer_ip(&stack);
        load_balancer_ip_comes_and_goes(&stack);
        stopped_agent_is_withdrawn_and_returns(&stack, &nodes);
        ipam_restart_changes_nothing(&stack, &nodes);
        absent_peers_retry_at_their_pace(&stack, started);
        bgp_restart_keeps_traffic_flowing(&stack, &nodes);

        // Tear-down leaves nothing of the project behind.
        let left = stack.tear_down();
        assert!(left.is_empty(), "left after docker compose down: {left:?}");
    }
}
