use super::*;

const SEED_VALUES: &str = include_str!("../../../../../examples/seed/values.yaml");

fn config(values: &str, lb: &str) -> CoreConfig {
    let v = routeplane_config::HelmValues::parse(values, "t").unwrap();
    CoreConfig {
        pod_pools: v.enabled_pools().into_iter().cloned().collect(),
        default_masks: [
            (Family::V4, v.ipv4_pool.mask_size),
            (Family::V6, v.ipv6_pool.mask_size),
        ]
        .into(),
        service_pools: routeplane_config::BgpConfig::parse(lb, "t")
            .unwrap()
            .address_pools,
        lease_ttl: Duration::from_secs(10),
        liveness: LivenessConfig::default(),
        max_pods_per_node: DEFAULT_MAX_PODS_PER_NODE as usize,
        max_operator_entries: DEFAULT_MAX_OPERATOR_ENTRIES,
    }
}

/// The seed's core with room for `max_operator_entries` operator entries.
pub(super) fn core_with(max_operator_entries: usize) -> IpamState {
    let config = CoreConfig {
        max_operator_entries,
        ..config(SEED_VALUES, LB)
    };
    IpamState::restore(config, Persisted::default(), Instant::now())
        .unwrap()
        .0
}

const LB: &str = "address-pools:\n- {name: default, protocol: bgp, addresses: [10.5.120.0/21]}\n";

fn seed() -> IpamState {
    IpamState::restore(
        config(SEED_VALUES, LB),
        Persisted::default(),
        Instant::now(),
    )
    .unwrap()
    .0
}

fn dual() -> IpamState {
    let values = format!("{SEED_VALUES}\nipv6:\n  enabled: true\n");
    IpamState::restore(config(&values, LB), Persisted::default(), Instant::now())
        .unwrap()
        .0
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn register_mutation(s: &mut IpamState, name: &str, addr: &str) -> Option<Mutation> {
    s.register_node(name, vec![ip(addr)], BTreeMap::new(), Instant::now())
        .unwrap()
        .1
}

fn register(s: &mut IpamState, name: &str, addr: &str) -> Node {
    s.register_node(name, vec![ip(addr)], BTreeMap::new(), Instant::now())
        .unwrap()
        .0
}

/// Folds mutations into what a store would hold: the durable image, which applies changes as
/// sled does in store.rs (`image.rs` tests that they agree).
#[derive(Default)]
struct MemStore(crate::image::DurableImage);

impl MemStore {
    fn apply(&mut self, m: &Mutation) {
        assert!(
            m.revision > self.0.revision(),
            "revisions strictly increase"
        );
        for c in &m.changes {
            self.0.apply(c);
        }
        self.0.set_revision(m.revision);
    }

    fn persisted(&self) -> Persisted {
        self.0.to_persisted()
    }
}

#[test]
fn nine_nodes_on_the_seed_pool_the_ninth_is_refused() {
    let mut s = seed();
    for i in 0..8 {
        let n = register(&mut s, &format!("node-{i}"), &format!("10.4.94.{}", 10 + i));
        assert_eq!(
            n.pod_cidrs,
            vec![format!("10.5.{}.0/24", 112 + i).parse::<Cidr>().unwrap()]
        );
        assert_eq!(n.router_ips(), vec![ip(&format!("10.5.{}.1", 112 + i))]);
    }
    let err = s
        .register_node(
            "node-8",
            vec![ip("10.4.94.18")],
            BTreeMap::new(),
            Instant::now(),
        )
        .unwrap_err();
    assert!(matches!(err, IpamError::Exhausted(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("the IPv4 cluster pool is full: 10.5.112.0/21 (/24 per node: 8 of 8 in use)"),
        "{msg}"
    );
    assert!(
        msg.contains("AddPoolCidr") && msg.contains("clusterPoolIPv4PodCIDRList"),
        "{msg}"
    );
    assert!(
        s.node("node-8").is_err(),
        "a refused node is not half-registered"
    );
}

#[test]
fn register_is_idempotent_and_updates_keep_the_cidr() {
    let mut s = seed();
    let (first, m) = s
        .register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), Instant::now())
        .unwrap();
    let m = m.unwrap();
    assert_eq!(m.event, Some(Event::NodeUpdated(first.clone())));
    let (again, none) = s
        .register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), Instant::now())
        .unwrap();
    assert_eq!((again, none), (first.clone(), None));
    let labels: BTreeMap<_, _> =
        [("kubernetes/route".to_string(), "bgp-peer-83".to_string())].into();
    let (moved, m2) = s
        .register_node("a", vec![ip("10.4.83.10")], labels.clone(), Instant::now())
        .unwrap();
    assert_eq!(moved.pod_cidrs, first.pod_cidrs);
    assert_eq!(moved.labels, labels);
    assert!(m2.unwrap().revision > m.revision);
}

