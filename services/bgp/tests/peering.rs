//! routeplane-bgp's transport and session behaviour against a real BIRD 2 (lab/mod.rs builds the
//! namespaces): the hop limit and ebgp-multihop across a router over IPv4 and IPv6, source-address,
//! a session over IPv6, connection collision resolved as RFC 4271 §6.8 says whichever side has the
//! higher identifier, a Route Refresh BIRD asks for, the routes BIRD sends (ListReceived),
//! DeletePeer's Cease on a live session, every routeplane_bgp_* metric the README lists, GTSM
//! (ttl-security) with BIRD's `ttl security on`, and max-prefixes' Cease as BIRD reports it.

mod lab;

use std::time::Duration;

use lab::{FAR_IP, FAR_IP6, Lab, ROUTER_IP, ROUTER_IP6, SPEAKER_IP, SPEAKER_IP6, same_instant};

const LIMIT: Duration = Duration::from_secs(20);

/// bgp-config with one peer in AS 64524 (routeplane in 64513); `keys` are more of its keys.
fn bgp_config(peer: &str, keys: &str) -> String {
    format!(
        "peers:\n  - peer-address: {peer}\n    peer-asn: 64524\n    my-asn: 64513\n{keys}address-pools:\n  - name: default\n    protocol: bgp\n    addresses: [10.5.120.0/24]\n"
    )
}

/// BIRD's protocol body towards routeplane, both families imported.
fn bird_protocol(local: &str, neighbor: &str, extra: &str) -> String {
    format!(
        "  local {local} as 64524;\n  neighbor {neighbor} as 64513;\n{extra}\n  ipv4 {{ import all; export none; }};\n  ipv6 {{ import all; export none; }};"
    )
}

/// The seed's values.yaml with IPv6 on, written into the lab; its path.
fn dual_stack_values(lab: &Lab) -> String {
    let values = lab.path("values.yaml");
    let seed = include_str!("../../../examples/seed/values.yaml");
    std::fs::write(&values, format!("{seed}\nipv6:\n  enabled: true\n")).unwrap();
    values.to_str().unwrap().to_string()
}

fn peer(lab: &Lab, address: &str) -> serde_json::Value {
    lab.grpc(
        50052,
        "routeplane.bgp.v1.Bgp/GetPeer",
        &format!(r#"{{"peerAddress": "{address}"}}"#),
    )
}

fn register(lab: &Lab, name: &str, addresses: &[&str]) {
    let addresses = serde_json::to_string(addresses).unwrap();
    lab.grpc(
        50051,
        "routeplane.ipam.v1.Ipam/RegisterNode",
        &format!(r#"{{"name": "{name}", "addresses": {addresses}}}"#),
    );
}

/// TCP connections of the BGP session seen from the speaker: (local, remote) addresses.
fn bgp_connections(lab: &Lab) -> Vec<(String, String)> {
    let (ok, out) = lab.speaker.run(&[
        "ss",
        "-Htn",
        "state",
        "established",
        "( sport = :179 or dport = :179 )",
    ]);
    assert!(ok, "ss: {out}");
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(2)?.to_string(), f.get(3)?.to_string()))
        })
        .collect()
}

mod privileged {
    use super::*;

    /// BIRD one router away (multihop on its side); routeplane with or without ebgp-multihop.
    fn across_a_router(v6: bool, multihop: bool) -> (Lab, usize, &'static str) {
        let mut lab = Lab::new();
        let far = lab.add_far_router();
        let (peer, neighbor) = if v6 {
            (FAR_IP6, SPEAKER_IP6)
        } else {
            (FAR_IP, SPEAKER_IP)
        };
        lab.start_bird_on(far, FAR_IP, &bird_protocol(peer, neighbor, "  multihop;"));
        let keys = if multihop {
            "    ebgp-multihop: true\n"
        } else {
            ""
        };
        let listen6 = format!("[{SPEAKER_IP6}]:179");
        lab.start_routeplane_config(&bgp_config(peer, keys), &["--bgp-listen", &listen6]);
        (lab, far, peer)
    }

