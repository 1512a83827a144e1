//! A hostile host on the seed's core segment (tests/hostile/peer.py, in namespaces of its own):
//! from 10.4.36.66, an address that is no peer, 2,000 connections at once; from 10.4.36.238, the
//! address of a configured peer that is not up (as in the seed), garbage, bad markers and
//! lengths, unknown message types, bad OPENs, UPDATEs malformed in every way RFC 7606 names, an
//! OPEN a byte a second and a flood of prefixes. Throughout, the real ToR (BIRD at 10.4.36.239)
//! stays Established — the same session, never reset — with every route, the gRPC API answers,
//! and routeplane-bgp's memory stays bounded. Each attack gets the NOTIFICATION the RFCs name, or
//! none where the session must stay up.

mod lab;

use std::time::Duration;

use lab::{Lab, ROUTER_IP, same_instant};

const LIMIT: Duration = Duration::from_secs(20);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hostile/peer.py");

mod privileged {
    use super::*;

    /// The script's JSON lines.
    fn run(ns: &routeplane_testkit::Netns, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["timeout", "120", "python3", SCRIPT];
        all.extend(args);
        let (ok, out) = ns.run(&all);
        assert!(ok, "peer.py {args:?}: {out}");
        out.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    #[test]
    fn a_hostile_host_leaves_the_real_tor_its_session_and_routes() {
        lab::require();
        routeplane_testkit::privileged::require(&["python3", "timeout"]);
        let mut lab = Lab::new();
        let impostor = lab.add_router("10.4.36.238");
        let stranger = lab.add_router("10.4.36.66");
        lab.start_bird(64524, "");
        let config = format!(
            "peers:\n  - peer-address: {ROUTER_IP}\n    peer-asn: 64524\n    my-asn: 64513\n  - peer-address: 10.4.36.238\n    peer-asn: 64524\n    my-asn: 64513\naddress-pools:\n  - name: default\n    protocol: bgp\n    addresses: [10.5.120.0/24]\n"
        );
        // No agent renews the node's lease here: long enough for the whole test.
        lab.start_routeplane_config_with(&config, &["--lease-ttl", "10m"], &[]);
        lab.wait_for("the ToR's session", LIMIT, || lab.established_on(0));
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/RegisterNode",
            r#"{"name": "n1", "addresses": ["10.4.36.11"]}"#,
        );
        lab.wait_for("BIRD has the pod CIDR", LIMIT, || {
            lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24")
        });
        let (_, since) = lab.session_on(0);
        let rss_before = lab.bgp_rss_kib();

        let strangers = run(
            &lab.routers[stranger].ns,
            &["strangers", "10.4.36.10", "2000"],
        );
        assert_eq!(
            strangers[0]["closed"], 2000,
            "every connection from an address that is no peer closed: {strangers:?}"
        );
        let metrics = lab.bgp_metrics();
        let refused =
            routeplane_testkit::metric_sample(&metrics, "routeplane_bgp_refused_connections_total");
        assert!(refused >= Some(2000.0), "{refused:?}\n{metrics}");

        let results = run(&lab.routers[impostor].ns, &["attacks", "10.4.36.10"]);
        let got = |name: &str| -> serde_json::Value {
            results
                .iter()
                .find(|r| r["attack"] == name)
                .unwrap_or_else(|| panic!("no result for {name:?}: {results:?}"))["notification"]
                .clone()
        };
        let expected: &[(&str, Option<[u8; 2]>)] = &[
            ("garbage", Some([1, 1])),
            ("bad marker", Some([1, 1])),
            ("length over 4096", Some([1, 2])),
            ("unknown message type", Some([1, 3])),
            ("OPEN of version 3", Some([2, 1])),
            ("OPEN from the wrong AS", Some([2, 2])),
            ("OPEN with hold time 1", Some([2, 6])),
            ("attribute list longer than the message", Some([3, 1])),
            ("unrecognized well-known attribute", Some([3, 2])),
            ("unknown message type when established", Some([1, 3])),
            // RFC 7606: handled without a reset.
            ("origin 7", None),
            ("communities of 5 octets", None),
            ("aggregator of 5 octets", None),
            ("med of 3 octets", None),
            ("local_pref flagged optional", None),
            ("missing next hop", None),
            ("next hop 0.0.0.0", None),
            ("host bits set", None),
            ("unknown optional attribute", None),
            ("as_path segment type 9", None),
            ("an OPEN a byte a second", Some([4, 0])),
            ("a flood of prefixes", Some([6, 1])),
        ];
        for (name, want) in expected {
            let want = want.map_or(serde_json::Value::Null, |w| serde_json::json!(w));
            assert_eq!(got(name), want, "{name}: all results {results:?}");
        }
        let slow = results
            .iter()
            .find(|r| r["attack"] == "an OPEN a byte a second")
            .and_then(|r| r["seconds"].as_f64());
        assert!(slow.is_some_and(|s| s < 13.0), "cut after {slow:?} s");

        // The ToR never noticed: the same session since before, every route still there.
        let (up, after) = lab.session_on(0);
        assert!(
            up && same_instant(since, after),
            "the ToR's session was reset"
        );
        assert!(lab.bird_routes().iter().any(|r| r.0 == "10.5.112.0/24"));
        let peers = lab.grpc(50052, "routeplane.bgp.v1.Bgp/ListPeers", "{}");
        assert_eq!(peers["peers"].as_array().map(Vec::len), Some(2), "{peers}");
        let grown = lab.bgp_rss_kib().saturating_sub(rss_before);
        eprintln!("routeplane-bgp grew {grown} KiB under the attacks");
        assert!(
            grown < 32 * 1024,
            "routeplane-bgp grew {grown} KiB under the attacks"
        );
    }
}