#[test]
fn a_drain_is_a_stored_node_change_kept_through_registration_and_idempotent() {
    let mut s = seed();
    register(&mut s, "n1", "10.4.94.11");
    let (node, m) = s.drain_node("n1", Drain::Hold, Instant::now()).unwrap();
    assert!(node.draining);
    let m = m.expect("a change");
    assert!(
        matches!(&m.changes[..], [Change::PutNode(n)] if n.draining && n.revision == m.revision),
        "{m:?}"
    );
    assert!(
        s.drain_node("n1", Drain::Hold, Instant::now())
            .unwrap()
            .1
            .is_none(),
        "idempotent"
    );
    // The agent re-registering (a restart) does not end an operator's drain, nor does an
    // agent's shutdown drain make it one that ends.
    assert!(register(&mut s, "n1", "10.4.94.11").draining);
    let (node, m) = s
        .drain_node("n1", Drain::UntilRegistered, Instant::now())
        .unwrap();
    assert!(node.draining && !node.drain_ends_on_register && m.is_none());
    let (node, m) = s.drain_node("n1", Drain::End, Instant::now()).unwrap();
    assert!(!node.draining && m.is_some());
    let e = s
        .drain_node("nope", Drain::Hold, Instant::now())
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn an_agents_shutdown_drain_ends_when_it_registers_again_unless_an_operator_holds_it() {
    let mut s = seed();
    register(&mut s, "n1", "10.4.94.11");
    let (node, m) = s
        .drain_node("n1", Drain::UntilRegistered, Instant::now())
        .unwrap();
    assert!(node.draining && node.drain_ends_on_register && m.is_some());
    // The agent is back: the drain ends, as a stored change.
    let (node, m) = s
        .register_node(
            "n1",
            vec![ip("10.4.94.11")],
            BTreeMap::new(),
            Instant::now(),
        )
        .unwrap();
    assert!(!node.draining && !node.drain_ends_on_register);
    assert!(m.is_some(), "a published change");
    // An operator's drain over the agent's holds through the registration.
    s.drain_node("n1", Drain::UntilRegistered, Instant::now())
        .unwrap();
    let (node, _) = s.drain_node("n1", Drain::Hold, Instant::now()).unwrap();
    assert!(node.draining && !node.drain_ends_on_register);
    assert!(register(&mut s, "n1", "10.4.94.11").draining);
}

#[test]
fn two_nodes_cannot_share_an_address() {
    let mut s = seed();
    register(&mut s, "a", "10.4.94.10");
    let e = s
        .register_node("b", vec![ip("10.4.94.10")], BTreeMap::new(), Instant::now())
        .unwrap_err();
    assert!(
        matches!(e, IpamError::AlreadyExists(_))
            && e.to_string().contains("already registered by node a"),
        "{e}"
    );
    let e = s
        .register_node("b", vec![ip("127.0.0.1")], BTreeMap::new(), Instant::now())
        .unwrap_err();
    assert!(matches!(e, IpamError::InvalidArgument(_)), "{e}");
}

#[test]
fn an_address_is_free_again_once_its_node_moved_off_it_or_was_deleted() {
    let mut s = seed();
    let mut store = MemStore::default();
    let taken = |s: &mut IpamState, name: &str, addr: &str| {
        s.register_node(name, vec![ip(addr)], BTreeMap::new(), Instant::now())
            .is_err_and(|e| matches!(e, IpamError::AlreadyExists(_)))
    };
    if let Some(m) = register_mutation(&mut s, "a", "10.4.94.10") {
        store.apply(&m);
    }
    // The same node again, with the same address: not a conflict with itself.
    assert!(!taken(&mut s, "a", "10.4.94.10"));
    assert!(!taken(&mut s, "a", "10.4.94.11"), "a moves to .11");
    assert!(!taken(&mut s, "b", "10.4.94.10"), ".10 was let go by a");
    assert!(taken(&mut s, "c", "10.4.94.11"), ".11 is a's now");
    s.delete_node("a", false).unwrap();
    assert!(!taken(&mut s, "c", "10.4.94.11"), "a is gone");
    // Restored from the store, the index is rebuilt: .10 is a's there.
    let (mut r, _) =
        IpamState::restore(config(SEED_VALUES, LB), store.persisted(), Instant::now()).unwrap();
    assert!(taken(&mut r, "b", "10.4.94.10"));
}

#[test]
fn pod_ips_skip_network_router_and_broadcast() {
    let mut s = seed();
    let n = register(&mut s, "a", "10.4.94.10");
    let (first, m) = s.allocate_pod_ip("a", "default/p0", None).unwrap();
    assert_eq!(first, vec![ip("10.5.112.2")]);
    assert!(
        m.unwrap().event.is_none(),
        "pod IPs advance the revision but are not published"
    );
    assert_eq!(
        s.allocate_pod_ip("a", "default/p0", None).unwrap(),
        (first, None),
        "idempotent per owner"
    );
    let mut seen = BTreeSet::new();
    for i in 1..253 {
        let (ips, _) = s
            .allocate_pod_ip("a", &format!("default/p{i}"), None)
            .unwrap();
        assert!(seen.insert(ips[0]), "{} handed out twice", ips[0]);
    }
    assert!(
        !seen.contains(&ip("10.5.112.0"))
            && !seen.contains(&ip("10.5.112.1"))
            && !seen.contains(&ip("10.5.112.255"))
    );
    let e = s.allocate_pod_ip("a", "default/full", None).unwrap_err();
    assert!(
        e.to_string().contains("10.5.112.0/24 is full: 253 of 253"),
        "{e}"
    );
    let (released, _) = s.release_pod_ip("a", "default/p7").unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(
        s.allocate_pod_ip("a", "default/late", None).unwrap().0,
        released
    );
    assert_eq!(
        s.release_pod_ip("a", "default/nobody").unwrap(),
        (vec![], None)
    );
    assert!(matches!(
        s.allocate_pod_ip("ghost", "x", None),
        Err(IpamError::NotFound(_))
    ));
    assert!(matches!(
        s.allocate_pod_ip("a", "x", Some(Family::V6)),
        Err(IpamError::FailedPrecondition(_))
    ));
    assert_eq!(n.pod_cidrs.len(), 1);
}

#[test]
fn dual_stack_nodes_and_pods() {
    let mut s = dual();
    let n = register(&mut s, "a", "10.4.94.10");
    assert_eq!(
        n.pod_cidrs,
        vec![
            "10.5.112.0/24".parse().unwrap(),
            "fd00::/120".parse::<Cidr>().unwrap()
        ]
    );
    let (ips, _) = s.allocate_pod_ip("a", "p", None).unwrap();
    assert_eq!(ips, vec![ip("10.5.112.2"), ip("fd00::2")]);
    let (v6, m) = s.allocate_pod_ip("a", "q", Some(Family::V6)).unwrap();
    assert_eq!(v6, vec![ip("fd00::3")]);
    assert!(m.is_some());
    let (both, m) = s.allocate_pod_ip("a", "q", None).unwrap();
    assert_eq!(
        both,
        vec![ip("10.5.112.3"), ip("fd00::3")],
        "the missing family is added"
    );
    assert!(m.is_some());
}

#[test]
fn delete_refuses_with_pods_then_frees_the_cidr() {
    let mut s = seed();
    let a = register(&mut s, "a", "10.4.94.10");
    s.allocate_pod_ip("a", "p", None).unwrap();
    let e = s.delete_node("a", false).unwrap_err();
    assert!(
        matches!(e, IpamError::FailedPrecondition(_)) && e.to_string().contains("1 pod IPs"),
        "{e}"
    );
    let (gone, count, m) = s.delete_node("a", true).unwrap();
    assert_eq!((gone.pod_cidrs.clone(), count), (a.pod_cidrs.clone(), 1));
    assert!(m.changes.contains(&Change::DeletePodIps {
        node: "a".into(),
        owner: "p".into()
    }));
    assert!(matches!(m.event, Some(Event::NodeDeleted { .. })));
    for i in 0..8 {
        register(&mut s, &format!("n{i}"), &format!("10.4.94.{}", 20 + i));
    }
    assert!(
        s.nodes().any(|n| n.pod_cidrs == a.pod_cidrs),
        "the freed CIDR is reused only after the delete"
    );
}

#[test]
fn leases_expire_to_not_ready_and_renew() {
    let mut s = seed();
    let t0 = Instant::now();
    s.register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    assert!(
        s.expire_leases(t0 + Duration::from_secs(9))
            .deaths
            .is_empty()
    );
    assert_eq!(
        s.keep_alive("a", t0 + Duration::from_secs(9)).unwrap(),
        (false, None)
    );
    assert!(
        s.expire_leases(t0 + Duration::from_secs(18))
            .deaths
            .is_empty(),
        "renewed at 9s, so alive until 19s"
    );
    let expired = s.expire_leases(t0 + Duration::from_secs(19)).deaths;
    assert_eq!(expired.len(), 1);
    assert!(matches!(&expired[0].event, Some(Event::NodeUpdated(n)) if !n.ready));
    assert!(
        s.expire_leases(t0 + Duration::from_secs(30))
            .deaths
            .is_empty(),
        "NotReady is reported once"
    );
    let (back, m) = s.keep_alive("a", t0 + Duration::from_secs(31)).unwrap();
    assert!(back);
    assert!(matches!(m.unwrap().event, Some(Event::NodeUpdated(n)) if n.ready));
    assert!(matches!(
        s.keep_alive("ghost", t0),
        Err(IpamError::NotFound(_))
    ));
}

#[test]
fn restored_state_hands_out_nothing_twice() {
    let mut s = dual();
    let mut store = MemStore::default();
    let mut record = |m: Option<Mutation>| {
        if let Some(m) = m {
            store.apply(&m);
        }
    };
    for i in 0..3 {
        record(
            s.register_node(
                &format!("n{i}"),
                vec![ip(&format!("10.4.94.{}", 10 + i))],
                BTreeMap::new(),
                Instant::now(),
            )
            .unwrap()
            .1,
        );
    }
    for i in 0..10 {
        record(s.allocate_pod_ip("n1", &format!("p{i}"), None).unwrap().1);
    }
    record(s.release_pod_ip("n1", "p3").unwrap().1);
    record(
        s.allocate_service_ip("default/web", None, None, None)
            .unwrap()
            .1,
    );
    record(
        s.add_pool_cidr("10.6.0.0/16".parse().unwrap(), None)
            .unwrap()
            .1,
    );
    record(
        s.drain_pool_cidr("10.5.112.0/21".parse().unwrap(), true)
            .unwrap()
            .1,
    );
    record(s.delete_node("n0", false).unwrap().2.into());
    let values = format!("{SEED_VALUES}\nipv6:\n  enabled: true\n");
    let (mut r, warnings) =
        IpamState::restore(config(&values, LB), store.persisted(), Instant::now()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(r.revision(), s.revision());
    assert_eq!(
        r.nodes().cloned().collect::<Vec<_>>(),
        s.nodes().cloned().collect::<Vec<_>>()
    );
    assert_eq!(r.pod_ips("n1").unwrap(), s.pod_ips("n1").unwrap());
    // New allocations after the restart collide with nothing held before it.
    let held: BTreeSet<IpAddr> = r
        .pod_ips("n1")
        .unwrap()
        .values()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    for i in 10..20 {
        let (ips, _) = r.allocate_pod_ip("n1", &format!("p{i}"), None).unwrap();
        assert!(ips.iter().all(|ip| !held.contains(ip)));
    }
    let (svc, _) = r
        .allocate_service_ip("default/other", None, None, None)
        .unwrap();
    assert_ne!(svc.ip, s.service_ips().next().unwrap().ip);
    // The drained seed pool stays drained: the new node comes from the added pool.
    let n = register(&mut r, "n9", "10.4.94.99");
    assert_eq!(n.pod_cidrs[0], "10.6.0.0/24".parse().unwrap());
    let pools = r.pod_pools();
    assert!(
        pools
            .iter()
            .any(|p| p.cidr.to_string() == "10.5.112.0/21" && p.drained && p.used == 2)
    );
}

#[test]
fn pools_add_drain_and_refuse_overlaps() {
    let mut s = seed();
    let e = s
        .add_pool_cidr("10.5.120.0/24".parse().unwrap(), None)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("overlaps LoadBalancer address-pool \"default\""),
        "{e}"
    );
    let e = s
        .add_pool_cidr("10.5.112.0/22".parse().unwrap(), None)
        .unwrap_err();
    assert!(e.to_string().contains("overlaps pool 10.5.112.0/21"), "{e}");
    let e = s
        .add_pool_cidr("fd01::/64".parse().unwrap(), None)
        .unwrap_err();
    assert!(matches!(e, IpamError::FailedPrecondition(_)), "{e}");
    let (view, m) = s
        .add_pool_cidr("10.6.0.0/23".parse().unwrap(), None)
        .unwrap();
    assert_eq!(
        (view.mask, view.total, view.source.as_str()),
        (24, 2, "AddPoolCidr")
    );
    assert!(m.is_some());
    assert!(
        s.add_pool_cidr("10.6.0.0/23".parse().unwrap(), Some(24))
            .unwrap()
            .1
            .is_none(),
        "idempotent"
    );
    assert!(matches!(
        s.add_pool_cidr("10.6.0.0/23".parse().unwrap(), Some(25)),
        Err(IpamError::AlreadyExists(_))
    ));
    for i in 0..10 {
        register(&mut s, &format!("n{i}"), &format!("10.4.94.{}", 10 + i));
    }
    s.allocate_pod_ip("n0", "p", None).unwrap();
    let views = s.pod_pools();
    assert_eq!(views.iter().map(|v| v.used).sum::<u128>(), 10);
    let seed = views
        .iter()
        .find(|v| v.cidr.to_string() == "10.5.112.0/21")
        .unwrap();
    assert_eq!(
        (seed.pod_ips_used, seed.pod_ips_capacity),
        (1, 8 * 253),
        "8 /24s, 253 pod addresses each"
    );
    let (drained, _) = s
        .drain_pool_cidr("10.6.0.0/23".parse().unwrap(), true)
        .unwrap();
    assert!(drained.drained && drained.used == 2);
    assert!(matches!(
        s.drain_pool_cidr("10.7.0.0/23".parse().unwrap(), true),
        Err(IpamError::NotFound(_))
    ));
}

#[test]
fn seed_lb_pool_on_the_pod_cidr_stops_the_start() {
    let seed_bgp = include_str!("../../../../../examples/seed/bgp-config.yaml");
    let err = IpamState::restore(
        config(SEED_VALUES, seed_bgp),
        Persisted::default(),
        Instant::now(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, IpamError::Config(_)));
    assert!(
        err.to_string()
            .contains("overlaps the pod CIDR pool 10.5.112.0/21"),
        "{err}"
    );
}

#[test]
fn service_ips_publish_events() {
    let mut s = seed();
    let (a, m) = s
        .allocate_service_ip("default/web", None, None, None)
        .unwrap();
    assert_eq!(a.ip, ip("10.5.120.0"));
    assert_eq!(m.unwrap().event, Some(Event::ServiceIpAssigned(a.clone())));
    let (released, m) = s.release_service_ip("default/web").unwrap();
    assert_eq!(released, Some(a.clone()));
    assert_eq!(m.unwrap().event, Some(Event::ServiceIpReleased(a)));
    assert_eq!(s.release_service_ip("default/web").unwrap(), (None, None));
    assert!(matches!(
        s.allocate_service_ip("web", None, None, None),
        Err(IpamError::InvalidArgument(_))
    ));
}

#[test]
fn a_node_from_the_cluster_api_waits_for_its_agent_to_be_ready() {
    let mut s = seed();
    let t0 = Instant::now();
    let (n, m) = s
        .sync_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    assert!(!n.ready, "nothing is advertised before the agent runs");
    assert_eq!(n.pod_cidrs.len(), 1, "the CIDR is allocated at once");
    assert!(m.is_some());
    let (n, _) = s
        .register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    assert!(n.ready, "the agent's registration makes it Ready");
}

#[test]
fn a_cluster_update_neither_renews_a_lease_nor_revives_a_node() {
    let mut s = seed();
    let t0 = Instant::now();
    s.register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    let labels = BTreeMap::from([("kubernetes/route".to_string(), "bgp-peer-83".to_string())]);
    let later = t0 + Duration::from_secs(5);
    let (n, _) = s
        .sync_node("a", vec![ip("10.4.94.10")], labels.clone(), later)
        .unwrap();
    assert!(n.ready && n.labels == labels);
    assert_eq!(
        s.expire_leases(t0 + Duration::from_secs(10)).deaths.len(),
        1,
        "the lease still ends 10 s after the agent's registration"
    );
    let (n, _) = s
        .sync_node(
            "a",
            vec![ip("10.4.94.10")],
            BTreeMap::new(),
            t0 + Duration::from_secs(11),
        )
        .unwrap();
    assert!(
        !n.ready,
        "a label change does not bring a dead node's routes back"
    );
}

mod mass_expiry;
mod pod_ips;

/// AddPoolCidr from the API refuses what would hand out nonsense: a mask that is no node CIDR
/// (the "next node gets a /2"), a pool of half the address space, special ranges, and a
/// pool holding a node's own address.
#[test]
fn an_added_pool_must_be_a_sensible_pod_range() {
    let mut s = seed();
    register(&mut s, "a", "10.4.94.10");
    let cases = [
        ("0.0.0.0/1", Some(2), "is not a unicast range"),
        (
            "64.0.0.0/2",
            Some(3),
            "too wide for a pod pool: give a prefix of /8",
        ),
        (
            "10.64.0.0/10",
            Some(12),
            "maskSize 12 is not a node CIDR size: give 16 to 28",
        ),
        (
            "10.64.0.0/10",
            Some(30),
            "maskSize 30 is not a node CIDR size",
        ),
        ("127.0.0.0/16", Some(24), "is not a unicast range"),
        ("224.0.0.0/8", Some(24), "is not a unicast range"),
        ("169.254.0.0/16", Some(24), "is not a unicast range"),
        (
            "10.4.0.0/16",
            Some(24),
            "contains node a's address 10.4.94.10",
        ),
    ];
    for (cidr, mask, want) in cases {
        let e = s.add_pool_cidr(cidr.parse().unwrap(), mask).unwrap_err();
        assert!(
            matches!(e, IpamError::InvalidArgument(_)) && e.to_string().contains(want),
            "{cidr} /{mask:?}: {e}"
        );
    }
    assert!(
        s.add_pool_cidr("10.64.0.0/10".parse().unwrap(), Some(24))
            .is_ok()
    );
}

/// However large the node's CIDR, one node holds addresses for at most MAX_PODS_PER_NODE owners.
#[test]
fn pod_ips_per_node_are_capped() {
    let mut s = seed();
    register(&mut s, "a", "10.4.94.10");
    // The seed's node CIDRs are /24s: 253 pods fit, so the cap is reached by hand here.
    let entry = s.nodes.get_mut("a").unwrap();
    for i in 0..DEFAULT_MAX_PODS_PER_NODE {
        entry.pods.insert(format!("filler/{i}"), PodIps::default());
    }
    let e = s
        .allocate_pod_ip("a", "default/one-too-many", None)
        .unwrap_err();
    assert!(
        matches!(e, IpamError::Exhausted(_))
            && e.to_string()
                .contains("the most one node may have (1024, --max-pods-per-node)"),
        "{e}"
    );
    assert!(
        s.allocate_pod_ip("a", "filler/7", None).is_ok(),
        "an owner it holds still gets its IPs"
    );
}

#[test]
fn a_beat_renews_for_the_dead_interval_and_a_silent_node_dies() {
    let mut s = seed();
    let t0 = Instant::now();
    let dead = s.liveness().dead_after();
    s.register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    let (beat, m) = s.beat("a", t0).unwrap();
    assert_eq!(
        (beat.ready, beat.held_down, m.is_none()),
        (true, false, true)
    );
    assert!(
        s.expire_leases(t0 + dead - Duration::from_millis(1))
            .deaths
            .is_empty()
    );
    let died = s.expire_leases(t0 + dead).deaths;
    assert!(
        matches!(&died[..], [m] if matches!(&m.event, Some(Event::NodeUpdated(n)) if !n.ready && !n.held_down))
    );
    let (beat, m) = s.beat("a", t0 + dead).unwrap();
    assert!(beat.ready && m.is_some(), "a beat brings it back");
    assert!(matches!(
        s.beat("ghost", t0),
        Err(IpamError::NotFound(e)) if e.contains("ghost")
    ));
}

#[test]
fn a_node_that_flaps_is_held_down_until_its_penalty_decays() {
    let mut s = seed();
    let t0 = Instant::now();
    let dead = s.liveness().dead_after();
    let half_life = s.liveness().flap_half_life.unwrap();
    s.register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    let mut t = t0;
    for death in 1..=3 {
        s.beat("a", t).unwrap();
        t += dead;
        let died = s.expire_leases(t).deaths;
        let Some(Event::NodeUpdated(n)) = &died[0].event else {
            panic!("death {death}: {died:?}")
        };
        assert_eq!(n.held_down, death == 3, "death {death}");
    }
    // Beating steadily, or registering again, does not bring it back while held down.
    let (beat, m) = s.beat("a", t).unwrap();
    assert_eq!(
        (beat.ready, beat.held_down, m.is_none()),
        (false, true, true)
    );
    let (node, _) = s
        .register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t)
        .unwrap();
    assert!(!node.ready && node.held_down);
    assert!(
        s.expire_leases(t + dead).deaths.is_empty(),
        "no death while down"
    );
    // Two half-lives later the penalty (about 2,990) is below 750: the next beat revives it.
    let later = t + 2 * half_life + Duration::from_secs(1);
    assert!(s.penalty("a", later) < 750.0);
    let (beat, m) = s.beat("a", later).unwrap();
    assert_eq!((beat.ready, beat.held_down), (true, false));
    assert!(matches!(m.unwrap().event, Some(Event::NodeUpdated(n)) if n.ready && !n.held_down));
}