    fn ebgp_multihop(v6: bool) {
        lab::require();
        let (lab, far, peer_ip) = across_a_router(v6, true);
        lab.wait_for(
            "the session with ebgp-multihop across a router",
            LIMIT,
            || lab.established_on(far),
        );
        assert_eq!(peer(&lab, peer_ip)["sessionState"], "established");
        register(&lab, "n1", &["10.4.36.11"]);
        lab.wait_for("BIRD learns the pod CIDR", LIMIT, || {
            lab.birdc_on(far, "show route protocol routeplane")
                .contains("10.5.112.0/24")
        });
        drop(lab);

        // Without it our packets leave with a hop limit of 1, and the router between drops them.
        let (lab, far, peer_ip) = across_a_router(v6, false);
        let counter = if v6 {
            "Icmp6OutTimeExcds"
        } else {
            "IcmpOutTimeExcds"
        };
        lab.wait_for(
            "the router drops our packets as out of hops, again and again",
            LIMIT,
            || Lab::tcp_stat(&lab.routers[0].ns, counter) >= 3,
        );
        assert!(
            !lab.established_on(far),
            "a directly-connected eBGP session must not reach a peer one router away"
        );
        assert_ne!(peer(&lab, peer_ip)["sessionState"], "established");
    }

    #[test]
    fn ebgp_multihop_reaches_a_peer_behind_a_router_and_without_it_our_packets_die_there() {
        ebgp_multihop(false);
    }

    /// IPV6_UNICAST_HOPS, not IP_TTL (which leaves IPv6 packets at 64 hops).
    #[test]
    fn over_ipv6_too_the_hop_limit_keeps_a_directly_connected_session_direct() {
        ebgp_multihop(true);
    }

