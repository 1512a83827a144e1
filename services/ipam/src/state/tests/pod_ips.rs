//! The route agent's reports of its node's pod IPs, against IpamState (see `state/pod_ips.rs`).

use super::*;

fn report(owner: &str, ips: &[&str]) -> ReportedPod {
    ReportedPod {
        owner: owner.into(),
        ips: ips.iter().map(|i| ip(i)).collect(),
        pod: format!("default/{}", owner.split('/').next().unwrap_or_default()),
    }
}

fn agent_held(s: &IpamState, node: &str) -> BTreeMap<String, Vec<IpAddr>> {
    s.pod_ips(node)
        .unwrap()
        .iter()
        .filter(|(_, p)| p.agent.is_some())
        .map(|(o, p)| (o.clone(), p.ips.clone()))
        .collect()
}

#[test]
fn an_agents_report_becomes_the_nodes_pod_ips_and_ipam_stops_handing_them_out() {
    let mut s = seed();
    register(&mut s, "a", "10.4.94.10");
    let (out, m) = s
        .sync_pod_ips("a", 1, vec![report("c1/eth0", &["10.5.112.7"])])
        .unwrap();
    assert!(out.accepted && out.generation == 1 && out.reserved.is_empty());
    let m = m.expect("a change to persist");
    assert!(m.event.is_none(), "pod IPs are not published");
    assert!(m.changes.contains(&Change::PutPodSync {
        node: "a".into(),
        generation: 1
    }));
    let held = &s.pod_ips("a").unwrap()["c1/eth0"];
    assert_eq!(held.ips, vec![ip("10.5.112.7")]);
    assert_eq!(held.agent.as_ref().unwrap().pod, "default/c1");

    let e = s.allocate_pod_ip("a", "default/late", None).unwrap_err();
    assert!(
        matches!(e, IpamError::FailedPrecondition(_)) && e.to_string().contains("route agent"),
        "{e}"
    );
    let e = s.release_pod_ip("a", "c1/eth0").unwrap_err();
    assert!(e.to_string().contains("CNI DEL or GC"), "{e}");

    // The next report is the whole set: what it leaves out is released.
    let (out, _) = s
        .sync_pod_ips("a", 2, vec![report("c2/eth0", &["10.5.112.8"])])
        .unwrap();
    assert!(out.accepted);
    assert_eq!(
        agent_held(&s, "a"),
        BTreeMap::from([("c2/eth0".to_string(), vec![ip("10.5.112.8")])])
    );
    assert_eq!(s.pod_ip_count(), 1);
}

#[test]
fn what_allocate_pod_ip_handed_out_before_the_agent_stays_reserved() {
    let mut s = seed();
    register(&mut s, "a", "10.4.94.10");
    let (before, _) = s.allocate_pod_ip("a", "default/manual", None).unwrap();
    assert_eq!(before, vec![ip("10.5.112.2")]);
    let (out, _) = s.sync_pod_ips("a", 1, vec![]).unwrap();
    assert_eq!(
        out.reserved,
        BTreeMap::from([("default/manual".to_string(), before.clone())])
    );
    // The agent may not take it: one address, two owners.
    let e = s
        .sync_pod_ips("a", 2, vec![report("c1/eth0", &["10.5.112.2"])])
        .unwrap_err();
    assert!(e.to_string().contains("held by default/manual"), "{e}");
    // Released through IPAM, it leaves the reserved set the agent is told of.
    s.release_pod_ip("a", "default/manual").unwrap();
    let (out, _) = s
        .sync_pod_ips("a", 2, vec![report("c1/eth0", &["10.5.112.2"])])
        .unwrap();
    assert!(out.accepted && out.reserved.is_empty());
}

