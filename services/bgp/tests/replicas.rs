//! Two routeplane-bgp replicas on one routeplane-ipam, against a real BIRD (issue #13 part 6): a
//! peer added and a path announced through one replica's API are announced by both — two BGP
//! sessions at the ToR, a path from each — a replica restarted brings the peer back from IPAM, and
//! what the other replica withdraws and deletes leaves both. The bgp-config has no peers: every
//! session here exists only because of the API.

mod lab;

use std::time::Duration;

use lab::{Lab, SPEAKER_IP};

mod privileged {
    use super::*;

    /// Replica B's address on the core segment, and the ToR's (its BIRD has one protocol per
    /// replica: `routeplane` towards A at 10.4.36.10, `replica_b` towards B).
    const REPLICA_B: &str = "10.4.36.12";
    const TOR: &str = "10.4.36.240";
    const LIMIT: Duration = Duration::from_secs(30);

    fn bird_conf() -> String {
        let protocol = |name: &str, neighbor: &str| {
            format!(
                "protocol bgp {name} {{\n  error wait time 1, 5;\n  local {TOR} as 64700;\n  neighbor {neighbor} as 64513;\n  ipv4 {{ import all; export none; }};\n}}\n"
            )
        };
        format!(
            "log stderr all;\nrouter id {TOR};\nprotocol device {{}}\n{}{}",
            protocol("routeplane", SPEAKER_IP),
            protocol("replica_b", REPLICA_B)
        )
    }

    /// Which of the ToR's two protocols are Established.
    fn established(lab: &Lab, tor: usize) -> (bool, bool) {
        let text = lab.birdc_on(tor, "show protocols");
        let up = |name: &str| {
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(name) && l.contains("Established"))
        };
        (up("routeplane"), up("replica_b"))
    }

    /// Which replicas the ToR has a path for `prefix` from.
    fn paths(lab: &Lab, tor: usize, prefix: &str) -> (bool, bool) {
        let from = |protocol: &str| {
            lab.birdc_on(tor, &format!("show route protocol {protocol}"))
                .lines()
                .any(|l| l.starts_with(prefix))
        };
        (from("routeplane"), from("replica_b"))
    }

    #[test]
    fn a_peer_and_a_path_added_on_one_replica_are_announced_by_both_and_outlive_its_restart() {
        lab::require();
        let mut lab = Lab::new();
        let tor = lab.add_router(TOR);
        lab.start_bird_conf(tor, &bird_conf());
        lab.share_ipam();
        let allow = ["--announce-allow", "192.0.2.0/24"];
        lab.start_routeplane_config("peers: []\n", &allow);
        let b = lab.start_replica(REPLICA_B, &allow);
        assert_eq!(established(&lab, tor), (false, false), "no peers yet");

        // Added on replica A: both replicas dial the ToR.
        let peer = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/AddPeer",
            &format!(r#"{{"peerAddress": "{TOR}", "peerAsn": 64700, "myAsn": 64513}}"#),
        );
        assert_eq!(peer["source"], "api", "{peer}");
        lab.wait_for("the ToR has a session with each replica", LIMIT, || {
            established(&lab, tor) == (true, true)
        });
        let listed = lab.grpc_in(&b, 50052, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
        assert_eq!(listed["peers"][0]["source"], "api", "{listed}");

        // Announced on replica A: the ToR gets the path from both.
        lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/AnnouncePath",
            r#"{"prefix": "192.0.2.0/24", "nextHop": "10.4.36.21"}"#,
        );
        lab.wait_for("the ToR has the path from each replica", LIMIT, || {
            paths(&lab, tor, "192.0.2.0/24") == (true, true)
        });

        // Replica A restarted: with no peer in its file, the session comes back only if it took
        // the peer back from IPAM.
        lab.stop_bgp();
        lab.wait_for("the ToR sees replica A go", LIMIT, || {
            !established(&lab, tor).0
        });
        lab.start_bgp_again();
        lab.wait_for("replica A is back at the ToR, with the path", LIMIT, || {
            established(&lab, tor) == (true, true)
                && paths(&lab, tor, "192.0.2.0/24") == (true, true)
        });

        // Withdrawn and deleted on replica B: both let go.
        let withdrawn = lab.grpc_in(
            &b,
            50052,
            "routeplane.bgp.v1.Bgp/WithdrawPath",
            r#"{"prefix": "192.0.2.0/24"}"#,
        );
        assert_eq!(withdrawn["withdrawn"], true, "{withdrawn}");
        lab.wait_for("the ToR has the path from neither replica", LIMIT, || {
            paths(&lab, tor, "192.0.2.0/24") == (false, false)
        });
        lab.grpc_in(
            &b,
            50052,
            "routeplane.bgp.v1.Bgp/DeletePeer",
            &format!(r#"{{"peerAddress": "{TOR}"}}"#),
        );
        lab.wait_for(
            "both sessions end with the Cease, and stay down",
            LIMIT,
            || {
                ["routeplane", "replica_b"].iter().all(|p| {
                    lab.birdc_on(tor, &format!("show protocols all {p}"))
                        .contains("Received: Peer de-configured")
                }) && established(&lab, tor) == (false, false)
            },
        );
        let listed = lab.grpc(50052, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
        assert!(
            listed["peers"].as_array().is_none_or(|p| p.is_empty()),
            "replica A let go of the peer too: {listed}"
        );
    }
}
