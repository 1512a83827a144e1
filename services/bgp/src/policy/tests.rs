use super::*;

const SEED: &str = include_str!("../../../../examples/seed/bgp-config.yaml");

fn seed_peers(up: bool) -> Vec<PeerView> {
    routeplane_config::BgpConfig::parse(SEED, "seed")
        .unwrap()
        .peers
        .into_iter()
        .map(|p| PeerView {
            address: p.peer_address,
            my_asn: p.my_asn,
            peer_asn: p.peer_asn,
            node_selectors: p.node_selectors,
            families: up.then(|| vec![Family::V4]),
            add_path_send: vec![],
            state: if up {
                "established".into()
            } else {
                "active".into()
            },
        })
        .collect()
}

fn node(name: &str, addr: &str, cidr: &str, label: Option<&str>, path_id: u32) -> NodeView {
    NodeView {
        name: name.into(),
        addresses: vec![addr.parse().unwrap()],
        labels: label
            .map(|l| [("kubernetes/route".to_string(), l.to_string())].into())
            .unwrap_or_default(),
        pod_cidrs: vec![cidr.parse().unwrap()],
        ready: true,
        announce: true,
        draining: false,
        held_down: false,
        path_id,
    }
}

fn seed_nodes() -> Vec<NodeView> {
    vec![
        node("n94a", "10.4.94.11", "10.5.112.0/24", None, 1),
        node("n94b", "10.4.94.12", "10.5.113.0/24", None, 2),
        node(
            "n83a",
            "10.4.83.11",
            "10.5.114.0/24",
            Some("bgp-peer-83"),
            3,
        ),
        node(
            "n83b",
            "10.4.83.12",
            "10.5.119.0/24",
            Some("bgp-peer-83"),
            4,
        ),
    ]
}

const ON: Announce = Announce {
    pod_cidr: true,
    loadbalancer_ip: true,
};

/// The policy's inputs with no operator paths, announcement on, not shutting down.
fn inputs_of<'a>(
    nodes: &'a [NodeView],
    services: &'a [ServiceView],
    pools: &'a [AddressPool],
    peers: &'a [PeerView],
) -> Inputs<'a> {
    static NO_PATHS: BTreeMap<Cidr, Arc<OperatorPath>> = BTreeMap::new();
    Inputs {
        nodes,
        services,
        operator: &NO_PATHS,
        pools,
        peers,
        announce: ON,
        graceful_shutdown: false,
    }
}

fn prefixes(r: &Routes) -> Vec<(String, String)> {
    r.iter()
        .map(|(n, a)| (n.prefix.to_string(), a.next_hop.to_string()))
        .collect()
}

#[test]
fn the_seed_config_splits_nodes_between_its_peer_groups() {
    let (peers, nodes) = (seed_peers(true), seed_nodes());
    let inputs = inputs_of(&nodes, &[], &[], &peers);
    let ebgp = inputs.desired(&peers[0]);
    assert_eq!(peers[0].address.to_string(), "10.4.36.239");
    assert_eq!(
        prefixes(&ebgp),
        [
            ("10.5.112.0/24".into(), "10.4.94.11".into()),
            ("10.5.113.0/24".into(), "10.4.94.12".into())
        ]
    );
    let a = ebgp.values().next().unwrap();
    assert_eq!(
        (a.as_path.clone(), a.local_pref, a.origin),
        (vec![64513], None, Origin::Igp),
        "eBGP: our AS, no LOCAL_PREF"
    );
    let ibgp = inputs.desired(&peers[2]);
    assert_eq!(peers[2].address.to_string(), "10.4.36.250");
    assert_eq!(
        prefixes(&ibgp),
        [
            ("10.5.114.0/24".into(), "10.4.83.11".into()),
            ("10.5.119.0/24".into(), "10.4.83.12".into())
        ]
    );
    let a = ibgp.values().next().unwrap();
    assert_eq!(
        (a.as_path.clone(), a.local_pref),
        (vec![], Some(DEFAULT_LOCAL_PREF)),
        "iBGP: empty AS_PATH, LOCAL_PREF"
    );
    assert_eq!(
        inputs.desired(&peers[1]),
        ebgp,
        ".238 and .239 receive the same"
    );
    assert_eq!(inputs.desired(&peers[3]), ibgp);
}

#[test]
fn without_selectors_anywhere_every_peer_gets_every_node() {
    let mut peers = seed_peers(true);
    peers.iter_mut().for_each(|p| p.node_selectors.clear());
    let nodes = seed_nodes();
    let inputs = inputs_of(&nodes, &[], &[], &peers);
    assert_eq!(inputs.desired(&peers[0]).len(), 4);
}

