//! A mass expiry (see `state/liveness.rs`): a third of the nodes or more whose leases run out
//! within one dead interval are spared for up to MASS_EXPIRY_GRACE; fewer die as ever.

use super::*;

const WIDE: &str = "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 10.0.0.0/16\n    clusterPoolIPv4MaskSize: 24\n";

/// `n` nodes, each beating at `t0`.
fn cluster(n: usize, t0: Instant) -> IpamState {
    let mut s = IpamState::restore(config(WIDE, LB), Persisted::default(), t0)
        .unwrap()
        .0;
    for i in 0..n {
        let name = format!("n{i}");
        let addr = format!("10.4.{}.{}", 94 + i / 200, 10 + i % 200);
        s.register_node(&name, vec![ip(&addr)], BTreeMap::new(), t0)
            .unwrap();
        s.beat(&name, t0).unwrap();
    }
    s
}

fn beat_all_but(s: &mut IpamState, n: usize, silent: &[usize], at: Instant) {
    for i in (0..n).filter(|i| !silent.contains(i)) {
        s.beat(&format!("n{i}"), at).unwrap();
    }
}

#[test]
fn a_few_silent_nodes_die_as_ever() {
    let t0 = Instant::now();
    let mut s = cluster(30, t0);
    let dead = s.liveness().dead_after();
    beat_all_but(&mut s, 30, &[0, 1, 2, 3, 4, 5, 6, 7, 8], t0 + dead / 2);
    let e = s.expire_leases(t0 + dead);
    assert_eq!((e.deaths.len(), e.spared), (9, 0), "9 of 30: believed");
}

#[test]
fn most_nodes_silent_at_once_are_spared_then_declared_dead_after_the_grace() {
    let t0 = Instant::now();
    let n = 30;
    let mut s = cluster(n, t0);
    let dead = s.liveness().dead_after();
    // Nobody beats: IPAM read nothing (overloaded), or they all went.
    let e = s.expire_leases(t0 + dead);
    assert_eq!((e.deaths.len(), e.spared, e.sparing_began), (0, n, true));
    assert!(s.nodes.values().all(|e| e.node.ready), "routes kept");
    // Beats arrive again within the grace: nobody died.
    let later = t0 + dead * 2;
    let e = s.expire_leases(later);
    assert_eq!((e.deaths.len(), e.spared, e.sparing_began), (0, n, false));
    beat_all_but(&mut s, n, &[], later);
    assert!(s.expire_leases(later + dead / 2).deaths.is_empty());

    // Silent again a dead interval later — the same episode — and past the grace, the lease
    // clock ticking as it does (five times an interval): declared dead, all at once, and not
    // before the grace since the episode began is out.
    let began = t0 + dead;
    let period = s.liveness().heartbeat_interval / 5;
    let t1 = later + dead / 2;
    let mut t = t1;
    let mut spared = 0;
    let deaths = loop {
        t += period;
        let e = s.expire_leases(t);
        spared += e.spared;
        if !e.deaths.is_empty() {
            break e.deaths.len();
        }
        assert!(t - began < MASS_EXPIRY_GRACE + dead * 2, "never declared");
    };
    assert_eq!(deaths, n);
    assert!(spared > 0);
    assert!(t - began >= MASS_EXPIRY_GRACE, "{:?}", t - began);
    assert!(s.nodes.values().all(|e| !e.node.ready));
}

#[test]
fn deaths_that_pile_up_within_a_dead_interval_count_together() {
    let t0 = Instant::now();
    let n = 30;
    let mut s = cluster(n, t0);
    let dead = s.liveness().dead_after();
    // 9 die (believed), then within the same dead interval 2 more: 11 of 30 is over a third.
    beat_all_but(&mut s, n, &(0..9).collect::<Vec<_>>(), t0 + dead / 4);
    assert_eq!(s.expire_leases(t0 + dead).deaths.len(), 9);
    beat_all_but(&mut s, n, &(0..11).collect::<Vec<_>>(), t0 + dead);
    let e = s.expire_leases(t0 + dead + dead / 4);
    assert_eq!((e.deaths.len(), e.spared), (0, 2));
}

#[test]
fn a_small_cluster_losing_every_node_is_believed() {
    let t0 = Instant::now();
    let mut s = cluster(MASS_EXPIRY_MIN - 1, t0);
    let dead = s.liveness().dead_after();
    let e = s.expire_leases(t0 + dead);
    assert_eq!((e.deaths.len(), e.spared), (MASS_EXPIRY_MIN - 1, 0));
}

#[test]
fn an_episode_ends_once_the_nodes_beat_steadily_and_the_next_gets_its_own_grace() {
    let t0 = Instant::now();
    let n = 30;
    let mut s = cluster(n, t0);
    let dead = s.liveness().dead_after();
    let period = s.liveness().heartbeat_interval / 5;
    assert!(s.expire_leases(t0 + dead).sparing_began);
    // Beating again for a while, the clock ticking.
    let mut t = t0 + dead;
    while t < t0 + dead * 6 {
        t += period;
        beat_all_but(&mut s, n, &[], t);
        assert_eq!(s.expire_leases(t).spared, 0);
    }
    let e = s.expire_leases(t + dead);
    assert_eq!((e.deaths.len(), e.spared, e.sparing_began), (0, n, true));
}
