//! Against a real BIRD 2 (or GoBGP): routeplane-ipam and routeplane-bgp in one network namespace,
//! the routers in others, a bridge between them — all created by the test (names unique per test),
//! removed when it ends. Privileged: the tests using it live in `mod privileged` and require root,
//! BIRD, GoBGP and grpcurl (scripts/test installs them).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use routeplane_testkit::{Netns, Service, bin};

/// Fails the test unless it can run: root, BIRD, GoBGP, ip and grpcurl.
pub fn require() {
    routeplane_testkit::privileged::require(&["ip", "bird", "birdc", "grpcurl", "gobgpd", "gobgp"]);
}

/// A router on the core segment: its namespace, and BIRD's control socket once BIRD runs there.
pub struct Router {
    pub ns: Netns,
    pub ctl: PathBuf,
}

/// Namespaces `speaker` (routeplane, 10.4.36.10) and the routers (the first at 10.4.36.239).
pub struct Lab {
    id: String,
    pub speaker: Netns,
    /// The first router is `routers[0]`; [`Lab::add_router`] adds more.
    pub routers: Vec<Router>,
    pub dir: tempfile::TempDir,
    services: Vec<Service>,
    /// routeplane-bgp's arguments, to restart it.
    bgp_args: Vec<String>,
    /// How many times routeplane-bgp was started: its logs are bgp.log, bgp2.log…
    bgp_starts: usize,
    /// Whether routeplane-ipam's gRPC listens on every address (plaintext: `--insecure`) rather
    /// than loopback, for replicas in other namespaces ([`Lab::share_ipam`]).
    ipam_shared: bool,
}

pub const SPEAKER_IP: &str = "10.4.36.10";
pub const ROUTER_IP: &str = "10.4.36.239";
pub const SPEAKER_IP6: &str = "fd04:36::10";
pub const ROUTER_IP6: &str = "fd04:36::239";
/// The router beyond the first one ([`Lab::add_far_router`]).
pub const FAR_IP: &str = "10.4.37.239";
pub const FAR_IP6: &str = "fd04:37::239";

impl Lab {
    /// The seed's core segment: a bridge in the speaker namespace carrying 10.4.36.10 (and
    /// fd04:36::10), with the first router (10.4.36.239, fd04:36::239) attached.
    #[allow(clippy::new_without_default)] // it builds namespaces: no default value
    pub fn new() -> Lab {
        let id = routeplane_testkit::unique_id();
        let speaker = Netns::new(&id, "s");
        speaker.ip(&["link", "add", "core", "type", "bridge"]);
        speaker.ip(&["addr", "add", &format!("{SPEAKER_IP}/24"), "dev", "core"]);
        // nodad: IPv6 usable at once, for the dual-stack tests.
        speaker.ip(&[
            "addr",
            "add",
            &format!("{SPEAKER_IP6}/64"),
            "dev",
            "core",
            "nodad",
        ]);
        speaker.ip(&["link", "set", "core", "up"]);
        let mut lab = Lab {
            id,
            speaker,
            routers: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            services: Vec::new(),
            bgp_args: Vec::new(),
            bgp_starts: 0,
            ipam_shared: false,
        };
        lab.add_router_with(ROUTER_IP, Some(ROUTER_IP6));
        lab
    }

    /// The first router's namespace.
    pub fn router(&self) -> &str {
        self.routers[0].ns.name()
    }

    /// Another router on the core segment, at `router_ip`/24. Returns its index for
    /// [`Lab::start_bird_on`] and [`Lab::birdc_on`].
    pub fn add_router(&mut self, router_ip: &str) -> usize {
        self.add_router_with(router_ip, None)
    }