#[test]
fn without_damping_a_flapping_node_always_comes_back() {
    let config = CoreConfig {
        liveness: LivenessConfig {
            flap_half_life: None,
            ..LivenessConfig::default()
        },
        ..config(SEED_VALUES, LB)
    };
    let mut s = IpamState::restore(config, Persisted::default(), Instant::now())
        .unwrap()
        .0;
    let t0 = Instant::now();
    let dead = s.liveness().dead_after();
    s.register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    let mut t = t0;
    for _ in 0..5 {
        s.beat("a", t).unwrap();
        t += dead;
        assert_eq!(s.expire_leases(t).deaths.len(), 1);
    }
    assert!(s.beat("a", t).unwrap().0.ready);
}

#[test]
fn time_given_back_after_a_stall_of_ipam_is_no_death() {
    let mut s = seed();
    let t0 = Instant::now();
    let dead = s.liveness().dead_after();
    s.register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    s.beat("a", t0).unwrap();
    // IPAM did not run for 5 s: the beats sent meanwhile are still unread.
    let stalled = Duration::from_secs(5);
    s.give_back(stalled);
    assert!(s.expire_leases(t0 + stalled + dead / 2).deaths.is_empty());
    assert_eq!(s.expire_leases(t0 + stalled + dead).deaths.len(), 1);
}

