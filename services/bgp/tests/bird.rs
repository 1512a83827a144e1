//! routeplane-bgp against a real BIRD 2 (see lab.rs for the namespaces it builds).

mod lab;

use std::time::Duration;

use lab::{Lab, same_instant};

mod privileged {
    use super::*;

    fn register(lab: &Lab, name: &str, addr: &str) {
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/RegisterNode",
            &format!(r#"{{"name": "{name}", "addresses": ["{addr}"]}}"#),
        );
    }

    fn established(lab: &Lab) -> bool {
        lab.established_on(0)
    }

    /// BIRD (AS 64524) and routeplane with `bgp_args`, the session established.
    fn with_bird(bgp_args: &[&str]) -> Lab {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64524, "");
        lab.start_routeplane(&[], bgp_args);
        lab.wait_for(
            "BIRD establishes the session",
            Duration::from_secs(20),
            || established(&lab),
        );
        lab
    }

    #[test]
    fn bird_learns_pod_cidrs_and_loadbalancer_ips_then_loses_a_not_ready_node() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64524, "");
        lab.start_routeplane(&["--lease-ttl", "4s"], &["--withdraw-grace", "1s"]);
        lab.wait_for(
            "BIRD establishes the session",
            Duration::from_secs(20),
            || established(&lab),
        );

        register(&lab, "n1", "10.4.36.11");
        register(&lab, "n2", "10.4.36.12");
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/AllocateServiceIP",
            r#"{"service": "default/web"}"#,
        );
        let want = |p: &str, nh: &str| (p.to_string(), nh.to_string(), "64513".to_string());
        lab.wait_for(
            "BIRD has both pod CIDRs and the LoadBalancer IP",
            Duration::from_secs(10),
            || {
                let r = lab.bird_routes();
                r.contains(&want("10.5.112.0/24", "10.4.36.11"))
                    && r.contains(&want("10.5.113.0/24", "10.4.36.12"))
                    && r.iter().any(|x| x.0 == "10.5.120.0/32")
            },
        );
        let peers = lab.grpc(50052, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
        assert_eq!(peers["peers"][0]["sessionState"], "established", "{peers}");
        assert_eq!(peers["peers"][0]["advertised"], "3", "{peers}");

        // n1's agent keeps renewing its lease, n2's does not: n2 goes NotReady, and after the grace
        // its pod CIDR is withdrawn while n1's stays.
        lab.wait_for(
            "n2's pod CIDR is withdrawn",
            Duration::from_secs(20),
            || {
                lab.grpc(
                    50051,
                    "routeplane.ipam.v1.Ipam/KeepAlive",
                    r#"{"name": "n1"}"#,
                );
                let r = lab.bird_routes();
                !r.iter().any(|x| x.0 == "10.5.113.0/24")
            },
        );
        assert!(
            lab.bird_routes()
                .contains(&want("10.5.112.0/24", "10.4.36.11")),
            "{:?}",
            lab.bird_routes()
        );
        let why = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/ExplainPrefix",
            r#"{"prefix": "10.5.113.0/24"}"#,
        );
        let reason = why["sources"][0]["peers"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(reason.contains("node n2 is NotReady"), "{why}");
    }

    /// RFC 8326: a drained node's pod CIDR reaches BIRD with GRACEFUL_SHUTDOWN (65535,0) first,
    /// and is withdrawn only after the drain delay; ending the drain announces it plainly again.
    #[test]
    fn a_drained_node_goes_with_graceful_shutdown_first_then_is_withdrawn() {
        let lab = with_bird(&["--drain-delay", "3s"]);
        register(&lab, "n1", "10.4.36.11");
        register(&lab, "n2", "10.4.36.12");
        let has = |p: &str| lab.bird_has(p);
        lab.wait_for("BIRD has both pod CIDRs", Duration::from_secs(10), || {
            has("10.5.112.0/24") && has("10.5.113.0/24")
        });
        let gshut = |p: &str| lab.bird_graceful_shutdown(p);
        assert!(!gshut("10.5.112.0/24"), "no community before the drain");

        let drained = lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/DrainNode",
            r#"{"name": "n1"}"#,
        );
        assert_eq!(drained["draining"], true, "{drained}");
        let asked = std::time::Instant::now();
        lab.wait_for(
            "BIRD sees n1's pod CIDR with GRACEFUL_SHUTDOWN",
            Duration::from_secs(10),
            || gshut("10.5.112.0/24"),
        );
        let marked = asked.elapsed();
        assert!(has("10.5.112.0/24"), "still announced while marked");
        assert!(!gshut("10.5.113.0/24"), "n2 is not drained");
        lab.wait_for(
            "n1's pod CIDR is withdrawn after the drain delay",
            Duration::from_secs(15),
            || !has("10.5.112.0/24"),
        );
        let withdrawn = asked.elapsed();
        assert!(
            withdrawn >= Duration::from_millis(2_500) && withdrawn > marked,
            "marked after {marked:?}, withdrawn after {withdrawn:?}: the delay is 3 s"
        );
        assert!(has("10.5.113.0/24"), "n2 stays");
        let why = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/ExplainPrefix",
            r#"{"prefix": "10.5.112.0/24"}"#,
        );
        assert!(why.to_string().contains("drained"), "{why}");

        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/DrainNode",
            r#"{"name": "n1", "cancel": true}"#,
        );
        lab.wait_for(
            "the drain ended: n1's pod CIDR is back, unmarked",
            Duration::from_secs(10),
            || has("10.5.112.0/24") && !gshut("10.5.112.0/24"),
        );
        let bad = lab.grpc_err(
            50051,
            "routeplane.ipam.v1.Ipam/DrainNode",
            r#"{"name": "n9"}"#,
        );
        assert!(bad.contains("NotFound") && bad.contains("n9"), "{bad}");
    }

    /// RFC 8326 on routeplane-bgp's own SIGTERM with --shutdown-drain: every path re-sent with
    /// GRACEFUL_SHUTDOWN, the session ended only after the delay.
    #[test]
    fn sigterm_with_shutdown_drain_marks_every_path_before_the_session_ends() {
        let lab = with_bird(&["--shutdown-drain", "3s"]);
        register(&lab, "n1", "10.4.36.11");
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/AllocateServiceIP",
            r#"{"service": "default/web", "ip": "10.5.120.7"}"#,
        );
        let has = |p: &str| lab.bird_has(p);
        lab.wait_for("BIRD has the routes", Duration::from_secs(10), || {
            has("10.5.112.0/24") && has("10.5.120.7/32")
        });
        let gshut = |p: &str| lab.bird_graceful_shutdown(p);
        lab.signal_bgp("-TERM");
        let asked = std::time::Instant::now();
        lab.wait_for(
            "BIRD sees every path with GRACEFUL_SHUTDOWN",
            Duration::from_secs(5),
            || gshut("10.5.112.0/24") && gshut("10.5.120.7/32"),
        );
        assert!(established(&lab), "the session is still up while marked");
        lab.wait_for(
            "the session ends after the drain",
            Duration::from_secs(15),
            || !established(&lab),
        );
        let ended = asked.elapsed();
        assert!(
            ended >= Duration::from_millis(2_500),
            "the session ended {ended:?} after SIGTERM: the drain is 3 s"
        );
        assert!(
            lab.log("bgp").contains("GRACEFUL_SHUTDOWN"),
            "{}",
            lab.log("bgp")
        );
    }

    #[test]
    fn a_silent_peer_is_dropped_when_the_hold_timer_expires() {
        lab::require();
        let mut lab = Lab::new();
        // BIRD proposes 3 s: the negotiated hold time is min(90, 3).
        let bird = lab.start_bird(64524, "  hold time 3;\n  keepalive time 1;");
        lab.start_routeplane(&[], &[]);
        lab.wait_for(
            "BIRD establishes the session",
            Duration::from_secs(20),
            || established(&lab),
        );
        let peer = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/GetPeer",
            r#"{"peerAddress": "10.4.36.239"}"#,
        );
        assert_eq!(peer["holdTimeSeconds"], 3, "{peer}");
        lab.kill(bird, "-STOP");
        lab.wait_for("the hold timer expires", Duration::from_secs(10), || {
            let p = lab.grpc(
                50052,
                "routeplane.bgp.v1.Bgp/GetPeer",
                r#"{"peerAddress": "10.4.36.239"}"#,
            );
            p["lastError"]
                .as_str()
                .unwrap_or_default()
                .contains("hold timer expired")
        });
        lab.kill(bird, "-CONT");
        lab.wait_for("the session comes back", Duration::from_secs(30), || {
            established(&lab)
        });
    }

    #[test]
    fn a_peer_with_the_wrong_as_gets_bad_peer_as() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64999, "");
        lab.start_routeplane(&[], &[]);
        lab.wait_for(
            "BIRD reports our NOTIFICATION",
            Duration::from_secs(20),
            || {
                let all = lab.birdc("show protocols all routeplane");
                all.contains("Bad peer AS") || all.contains("Bad Peer AS")
            },
        );
        let peer = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/GetPeer",
            r#"{"peerAddress": "10.4.36.239"}"#,
        );
        assert!(
            peer["lastError"]
                .as_str()
                .unwrap_or_default()
                .contains("Bad Peer AS"),
            "{peer}"
        );
    }

    #[test]
    fn with_add_path_bird_sees_one_path_per_node_for_a_loadbalancer_ip() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird_with(64524, "", "add paths rx;");
        lab.start_routeplane(&[], &[]);
        lab.wait_for(
            "BIRD establishes the session",
            Duration::from_secs(20),
            || established(&lab),
        );
        register(&lab, "n1", "10.4.36.11");
        register(&lab, "n2", "10.4.36.12");
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/AllocateServiceIP",
            r#"{"service": "default/web", "ip": "10.5.120.7"}"#,
        );
        lab.wait_for(
            "BIRD has two paths to 10.5.120.7/32",
            Duration::from_secs(10),
            || {
                let mut hops: Vec<String> = lab
                    .bird_routes()
                    .into_iter()
                    .filter(|r| r.0 == "10.5.120.7/32")
                    .map(|r| r.1)
                    .collect();
                hops.sort();
                hops == ["10.4.36.11", "10.4.36.12"]
            },
        );
        let adv = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/ListAdvertised",
            r#"{"peerAddress": "10.4.36.239"}"#,
        );
        let ids: Vec<u64> = adv["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["prefix"] == "10.5.120.7/32")
            .filter_map(|r| r["pathId"].as_u64())
            .collect();
        assert_eq!(ids.len(), 2, "two path identifiers: {adv}");
    }

    #[test]
    fn sessions_come_up_whoever_dials() {
        lab::require();
        // BIRD only listens: routeplane dials.
        let mut lab = Lab::new();
        lab.start_bird(64524, "  passive on;");
        lab.start_routeplane(&[], &[]);
        lab.wait_for("routeplane dials BIRD", Duration::from_secs(20), || {
            established(&lab)
        });
        drop(lab);
        // routeplane dials a port where nothing listens: only BIRD's connection can succeed.
        let mut lab = Lab::new();
        lab.start_bird(64524, "");
        lab.start_routeplane_with("    peer-port: 1179\n", &[], &[]);
        lab.wait_for("BIRD dials routeplane", Duration::from_secs(20), || {
            established(&lab)
        });
        let peer = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/GetPeer",
            r#"{"peerAddress": "10.4.36.239"}"#,
        );
        assert_eq!(peer["sessionState"], "established", "{peer}");
    }

    #[test]
    fn ipv6_pod_cidrs_reach_bird_in_mp_reach_with_the_nodes_ipv6_next_hop() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64524, "  ipv6 { import all; export none; };");
        let values = lab.path("values.yaml");
        let seed = include_str!("../../../examples/seed/values.yaml");
        std::fs::write(&values, format!("{seed}\nipv6:\n  enabled: true\n")).unwrap();
        let values = values.to_str().unwrap().to_string();
        lab.start_routeplane(&["--values", &values], &["--values", &values]);
        lab.wait_for(
            "BIRD establishes the session",
            Duration::from_secs(20),
            || established(&lab),
        );
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/RegisterNode",
            r#"{"name": "n1", "addresses": ["10.4.36.11", "fd04:36::11"]}"#,
        );
        lab.wait_for(
            "BIRD has the node's IPv4 and IPv6 pod CIDRs",
            Duration::from_secs(10),
            || {
                let r = lab.bird_routes();
                r.contains(&("10.5.112.0/24".into(), "10.4.36.11".into(), "64513".into()))
                    && r.iter().any(|x| {
                        x.0 == "fd00::/120" && x.1.contains("fd04:36::11") && x.2 == "64513"
                    })
            },
        );
        let peer = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/GetPeer",
            r#"{"peerAddress": "10.4.36.239"}"#,
        );
        assert_eq!(
            peer["families"],
            serde_json::json!(["ipv4-unicast", "ipv6-unicast"]),
            "{peer}"
        );
    }

    #[test]
    fn an_md5_protected_session_needs_the_same_password_on_both_sides() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64524, "  password \"s3cret-ToR\";");
        lab.start_routeplane_with("    password: s3cret-ToR\n", &[], &[]);
        lab.wait_for(
            "the MD5-signed session establishes",
            Duration::from_secs(20),
            || established(&lab),
        );
        drop(lab);

        // Without the password on our side, the kernel drops BIRD's signed segments and ours.
        let mut lab = Lab::new();
        lab.start_bird(64524, "  password \"s3cret-ToR\";");
        lab.start_routeplane(&[], &[]);
        // Both sides keep trying: wait until each kernel has dropped the other's segments a few times
        // (BIRD's: signed, unexpected here; ours: unsigned, where BIRD's socket wants a signature).
        lab.wait_for(
            "each side's segments dropped by the other's kernel",
            Duration::from_secs(20),
            || {
                Lab::tcp_stat(&lab.speaker, "TcpExtTCPMD5Unexpected") >= 2
                    && Lab::tcp_stat(&lab.routers[0].ns, "TcpExtTCPMD5NotFound") >= 2
            },
        );
        assert!(
            !established(&lab),
            "a session without the password must not establish"
        );
        let peer = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/GetPeer",
            r#"{"peerAddress": "10.4.36.239"}"#,
        );
        assert_ne!(peer["sessionState"], "established", "{peer}");
    }

    /// Stops routeplane-bgp and says whether BIRD kept the pod CIDR once it noticed and settled.
    fn bird_keeps_routes_across_a_restart(graceful: &str) -> bool {
        let mut lab = Lab::new();
        lab.start_bird(64524, "  graceful restart on;");
        lab.start_routeplane(&[], &["--graceful-restart-time", graceful]);
        lab.wait_for(
            "BIRD establishes the session",
            Duration::from_secs(20),
            || established(&lab),
        );
        register(&lab, "n1", "10.4.36.11");
        let has_route = |lab: &Lab| {
            lab.bird_routes()
                .iter()
                .any(|r| r.0 == "10.5.112.0/24" && r.1 == "10.4.36.11")
        };
        lab.wait_for("BIRD has the pod CIDR", Duration::from_secs(10), || {
            has_route(&lab)
        });
        lab.stop_bgp();
        lab.wait_for(
            "BIRD notices the session is gone",
            Duration::from_secs(10),
            || !established(&lab),
        );
        // BIRD decides at once: it either holds our routes under graceful restart, or takes the
        // channel down and flushes them.
        lab.wait_for(
            "BIRD settles after the session loss",
            Duration::from_secs(10),
            || {
                let state = lab.birdc("show protocols all routeplane");
                state.contains("Neighbor graceful restart active")
                    || state
                        .lines()
                        .any(|l| l.split_whitespace().eq(["State:", "DOWN"]))
            },
        );
        let kept = has_route(&lab);
        lab.start_bgp_again();
        lab.wait_for("the session comes back", Duration::from_secs(30), || {
            established(&lab)
        });
        lab.wait_for(
            "BIRD has the pod CIDR after the restart",
            Duration::from_secs(10),
            || has_route(&lab),
        );
        if kept {
            // Refreshed after End-of-RIB: nothing left marked stale.
            lab.wait_for("no stale routes remain", Duration::from_secs(10), || {
                !lab.birdc("show route all").contains("stale")
            });
        }
        kept
    }

    #[test]
    fn graceful_restart_keeps_our_routes_at_bird_while_routeplane_restarts() {
        lab::require();
        assert!(
            bird_keeps_routes_across_a_restart("120s"),
            "with graceful restart BIRD keeps the routes while routeplane-bgp is down"
        );
        assert!(
            !bird_keeps_routes_across_a_restart("0s"),
            "control: without it BIRD drops them at once"
        );
    }

    /// BIRD's routes on an added router as (prefix, next hop, AS path, local pref).
    fn routes_on(lab: &Lab, index: usize) -> Vec<(String, String, String, String)> {
        routeplane_testkit::bird::parse_routes(&lab.birdc_on(index, "show route all"))
            .into_iter()
            .map(|p| (p.prefix, p.next_hop, p.as_path, p.local_pref))
            .collect()
    }

    #[test]
    fn the_seed_peer_groups_split_nodes_between_an_ebgp_and_an_ibgp_tor() {
        lab::require();
        // The seed's core segment: the eBGP ToR 10.4.36.239 (AS 64524) and the iBGP one 10.4.36.250 (AS 64512).
        let mut lab = Lab::new();
        lab.start_bird(64524, "");
        let ibgp = lab.add_router("10.4.36.250");
        lab.start_bird_on(ibgp, "10.4.36.250", "  local 10.4.36.250 as 64512;\n  neighbor 10.4.36.10 as 64512;\n  direct;\n  ipv4 { import all; export none; };");
        // The seed's peers and selectors verbatim; .238 and .251 do not exist here, so their sessions stay down.
        let seed = include_str!("../../../examples/seed/bgp-config.yaml")
            .replace("10.5.112.0/21", "10.5.120.0/24");
        lab.start_routeplane_config(&seed, &[]);
        lab.wait_for("both ToRs establish", Duration::from_secs(30), || {
            established(&lab)
                && lab
                    .birdc_on(ibgp, "show protocols routeplane")
                    .contains("Established")
        });
        let nodes = [
            ("n94a", "10.4.36.11", ""),
            ("n94b", "10.4.36.12", ""),
            ("n83a", "10.4.36.21", "bgp-peer-83"),
            ("n83b", "10.4.36.22", "bgp-peer-83"),
        ];
        for (name, addr, label) in nodes {
            let labels = if label.is_empty() {
                String::new()
            } else {
                format!(r#", "labels": {{"kubernetes/route": "{label}"}}"#)
            };
            lab.grpc(
                50051,
                "routeplane.ipam.v1.Ipam/RegisterNode",
                &format!(r#"{{"name": "{name}", "addresses": ["{addr}"]{labels}}}"#),
            );
        }
        let pod_hops = |routes: &[(String, String, String, String)]| -> Vec<String> {
            let mut v: Vec<String> = routes
                .iter()
                .filter(|r| r.0.starts_with("10.5.11"))
                .map(|r| r.1.clone())
                .collect();
            v.sort();
            v
        };
        let ebgp_routes = |lab: &Lab| -> Vec<(String, String, String, String)> {
            lab.bird_routes()
                .into_iter()
                .map(|(p, nh, path)| (p, nh, path, String::new()))
                .collect()
        };
        lab.wait_for(
            "each ToR has its own peer group's nodes",
            Duration::from_secs(15),
            || {
                pod_hops(&ebgp_routes(&lab)) == ["10.4.36.11", "10.4.36.12"]
                    && pod_hops(&routes_on(&lab, ibgp)) == ["10.4.36.21", "10.4.36.22"]
            },
        );
        let e = ebgp_routes(&lab);
        assert!(
            e.iter()
                .filter(|r| r.0.starts_with("10.5.11"))
                .all(|r| r.2 == "64513"),
            "eBGP: AS_PATH 64513: {e:?}"
        );
        let i = routes_on(&lab, ibgp);
        assert!(
            i.iter()
                .filter(|r| r.0.starts_with("10.5.11"))
                .all(|r| r.2.is_empty() && r.3 == "100"),
            "iBGP: empty AS_PATH, LOCAL_PREF 100: {i:?}"
        );
        let peers = lab.grpc(50052, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
        let states: Vec<(String, String)> = peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["peerAddress"].as_str().unwrap().into(),
                    p["sessionState"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(states.len(), 4, "{peers}");
        assert!(
            states
                .iter()
                .filter(|s| s.0 == "10.4.36.238" || s.0 == "10.4.36.251")
                .all(|s| s.1 != "established"),
            "{states:?}"
        );
    }

    /// When the first router's session last changed state; see [`Lab::session_on`].
    fn since(lab: &Lab) -> u64 {
        lab.session_on(0).1
    }

    #[test]
    fn a_reload_adds_and_resets_only_the_peers_that_changed() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64524, "");
        let ibgp = lab.add_router("10.4.36.250");
        lab.start_bird_on(ibgp, "10.4.36.250", "  local 10.4.36.250 as 64512;\n  neighbor 10.4.36.10 as 64512;\n  direct;\n  ipv4 { import all; export none; };");
        let one = "peers:\n  - peer-address: 10.4.36.239\n    peer-asn: 64524\n    my-asn: 64513\n";
        let ibgp_peer = "  - peer-address: 10.4.36.250\n    peer-asn: 64512\n    my-asn: 64512\n";
        lab.start_routeplane_config(one, &[]);
        lab.wait_for(
            "the first peer establishes",
            Duration::from_secs(20),
            || established(&lab),
        );
        let first_since = since(&lab);
        let ibgp_up = |lab: &Lab| {
            lab.birdc_on(ibgp, "show protocols routeplane")
                .contains("Established")
        };

        // Edit the file: the new peer comes up, the first one is not touched.
        std::fs::write(lab.path("bgp-config.yaml"), format!("{one}{ibgp_peer}")).unwrap();
        lab.wait_for(
            "the added peer establishes after the file changed",
            Duration::from_secs(20),
            || ibgp_up(&lab),
        );
        assert!(
            same_instant(since(&lab), first_since),
            "the unchanged session stayed up"
        );

        // Change only the new peer and send SIGHUP: it alone is reset, with Other Configuration
        // Change. BIRD's own log says it was told so; its state-change time cannot: we dial again
        // at once and BIRD accepts at once, so the session can be back within a few milliseconds.
        std::fs::write(
            lab.path("bgp-config.yaml"),
            format!("{one}{ibgp_peer}    hold-time: 30s\n"),
        )
        .unwrap();
        lab.signal_bgp("-HUP");
        lab.wait_for(
            "the reload resets the peer",
            Duration::from_secs(10),
            || lab.log("bgp.log").contains("changes=reset 10.4.36.250"),
        );
        lab.wait_for(
            "the changed peer is reset and comes back",
            Duration::from_secs(20),
            || {
                lab.log(&format!("bird{ibgp}"))
                    .contains("Received: Other configuration change")
                    && lab
                        .birdc_on(ibgp, "show protocols all routeplane")
                        .contains("/30\n")
            },
        );
        let shown = lab.birdc_on(ibgp, "show protocols all routeplane");
        assert!(
            shown.contains("Hold timer:"),
            "session back: {shown}\n{}",
            lab.log("bgp.log")
        );
        assert!(
            same_instant(since(&lab), first_since),
            "the other session stayed up"
        );
        let peer = lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/GetPeer",
            r#"{"peerAddress": "10.4.36.250"}"#,
        );
        assert_eq!(
            peer["holdTimeSeconds"],
            30,
            "{peer}\n{}\n{}",
            lab.birdc_on(ibgp, "show protocols all routeplane"),
            lab.log("bgp.log")
        );

        // A broken file is refused and changes nothing.
        std::fs::write(
            lab.path("bgp-config.yaml"),
            format!("{one}{ibgp_peer}    hold-tme: 30s\n"),
        )
        .unwrap();
        lab.signal_bgp("-HUP");
        lab.wait_for("the reload is refused", Duration::from_secs(10), || {
            lab.log("bgp.log").contains("reload refused")
        });
        assert!(lab.log("bgp.log").contains("unknown field `hold-tme`"));
        assert!(established(&lab) && ibgp_up(&lab));
        assert!(same_instant(since(&lab), first_since));
    }

    #[test]
    fn announced_paths_reach_bird_and_watch_events_report_them() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64524, "");
        lab.start_routeplane(&[], &["--announce-allow", "192.0.2.0/24,198.51.100.0/24"]);
        lab.wait_for(
            "BIRD establishes the session",
            Duration::from_secs(20),
            || established(&lab),
        );
        // A watcher in the background, writing what it receives to a file.
        let events = lab.path("events.json");
        let mut watcher = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.speaker.name(),
                "grpcurl",
                "-plaintext",
                "-max-time",
                "60",
                "127.0.0.1:50052",
                "routeplane.bgp.v1.Bgp/WatchEvents",
            ])
            .stdout(std::fs::File::create(&events).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let seen = || std::fs::read_to_string(&events).unwrap_or_default();
        // Subscribed once it reports a probe: a new prefix at each try, each one an event.
        let mut probe = 0;
        lab.wait_for("the watcher is subscribed", Duration::from_secs(10), || {
            probe += 1;
            lab.grpc(
                50052,
                "routeplane.bgp.v1.Bgp/AnnouncePath",
                &format!(r#"{{"prefix": "198.51.100.{probe}/32", "nextHop": "10.4.36.11"}}"#),
            );
            seen().contains("198.51.100.")
        });
        lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/AnnouncePath",
            r#"{"prefix": "192.0.2.0/24", "nextHop": "10.4.36.11", "communities": ["64512:9"]}"#,
        );
        lab.wait_for(
            "BIRD learns the announced path",
            Duration::from_secs(10),
            || {
                lab.bird_routes().contains(&(
                    "192.0.2.0/24".into(),
                    "10.4.36.11".into(),
                    "64513".into(),
                ))
            },
        );
        lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/WithdrawPath",
            r#"{"prefix": "192.0.2.0/24"}"#,
        );
        lab.wait_for("BIRD loses it", Duration::from_secs(10), || {
            !lab.bird_routes().iter().any(|r| r.0 == "192.0.2.0/24")
        });
        lab.wait_for(
            "WatchEvents shows the announcement and the withdrawal",
            Duration::from_secs(10),
            || {
                let text = seen();
                let of = |kind: &str| {
                    text.split("\n}\n")
                        .any(|e| e.contains(kind) && e.contains("192.0.2.0/24"))
                };
                of("\"advertised\"") && of("\"withdrawn\"")
            },
        );
        let _ = watcher.kill();
        let _ = watcher.wait();
    }

    /// The router side of routeplane-bgp on Kubernetes, where its pods may run on any node: BIRD
    /// accepts a session from any address of the node subnet (`neighbor range`, the README's
    /// snippet verbatim) and learns the pod CIDRs from it, without naming routeplane's address.
    #[test]
    fn bird_with_a_neighbor_range_accepts_routeplane_from_a_node_address_it_was_not_told() {
        lab::require();
        let mut lab = Lab::new();
        let tor = lab.add_router("10.4.36.250");
        // README: "Routers for routeplane-bgp on Kubernetes".
        let snippet = "  local 10.4.36.250 as 64512;\n  neighbor range 10.4.36.0/24 internal;\n  dynamic name \"routeplane\";\n  direct;\n  graceful restart on;\n  ipv4 { import all; export none; };";
        lab.start_bird_on(tor, "10.4.36.250", snippet);
        lab.start_routeplane_config(
        "peers:\n  - peer-address: 10.4.36.250\n    peer-asn: 64512\n    my-asn: 64512\naddress-pools:\n  - name: default\n    protocol: bgp\n    addresses: [10.5.120.0/24]\n",
        &[],
    );
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/RegisterNode",
            r#"{"name": "n83a", "addresses": ["10.4.36.21"]}"#,
        );
        lab.wait_for(
            "BIRD learns the pod CIDR over the ranged session",
            Duration::from_secs(20),
            || {
                routes_on(&lab, tor)
                    .iter()
                    .any(|r| r.0.starts_with("10.5.11") && r.1 == "10.4.36.21")
            },
        );
        let protocols = lab.birdc_on(tor, "show protocols");
        assert!(
            protocols
                .lines()
                .any(|l| l.starts_with("routeplane1") && l.contains("Established")),
            "BIRD spawned a session for routeplane's address:\n{protocols}"
        );
    }
}