    #[test]
    fn a_session_over_ipv6_carries_both_families() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird_on(0, ROUTER_IP, &bird_protocol(ROUTER_IP6, SPEAKER_IP6, ""));
        let values = dual_stack_values(&lab);
        let listen6 = format!("[{SPEAKER_IP6}]:179");
        lab.start_routeplane_config_with(
            &bgp_config(ROUTER_IP6, ""),
            &["--values", &values],
            &["--values", &values, "--bgp-listen", &listen6],
        );
        lab.wait_for("the IPv6 session establishes", LIMIT, || {
            lab.established_on(0)
        });
        let p = peer(&lab, ROUTER_IP6);
        assert_eq!(p["sessionState"], "established", "{p}");
        assert_eq!(
            p["families"],
            serde_json::json!(["ipv4-unicast", "ipv6-unicast"]),
            "{p}"
        );
        register(&lab, "n1", &["10.4.36.11", "fd04:36::11"]);
        lab.wait_for(
            "BIRD learns the IPv4 and IPv6 pod CIDRs over IPv6",
            LIMIT,
            || {
                let r = lab.bird_routes();
                r.iter()
                    .any(|x| x.0 == "10.5.112.0/24" && x.1 == "10.4.36.11")
                    && r.iter()
                        .any(|x| x.0 == "fd00::/120" && x.1.contains("fd04:36::11"))
            },
        );
        assert!(
            bgp_connections(&lab)
                .iter()
                .all(|(l, r)| l.contains("fd04:36::10") && r.contains("fd04:36::239")),
            "{:?}",
            bgp_connections(&lab)
        );
    }

    #[test]
    fn source_address_is_where_routeplane_dials_from() {
        lab::require();
        // BIRD knows routeplane only as 10.4.36.20 and never dials.
        let start = |keys: &str| {
            let mut lab = Lab::new();
            lab.speaker
                .ip(&["addr", "add", "10.4.36.20/24", "dev", "core"]);
            lab.start_bird_on(
                0,
                ROUTER_IP,
                &bird_protocol(ROUTER_IP, "10.4.36.20", "  passive on;"),
            );
            lab.start_routeplane_config(&bgp_config(ROUTER_IP, keys), &[]);
            lab
        };
        let lab = start("    source-address: 10.4.36.20\n");
        lab.wait_for("the session from 10.4.36.20", LIMIT, || {
            lab.established_on(0)
        });
        let conns = bgp_connections(&lab);
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert!(conns[0].0.starts_with("10.4.36.20:"), "{conns:?}");
        drop(lab);

        let lab = start("");
        lab.wait_for(
            "BIRD turns away a connection from 10.4.36.10",
            LIMIT,
            || {
                lab.log("bird0")
                    .contains("Unexpected connect from unknown address 10.4.36.10")
            },
        );
        assert!(!lab.established_on(0));
    }

    /// RFC 4271 §6.8 with both connections open and both OPENs in flight: BGP messages are held
    /// back at the router until each side has dialled the other, then let through.
    fn collision(our_id: &str) -> Lab {
        lab::require();
        routeplane_testkit::privileged::require(&["iptables", "ss"]);
        let mut lab = Lab::new();
        let router = &lab.routers[0].ns;
        for chain in ["INPUT", "OUTPUT"] {
            // Handshake segments are at most 72 bytes; an OPEN is more than 80.
            router.sh(&[
                "iptables",
                "-w",
                "-A",
                chain,
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--ports",
                "179",
                "-m",
                "length",
                "--length",
                "80:65535",
                "-j",
                "DROP",
            ]);
        }
        lab.start_bird_on(
            0,
            ROUTER_IP,
            &bird_protocol(ROUTER_IP, SPEAKER_IP, "  connect delay time 1;"),
        );
        // routeplane's first dial must find BIRD listening: refused, it would not dial again
        // while BIRD's connection is opening, and there would be nothing to collide with.
        lab.wait_for("BIRD listens", LIMIT, || {
            let (ok, out) = lab.routers[0].ns.run(&["ss", "-Hltn", "sport = :179"]);
            ok && !out.trim().is_empty()
        });
        let keys = format!("    router-id: {our_id}\n");
        lab.start_routeplane_config(&bgp_config(ROUTER_IP, &keys), &[]);
        lab.wait_for("each side has dialled the other", LIMIT, || {
            let c = bgp_connections(&lab);
            c.iter().any(|(l, _)| l.ends_with(":179")) && c.iter().any(|(_, r)| r.ends_with(":179"))
        });
        let router = &lab.routers[0].ns;
        router.sh(&["iptables", "-w", "-F", "INPUT"]);
        router.sh(&["iptables", "-w", "-F", "OUTPUT"]);
        lab.wait_for(
            "one session over one connection, both sides agreeing",
            LIMIT,
            || {
                lab.established_on(0)
                    && peer(&lab, ROUTER_IP)["sessionState"] == "established"
                    && bgp_connections(&lab).len() == 1
            },
        );
        assert!(
            lab.log("bgp")
                .contains("connection collision (RFC 4271 §6.8)"),
            "the collision was resolved by routeplane:\n{}",
            lab.log("bgp")
        );
        lab
    }

    #[test]
    fn a_collision_keeps_the_connection_bird_dialled_when_birds_identifier_is_higher() {
        let lab = collision("10.4.36.10");
        let conns = bgp_connections(&lab);
        assert!(
            conns[0].0.ends_with(":179"),
            "BIRD (10.4.36.239) dialled the survivor: {conns:?}"
        );
        assert!(lab.log("bgp").contains("keeping the one the peer dialled"));
    }

    #[test]
    fn a_collision_keeps_the_connection_routeplane_dialled_when_its_identifier_is_higher() {
        let lab = collision("10.4.36.254");
        let conns = bgp_connections(&lab);
        assert!(
            conns[0].1.ends_with(":179"),
            "routeplane (10.4.36.254) dialled the survivor: {conns:?}"
        );
    }

    const STATIC: &str = "protocol static static1 {\n  ipv4;\n  route 192.0.2.0/24 blackhole;\n  route 198.51.100.0/25 blackhole;\n}\n";

    #[test]
    fn routes_bird_sends_are_listed_as_received_and_every_metric_counts() {
        lab::require();
        let mut lab = Lab::new();
        let protocol = "  local 10.4.36.239 as 64524;\n  neighbor 10.4.36.10 as 64513;\n  ipv4 { import all; export where proto = \"static1\"; };";
        lab.start_bird_conf(0, &Lab::bird_conf(ROUTER_IP, STATIC, protocol));
        lab.start_routeplane_with("    keep-received: true\n", &[], &[]);
        lab.wait_for("the session", LIMIT, || lab.established_on(0));
        register(&lab, "n1", &["10.4.36.11"]);
        let received = || {
            let r = lab.grpc(
                50052,
                "routeplane.bgp.v1.Bgp/ListReceived",
                r#"{"peerAddress": "10.4.36.239"}"#,
            );
            let mut routes: Vec<(String, String, serde_json::Value)> = r["routes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    (
                        r["prefix"].as_str().unwrap_or_default().to_string(),
                        r["nextHop"].as_str().unwrap_or_default().to_string(),
                        r["asPath"].clone(),
                    )
                })
                .collect();
            routes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            routes
        };
        lab.wait_for("BIRD's two static routes, received", LIMIT, || {
            received().len() == 2
        });
        let path = serde_json::json!([64524]);
        assert_eq!(
            received(),
            [
                (
                    "192.0.2.0/24".to_string(),
                    ROUTER_IP.to_string(),
                    path.clone()
                ),
                ("198.51.100.0/25".to_string(), ROUTER_IP.to_string(), path),
            ]
        );
        lab.wait_for("BIRD has our pod CIDR", LIMIT, || {
            lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24")
        });

        // Every metric the README lists, each with the value this state implies.
        fn metric_of(lab: &Lab, sample: &str) -> f64 {
            routeplane_testkit::metric_sample(&lab.bgp_metrics(), sample)
                .unwrap_or_else(|| panic!("no {sample} in:\n{}", lab.bgp_metrics()))
        }
        let metric = |sample: &str| metric_of(&lab, sample);
        routeplane_testkit::assert_readme_metrics("routeplane_bgp_", &lab.bgp_metrics());
        let peer_label = r#"{peer="10.4.36.239"}"#;
        assert_eq!(
            metric(&format!("routeplane_bgp_session_up{peer_label}")),
            1.0
        );
        assert_eq!(
            metric(&format!("routeplane_bgp_received_prefixes{peer_label}")),
            2.0
        );
        assert_eq!(
            metric(&format!("routeplane_bgp_advertised_prefixes{peer_label}")),
            1.0
        );
        assert!(metric(&format!("routeplane_bgp_updates_sent_total{peer_label}")) >= 1.0);
        assert!(
            metric(&format!(
                "routeplane_bgp_updates_received_total{peer_label}"
            )) >= 1.0
        );
        assert_eq!(metric("routeplane_bgp_ipam_connected"), 1.0);
        assert_eq!(metric("routeplane_bgp_feed_skipped_entries_total"), 0.0);

        // BIRD withdraws them.
        lab.birdc("disable static1");
        lab.wait_for("the withdrawals, received", LIMIT, || received().is_empty());
        assert_eq!(
            metric(&format!("routeplane_bgp_received_prefixes{peer_label}")),
            0.0
        );
        // IPAM gone: the feed's gauge says so, the session stays.
        lab.stop_ipam();
        lab.wait_for("ipam_connected drops to 0", LIMIT, || {
            metric_of(&lab, "routeplane_bgp_ipam_connected") == 0.0
        });
        assert_eq!(
            metric_of(&lab, &format!("routeplane_bgp_session_up{peer_label}")),
            1.0
        );
    }

    /// BIRD rereads its import filter with a Route Refresh (RFC 2918) when the peer offers it,
    /// and restarts the session when it does not: the session's start time tells which.
    #[test]
    fn a_route_refresh_from_bird_gets_our_routes_again_without_a_session_reset() {
        lab::require();
        let mut lab = Lab::new();
        let conf = |filter: &str| {
            Lab::bird_conf(
                ROUTER_IP,
                "",
                &format!(
                    "  local 10.4.36.239 as 64524;\n  neighbor 10.4.36.10 as 64513;\n  ipv4 {{ import {filter}; export none; }};"
                ),
            )
        };
        lab.start_bird_conf(0, &conf("where net != 10.5.112.0/24"));
        lab.start_routeplane(&[], &[]);
        lab.wait_for("the session", LIMIT, || lab.established_on(0));
        register(&lab, "n1", &["10.4.36.11"]);
        lab.wait_for("routeplane advertises the pod CIDR", LIMIT, || {
            peer(&lab, ROUTER_IP)["advertised"] == "1"
        });
        assert!(
            !lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24"),
            "BIRD's filter keeps it out"
        );
        let (_, before) = lab.session_on(0);

        std::fs::write(lab.path("bird0.conf"), conf("all")).unwrap();
        lab.birdc("configure");
        lab.wait_for("BIRD has the pod CIDR after the refresh", LIMIT, || {
            lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24")
        });
        assert!(
            lab.log("bgp").contains("ROUTE-REFRESH from the peer"),
            "{}",
            lab.log("bgp")
        );
        let (up, after) = lab.session_on(0);
        assert!(
            up && same_instant(after, before),
            "the session was not restarted: state changed at {before} ms, now {after} ms"
        );
    }

    #[test]
    fn delete_peer_closes_a_live_session_with_a_cease_bird_reports() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_bird(64524, "");
        lab.start_routeplane(&[], &[]);
        lab.wait_for("the session", LIMIT, || lab.established_on(0));
        register(&lab, "n1", &["10.4.36.11"]);
        lab.wait_for("BIRD has the pod CIDR", LIMIT, || {
            lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24")
        });
        lab.grpc(
            50052,
            "routeplane.bgp.v1.Bgp/DeletePeer",
            r#"{"peerAddress": "10.4.36.239"}"#,
        );
        lab.wait_for("BIRD reports the Cease and drops our routes", LIMIT, || {
            let info = lab.birdc("show protocols all routeplane");
            info.contains("Received: Peer de-configured")
                && !lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24")
        });
        let peers = lab.grpc(50052, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
        assert!(
            peers["peers"].as_array().is_none_or(|p| p.is_empty()),
            "{peers}"
        );
    }

    /// GTSM (RFC 5082) with BIRD's `ttl security on`: BIRD takes only packets sent with 255 hops
    /// left. With ttl-security routeplane sends them so and the session comes up; without it, a
    /// directly connected eBGP session sends with 1 and BIRD's kernel drops every packet.
    #[test]
    fn ttl_security_with_bird_needs_it_on_both_sides() {
        lab::require();
        for (keys, up) in [("    ttl-security: true\n", true), ("", false)] {
            let mut lab = Lab::new();
            lab.start_bird(64524, "  ttl security on;");
            lab.start_routeplane_with(keys, &[], &[]);
            if up {
                lab.wait_for("the GTSM session", LIMIT, || lab.established_on(0));
                assert_eq!(peer(&lab, ROUTER_IP)["ttlSecurity"], true);
                register(&lab, "n1", &["10.4.36.11"]);
                lab.wait_for("BIRD learns the pod CIDR", LIMIT, || {
                    lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24")
                });
            } else {
                lab.wait_for(
                    "BIRD's kernel drops our packets sent with 1 hop",
                    LIMIT,
                    || Lab::tcp_stat(&lab.routers[0].ns, "TcpExtTCPMinTTLDrop") >= 3,
                );
                assert!(!lab.established_on(0));
            }
        }
    }

    /// BIRD one router away with `multihop 2; ttl security on` sends with 255, which arrives with
    /// 254: routeplane's ttl-security takes only 255, so its kernel drops BIRD's packets.
    #[test]
    fn ttl_security_drops_a_peer_one_router_away() {
        lab::require();
        let mut lab = Lab::new();
        let far = lab.add_far_router();
        lab.start_bird_on(
            far,
            FAR_IP,
            &bird_protocol(FAR_IP, SPEAKER_IP, "  multihop 2;\n  ttl security on;"),
        );
        lab.start_routeplane_config(&bgp_config(FAR_IP, "    ttl-security: true\n"), &[]);
        lab.wait_for(
            "our kernel drops BIRD's packets arriving with 254 hops",
            LIMIT,
            || Lab::tcp_stat(&lab.speaker, "TcpExtTCPMinTTLDrop") >= 3,
        );
        assert!(!lab.established_on(far));
        assert_ne!(peer(&lab, FAR_IP)["sessionState"], "established");
    }

    /// RFC 4486 against BIRD: BIRD sends three routes, routeplane allows two; BIRD reports the
    /// Cease, and routeplane's GetPeer says why and when it restarts.
    #[test]
    fn bird_sending_more_than_max_prefixes_gets_the_cease_and_reports_it() {
        lab::require();
        let mut lab = Lab::new();
        let statics = "protocol static static1 {\n  ipv4;\n  route 192.0.2.0/24 blackhole;\n  route 198.51.100.0/25 blackhole;\n  route 203.0.113.0/24 blackhole;\n}\n";
        let protocol = "  local 10.4.36.239 as 64524;\n  neighbor 10.4.36.10 as 64513;\n  ipv4 { import all; export where proto = \"static1\"; };";
        lab.start_bird_conf(0, &Lab::bird_conf(ROUTER_IP, statics, protocol));
        lab.start_routeplane_with(
            "    max-prefixes: 2\n    max-prefixes-restart: 30s\n",
            &[],
            &[],
        );
        lab.wait_for("BIRD reports the Cease", LIMIT, || {
            lab.birdc("show protocols all routeplane")
                .contains("Received: Maximum number of prefixes reached")
        });
        let p = peer(&lab, ROUTER_IP);
        assert_ne!(p["sessionState"], "established", "{p}");
        let why = p["lastError"].as_str().unwrap_or_default();
        assert!(
            why.contains("more than 2 prefixes") && why.contains("restarting in 30s"),
            "{p}"
        );
        assert_eq!(p["maxPrefixes"], 2);
    }
}
