//! The benchmark's control plane: the namespaces `cp` and `tor`, BIRD as the ToR, and
//! routeplane-ipam and routeplane-bgp — started, stopped and started again with the same
//! arguments — with what the phases read of them (BIRD's imported routes, IPAM's deaths).

use std::time::{Duration, Instant};

use routeplane_runtime::dial::Dialer;
use routeplane_runtime::tls::{Security, Tls, TlsFiles};
use routeplane_testkit::certs::Certs;
use routeplane_testkit::{Netns, Service, bin, metric_sample, scrape};

use super::{IPAM, IPAM_METRICS, LIMIT};

/// The namespaces, BIRD, and the two services with the arguments to start them again.
pub struct Plane {
    pub cp: Netns,
    _tor: Netns,
    dir: tempfile::TempDir,
    pub bird: Service,
    pub ipam: Option<Service>,
    pub bgp: Option<Service>,
    /// With `--tls`: the CA, IPAM's, routeplane-bgp's and the simulated nodes' certificates.
    certs: Option<Certs>,
    /// Where stopped services' logs go (`--logs`), and how many processes were started so far.
    logs: Option<std::path::PathBuf>,
    started: usize,
    nodes: usize,
    /// Nodes IPAM declared dead, summed over the IPAM processes stopped so far.
    pub deaths: f64,
}

/// The simulated nodes' identity under `--tls`.
const SIM_IDENTITY: &str = "operator/sim";

const BIRD_CONF: &str = "log stderr { warning, error, fatal, bug };
router id 192.168.0.1;
protocol device {}
protocol direct { ipv4; }
protocol static { ipv4; route 172.16.0.0/12 via 192.168.0.10; }
protocol bgp routeplane { local 192.168.0.1 as 64512; neighbor 192.168.0.10 as 64513; multihop 2; connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }
";

impl Plane {
    pub fn new(tls: bool, nodes: usize, logs: Option<std::path::PathBuf>) -> Plane {
        let id = routeplane_testkit::unique_id();
        let cp = Netns::new(&id, "cp");
        let tor = Netns::new(&id, "tor");
        routeplane_testkit::netns::veth(&cp, &format!("up{id}"), &tor, &format!("dn{id}"));
        cp.ip(&["addr", "add", "192.168.0.10/24", "dev", &format!("up{id}")]);
        tor.ip(&["addr", "add", "192.168.0.1/24", "dev", &format!("dn{id}")]);
        // The nodes' segment: their addresses are the next hops the ToR resolves through cp.
        cp.ip(&[
            "link", "add", "seg0", "type", "veth", "peer", "name", "seg1",
        ]);
        cp.ip(&["addr", "add", "172.16.0.1/12", "dev", "seg0"]);
        cp.ip(&["link", "set", "seg0", "up"]);
        cp.ip(&["link", "set", "seg1", "up"]);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        std::fs::write(path("bird.conf"), BIRD_CONF).expect("bird.conf");
        std::fs::write(path("values.yaml"), "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDR: 10.0.0.0/8\n    clusterPoolIPv4MaskSize: 26\n").expect("values.yaml");
        std::fs::write(
            path("bgp-config.yaml"),
            "peers:\n  - peer-address: 192.168.0.1\n    peer-asn: 64512\n    my-asn: 64513\naddress-pools:\n  - {name: default, protocol: bgp, addresses: [192.0.2.0/24]}\n",
        )
        .expect("bgp-config.yaml");
        let certs = tls.then(|| {
            Certs::new(
                &dir.path().join("certs"),
                &["ipam/ipam", "bgp/bgp", SIM_IDENTITY],
            )
        });
        let bird = Service::spawn(
            "bird",
            Some(tor.name()),
            std::path::Path::new("bird"),
            &["-f", "-c", &path("bird.conf"), "-s", &path("bird.ctl")],
        );
        let mut plane = Plane {
            cp,
            _tor: tor,
            dir,
            bird,
            ipam: None,
            bgp: None,
            certs,
            logs,
            started: 0,
            nodes,
            deaths: 0.0,
        };
        plane.start_ipam();
        plane.start_bgp();
        plane
    }

