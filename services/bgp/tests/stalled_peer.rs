//! Peers that stop reading, while IPAM churns: two configured peers on the seed's core segment
//! (tests/hostile/peer.py in namespaces of their own) establish their sessions, then never read
//! again but go on sending KEEPALIVEs — so their sessions' hold timers stay fed — while 10,000
//! nodes register with IPAM, each a new pod CIDR for every peer. Each connection's writer has a
//! deadline of the hold time (`writer.rs`): the peer with a 9 s hold time is cut when its window
//! has been shut that long; the one with 90 s is deleted through the API meanwhile, and DeletePeer
//! answers at once. The real ToR (BIRD) keeps its session, never reset, and gets every route;
//! routeplane-bgp's memory stays bounded (route tables reach sessions through a channel that keeps
//! only the latest); shutdown is prompt.

mod lab;

mod privileged {
    use std::time::{Duration, Instant};

    use routeplane_api::ipam::v1 as pb;
    use routeplane_api::ipam::v1::ipam_client::IpamClient;
    use routeplane_testkit::Service;

    use super::lab::{self, Lab, ROUTER_IP, SPEAKER_IP, same_instant};

    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hostile/peer.py");
    const NODES: u32 = 10_000;
    const LIMIT: Duration = Duration::from_secs(30);
    /// The two peers that stop reading, with the hold times configured for them.
    const FAST: (&str, u32) = ("10.4.36.240", 9);
    const SLOW: (&str, u32) = ("10.4.36.241", 90);

