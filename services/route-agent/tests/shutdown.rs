//! The agent's SIGTERM (issue #15, RFC 8326): it drains its node in IPAM until it registers again,
//! so routeplane-bgp re-announces the node's prefixes with GRACEFUL_SHUTDOWN while it is away
//! (services/bgp/tests/bird.rs shows that at BIRD); back, the drain ends by itself. An operator's
//! drain is not ended by the agent's return. Privileged: root, ip, grpcurl.

use std::time::Duration;

use routeplane_testkit::lab::NodeLab;

fn require() {
    routeplane_testkit::privileged::require(&["ip", "grpcurl"]);
}

mod privileged {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    /// (ready, draining, drainEndsOnRegister) of `name` in IPAM.
    fn state(lab: &NodeLab, name: &str) -> (bool, bool, bool) {
        let n = lab
            .ipam("GetNode", &format!(r#"{{"name": "{name}"}}"#))
            .unwrap_or_else(|e| panic!("GetNode {name}: {e}\n{}", lab.logs()));
        let flag = |f: &str| n[f].as_bool().unwrap_or(false);
        (flag("ready"), flag("draining"), flag("drainEndsOnRegister"))
    }

    #[test]
    fn sigterm_drains_the_node_until_its_agent_registers_again() {
        require();
        let mut lab = NodeLab::new();
        lab.add_node("n1", 94, 11);
        lab.add_node("n2", 94, 12);
        lab.start_ipam(false);
        lab.start_agent(0, &[]);
        lab.start_agent(1, &["--drain-on-shutdown", "false"]);
        lab.wait("both agents registered", LIMIT, || {
            // Not registered yet is not an error here: GetNode answers NOT_FOUND until then.
            ["n1", "n2"].iter().all(|n| {
                lab.ipam("GetNode", &format!(r#"{{"name": "{n}"}}"#))
                    .is_ok_and(|v| v["ready"] == true)
            })
        });
        assert_eq!(state(&lab, "n1"), (true, false, false), "not drained");

        lab.stop("n1");
        assert_eq!(
            state(&lab, "n1"),
            (true, true, true),
            "drained by its agent's SIGTERM, until it registers again\n{}",
            lab.logs()
        );
        lab.stop("n2");
        assert!(
            !state(&lab, "n2").1,
            "--drain-on-shutdown false: not drained"
        );

        lab.start_agent(0, &[]);
        lab.wait("n1's drain ends when its agent is back", LIMIT, || {
            state(&lab, "n1") == (true, false, false)
        });

        // An operator's drain holds through the agent's shutdown and return.
        lab.ipam("DrainNode", r#"{"name": "n1"}"#).unwrap();
        lab.stop("n1");
        lab.start_agent(0, &[]);
        lab.wait("n1's agent registered again", LIMIT, || {
            lab.service("n1")
                .is_some_and(|s| s.log().contains("registered with IPAM"))
        });
        assert_eq!(
            state(&lab, "n1"),
            (true, true, false),
            "the operator's drain holds"
        );
    }
}
