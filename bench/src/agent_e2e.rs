//! The route agent end to end, as a user runs it: routeplane-ipam holding N nodes on one segment
//! with the agent's node, then routeplane-agent started cold; the time from its start until its
//! metrics say every node's pod CIDR is routed (kernel routes, or eBPF map entries). The feed's
//! snapshot, the desired set, the reconcile and netlink or the BPF syscalls are all in it — beside
//! the in-process figure, which times the kernel seam alone.
//!
//! Everything runs in one network namespace the benchmark creates: a veth carries the segment
//! 172.16.0.0/12 (nothing answers on it: routes only), IPAM listens on its loopback.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_testkit::{Netns, Service, bin, metric_sample, scrape};

/// The agent's node address on the segment; the other nodes follow it.
const AGENT_ADDRESS: &str = "172.16.0.1";

/// A namespace with IPAM holding `nodes` nodes besides the agent's.
pub struct Cluster {
    pub ns: Netns,
    ipam: Service,
    ipam_addr: String,
    dir: tempfile::TempDir,
    bpffs: PathBuf,
    pub nodes: u32,
}

/// Node `i`'s address on the segment (172.16.0.2 onwards).
pub fn node_address(i: u32) -> String {
    // 172.16.0.2 onwards: inside the /12, never the agent's.
    let base = u32::from(std::net::Ipv4Addr::new(172, 16, 0, 2));
    std::net::Ipv4Addr::from(base + i).to_string()
}