    /// What the peer script printed under `key`, once it has.
    fn said(peer: &Service, key: &str) -> Option<serde_json::Value> {
        peer.log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get(key).cloned())
    }

    fn peer_state(lab: &Lab, address: &str) -> Option<serde_json::Value> {
        let peers = lab.grpc(50052, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
        peers["peers"]
            .as_array()?
            .iter()
            .find(|p| p["peerAddress"] == address)
            .cloned()
    }

    /// NODES registrations from 16 clients at once, from inside the speaker's namespace (IPAM
    /// listens on its loopback); returns how long they took.
    async fn register_nodes() -> Duration {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051")
            .connect()
            .await
            .expect("IPAM");
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..16 {
            let mut c = IpamClient::new(channel.clone());
            clients.spawn(async move {
                for i in (client..NODES).step_by(16) {
                    let address = format!("10.7.{}.{}", i / 250, i % 250 + 1);
                    c.register_node(pb::RegisterNodeRequest {
                        name: format!("n{i}"),
                        addresses: vec![address],
                        labels: Default::default(),
                    })
                    .await
                    .expect("registered");
                }
            });
        }
        while let Some(done) = clients.join_next().await {
            done.expect("a client");
        }
        started.elapsed()
    }

    #[test]
    fn peers_that_stop_reading_are_cut_and_hold_nothing_up() {
        lab::require();
        routeplane_testkit::privileged::require(&["python3", "timeout"]);
        let mut lab = Lab::new();
        let fast = lab.add_router(FAST.0);
        let slow = lab.add_router(SLOW.0);
        lab.start_bird(64524, "");
        let peer = |(address, hold): (&str, u32)| {
            format!(
                "  - peer-address: {address}\n    peer-asn: 64524\n    my-asn: 64513\n    hold-time: {hold}s\n"
            )
        };
        let config = format!(
            "peers:\n  - peer-address: {ROUTER_IP}\n    peer-asn: 64524\n    my-asn: 64513\n{}{}address-pools:\n  - name: default\n    protocol: bgp\n    addresses: [10.5.120.0/24]\n",
            peer(FAST),
            peer(SLOW)
        );
        let values = lab.path("values.yaml");
        std::fs::write(
            &values,
            "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 10.128.0.0/10\n    clusterPoolIPv4MaskSize: 24\nipv4:\n  enabled: true\n",
        )
        .unwrap();
        let values = values.to_str().unwrap().to_string();
        // No agent renews the nodes' leases here: long enough for the whole test.
        lab.start_routeplane_config_with(
            &config,
            &["--lease-ttl", "10m", "--values", &values],
            &[],
        );
        lab.wait_for("the ToR's session", LIMIT, || lab.established_on(0));
        let (_, since) = lab.session_on(0);

        let stall = |index: usize| {
            Service::spawn(
                "stalling peer",
                Some(lab.routers[index].ns.name()),
                std::path::Path::new("timeout"),
                &["120", "python3", SCRIPT, "stall", SPEAKER_IP, "90"],
            )
        };
        let (fast_peer, slow_peer) = (stall(fast), stall(slow));
        lab.wait_for(
            "both peers established, then reading no more",
            LIMIT,
            || {
                said(&fast_peer, "stopped_reading").is_some()
                    && said(&slow_peer, "stopped_reading").is_some()
            },
        );
        for (address, _) in [FAST, SLOW] {
            let state = peer_state(&lab, address).expect("listed");
            assert_eq!(state["sessionState"], "established", "{state}");
        }
        let rss_before = lab.bgp_rss_kib();

        let churn_started = Instant::now();
        let churn = lab.speaker.spawn_inside(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(register_nodes())
        });
        let registered = churn.join().expect("the registrations");
        println!("{NODES} nodes registered in {registered:?}");

        // The slow peer (90 s) is stuck now, its window shut: deleting it does not wait for it.
        let asked = Instant::now();
        lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/DeletePeer",
            &format!(r#"{{"peerAddress": "{}"}}"#, SLOW.0),
        );
        let answered = asked.elapsed();
        println!("DeletePeer of the stuck peer answered in {answered:?}");
        assert!(answered < Duration::from_secs(2), "{answered:?}");
        assert!(peer_state(&lab, SLOW.0).is_none(), "deleted");

        lab.wait_for(
            "the 9 s peer is cut",
            Duration::from_secs(u64::from(FAST.1)) + LIMIT,
            || said(&fast_peer, "cut_after").is_some(),
        );
        let cut = churn_started.elapsed();
        println!(
            "the 9 s peer was cut {cut:?} after the churn began: {}",
            fast_peer.log().trim()
        );
        assert!(
            !said(&fast_peer, "cut_after").unwrap().is_null(),
            "{}",
            fast_peer.log()
        );
        // The reason is logged (the peer's last error moves on to the redials it then refuses).
        let log = lab.log("bgp");
        assert!(
            log.lines()
                .any(|l| l.contains(FAST.0) && l.contains("stopped reading")),
            "no reason logged for cutting {}:\n{log}",
            FAST.0
        );
        assert!(
            cut <= registered + Duration::from_secs(u64::from(FAST.1)) + Duration::from_secs(10),
            "cut {cut:?} after the churn began, which took {registered:?}"
        );
        lab.wait_for("the deleted peer's connection is gone", LIMIT, || {
            said(&slow_peer, "cut_after").is_some()
        });

        lab.wait_for("the ToR has every pod CIDR", LIMIT, || {
            // uint64 is a string in JSON.
            peer_state(&lab, ROUTER_IP).and_then(|p| p["advertised"].as_str()?.parse::<u32>().ok())
                == Some(NODES)
        });
        let (established, since_after) = lab.session_on(0);
        assert!(
            established && same_instant(since, since_after),
            "the ToR's session was never reset"
        );
        let rss_after = lab.bgp_rss_kib();
        println!("routeplane-bgp RSS {rss_before} KiB before, {rss_after} KiB after");
        assert!(
            rss_after < rss_before + 128 * 1024,
            "memory grew from {rss_before} to {rss_after} KiB"
        );

        let stopping = Instant::now();
        lab.stop_bgp();
        let stopped = stopping.elapsed();
        println!("routeplane-bgp stopped {stopped:?} after SIGTERM");
        assert!(stopped < Duration::from_secs(4), "{stopped:?}");
    }
}
