//! Against a real BIRD 2: routeplane-ipam and routeplane-bgp in one network namespace, BIRD in
//! another, a veth pair between them — all created by the test, removed when it ends. Needs root
//! (and BIRD and grpcurl, which scripts/test installs): without root it skips loudly, and with
//! ROUTEPLANE_REQUIRE_PRIVILEGED=1 (CI) a skip is a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use routeplane_testkit::sh;

/// Root, plus BIRD, GoBGP, ip and grpcurl (scripts/test installs them).
pub fn privileged(test: &str) -> bool {
    routeplane_testkit::privileged(test, &["ip", "bird", "birdc", "grpcurl", "gobgpd", "gobgp"])
}

/// Two namespaces: `router` (BIRD, 10.4.36.239) and `speaker` (routeplane, 10.4.36.10).
pub struct Lab {
    pub router: String,
    /// Further routers (namespace, control socket) added with [`Lab::add_router`].
    pub routers: Vec<(String, PathBuf)>,
    pub speaker: String,
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
    /// routeplane-bgp's arguments, to restart it.
    bgp_args: Vec<String>,
}

pub const SPEAKER_IP: &str = "10.4.36.10";
pub const ROUTER_IP: &str = "10.4.36.239";
pub const SPEAKER_IP6: &str = "fd04:36::10";
pub const ROUTER_IP6: &str = "fd04:36::239";