#[test]
fn not_ready_nodes_disappear_once_their_grace_is_over() {
    let peers = seed_peers(true);
    let mut nodes = seed_nodes();
    nodes[0].ready = false;
    let inputs = inputs_of(&nodes, &[], &[], &peers);
    assert_eq!(
        inputs.desired(&peers[0]).len(),
        2,
        "still within the grace period"
    );
    nodes[0].announce = false;
    let inputs = inputs_of(&nodes, &[], &[], &peers);
    assert_eq!(
        prefixes(&inputs.desired(&peers[0])),
        [("10.5.113.0/24".into(), "10.4.94.12".into())]
    );
    let why = |inputs: &Inputs| {
        inputs.explain(&"10.5.112.0/24".parse().unwrap())[0]
            .outcome
            .clone()
            .unwrap_err()
    };
    assert!(why(&inputs).contains("n94a is NotReady and its grace period is over"));
    // Held down by IPAM's damping: said so, as that is what the operator must wait for.
    nodes[0].held_down = true;
    let inputs = inputs_of(&nodes, &[], &[], &peers);
    assert!(
        why(&inputs).contains("n94a is held down for flapping"),
        "{}",
        why(&inputs)
    );
}

fn lb_pools() -> Vec<AddressPool> {
    routeplane_config::BgpConfig::parse(
        "address-pools:\n- {name: default, protocol: bgp, addresses: [10.5.120.0/21], bgp-advertisements: [{localpref: 200, communities: ['64512:7']}]}\n- {name: l2, protocol: layer2, addresses: [10.6.0.0/24]}\n",
        "t",
    )
    .unwrap()
    .address_pools
}

#[test]
fn a_loadbalancer_ip_goes_to_every_peer_via_one_stable_node_or_all_with_add_path() {
    let (mut peers, mut nodes) = (seed_peers(true), seed_nodes());
    let pools = lb_pools();
    let services = [ServiceView {
        service: "default/web".into(),
        ip: "10.5.120.7".parse().unwrap(),
        pool: "default".into(),
    }];
    let inputs = inputs_of(&nodes, &services, &pools, &peers);
    let r = inputs.desired(&peers[2]);
    let lb: Vec<_> = r
        .iter()
        .filter(|(n, _)| n.prefix.to_string() == "10.5.120.7/32")
        .collect();
    assert_eq!(lb.len(), 1, "without ADD-PATH one path");
    let chosen = lb[0].1.next_hop;
    assert!(
        ["10.4.83.11", "10.4.83.12"].contains(&chosen.to_string().as_str()),
        "a node the iBGP peer selects"
    );
    assert_eq!(
        (lb[0].1.local_pref, lb[0].1.communities.clone()),
        (Some(200), vec![(64512, 7)]),
        "the pool's bgp-advertisements"
    );
    // The chosen node goes: the path moves to the other; it comes back: it returns.
    let gone = nodes.iter().position(|n| n.addresses[0] == chosen).unwrap();
    nodes[gone].announce = false;
    let moved = inputs_of(&nodes, &services, &pools, &peers).desired(&peers[2]);
    assert_ne!(
        moved
            .iter()
            .find(|(n, _)| n.prefix.to_string() == "10.5.120.7/32")
            .unwrap()
            .1
            .next_hop,
        chosen
    );
    nodes[gone].announce = true;

    peers[2].add_path_send = vec![Family::V4];
    let inputs = inputs_of(&nodes, &services, &pools, &peers);
    let paths: Vec<(Option<u32>, String)> = inputs
        .desired(&peers[2])
        .iter()
        .filter(|(n, _)| n.prefix.to_string() == "10.5.120.7/32")
        .map(|(n, a)| (n.path_id, a.next_hop.to_string()))
        .collect();
    assert_eq!(
        paths,
        vec![
            (Some(3), "10.4.83.11".into()),
            (Some(4), "10.4.83.12".into())
        ],
        "one path per eligible node"
    );
    assert!(
        inputs
            .desired(&peers[2])
            .keys()
            .all(|n| n.path_id.is_some()),
        "RFC 7911: every NLRI of the family carries a path identifier"
    );
}