impl Cluster {
    /// The namespace, IPAM (durable, as shipped) and `nodes` nodes registered with it.
    pub fn new(nodes: u32) -> Cluster {
        let ns = Netns::new(&routeplane_testkit::unique_id(), "bench");
        ns.ip(&[
            "link", "add", "seg0", "type", "veth", "peer", "name", "seg1",
        ]);
        ns.ip(&["addr", "add", &format!("{AGENT_ADDRESS}/12"), "dev", "seg0"]);
        ns.ip(&["link", "set", "seg0", "up"]);
        ns.ip(&["link", "set", "seg1", "up"]);
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Room for 262,144 nodes: /26s out of 10.0.0.0/8; LoadBalancer IPs off it.
        let values = dir.path().join("values.yaml");
        std::fs::write(&values, "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 10.0.0.0/8\n    clusterPoolIPv4MaskSize: 26\n").expect("values.yaml");
        let bgp = dir.path().join("bgp-config.yaml");
        std::fs::write(
            &bgp,
            "address-pools:\n- {name: default, protocol: bgp, addresses: [192.0.2.0/24]}\n",
        )
        .expect("bgp-config.yaml");
        let data = dir.path().join("ipam");
        let mut ipam = Service::spawn(
            "routeplane-ipam",
            Some(ns.name()),
            &bin("routeplane-ipam"),
            &[
                "--data-dir",
                data.to_str().unwrap_or_default(),
                "--values",
                values.to_str().unwrap_or_default(),
                "--bgp-config",
                bgp.to_str().unwrap_or_default(),
                "--grpc-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log",
                "warn,routeplane_runtime=info",
            ],
        );
        let ipam_addr = ipam.listen_addr("gRPC").to_string();
        let bpffs = dir.path().join("bpffs");
        std::fs::create_dir(&bpffs).expect("the bpffs mount point");
        routeplane_testkit::sh(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            bpffs.to_str().unwrap_or_default(),
        ]);
        let cluster = Cluster {
            ns,
            ipam,
            ipam_addr,
            dir,
            bpffs,
            nodes,
        };
        cluster.register(nodes);
        cluster
    }

    /// Registers the nodes from a thread inside the namespace (IPAM listens on its loopback).
    fn register(&self, nodes: u32) {
        let netns = std::fs::File::open(format!("/var/run/netns/{}", self.ns.name()))
            .expect("the namespace's file");
        let endpoint = format!("http://{}", self.ipam_addr);
        std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the benchmark's namespace");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(register_all(endpoint, nodes));
        })
        .join()
        .expect("registration finished");
    }

    /// Starts routeplane-agent cold (no routes, no maps) and times it until `done` holds of its
    /// metrics; stops it. `extra`: datapath flags.
    pub fn agent_until(&self, extra: &[&str], done: impl Fn(&str) -> bool) -> Duration {
        self.clean();
        let cache = self.dir.path().join("agent-cache");
        let _ = std::fs::remove_dir_all(&cache);
        let socket = self.dir.path().join("cni.sock");
        let pins = self.bpffs.join("routeplane");
        let ipam = format!("http://{}", self.ipam_addr);
        let mut args = vec![
            "--ipam",
            &ipam,
            "--node-name",
            "bench-agent",
            "--address",
            AGENT_ADDRESS,
            "--cache-dir",
            cache.to_str().unwrap_or_default(),
            "--cni-socket",
            socket.to_str().unwrap_or_default(),
            "--bpf-pin-dir",
            pins.to_str().unwrap_or_default(),
            "--log",
            "warn",
        ];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let mut agent = Service::spawn(
            "routeplane-agent",
            Some(self.ns.name()),
            &bin("routeplane-agent"),
            &args,
        );
        let deadline = started + Duration::from_secs(600);
        let elapsed = loop {
            let text = scrape(Some(self.ns.name()), "127.0.0.1:9953").unwrap_or_default();
            if done(&text) {
                break started.elapsed();
            }
            assert!(
                Instant::now() < deadline && !agent.exited(),
                "routeplane-agent did not get there in 600 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        agent.terminate();
        elapsed
    }

    /// Cold: the agent's kernel routes and its pinned maps gone.
    fn clean(&self) {
        self.ns.ip(&["route", "flush", "proto", "194"]);
        let _ = std::fs::remove_dir_all(self.bpffs.join("routeplane"));
    }

    /// The time until every node's pod CIDR is a kernel route (and the agent's own, to rp_host).
    pub fn kernel_routes(&self) -> Duration {
        let want = f64::from(self.nodes + 1);
        self.agent_until(&[], |text| {
            metric_sample(text, "routeplane_agent_routes_installed").is_some_and(|n| n >= want)
        })
    }

    /// `ip -batch` adding the very routes the agent installed end to end (each node's pod CIDR via
    /// that node's address: as many gateways as nodes, which the kernel's route insertion handles
    /// far more slowly than one shared gateway), timed from a namespace without them. Run after
    /// [`Cluster::kernel_routes`]; leaves the namespace cold.
    pub fn ip_batch_same_routes(&self) -> Duration {
        let shown = self.routes();
        let lines: Vec<&str> = shown.lines().filter(|l| l.contains(" via ")).collect();
        assert!(
            lines.len() >= self.nodes as usize,
            "the agent's routes are there to copy: {} of {}",
            lines.len(),
            self.nodes
        );
        let file = self.dir.path().join("same-routes.batch");
        // `show proto 194` leaves the protocol out of what it prints.
        let batch: String = lines
            .iter()
            .map(|l| format!("route add {} proto 194\n", l.trim()))
            .collect();
        std::fs::write(&file, batch).expect("the batch file");
        self.clean();
        let started = Instant::now();
        self.ns.ip(&["-batch", file.to_str().unwrap_or_default()]);
        let elapsed = started.elapsed();
        let now = self.routes();
        assert_eq!(
            now.lines().filter(|l| l.contains(" via ")).count(),
            lines.len(),
            "ip -batch added them all"
        );
        self.clean();
        elapsed
    }

    /// `ip route show proto 194` in the namespace.
    fn routes(&self) -> String {
        let (ok, out) = self.ns.run(&["ip", "route", "show", "proto", "194"]);
        assert!(ok, "ip route show: {out}");
        out
    }

    /// The time until every node's pod CIDR is in the eBPF map.
    pub fn ebpf_routes(&self) -> Duration {
        let want = f64::from(self.nodes);
        self.agent_until(&["--datapath", "ebpf"], |text| {
            metric_sample(text, "routeplane_agent_ebpf_routes").is_some_and(|n| n >= want)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.ipam.kill9();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.bpffs)
            .output();
    }
}

async fn register_all(endpoint: String, nodes: u32) {
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .expect("an endpoint")
        .connect()
        .await
        .expect("routeplane-ipam answers");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..nodes {
        if set.len() >= 64
            && let Some(r) = set.join_next().await
        {
            r.expect("a registration");
        }
        let mut c = IpamClient::new(channel.clone());
        set.spawn(async move {
            c.register_node(pb::RegisterNodeRequest {
                name: format!("node-{i}"),
                addresses: vec![node_address(i)],
                labels: Default::default(),
            })
            .await
            .expect("RegisterNode");
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("a registration");
    }
}