    fn add_router_with(&mut self, ip: &str, ip6: Option<&str>) -> usize {
        let index = self.routers.len();
        let ns = Netns::new(&self.id, &format!("r{index}"));
        let (vr, vs) = (
            format!("vr{}{index}", self.id),
            format!("vs{}{index}", self.id),
        );
        routeplane_testkit::netns::veth(&ns, &vr, &self.speaker, &vs);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &vr]);
        if let Some(ip6) = ip6 {
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", &vr, "nodad"]);
        }
        self.speaker.ip(&["link", "set", &vs, "master", "core"]);
        let ctl = self.path(&format!("bird{index}.ctl"));
        self.routers.push(Router { ns, ctl });
        index
    }

    /// A router one hop beyond the first: namespace `far` at 10.4.37.239 (fd04:37::239) behind
    /// router 0, which forwards between the two segments and, as routers do, drops what arrives
    /// with TTL 1 (counted as IcmpOutTimeExcds / Icmp6OutTimeExcds). Returns its index.
    pub fn add_far_router(&mut self) -> usize {
        let index = self.routers.len();
        let far = Netns::new(&self.id, "far");
        let r0 = &self.routers[0].ns;
        let (a, b) = (format!("vfa{}", self.id), format!("vfb{}", self.id));
        routeplane_testkit::netns::veth(r0, &a, &far, &b);
        r0.sysctl("net.ipv4.ip_forward=1");
        r0.sysctl("net.ipv6.conf.all.forwarding=1");
        r0.ip(&["addr", "add", "10.4.37.1/24", "dev", &a]);
        r0.ip(&["addr", "add", "fd04:37::1/64", "dev", &a, "nodad"]);
        far.ip(&["addr", "add", &format!("{FAR_IP}/24"), "dev", &b]);
        far.ip(&["addr", "add", &format!("{FAR_IP6}/64"), "dev", &b, "nodad"]);
        far.ip(&["route", "add", "default", "via", "10.4.37.1"]);
        far.ip(&["-6", "route", "add", "default", "via", "fd04:37::1"]);
        self.speaker
            .ip(&["route", "add", "10.4.37.0/24", "via", ROUTER_IP]);
        self.speaker
            .ip(&["-6", "route", "add", "fd04:37::/64", "via", ROUTER_IP6]);
        let ctl = self.path(&format!("bird{index}.ctl"));
        self.routers.push(Router { ns: far, ctl });
        index
    }

    /// BIRD's configuration: logging to stderr (kept with its output), `router_id`, a device
    /// protocol, `top` (other protocols, filters) and the `routeplane` BGP protocol's body.
    pub fn bird_conf(router_id: &str, top: &str, protocol: &str) -> String {
        format!(
            "log stderr all;\nrouter id {router_id};\nprotocol device {{}}\n{top}\nprotocol bgp routeplane {{\n  error wait time 1, 5;\n{protocol}\n}}\n"
        )
    }

    /// BIRD on router `index`, with a full protocol body of our choosing.
    pub fn start_bird_on(&mut self, index: usize, router_id: &str, protocol: &str) -> u32 {
        self.start_bird_conf(index, &Lab::bird_conf(router_id, "", protocol))
    }

    /// BIRD on router `index` with the whole configuration given (bird{index}.conf, which
    /// `birdc configure` reads again).
    pub fn start_bird_conf(&mut self, index: usize, conf: &str) -> u32 {
        let file = self.path(&format!("bird{index}.conf"));
        std::fs::write(&file, conf).unwrap();
        let ctl = self.routers[index].ctl.clone();
        let ns = self.routers[index].ns.name().to_string();
        self.spawn(
            &format!("bird{index}"),
            &ns,
            Path::new("bird"),
            &[
                "-f",
                "-c",
                file.to_str().unwrap(),
                "-s",
                ctl.to_str().unwrap(),
            ],
        )
    }

    /// birdc on router `index`; a command BIRD refuses, or a BIRD that does not answer, fails the test.
    pub fn birdc_on(&self, index: usize, command: &str) -> String {
        routeplane_testkit::bird::birdc(None, &self.routers[index].ctl, command)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log(&format!("bird{index}"))))
    }

    /// birdc on the first router.
    pub fn birdc(&self, command: &str) -> String {
        self.birdc_on(0, command)
    }

    /// Whether the `routeplane` session on router `index` is Established.
    pub fn established_on(&self, index: usize) -> bool {
        self.birdc_on(index, "show protocols routeplane")
            .lines()
            .any(|l| l.starts_with("routeplane") && l.contains("Established"))
    }

    /// BIRD's `routeplane` session on router `index`: whether it is Established, and when it last
    /// changed state, in milliseconds of the day — both from one `show protocols`, so they describe
    /// the same moment. BIRD prints the time by converting its monotonic clock to wall time at
    /// display, so two reads of the same instant can differ by a millisecond or two: compare with
    /// [`same_instant`], never with `==`.
    pub fn session_on(&self, index: usize) -> (bool, u64) {
        let text = self.birdc_on(index, "show protocols routeplane");
        let line = text
            .lines()
            .find(|l| l.starts_with("routeplane"))
            .unwrap_or_else(|| panic!("no routeplane protocol in {text}"));
        let field = line
            .split_whitespace()
            .nth(4)
            .unwrap_or_else(|| panic!("no state-change time in {text}"));
        let (hms, ms) = field.split_once('.').unwrap_or((field, "0"));
        let parts: Vec<u64> = hms
            .split(':')
            .map(|p| p.parse().unwrap_or_else(|_| panic!("bad time {field}")))
            .collect();
        assert_eq!(parts.len(), 3, "unexpected time {field}");
        let ms: u64 = ms.parse().unwrap_or_else(|_| panic!("bad time {field}"));
        let at = ((parts[0] * 60 + parts[1]) * 60 + parts[2]) * 1000 + ms;
        (line.contains("Established"), at)
    }

    /// routeplane-ipam and routeplane-bgp with a bgp-config of our choosing.
    pub fn start_routeplane_config(&mut self, bgp_config: &str, bgp_args: &[&str]) {
        self.start_routeplane_config_with(bgp_config, &[], bgp_args);
    }

    /// As [`Lab::start_routeplane_config`], with arguments for routeplane-ipam too.
    pub fn start_routeplane_config_with(
        &mut self,
        bgp_config: &str,
        ipam_args: &[&str],
        bgp_args: &[&str],
    ) {
        std::fs::write(self.path("bgp-config.yaml"), bgp_config).unwrap();
        self.start_services(ipam_args, bgp_args);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self, name: &str, ns: &str, program: &Path, args: &[&str]) -> u32 {
        let service = Service::spawn(name, Some(ns), program, args);
        let pid = service.pid();
        self.services.push(service);
        pid
    }

    /// BIRD on the first router with one BGP protocol `routeplane` towards the speaker; returns
    /// its pid. `extra` goes into the protocol.
    pub fn start_bird(&mut self, local_as: u32, extra: &str) -> u32 {
        self.start_bird_with(local_as, extra, "")
    }

    /// As [`Lab::start_bird`]; `channel` goes into its ipv4 channel.
    pub fn start_bird_with(&mut self, local_as: u32, extra: &str, channel: &str) -> u32 {
        let protocol = format!(
            "  local {ROUTER_IP} as {local_as};\n  neighbor {SPEAKER_IP} as 64513;\n{extra}\n  ipv4 {{ import all; export none; {channel} }};"
        );
        self.start_bird_on(0, ROUTER_IP, &protocol)
    }

    /// gobgpd on the first router (AS 64524, peer routeplane at 10.4.36.10 in AS 64513, IPv4 and
    /// IPv6 unicast); `neighbor` adds TOML lines to the neighbor (e.g. passive mode).
    pub fn start_gobgp(&mut self, neighbor: &str) -> u32 {
        let conf = format!(
            "[global.config]\n  as = 64524\n  router-id = \"{ROUTER_IP}\"\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{SPEAKER_IP}\"\n    peer-as = 64513\n{neighbor}\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n"
        );
        std::fs::write(self.path("gobgpd.toml"), conf).unwrap();
        let file = self.path("gobgpd.toml").to_str().unwrap().to_string();
        let router = self.router().to_string();
        self.spawn(
            "gobgpd",
            &router,
            Path::new("gobgpd"),
            &["-f", &file, "-t", "toml", "--api-hosts", "127.0.0.1:50151"],
        )
    }

    /// The gobgp CLI against the first router's gobgpd; its failure fails the test.
    pub fn gobgp(&self, args: &str) -> String {
        let mut all = vec!["gobgp", "-p", "50151", "-u", "127.0.0.1"];
        all.extend(args.split_whitespace());
        let (ok, out) = self.routers[0].ns.run(&all);
        assert!(ok, "gobgp {args}: {out}\n{}", self.log("gobgpd"));
        out
    }

    /// routeplane-ipam and routeplane-bgp in the speaker namespace, with one peer (the router).
    pub fn start_routeplane(&mut self, ipam_args: &[&str], bgp_args: &[&str]) {
        self.start_routeplane_with("", ipam_args, bgp_args)
    }

    /// As [`Lab::start_routeplane`], with extra keys for the peer in bgp-config.
    pub fn start_routeplane_with(
        &mut self,
        peer_keys: &str,
        ipam_args: &[&str],
        bgp_args: &[&str],
    ) {
        let bgp_config = format!(
            "peers:\n  - peer-address: {ROUTER_IP}\n    peer-asn: 64524\n    my-asn: 64513\n{peer_keys}address-pools:\n  - name: default\n    protocol: bgp\n    addresses: [10.5.120.0/24]\n"
        );
        std::fs::write(self.path("bgp-config.yaml"), bgp_config).unwrap();
        self.start_services(ipam_args, bgp_args);
    }

    fn start_services(&mut self, ipam_args: &[&str], bgp_args: &[&str]) {
        let cfg = self.path("bgp-config.yaml").to_str().unwrap().to_string();
        let data = self.path("ipam").to_str().unwrap().to_string();
        let speaker = self.speaker.name().to_string();
        let mut args = vec![
            "--data-dir",
            &data,
            "--bgp-config",
            &cfg,
            "--grpc-listen",
            if self.ipam_shared {
                "0.0.0.0:50051"
            } else {
                "127.0.0.1:50051"
            },
            "--metrics-listen",
            "127.0.0.1:9951",
        ];
        if self.ipam_shared {
            args.push("--insecure");
        }
        args.extend(ipam_args);
        self.spawn("ipam", &speaker, &bin("routeplane-ipam"), &args);
        let mut args = Lab::bgp_args_at(SPEAKER_IP, &cfg);
        args.extend(bgp_args.iter().map(|a| a.to_string()));
        self.bgp_args = args;
        self.start_bgp_again();
        self.wait_serving(50051, "ipam");
    }

    /// routeplane-bgp's arguments for a speaker at `ip` (its router ID, BGP on port 179 there),
    /// its API on 127.0.0.1:50052 and metrics on :9952 of its namespace.
    fn bgp_args_at(ip: &str, bgp_config: &str) -> Vec<String> {
        let listen = format!("{ip}:179");
        [
            "--bgp-config",
            bgp_config,
            "--router-id",
            ip,
            "--bgp-listen",
            &listen,
            "--connect-retry",
            "1s",
            "--grpc-listen",
            "127.0.0.1:50052",
            "--metrics-listen",
            "127.0.0.1:9952",
        ]
        .map(String::from)
        .to_vec()
    }

    /// routeplane-ipam, once started, answers on 10.4.36.10:50051 too (plaintext: `--insecure`),
    /// for routeplane-bgp replicas in other namespaces on the core segment.
    pub fn share_ipam(&mut self) {
        self.ipam_shared = true;
    }

    /// A second routeplane-bgp replica in a namespace of its own on the core segment, at `ip`,
    /// following the shared IPAM ([`Lab::share_ipam`]) with the same bgp-config; its log is
    /// "replica". Returns the namespace's name, for [`Lab::grpc_in`].
    pub fn start_replica(&mut self, ip: &str, extra: &[&str]) -> String {
        let index = self.add_router(ip);
        let ns = self.routers[index].ns.name().to_string();
        let cfg = self.path("bgp-config.yaml").to_str().unwrap().to_string();
        let mut args = Lab::bgp_args_at(ip, &cfg);
        let ipam = format!("http://{SPEAKER_IP}:50051");
        args.extend(["--ipam", &ipam, "--insecure"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn("replica", &ns, &bin("routeplane-bgp"), &args);
        self.wait_for("the replica answers", Duration::from_secs(20), || {
            routeplane_testkit::grpcurl(
                Some(&ns),
                "127.0.0.1:50052",
                "grpc.health.v1.Health/Check",
                "{}",
            )
            .is_ok_and(|v| v["status"] == "SERVING")
        });
        ns
    }

    /// grpcurl to 127.0.0.1:`port` inside namespace `ns`; panics (with the logs) on failure.
    pub fn grpc_in(&self, ns: &str, port: u16, method: &str, body: &str) -> serde_json::Value {
        let addr = format!("127.0.0.1:{port}");
        routeplane_testkit::grpcurl(Some(ns), &addr, method, body).unwrap_or_else(|e| {
            panic!(
                "{e}\nbgp.log:\n{}\nreplica log:\n{}",
                self.log(&self.bgp_name()),
                self.log("replica")
            )
        })
    }

    /// SIGTERM to routeplane-ipam, waiting (bounded) until it has exited.
    pub fn stop_ipam(&mut self) {
        if let Some(ipam) = self.services.iter_mut().rev().find(|s| s.name() == "ipam") {
            ipam.terminate();
        }
    }

    fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().rev().find(|s| s.name() == name)
    }

    fn bgp_name(&self) -> String {
        match self.bgp_starts {
            0 | 1 => "bgp".to_string(),
            n => format!("bgp{n}"),
        }
    }

    /// Sends routeplane-bgp a signal (e.g. "-HUP").
    pub fn signal_bgp(&self, signal: &str) {
        self.service(&self.bgp_name())
            .expect("routeplane-bgp is running")
            .signal(signal);
    }

    /// SIGTERM to routeplane-bgp, waiting (bounded) until it has exited.
    pub fn stop_bgp(&mut self) {
        let name = self.bgp_name();
        let index = self
            .services
            .iter()
            .rposition(|s| s.name() == name)
            .expect("routeplane-bgp is running");
        let mut bgp = self.services.remove(index);
        bgp.terminate();
        // Kept for its log.
        self.services.push(bgp);
    }

    /// Starts routeplane-bgp (again) with the same arguments; its log is bgp.log, then bgp2.log…
    pub fn start_bgp_again(&mut self) {
        let args: Vec<String> = self.bgp_args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let speaker = self.speaker.name().to_string();
        self.bgp_starts += 1;
        let name = self.bgp_name();
        self.spawn(&name, &speaker, &bin("routeplane-bgp"), &args);
        self.wait_serving(50052, &name);
    }

    fn wait_serving(&self, port: u16, name: &str) {
        self.wait_for(
            &format!("{name}: the service answers"),
            Duration::from_secs(20),
            || {
                routeplane_testkit::grpcurl(
                    Some(self.speaker.name()),
                    &format!("127.0.0.1:{port}"),
                    "grpc.health.v1.Health/Check",
                    "{}",
                )
                .is_ok_and(|v| v["status"] == "SERVING")
            },
        );
    }

    /// What a service printed: "ipam", "bgp" (then "bgp2"… after restarts), "bird0", "gobgpd".
    pub fn log(&self, name: &str) -> String {
        let name = name.trim_end_matches(".log");
        self.service(name).map(Service::log).unwrap_or_default()
    }

    /// grpcurl inside the speaker namespace; panics (with the logs) on failure.
    pub fn grpc(&self, port: u16, method: &str, body: &str) -> serde_json::Value {
        let addr = format!("127.0.0.1:{port}");
        routeplane_testkit::grpcurl(Some(self.speaker.name()), &addr, method, body)
            .unwrap_or_else(|e| panic!("{e}\nbgp.log:\n{}", self.log(&self.bgp_name())))
    }

    /// grpcurl inside the speaker namespace for a call that must fail: its error text.
    pub fn grpc_err(&self, port: u16, method: &str, body: &str) -> String {
        let addr = format!("127.0.0.1:{port}");
        match routeplane_testkit::grpcurl(Some(self.speaker.name()), &addr, method, body) {
            Ok(v) => panic!("{method} {body} succeeded: {v}"),
            Err(e) => e.to_string(),
        }
    }

    /// routeplane-bgp's resident memory now, in KiB.
    pub fn bgp_rss_kib(&self) -> u64 {
        self.service(&self.bgp_name())
            .expect("routeplane-bgp is running")
            .rss_kib()
    }

    /// routeplane-bgp's /metrics (scraped inside the speaker namespace).
    pub fn bgp_metrics(&self) -> String {
        routeplane_testkit::scrape(Some(self.speaker.name()), "127.0.0.1:9952")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Polls `check` until it holds or `limit` passes; then fails with BIRD's view and the logs.
    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            routeplane_testkit::wait_for(what, limit, &mut check)
        }));
        if let Err(e) = result {
            let routers: String = self
                .routers
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let show = |c: &str| {
                        routeplane_testkit::bird::birdc(None, &r.ctl, c).unwrap_or_else(|e| e)
                    };
                    format!(
                        "router {i}:\n{}\n{}\n{}",
                        show("show protocols all routeplane"),
                        show("show route all"),
                        self.log(&format!("bird{i}"))
                    )
                })
                .collect();
            panic!(
                "{}\n{routers}\nbgp log:\n{}\nipam log:\n{}\nreplica log (if any):\n{}",
                e.downcast_ref::<String>().cloned().unwrap_or_default(),
                self.log(&self.bgp_name()),
                self.log("ipam"),
                self.log("replica")
            );
        }
    }

    /// The first router's routes as (prefix, next hop, AS path).
    pub fn bird_routes(&self) -> Vec<(String, String, String)> {
        routeplane_testkit::bird::parse_routes(&self.birdc("show route all"))
            .into_iter()
            .map(|p| (p.prefix, p.next_hop, p.as_path))
            .collect()
    }

    /// Whether the first router has a route to `prefix`.
    pub fn bird_has(&self, prefix: &str) -> bool {
        self.bird_routes().iter().any(|r| r.0 == prefix)
    }

    /// Whether the first router's route to `prefix` carries RFC 8326's GRACEFUL_SHUTDOWN, as
    /// `birdc show route all` writes it: `BGP.community: (65535,0)`.
    pub fn bird_graceful_shutdown(&self, prefix: &str) -> bool {
        self.birdc(&format!("show route {prefix} all"))
            .contains("(65535,0)")
    }

    pub fn kill(&self, pid: u32, signal: &str) {
        routeplane_testkit::sh(&["kill", signal, &pid.to_string()]);
    }

    /// A counter of the kernel's TCP statistics (`nstat -az NAME`) in namespace `ns`.
    pub fn tcp_stat(ns: &Netns, name: &str) -> u64 {
        let (ok, out) = ns.run(&["nstat", "-az", name]);
        assert!(ok, "nstat: {out}");
        out.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }
}

/// Whether two of [`Lab::session_on`]'s times are the same state change: a reset and
/// re-establishment takes BIRD far longer than this (it waits in Idle before it connects again).
pub fn same_instant(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= 50
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (they run inside the namespaces), then the namespaces with the fields.
        self.services.clear();
    }
}
