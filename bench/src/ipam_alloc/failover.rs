//! `--failover`: issue #14's failover figures in the build that is measured (release). Two
//! routeplane-ipam replicas on a three-member etcd (1 s lease), callers allocating pod IPs
//! through routeplane's own Dialer given both replicas' URLs (as routeplane-bgp and the agents
//! are), and faults under that load: the leading replica SIGKILLed (and started again as a
//! standby), the etcd leader SIGKILLed (and started again), then everything SIGKILLed and started
//! again. Prints the rate offered before the faults, the longest time without a successful
//! allocation after each, and what etcd holds of what was acknowledged.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_runtime::dial::Dialer;
use routeplane_testkit::etcd::EtcdCluster;
use routeplane_testkit::ipam::{free_port, spawn_etcd_replica};
use routeplane_testkit::{Service, longest_gap};

const PREFIX: &str = "/bench-failover/";
const NODES: usize = 64;
/// 256 nodes of 16,382 addresses: room for the whole run.
const VALUES: &str = "ipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4PodCIDRList: [\"100.64.0.0/10\"]\n    clusterPoolIPv4MaskSize: 18\n";

/// The two replicas, restartable, and which of them leads.
struct Replicas {
    dir: std::path::PathBuf,
    ports: [u16; 2],
    endpoints: String,
    running: [Option<Service>; 2],
}

impl Replicas {
    fn spawn(&mut self, i: usize) {
        let dir = self.dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).expect("replica dir");
        let extra = [
            "--max-pods-per-node",
            "100000000",
            "--log",
            "warn,routeplane_runtime=info,routeplane_ipam=info",
        ];
        self.running[i] = Some(spawn_etcd_replica(
            &dir,
            VALUES,
            self.ports[i],
            &self.endpoints,
            PREFIX,
            &extra,
        ));
    }

    /// The replica that serves, waited for (bounded: 30 s).
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, r) in self.running.iter().enumerate() {
                if r.as_ref()
                    .is_some_and(|s| s.log().contains("gRPC listening"))
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no replica leads within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.running[i].take() {
            s.kill9();
        }
    }

    fn urls(&self) -> String {
        self.ports
            .map(|p| format!("http://127.0.0.1:{p}"))
            .join(",")
    }
}

/// What one caller saw: each acknowledged allocation (key, addresses, when).
type Acknowledged = Vec<(String, Vec<String>, Instant)>;