#[test]
fn explain_says_why_each_peer_does_or_does_not_get_a_prefix() {
    let mut peers = seed_peers(true);
    peers[1].families = None;
    peers[1].state = "active".into();
    let nodes = seed_nodes();
    let pools = lb_pools();
    let services = [ServiceView {
        service: "default/arp".into(),
        ip: "10.6.0.9".parse().unwrap(),
        pool: "l2".into(),
    }];
    let inputs = inputs_of(&nodes, &services, &pools, &peers);
    let v = inputs.explain(&"10.5.114.0/24".parse().unwrap());
    assert_eq!(v.len(), 4, "one source, four peers");
    let reason = |peer: &str| {
        v.iter()
            .find(|x| x.peer.to_string() == peer)
            .unwrap()
            .outcome
            .clone()
    };
    assert!(reason("10.4.36.250").is_ok());
    assert!(
        reason("10.4.36.239")
            .unwrap_err()
            .contains("selected by another peer's node-selectors")
    );
    assert!(
        reason("10.4.36.238")
            .unwrap_err()
            .contains("selected by another peer's node-selectors"),
        "selection is decided before the session state"
    );
    let v = inputs.explain(&"10.5.112.0/24".parse().unwrap());
    let down = v
        .iter()
        .find(|x| x.peer.to_string() == "10.4.36.238")
        .unwrap();
    assert_eq!(
        down.outcome.clone().unwrap_err(),
        "the session with 10.4.36.238 is active, not established"
    );
    let v250 = v
        .iter()
        .find(|x| x.peer.to_string() == "10.4.36.250")
        .unwrap();
    assert!(
        v250.outcome
            .clone()
            .unwrap_err()
            .contains("do not match node n94a (labels: none)")
    );
    let l2 = inputs.explain(&"10.6.0.9/32".parse().unwrap());
    assert!(l2[0].outcome.clone().unwrap_err().contains("layer2"));
    let off = Inputs {
        announce: Announce {
            pod_cidr: false,
            loadbalancer_ip: true,
        },
        ..inputs
    };
    assert!(
        off.explain(&"10.5.112.0/24".parse().unwrap())[0]
            .outcome
            .clone()
            .unwrap_err()
            .contains("bgp.announce.podCIDR is false")
    );
}

#[test]
fn families_not_negotiated_are_not_sent() {
    let peers = seed_peers(true);
    let mut nodes = seed_nodes();
    nodes[0].addresses.push("fd04:94::11".parse().unwrap());
    nodes[0].pod_cidrs.push("fd00::/120".parse().unwrap());
    let inputs = inputs_of(&nodes, &[], &[], &peers);
    assert!(
        inputs
            .desired(&peers[0])
            .keys()
            .all(|n| n.prefix.family() == Family::V4)
    );
    let v = inputs.explain(&"fd00::/120".parse().unwrap());
    assert!(
        v.iter()
            .find(|x| x.peer == peers[0].address)
            .unwrap()
            .outcome
            .clone()
            .unwrap_err()
            .contains("IPv6 unicast was not negotiated")
    );
}

#[test]
fn operator_paths_go_to_the_peers_named_and_explain_why_not_to_others() {
    let peers = seed_peers(true);
    let nodes = seed_nodes();
    let path = OperatorPath {
        next_hop: "10.4.94.11".parse().unwrap(),
        peers: vec![peers[0].address],
        local_pref: Some(300),
        med: Some(7),
        communities: vec![(64512, 9)],
    };
    let op: BTreeMap<Cidr, Arc<OperatorPath>> =
        [("192.0.2.0/24".parse().unwrap(), Arc::new(path))].into();
    let inputs = Inputs {
        operator: &op,
        ..inputs_of(&nodes, &[], &[], &peers)
    };
    let sent = inputs.desired(&peers[0]);
    let a = &sent[&Nlri {
        prefix: "192.0.2.0/24".parse().unwrap(),
        path_id: None,
    }];
    assert_eq!(
        (a.as_path.clone(), a.local_pref, a.med),
        (vec![64513], None, Some(7)),
        "eBGP: no LOCAL_PREF even when given"
    );
    assert!(
        !inputs
            .desired(&peers[1])
            .keys()
            .any(|n| n.prefix.to_string() == "192.0.2.0/24")
    );
    let why = inputs.explain(&"192.0.2.0/24".parse().unwrap());
    assert!(
        why.iter()
            .find(|v| v.peer == peers[1].address)
            .unwrap()
            .outcome
            .clone()
            .unwrap_err()
            .contains("announced to 10.4.36.239 only")
    );
}