#[test]
fn the_agents_shutdown_drain_is_not_a_death() {
    let mut s = seed();
    let t0 = Instant::now();
    s.register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), t0)
        .unwrap();
    s.beat("a", t0).unwrap();
    s.drain_node("a", Drain::UntilRegistered, t0).unwrap();
    let ttl = s.lease_ttl();
    assert!(
        s.expire_leases(t0 + ttl - Duration::from_millis(1))
            .deaths
            .is_empty(),
        "the heartbeat stopped, but the agent said it was leaving: the lease TTL holds"
    );
    assert_eq!(s.expire_leases(t0 + ttl).deaths.len(), 1);
}

#[test]
fn no_beat_shortens_the_lease_a_restart_gave_and_beats_after_it_run_as_usual() {
    let mut s = seed();
    let mut store = MemStore::default();
    if let Some(m) = register_mutation(&mut s, "a", "10.4.94.10") {
        store.apply(&m);
    }
    let t0 = Instant::now();
    let (mut r, _) = IpamState::restore(config(SEED_VALUES, LB), store.persisted(), t0).unwrap();
    let (ttl, dead) = (r.lease_ttl(), r.liveness().dead_after());
    assert!(
        dead < ttl / 2,
        "the test needs a beat's lease well inside the TTL"
    );
    // Its first beat comes at once, the next never (taken late by a saturated server, say).
    r.beat("a", t0 + Duration::from_millis(100)).unwrap();
    assert!(
        r.expire_leases(t0 + ttl - Duration::from_millis(1))
            .deaths
            .is_empty(),
        "a beat within the restart's lease cut it short"
    );
    assert_eq!(r.expire_leases(t0 + ttl).deaths.len(), 1, "dead at its end");
    // After it, a beat renews for the dead interval only.
    let later = t0 + ttl * 2;
    r.beat("a", later).unwrap();
    assert!(r.expire_leases(later + dead / 2).deaths.is_empty());
    assert_eq!(r.expire_leases(later + dead).deaths.len(), 1);
    // A fresh state (nothing restored) has no such lease: a beat's is the dead interval at once.
    let mut f = seed();
    register(&mut f, "b", "10.4.94.11");
    f.beat("b", t0).unwrap();
    assert_eq!(f.expire_leases(t0 + dead).deaths.len(), 1);
}
