//! routeplane-bgp against a real GoBGP (gobgpd 3.10), in the namespaces lab.rs builds.

mod lab;

use std::time::Duration;

use lab::Lab;

mod privileged {
    use super::*;

    fn up(lab: &Lab) -> bool {
        lab.gobgp("neighbor").contains("Establ")
    }

    /// GoBGP's RIB for a family as (prefix, next hop, AS path).
    fn rib(lab: &Lab, family: &str) -> Vec<(String, String, Vec<u64>)> {
        let text = lab.gobgp(&format!("global rib -a {family} -j"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        let mut out = Vec::new();
        for (prefix, paths) in v.as_object().into_iter().flatten() {
            for p in paths.as_array().into_iter().flatten() {
                let mut next_hop = String::new();
                let mut path = Vec::new();
                for a in p["attrs"].as_array().into_iter().flatten() {
                    if let Some(nh) = a["nexthop"].as_str() {
                        next_hop = nh.to_string();
                    }
                    for seg in a["as_paths"].as_array().into_iter().flatten() {
                        path.extend(
                            seg["asns"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|n| n.as_u64()),
                        );
                    }
                }
                out.push((prefix.clone(), next_hop, path));
            }
        }
        out
    }

    #[test]
    fn gobgp_learns_ipv4_and_ipv6_pod_cidrs_when_routeplane_dials() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_gobgp("  [neighbors.transport.config]\n    passive-mode = true");
        let values = lab.path("values.yaml");
        std::fs::write(
            &values,
            format!(
                "{}\nipv6:\n  enabled: true\n",
                include_str!("../../../examples/seed/values.yaml")
            ),
        )
        .unwrap();
        let values = values.to_str().unwrap().to_string();
        lab.start_routeplane(&["--values", &values], &["--values", &values]);
        lab.wait_for(
            "GoBGP establishes the session routeplane dialled",
            Duration::from_secs(30),
            || up(&lab),
        );
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/RegisterNode",
            r#"{"name": "n1", "addresses": ["10.4.36.11", "fd04:36::11"]}"#,
        );
        lab.wait_for("GoBGP has both pod CIDRs", Duration::from_secs(15), || {
            rib(&lab, "ipv4").contains(&("10.5.112.0/24".into(), "10.4.36.11".into(), vec![64513]))
                && rib(&lab, "ipv6").contains(&(
                    "fd00::/120".into(),
                    "fd04:36::11".into(),
                    vec![64513],
                ))
        });
    }

    #[test]
    fn gobgp_can_dial_routeplane() {
        lab::require();
        let mut lab = Lab::new();
        lab.start_gobgp("");
        // routeplane dials a closed port: only GoBGP's connection to routeplane's :179 can succeed.
        lab.start_routeplane_with("    peer-port: 1179\n", &[], &[]);
        lab.wait_for(
            "GoBGP's connection to routeplane establishes",
            Duration::from_secs(40),
            || up(&lab),
        );
        lab.grpc(
            50051,
            "routeplane.ipam.v1.Ipam/RegisterNode",
            r#"{"name": "n1", "addresses": ["10.4.36.11"]}"#,
        );
        lab.wait_for("GoBGP has the pod CIDR", Duration::from_secs(15), || {
            rib(&lab, "ipv4").contains(&("10.5.112.0/24".into(), "10.4.36.11".into(), vec![64513]))
        });
    }
}