#[test]
fn an_older_report_changes_nothing_and_a_repeat_is_idempotent() {
    let mut s = seed();
    register(&mut s, "a", "10.4.94.10");
    let now = vec![report("c1/eth0", &["10.5.112.7"])];
    s.sync_pod_ips("a", 5, now.clone()).unwrap();
    let (out, m) = s.sync_pod_ips("a", 5, now.clone()).unwrap();
    assert!(
        out.accepted && m.is_none(),
        "the same report again: nothing to write"
    );
    let (out, m) = s.sync_pod_ips("a", 4, vec![]).unwrap();
    assert!(
        !out.accepted && out.generation == 5 && m.is_none(),
        "a stale report"
    );
    let (out, m) = s
        .sync_pod_ips("a", 5, vec![report("c9/eth0", &["10.5.112.9"])])
        .unwrap();
    assert!(
        !out.accepted && m.is_none(),
        "same generation, other content"
    );
    assert_eq!(agent_held(&s, "a").len(), 1);
    assert!(agent_held(&s, "a").contains_key("c1/eth0"));
}

#[test]
fn a_bad_report_is_refused_whole_naming_the_address() {
    let mut s = dual();
    register(&mut s, "a", "10.4.94.10");
    s.sync_pod_ips("a", 1, vec![report("ok/eth0", &["10.5.112.20"])])
        .unwrap();
    let cases = [
        (
            vec![report("c/eth0", &["10.5.113.7"])],
            "lies outside node a's pod CIDRs",
        ),
        (
            vec![report("c/eth0", &["10.5.112.1"])],
            "network, router or broadcast",
        ),
        (
            vec![report("c/eth0", &["10.5.112.255"])],
            "network, router or broadcast",
        ),
        (
            vec![report("c/eth0", &["10.5.112.7", "10.5.112.8"])],
            "two IPv4 pod IPs",
        ),
        (
            vec![
                report("c/eth0", &["10.5.112.7"]),
                report("d/eth0", &["10.5.112.7"]),
            ],
            "reported for both c/eth0 and d/eth0",
        ),
        (vec![report("", &["10.5.112.7"])], "owner \"\" is not valid"),
    ];
    for (bad, why) in cases {
        let e = s.sync_pod_ips("a", 2, bad.clone()).unwrap_err();
        assert!(e.to_string().contains(why), "{bad:?}: {e}");
    }
    assert_eq!(
        agent_held(&s, "a"),
        BTreeMap::from([("ok/eth0".to_string(), vec![ip("10.5.112.20")])]),
        "nothing of a refused report applied"
    );
    let v6 = s.node("a").unwrap().cidr_of(Family::V6).unwrap();
    let six = v6.nth_addr(7).unwrap().to_string();
    let (out, _) = s
        .sync_pod_ips("a", 2, vec![report("c/eth0", &["10.5.112.7", &six])])
        .unwrap();
    assert!(out.accepted, "one address per family");
}

#[test]
fn reports_and_their_generation_survive_a_restart() {
    let mut s = seed();
    let mut store = MemStore::default();
    let (_, m) = s
        .register_node("a", vec![ip("10.4.94.10")], BTreeMap::new(), Instant::now())
        .unwrap();
    store.apply(&m.unwrap());
    let (_, m) = s.allocate_pod_ip("a", "default/manual", None).unwrap();
    store.apply(&m.unwrap());
    let (_, m) = s
        .sync_pod_ips("a", 3, vec![report("c1/eth0", &["10.5.112.9"])])
        .unwrap();
    store.apply(&m.unwrap());
    let (mut r, warnings) =
        IpamState::restore(config(SEED_VALUES, LB), store.persisted(), Instant::now()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(r.pod_ips("a").unwrap(), s.pod_ips("a").unwrap());
    let (out, _) = r.sync_pod_ips("a", 2, vec![]).unwrap();
    assert!(
        !out.accepted && out.generation == 3,
        "the generation was kept"
    );
    assert!(
        r.allocate_pod_ip("a", "default/other", None).is_err(),
        "and the agent still owns the node's pod IPs"
    );

    // Deleted with force, the node and its agent's claim go; registered again it starts afresh.
    let (_, count, m) = r.delete_node("a", true).unwrap();
    assert_eq!(count, 2);
    store.apply(&m);
    let (r, _) =
        IpamState::restore(config(SEED_VALUES, LB), store.persisted(), Instant::now()).unwrap();
    let mut r = r;
    register(&mut r, "a", "10.4.94.10");
    assert!(r.allocate_pod_ip("a", "default/again", None).is_ok());
}