#[test]
fn a_drained_node_is_announced_with_graceful_shutdown_then_withdrawn() {
    let (mut peers, mut nodes) = (seed_peers(true), seed_nodes());
    let pools = lb_pools();
    let services = [ServiceView {
        service: "default/web".into(),
        ip: "10.5.120.7".parse().unwrap(),
        pool: "default".into(),
    }];
    // Drain whichever node carries the LoadBalancer IP to the iBGP peer 10.4.36.250.
    let lb = |nodes: &[NodeView], peers: &[PeerView]| {
        inputs_of(nodes, &services, &pools, peers).desired(&peers[2])
    };
    let before = lb(&nodes, &peers);
    let lb_path = |r: &Routes| {
        r.iter()
            .filter(|(n, _)| n.prefix.to_string() == "10.5.120.7/32")
            .map(|(_, a)| a.clone())
            .collect::<Vec<_>>()
    };
    let chosen = lb_path(&before)[0].next_hop;
    let drained = nodes.iter().position(|n| n.addresses[0] == chosen).unwrap();
    nodes[drained].draining = true;

    let during = lb(&nodes, &peers);
    let cidr = nodes[drained].pod_cidrs[0];
    let own = during
        .iter()
        .find(|(n, _)| n.prefix == cidr)
        .map(|(_, a)| a.clone())
        .expect("still announced during the delay");
    assert_eq!(
        (own.communities.clone(), own.local_pref),
        (vec![GRACEFUL_SHUTDOWN], Some(0)),
        "RFC 8326: GRACEFUL_SHUTDOWN, and LOCAL_PREF 0 to an iBGP peer"
    );
    let moved = lb_path(&during);
    assert_eq!(moved.len(), 1);
    assert_ne!(moved[0].next_hop, chosen, "the LoadBalancer IP moves off");
    assert!(!moved[0].communities.contains(&GRACEFUL_SHUTDOWN));
    let undrained: Vec<_> = during
        .iter()
        .filter(|(n, _)| n.prefix != cidr && n.prefix.to_string() != "10.5.120.7/32")
        .collect();
    assert!(
        undrained
            .iter()
            .all(|(_, a)| a.communities.is_empty() && a.local_pref == Some(100)),
        "other nodes unchanged"
    );

    // With ADD-PATH the drained node's path stays beside the others, marked.
    peers[2].add_path_send = vec![Family::V4];
    let paths = lb_path(&lb(&nodes, &peers));
    assert_eq!(paths.len(), 2);
    let marked: Vec<_> = paths
        .iter()
        .filter(|a| a.communities.contains(&GRACEFUL_SHUTDOWN))
        .map(|a| a.next_hop)
        .collect();
    assert_eq!(marked, vec![chosen]);
    peers[2].add_path_send = vec![];

    // Every node of the LoadBalancer IP drained: it stays, marked, rather than go.
    for n in nodes
        .iter_mut()
        .filter(|n| n.labels.contains_key("kubernetes/route"))
    {
        n.draining = true;
    }
    let all = lb_path(&lb(&nodes, &peers));
    assert_eq!(all.len(), 1);
    assert!(all[0].communities.contains(&GRACEFUL_SHUTDOWN));

    // The delay over: withdrawn, and explain says why.
    nodes[drained].announce = false;
    let after = lb(&nodes, &peers);
    assert!(after.keys().all(|n| n.prefix != cidr));
    let inputs = inputs_of(&nodes, &services, &pools, &peers);
    let why = inputs.explain(&cidr);
    assert!(
        why.iter().any(|v| v
            .outcome
            .as_ref()
            .is_err_and(|e| e.contains("drained and its drain delay is over"))),
        "{why:?}"
    );

    // eBGP peers get the community and no LOCAL_PREF.
    let ebgp_node = nodes.iter().position(|n| n.name == "n94a").unwrap();
    nodes[ebgp_node].draining = true;
    let inputs = inputs_of(&nodes, &[], &pools, &peers);
    let a = inputs
        .desired(&peers[0])
        .into_iter()
        .find(|(n, _)| n.prefix.to_string() == "10.5.112.0/24")
        .map(|(_, a)| a)
        .unwrap();
    assert_eq!(
        (a.communities.clone(), a.local_pref),
        (vec![GRACEFUL_SHUTDOWN], None)
    );
}

#[test]
fn shutting_down_marks_every_path_operator_paths_included() {
    let (peers, nodes) = (seed_peers(true), seed_nodes());
    let operator: BTreeMap<Cidr, Arc<OperatorPath>> = [(
        "192.0.2.0/24".parse().unwrap(),
        Arc::new(OperatorPath {
            next_hop: "10.4.36.1".parse().unwrap(),
            peers: vec![],
            local_pref: None,
            med: None,
            communities: vec![(64512, 1)],
        }),
    )]
    .into();
    let inputs = Inputs {
        operator: &operator,
        graceful_shutdown: true,
        ..inputs_of(&nodes, &[], &[], &peers)
    };
    for peer in [&peers[0], &peers[2]] {
        let routes = inputs.desired(peer);
        assert!(routes.len() >= 3, "{routes:?}");
        assert!(
            routes
                .values()
                .all(|a| a.communities.contains(&GRACEFUL_SHUTDOWN)),
            "{routes:?}"
        );
    }
    let op = inputs
        .desired(&peers[2])
        .into_iter()
        .find(|(n, _)| n.prefix.to_string() == "192.0.2.0/24")
        .map(|(_, a)| a)
        .unwrap();
    assert_eq!(
        (op.communities.clone(), op.local_pref),
        (vec![(64512, 1), GRACEFUL_SHUTDOWN], Some(0)),
        "kept its own community, LOCAL_PREF 0 to iBGP"
    );
}