fn bin(name: &str) -> PathBuf {
    let bgp = PathBuf::from(env!("CARGO_BIN_EXE_routeplane-bgp"));
    let path = bgp.with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

impl Lab {
    /// The seed's core segment: a bridge in the speaker namespace carrying 10.4.36.10 (and
    /// fd04:36::10), with the first router (10.4.36.239) attached; [`Lab::add_router`] attaches more.
    pub fn new(tag: &str) -> Lab {
        let id = format!("{}{}", tag, std::process::id() % 100_000);
        let (router, speaker) = (format!("rp-{id}-r"), format!("rp-{id}-s"));
        for ns in [&router, &speaker] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &speaker, "link", "add", "core", "type", "bridge",
        ]);
        sh(&[
            "ip",
            "-n",
            &speaker,
            "addr",
            "add",
            &format!("{SPEAKER_IP}/24"),
            "dev",
            "core",
        ]);
        // nodad: IPv6 usable at once, for the dual-stack tests.
        sh(&[
            "ip",
            "-n",
            &speaker,
            "addr",
            "add",
            &format!("{SPEAKER_IP6}/64"),
            "dev",
            "core",
            "nodad",
        ]);
        sh(&["ip", "-n", &speaker, "link", "set", "core", "up"]);
        let lab = Lab {
            router: router.clone(),
            routers: Vec::new(),
            speaker,
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
            bgp_args: Vec::new(),
        };
        lab.attach(&router, ROUTER_IP, Some(ROUTER_IP6), &format!("{id}0"));
        lab
    }

    /// A veth from `ns` (with `ip`/24) to the speaker's bridge.
    fn attach(&self, ns: &str, ip: &str, ip6: Option<&str>, suffix: &str) {
        let (vr, vs) = (format!("vr{suffix}"), format!("vs{suffix}"));
        sh(&[
            "ip", "link", "add", &vr, "type", "veth", "peer", "name", &vs,
        ]);
        sh(&["ip", "link", "set", &vr, "netns", ns]);
        sh(&["ip", "link", "set", &vs, "netns", &self.speaker]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &vr,
        ]);
        if let Some(ip6) = ip6 {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                &vr,
                "nodad",
            ]);
        }
        sh(&["ip", "-n", ns, "link", "set", &vr, "up"]);
        sh(&[
            "ip",
            "-n",
            &self.speaker,
            "link",
            "set",
            &vs,
            "master",
            "core",
            "up",
        ]);
    }

    /// Another router on the core segment, at `router_ip`/24. Returns its index for
    /// [`Lab::start_bird_on`] and [`Lab::birdc_on`].
    pub fn add_router(&mut self, router_ip: &str) -> usize {
        let index = self.routers.len();
        let ns = format!("{}{}", self.router, index + 1);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let suffix = format!("{}{}", &self.router[3..self.router.len() - 2], index + 1);
        self.attach(&ns, router_ip, None, &suffix);
        let ctl = self.path(&format!("bird{index}.ctl"));
        self.routers.push((ns, ctl));
        index
    }

    /// BIRD on an added router, with a full protocol body of our choosing.
    pub fn start_bird_on(&mut self, index: usize, router_id: &str, protocol: &str) {
        let conf = format!(
            "router id {router_id};\nprotocol device {{}}\nprotocol bgp routeplane {{\n  error wait time 1, 5;\n{protocol}\n}}\n"
        );
        let file = self.path(&format!("bird{index}.conf"));
        std::fs::write(&file, conf).unwrap();
        let (ns, ctl) = self.routers[index].clone();
        self.spawn(
            &ns,
            Path::new("bird"),
            &[
                "-f",
                "-c",
                file.to_str().unwrap(),
                "-s",
                ctl.to_str().unwrap(),
            ],
            &format!("bird{index}.log"),
        );
    }

    pub fn birdc_on(&self, index: usize, command: &str) -> String {
        let out = Command::new("birdc")
            .args(["-s", self.routers[index].1.to_str().unwrap()])
            .args(command.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// routeplane-ipam and routeplane-bgp with a bgp-config of our choosing.
    pub fn start_routeplane_config(&mut self, bgp_config: &str, bgp_args: &[&str]) {
        std::fs::write(self.path("bgp-config.yaml"), bgp_config).unwrap();
        self.start_services(&[], bgp_args);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self, ns: &str, program: &Path, args: &[&str], log: &str) -> u32 {
        let log = std::fs::File::create(self.path(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// BIRD with one BGP protocol `routeplane` towards the speaker; returns its pid. `extra` goes
    /// into the protocol, `channel` into its ipv4 channel.
    pub fn start_bird(&mut self, local_as: u32, extra: &str) -> u32 {
        self.start_bird_with(local_as, extra, "")
    }

    pub fn start_bird_with(&mut self, local_as: u32, extra: &str, channel: &str) -> u32 {
        let conf = format!(
            "router id {ROUTER_IP};\nprotocol device {{}}\nprotocol bgp routeplane {{\n  local {ROUTER_IP} as {local_as};\n  error wait time 1, 5;\n  neighbor {SPEAKER_IP} as 64513;\n{extra}\n  ipv4 {{ import all; export none; {channel} }};\n}}\n"
        );
        std::fs::write(self.path("bird.conf"), conf).unwrap();
        let (conf, ctl) = (self.path("bird.conf"), self.path("bird.ctl"));
        let router = self.router.clone();
        self.spawn(
            &router,
            Path::new("bird"),
            &[
                "-f",
                "-c",
                conf.to_str().unwrap(),
                "-s",
                ctl.to_str().unwrap(),
            ],
            "bird.log",
        )
    }

    /// gobgpd on the first router (AS 64524, peer routeplane at 10.4.36.10 in AS 64513, IPv4 and
    /// IPv6 unicast); `neighbor` adds TOML lines to the neighbor (e.g. passive mode).
    pub fn start_gobgp(&mut self, neighbor: &str) -> u32 {
        let conf = format!(
            "[global.config]\n  as = 64524\n  router-id = \"{ROUTER_IP}\"\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{SPEAKER_IP}\"\n    peer-as = 64513\n{neighbor}\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n"
        );
        std::fs::write(self.path("gobgpd.toml"), conf).unwrap();
        let file = self.path("gobgpd.toml").to_str().unwrap().to_string();
        let router = self.router.clone();
        self.spawn(
            &router,
            Path::new("gobgpd"),
            &["-f", &file, "-t", "toml", "--api-hosts", "127.0.0.1:50151"],
            "gobgpd.log",
        )
    }

    /// The gobgp CLI against the router's gobgpd.
    pub fn gobgp(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router,
                "gobgp",
                "-p",
                "50151",
                "-u",
                "127.0.0.1",
            ])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        let speaker = self.speaker.clone();
        let mut args = vec![
            "--data-dir",
            &data,
            "--bgp-config",
            &cfg,
            "--grpc-listen",
            "127.0.0.1:50051",
            "--metrics-listen",
            "127.0.0.1:9951",
        ];
        args.extend(ipam_args);
        self.spawn(&speaker, &bin("routeplane-ipam"), &args, "ipam.log");
        let listen = format!("{SPEAKER_IP}:179");
        let mut args = vec![
            "--bgp-config",
            &cfg,
            "--router-id",
            SPEAKER_IP,
            "--bgp-listen",
            &listen,
            "--connect-retry",
            "1s",
        ];
        args.extend([
            "--grpc-listen",
            "127.0.0.1:50052",
            "--metrics-listen",
            "127.0.0.1:9952",
        ]);
        args.extend(bgp_args);
        self.bgp_args = args.iter().map(|a| a.to_string()).collect();
        self.spawn(&speaker, &bin("routeplane-bgp"), &args, "bgp.log");
        self.wait_healthy(&[(50051, "ipam.log"), (50052, "bgp.log")]);
    }

    fn bgp_index(&self) -> usize {
        let bgp = bin("routeplane-bgp");
        self.children
            .iter()
            .rposition(|c| {
                std::fs::read_link(format!("/proc/{}/exe", c.id())).is_ok_and(|p| p == bgp)
            })
            .expect("routeplane-bgp is running")
    }

    /// Sends routeplane-bgp a signal (e.g. "-HUP").
    pub fn signal_bgp(&self, signal: &str) {
        self.kill(self.children[self.bgp_index()].id(), signal);
    }

    /// SIGTERM to routeplane-bgp, waiting (bounded) until it has exited.
    pub fn stop_bgp(&mut self) {
        let index = self.bgp_index();
        let mut child = self.children.remove(index);
        self.kill(child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "routeplane-bgp ignored SIGTERM:\n{}",
                self.log("bgp.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts routeplane-bgp again with the same arguments (its log continues in bgp2.log).
    pub fn start_bgp_again(&mut self) {
        let args: Vec<String> = self.bgp_args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let speaker = self.speaker.clone();
        self.spawn(&speaker, &bin("routeplane-bgp"), &args, "bgp2.log");
        self.wait_healthy(&[(50052, "bgp2.log")]);
    }

    fn wait_healthy(&self, services: &[(u16, &str)]) {
        for &(port, log) in services {
            self.wait_for(
                &format!("{log}: the service answers"),
                Duration::from_secs(20),
                || {
                    let out = Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &self.speaker,
                            "grpcurl",
                            "-plaintext",
                            "-max-time",
                            "2",
                        ])
                        .arg(format!("127.0.0.1:{port}"))
                        .arg("grpc.health.v1.Health/Check")
                        .output();
                    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("SERVING"))
                },
            );
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// grpcurl inside the speaker namespace; panics (with the logs) on failure.
    pub fn grpc(&self, port: u16, method: &str, body: &str) -> serde_json::Value {
        let addr = format!("127.0.0.1:{port}");
        routeplane_testkit::grpcurl(Some(&self.speaker), &addr, method, body)
            .unwrap_or_else(|e| panic!("{e}\nbgp.log:\n{}", self.log("bgp.log")))
    }

    pub fn birdc(&self, command: &str) -> String {
        let out = Command::new("birdc")
            .args(["-s", self.path("bird.ctl").to_str().unwrap()])
            .args(command.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `check` every 200 ms until it holds or `limit` passes; panics with the logs.
    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !check() {
            if Instant::now() >= deadline {
                let others: String = (0..self.routers.len())
                    .map(|i| {
                        format!(
                            "router {i}:\n{}\n{}",
                            self.birdc_on(i, "show protocols all routeplane"),
                            self.log(&format!("bird{i}.log"))
                        )
                    })
                    .collect();
                panic!(
                    "{what}: not within {limit:?}\nBIRD:\n{}\n{}\n{others}\nbgp.log:\n{}\nipam.log:\n{}",
                    self.birdc("show protocols all routeplane"),
                    self.birdc("show route all"),
                    self.log("bgp.log"),
                    self.log("ipam.log")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// BIRD's routes as (prefix, next hop, AS path).
    pub fn bird_routes(&self) -> Vec<(String, String, String)> {
        routeplane_testkit::bird::parse_routes(&self.birdc("show route all"))
            .into_iter()
            .map(|p| (p.prefix, p.next_hop, p.as_path))
            .collect()
    }

    pub fn kill(&self, pid: u32, signal: &str) {
        sh(&["kill", signal, &pid.to_string()]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self
            .routers
            .iter()
            .map(|r| &r.0)
            .chain([&self.router, &self.speaker])
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