    /// Starts `program` in `cp` on `args` — with its certificate as `identity` under `--tls` —
    /// once it listens.
    fn spawn(&mut self, program: &str, identity: &str, args: &[&str]) -> Service {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if let Some(certs) = &self.certs {
            args.extend(certs.service_flags(identity));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.started += 1;
        let name = format!("{}-{program}-{}", self.nodes, self.started);
        let mut service = Service::spawn(&name, Some(self.cp.name()), &bin(program), &args);
        service.listen_addr("gRPC");
        service
    }

    /// Nodes the running IPAM declared dead so far.
    pub fn ipam_deaths(&self) -> f64 {
        metric_sample(
            &scrape(None, IPAM_METRICS).unwrap_or_default(),
            "routeplane_ipam_node_deaths_total",
        )
        .unwrap_or(0.0)
    }

    /// Stops IPAM (counting its deaths first) and keeps its log.
    pub fn stop_ipam(&mut self) {
        if self.ipam.is_some() {
            self.deaths += self.ipam_deaths();
        }
        let ipam = self.ipam.take();
        self.retire(ipam);
    }

    /// SIGTERM to a service, waited for; its log kept under `--logs`.
    fn retire(&self, service: Option<Service>) {
        let Some(mut s) = service else { return };
        s.terminate();
        if let Some(dir) = &self.logs {
            let path = dir.join(format!("{}.log", s.name()));
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, s.log()))
                .unwrap_or_else(|e| panic!("keeping a log in {}: {e}", path.display()));
        }
    }

    /// IPAM's URL, https:// under `--tls`.
    pub fn ipam_url(&self) -> String {
        match self.certs {
            Some(_) => format!("https://{IPAM}"),
            None => format!("http://{IPAM}"),
        }
    }

    /// How the simulated nodes dial: as agents do, under `--tls`.
    pub fn dialer(&self) -> Option<Dialer> {
        let certs = self.certs.as_ref()?;
        let (cert, key) = certs.pair(SIM_IDENTITY);
        let tls = Tls::load(TlsFiles {
            ca: certs.ca(),
            cert,
            key,
        })
        .unwrap_or_else(|e| panic!("the simulated nodes' certificate: {e}"));
        Some(Dialer::new(Security::Tls(std::sync::Arc::new(tls))))
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).to_string_lossy().into_owned()
    }

    pub fn start_ipam(&mut self) {
        let (data, values, bgp) = (
            self.path("ipam"),
            self.path("values.yaml"),
            self.path("bgp-config.yaml"),
        );
        let args = [
            "--data-dir",
            data.as_str(),
            "--values",
            values.as_str(),
            "--bgp-config",
            bgp.as_str(),
            "--grpc-listen",
            IPAM,
            "--metrics-listen",
            IPAM_METRICS,
            // Under --tls the simulated nodes share one identity (real agents have one each), so
            // no per-identity limit; a plaintext listener has none anyway.
            "--rate-limit",
            "0",
            "--log",
            "warn,routeplane_runtime=info",
        ];
        let ipam = self.spawn("routeplane-ipam", "ipam/ipam", &args);
        self.ipam = Some(ipam);
    }

    pub fn start_bgp(&mut self) {
        let config = self.path("bgp-config.yaml");
        let ipam = self.ipam_url();
        let args = [
            "--bgp-config",
            config.as_str(),
            "--ipam",
            ipam.as_str(),
            "--bgp-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--connect-retry",
            "1s",
            // Off, so that a stopped routeplane-bgp's routes leave BIRD and convergence after a
            // restart is measured from nothing, not from routes BIRD kept.
            "--graceful-restart-time",
            "0s",
            "--log",
            "warn,routeplane_runtime=info",
        ];
        let bgp = self.spawn("routeplane-bgp", "bgp/bgp", &args);
        self.bgp = Some(bgp);
    }

    /// BIRD's count of routes imported from routeplane-bgp (0 while the session is down).
    pub fn imported(&self) -> usize {
        let socket = std::path::PathBuf::from(self.path("bird.ctl"));
        let text = routeplane_testkit::bird::birdc(None, &socket, "show protocols all routeplane")
            .unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let rest = l.trim().strip_prefix("Routes:")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }

    pub fn has(&self, prefix: &str) -> bool {
        let socket = std::path::PathBuf::from(self.path("bird.ctl"));
        routeplane_testkit::bird::birdc(None, &socket, &format!("show route {prefix}"))
            .is_ok_and(|t| t.contains(prefix))
    }

    /// Polls until `done` holds; the time it took, and the fewest routes BIRD had meanwhile.
    pub fn until(
        &self,
        what: &str,
        from: Instant,
        done: impl Fn(&Plane) -> bool,
    ) -> (Duration, usize) {
        let mut fewest = usize::MAX;
        loop {
            fewest = fewest.min(self.imported());
            if done(self) {
                return (from.elapsed(), fewest);
            }
            assert!(from.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops routeplane-bgp (and IPAM too, `ipam`) and waits until the ToR has dropped every
    /// route (graceful restart is off).
    pub fn stop(&mut self, ipam: bool) {
        let bgp = self.bgp.take();
        self.retire(bgp);
        if ipam {
            self.stop_ipam();
        }
        self.until("the ToR drops routeplane's routes", Instant::now(), |p| {
            p.imported() == 0
        });
    }

    pub fn pid(s: &Option<Service>) -> u32 {
        s.as_ref().map_or(0, Service::pid)
    }

    pub fn rss_mb(s: &Option<Service>) -> f64 {
        s.as_ref().map_or(0.0, |s| s.rss_kib() as f64 / 1024.0)
    }
}
