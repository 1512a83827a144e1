//! The seed's network with IPAM on etcd (docker-compose.yml + docker-compose.etcd.yml): three etcd
//! members, two routeplane-ipam replicas, routeplane-bgp and the four agents given both replicas'
//! addresses. The serving replica is killed: the other serves within seconds, a LoadBalancer IP
//! allocated there reaches both ToRs (routeplane-bgp's feed moved over), the nodes keep their
//! routes past the lease TTL (their agents' keepalives moved over), and etcd holds the nodes. Needs
//! what compose.rs needs, and the routeplane-etcd image of docker/build-images.

use std::time::{Duration, Instant};

use routeplane_e2e::seed::{NODES, routers_route_every_node};
use routeplane_e2e::seed::{ipam_nodes_at, require_stack, routers_learn_every_node};
use routeplane_e2e::{ON_ETCD, Stack, grpcurl, wait_for};

/// The replicas: compose service and gRPC address on the core segment.
const REPLICAS: [(&str, &str); 2] = [("ipam", "10.4.36.5:50051"), ("ipam-2", "10.4.36.6:50051")];
/// The IPAM lease TTL (20 s) and routeplane-bgp's withdraw grace (0 s), both left at their defaults.
const LEASE_TTL_PLUS_GRACE: Duration = Duration::from_secs(20);

/// The replica that serves: the one that answers (a standby does not listen).
fn serving() -> Result<(&'static str, &'static str), String> {
    REPLICAS
        .into_iter()
        .find(|(_, addr)| grpcurl(addr, "routeplane.ipam.v1.Ipam/ListPools", "{}").is_ok())
        .ok_or_else(|| "no IPAM replica answers".to_string())
}

mod privileged {
    use super::*;

    #[test]
    fn the_stack_on_etcd_keeps_routing_when_the_serving_ipam_replica_dies() {
        require_stack(&["routeplane-etcd"]);
        let stack = Stack::up_with(ON_ETCD);
        let ((leader, leader_addr), took) =
            wait_for("an IPAM replica serving", Duration::from_secs(60), serving);
        println!("{leader} serves, {took:?} after up");
        let (standby, standby_addr) = REPLICAS
            .into_iter()
            .find(|(s, _)| *s != leader)
            .expect("two replicas");
        let nodes = routers_learn_every_node(&stack, leader_addr);

        let killed = Instant::now();
        stack.run(&["kill", leader]);
        let (_, took) = wait_for(
            "the other replica serving every node",
            Duration::from_secs(30),
            || ipam_nodes_at(standby_addr),
        );
        println!("{standby} serves all four nodes {took:?} after {leader}'s SIGKILL");

        // routeplane-bgp follows the new leader's feed: a LoadBalancer IP allocated there is
        // announced to both ToRs.
        let reply = grpcurl(
            standby_addr,
            "routeplane.ipam.v1.Ipam/AllocateServiceIP",
            r#"{"service": "default/after-failover"}"#,
        )
        .expect("AllocateServiceIP at the new leader");
        let ip = reply["ip"].as_str().expect("an address").to_string();
        let host_route = format!("{ip}/32");
        let (_, took) = wait_for(
            "the new LoadBalancer IP at both ToRs",
            Duration::from_secs(60),
            || {
                for tor in ["tor-94", "tor-83"] {
                    if !stack.bird_routes(tor)?.contains_key(&host_route) {
                        return Err(format!("{tor} has no {host_route}"));
                    }
                }
                Ok(())
            },
        );
        println!("{host_route}, allocated at {standby}, at both ToRs after {took:?}");

        // The agents keep their leases through the new leader: past the TTL and grace since the
        // kill, every node is still routed.
        std::thread::sleep(
            (killed + LEASE_TTL_PLUS_GRACE + Duration::from_secs(5))
                .saturating_duration_since(Instant::now()),
        );
        routers_route_every_node(&stack, &nodes)
            .expect("every node still routed after the lease TTL and grace");

        // The state is etcd's: the nodes are there, read by etcd's own client.
        let keys = stack
            .exec(
                "etcd-1",
                &[
                    "etcdctl",
                    "--endpoints=http://10.4.36.21:2379",
                    "get",
                    "--prefix",
                    "--keys-only",
                    "/routeplane/ipam/n/",
                ],
            )
            .expect("etcdctl");
        for (name, _, _) in NODES {
            assert!(keys.contains(name), "{name} not in etcd: {keys}");
        }

        // Back, the killed replica stands by.
        stack.run(&["start", leader]);
        wait_for(
            "the restarted replica standing by",
            Duration::from_secs(30),
            || {
                let log = stack.logs(Some(leader));
                // Naming the new leader by the address it advertises (--etcd-advertise).
                let names = format!("leader={standby_addr}");
                if log.contains("standby: another replica leads") && log.contains(&names) {
                    Ok(())
                } else {
                    Err(log)
                }
            },
        );
        let left = stack.tear_down();
        assert!(left.is_empty(), "left after docker compose down: {left:?}");
    }
}