async fn caller(t: usize, urls: String, dialer: Dialer, stop: Instant) -> (Acknowledged, usize) {
    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    let mut client = None;
    let mut i = 0u64;
    while Instant::now() < stop {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match dialer.connect(&urls).await {
                Ok(ch) => client.insert(IpamClient::new(ch)),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        i += 1;
        let (node, owner) = (format!("node-{}", t % NODES), format!("default/f{t}-{i}"));
        let request = pb::AllocatePodIpRequest {
            node: node.clone(),
            owner: owner.clone(),
            family: 0,
        };
        match tokio::time::timeout(Duration::from_secs(5), c.allocate_pod_ip(request)).await {
            Ok(Ok(r)) => acknowledged.push((
                format!("{node}\0{owner}"),
                r.into_inner().ips,
                Instant::now(),
            )),
            _ => {
                failed += 1;
                // Connected again on the next call: to whichever replica accepts (the leader).
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (acknowledged, failed)
}

pub(crate) async fn run(dir: &Path, callers: usize) {
    let mut cluster = EtcdCluster::start(&dir.join("etcd"), 3, &[]);
    let mut replicas = Replicas {
        dir: dir.to_path_buf(),
        ports: [free_port(), free_port()],
        endpoints: cluster.endpoints(),
        running: [None, None],
    };
    replicas.spawn(0);
    replicas.leader();
    replicas.spawn(1);
    let (urls, dialer) = (replicas.urls(), Dialer::loopback_only());
    let mut c = IpamClient::new(dialer.connect(&urls).await.expect("the first replica"));
    for n in 0..NODES {
        c.register_node(pb::RegisterNodeRequest {
            name: format!("node-{n}"),
            addresses: vec![format!("10.4.{}.{}", 90 + n / 200, 10 + n % 200)],
            ..Default::default()
        })
        .await
        .expect("RegisterNode");
    }
    let started = Instant::now();
    let at = |s: u64| started + Duration::from_secs(s);
    let stop = at(24);
    let tasks: Vec<_> = (0..callers)
        .map(|t| tokio::spawn(caller(t, urls.clone(), dialer.clone(), stop)))
        .collect();
    let sleep_until = |t: Instant| tokio::time::sleep_until(t.into());

    sleep_until(at(5)).await;
    let replica_killed = Instant::now();
    let leading = replicas.leader();
    replicas.kill(leading);
    replicas.leader();
    let replica_took_over = replica_killed.elapsed();
    replicas.spawn(leading);

    sleep_until(at(10)).await;
    let etcd_killed = Instant::now();
    let member = cluster.leader();
    cluster.kill(member);
    sleep_until(at(13)).await;
    cluster.restart(member);

    sleep_until(at(16)).await;
    let all_killed = Instant::now();
    for i in 0..2 {
        replicas.kill(i);
    }
    for m in 0..3 {
        cluster.kill(m);
    }
    sleep_until(at(17)).await;
    for m in 0..3 {
        cluster.restart(m);
    }
    replicas.spawn(0);
    replicas.spawn(1);

    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (a, f) = t.await.expect("a caller");
        acknowledged.extend(a);
        failed += f;
    }
    let ended = Instant::now();
    let mut times: Vec<Instant> = acknowledged.iter().map(|(_, _, t)| *t).collect();
    times.sort();
    let before = times.iter().filter(|t| **t < replica_killed).count();
    println!(
        "\nfailover (issue #14; {} build, 2 replicas with a 1 s lease on 3 etcd members, {callers} callers through the Dialer with both URLs):",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "  offered before the faults: {:.0} allocations/s ({} acknowledged and {} failed or moved over in all)",
        before as f64 / replica_killed.duration_since(started).as_secs_f64(),
        acknowledged.len(),
        failed
    );
    println!(
        "  leading replica SIGKILLed: the standby led {replica_took_over:.2?} later; {:.2?} without a successful allocation",
        longest_gap(&times, replica_killed, etcd_killed)
    );
    println!(
        "  etcd leader SIGKILLed: {:.2?} without a successful allocation",
        longest_gap(&times, etcd_killed, all_killed)
    );
    println!(
        "  everything SIGKILLed, started again 1 s later: {:.2?} without a successful allocation",
        longest_gap(&times, all_killed, ended)
    );
    let stored = stored_pod_ips(&cluster).await;
    let missing = acknowledged
        .iter()
        .filter(|(k, ips, _)| stored.get(k) != Some(ips))
        .count();
    let mut owners = BTreeMap::new();
    let twice = stored
        .iter()
        .flat_map(|(k, ips)| ips.iter().map(move |ip| (ip, k)))
        .filter(|(ip, k)| owners.insert(*ip, *k).is_some())
        .count();
    println!(
        "  in etcd afterwards: {} of {} acknowledged allocations as acknowledged ({missing} missing or different), {twice} addresses with two owners",
        acknowledged.len() - missing,
        acknowledged.len()
    );
}

/// Every pod-IP record under the prefix: `NODE\0OWNER` → addresses.
async fn stored_pod_ips(cluster: &EtcdCluster) -> BTreeMap<String, Vec<String>> {
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let mut client = etcd_client::Client::connect(endpoints, None)
        .await
        .expect("connect to etcd");
    let prefix = format!("{PREFIX}p/");
    let end = format!("{PREFIX}p0");
    let mut stored = BTreeMap::new();
    let mut from = prefix.clone().into_bytes();
    // In pages: a response of every record at once would pass the client's 4 MiB limit.
    loop {
        let options = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(10_000);
        let page = client
            .get(from.clone(), Some(options))
            .await
            .expect("read the pod IPs back");
        for kv in page.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let key = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
            let ips: Vec<String> = serde_json::from_slice(kv.value()).unwrap_or_default();
            stored.insert(key, ips);
        }
        match page.kvs().last() {
            Some(last) if page.more() => from = [last.key(), b"\0"].concat(),
            _ => return stored,
        }
    }
}
