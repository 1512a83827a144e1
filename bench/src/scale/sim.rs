//! N simulated nodes, each doing what a route agent does to routeplane-ipam: register, allocate its
//! pods' IPs, beat (on the Heartbeat stream, then with heartbeat datagrams), and follow the Watch feed — reopening either stream
//! after IPAM restarts, as the agent does. By default simulated nodes share plaintext HTTP/2
//! connections, fifty to one (IPAM serves at most 128 streams per connection); with a [`Dialer`]
//! (`--tls`) each dials as a real agent does: mutual TLS, one connection of its own for its calls,
//! heartbeat and Watch. Streams that end are reopened after the agent's jittered backoff. The
//! heartbeats run on a thread of their own (`Sim::beats`), and a range of nodes can be silenced
//! and revived (a rack dying, `rack.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use routeplane_agent::heartbeat::beating_until;
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_runtime::backoff::Backoff;
use routeplane_runtime::dial::Dialer;
use routeplane_runtime::heartbeat_datagram::{Header, SessionKey};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// The name of the thread the simulated nodes' heartbeats run on.
pub const BEATS_THREAD: &str = "sim-beats";

/// Nodes per shared connection.
const PER_CONNECTION: usize = 50;

/// Connections dialled at once when each node has its own (TLS handshakes, on both sides).
const DIAL_CONCURRENCY: usize = 32;

pub fn name(i: usize) -> String {
    format!("sim-{i}")
}

/// The cluster's simulated agents.
pub struct Sim {
    endpoint: String,
    dialer: Option<Dialer>,
    /// Node i's calls, heartbeat and Watch use `channels[i / per_connection]`.
    channels: Vec<Channel>,
    per_connection: usize,
    pub nodes: usize,
    stop: Arc<AtomicBool>,
    /// Nodes in this range stop beating (a rack dying); empty while every node beats.
    silent: Arc<Silent>,
    /// Heartbeat tasks running.
    beaters: Arc<AtomicUsize>,
    /// Where the heartbeat tasks run: a thread of their own, so that beats leave on time while
    /// the runtime that reads 5,000 watchers' events is busy with a burst of them — a real agent
    /// reads one watcher's. Sharing it, a rack of 500 coming back had the simulated nodes' beats
    /// fall to half their rate, and thousands of them were rightly declared dead.
    beats: tokio::runtime::Runtime,
    /// (revision, when it reached a watcher), from every watcher.
    arrivals: mpsc::UnboundedReceiver<(u64, Instant)>,
    arrivals_tx: mpsc::UnboundedSender<(u64, Instant)>,
    datagrams: Arc<Datagrams>,
}

impl Sim {
    pub async fn connect(endpoint: &str, nodes: usize, dialer: Option<Dialer>) -> Sim {
        let per_connection = match dialer {
            Some(_) => 1,
            None => PER_CONNECTION,
        };
        let count = nodes.div_ceil(per_connection).max(1);
        let channels = futures::stream::iter(0..count)
            .map(|_| dial(endpoint, dialer.as_ref()))
            .buffered(DIAL_CONCURRENCY)
            .map(|c| c.unwrap_or_else(|e| panic!("dialling IPAM at {endpoint}: {e}")))
            .collect()
            .await;
        let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
        let datagrams = Arc::new(Datagrams::new(endpoint).await);
        Sim {
            endpoint: endpoint.to_string(),
            dialer,
            channels,
            per_connection,
            nodes,
            stop: Arc::new(AtomicBool::new(false)),
            silent: Arc::new(Silent::default()),
            beaters: Arc::new(AtomicUsize::new(0)),
            beats: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(BEATS_THREAD)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("the heartbeats' runtime: {e}")),
            arrivals,
            arrivals_tx,
            datagrams,
        }
    }

    pub fn client(&self, i: usize) -> IpamClient<Channel> {
        IpamClient::new(self.channel(i))
    }

    fn channel(&self, i: usize) -> Channel {
        self.channels[i / self.per_connection].clone()
    }

    /// Registers every node, `concurrency` at a time.
    pub async fn register(&self, concurrency: usize) {
        futures::stream::iter(0..self.nodes)
            .map(|i| {
                let mut c = self.client(i);
                async move {
                    c.register_node(pb::RegisterNodeRequest {
                        name: name(i),
                        addresses: vec![routeplane_bench::agent_e2e::node_address(i as u32)],
                        labels: Default::default(),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("RegisterNode {}: {s}", name(i)));
                }
            })
            .buffer_unordered(concurrency)
            .collect::<()>()
            .await;
    }

    /// Allocates `per_node` pod IPs on every node, `concurrency` at a time; returns how many.
    pub async fn allocate_pods(&self, per_node: usize, concurrency: usize) -> usize {
        futures::stream::iter((0..self.nodes).flat_map(|i| (0..per_node).map(move |p| (i, p))))
            .map(|(i, p)| {
                let mut c = self.client(i);
                async move {
                    c.allocate_pod_ip(pb::AllocatePodIpRequest {
                        node: name(i),
                        owner: format!("default/pod-{p}"),
                        family: 0,
                    })
                    .await
                    .unwrap_or_else(|s| panic!("AllocatePodIP on {}: {s}", name(i)));
                }
            })
            .buffer_unordered(concurrency)
            .count()
            .await
    }

    /// Starts every node's heartbeat, as an agent does right after it registers: the lease
    /// registration grants runs out otherwise while thousands of pods are still being allocated.
    pub fn start_heartbeats(&self) {
        for i in 0..self.nodes {
            self.beat(self.channel(i), i);
        }
    }

    fn beat(&self, channel: Channel, i: usize) {
        let (stop, silent, datagrams) = (
            self.stop.clone(),
            self.silent.clone(),
            self.datagrams.clone(),
        );
        let running = Running::new(&self.beaters);
        self.beats.spawn(async move {
            let stopped = move || stop.load(Ordering::Relaxed) || silent.holds(i);
            heartbeat(channel, name(i), datagrams, stopped).await;
            drop(running);
        });
    }

    /// Nodes `from..to` stop beating, as a rack losing power: each heartbeat stream ends, as the
    /// agent's process does, when its next beat is due.
    pub fn silence(&self, from: usize, to: usize) {
        self.silent.from.store(from, Ordering::Relaxed);
        self.silent.to.store(to, Ordering::Relaxed);
    }

    /// The silenced nodes beat again, once their old heartbeat tasks have ended (at most a few
    /// seconds: a task waiting out a backoff ends after it), so that no node has two.
    pub async fn revive(&self) {
        let (from, to) = (
            self.silent.from.load(Ordering::Relaxed),
            self.silent.to.load(Ordering::Relaxed),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let others = self.beaters.load(Ordering::Relaxed);
        while self.beaters.load(Ordering::Relaxed) + (to - from) > self.nodes {
            assert!(
                Instant::now() < deadline,
                "{} heartbeat tasks for {} nodes, {} of them silenced, 30 s after they were to beat again ({others} then): a silenced node's task did not end",
                self.beaters.load(Ordering::Relaxed),
                self.nodes,
                to - from
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.silence(0, 0);
        for i in from..to {
            self.beat(self.channel(i), i);
        }
    }

    /// Starts every node's Watch from `revision`: live events only, as agents that already hold
    /// the state.
    pub fn start_watches(&self, revision: u64) {
        for i in 0..self.nodes {
            tokio::spawn(watch(
                self.channel(i),
                revision,
                self.arrivals_tx.clone(),
                self.stop.clone(),
            ));
        }
    }

    /// Pod churn for `seconds`: `rate` pods a second released and allocated again across the
    /// cluster.
    pub async fn churn(&self, seconds: f64, rate: u32) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut k = 0usize;
        while Instant::now() < end {
            tick.tick().await;
            let i = k % self.nodes;
            k += 1;
            let mut c = self.client(i);
            let owner = "default/churn".to_string();
            let _ = c
                .release_pod_ip(pb::ReleasePodIpRequest {
                    node: name(i),
                    owner: owner.clone(),
                })
                .await;
            let _ = c
                .allocate_pod_ip(pb::AllocatePodIpRequest {
                    node: name(i),
                    owner,
                    family: 0,
                })
                .await;
        }
    }

    /// Watch fan-out: `changes` changes (a node's labels), `gap` apart; for each, the time from
    /// the call to its event's arrival at every watcher. Returns the latencies in milliseconds and
    /// how many arrivals were missing (watchers that never saw a change).
    pub async fn fan_out(&mut self, changes: usize, gap: Duration) -> (Vec<f64>, usize) {
        while self.arrivals.try_recv().is_ok() {}
        let mut sent = Vec::new();
        for k in 0..changes {
            sent.push(self.change("fan-out", k).await);
            tokio::time::sleep(gap).await;
        }
        // The last change's stragglers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut latencies = Vec::new();
        let mut per_change = vec![Vec::new(); sent.len()];
        while let Ok((revision, at)) = self.arrivals.try_recv() {
            if let Some(k) = sent.iter().position(|(r, _)| *r == revision) {
                let ms = at.saturating_duration_since(sent[k].1).as_secs_f64() * 1e3;
                latencies.push(ms);
                per_change[k].push(ms);
            }
        }
        // Where the time goes: the first arrival of a change is the call's own latency (its
        // commit), the spread after it the fan-out.
        let first: Vec<f64> = per_change
            .iter()
            .filter_map(|l| l.iter().copied().reduce(f64::min))
            .collect();
        if !first.is_empty() {
            eprintln!(
                "fan-out: first arrival of a change p50 {:.1} ms, max {:.1} ms",
                routeplane_bench::percentile(first.clone(), 50.0),
                first.iter().copied().fold(0.0, f64::max)
            );
        }
        let missing = (changes * self.nodes).saturating_sub(latencies.len());
        (latencies, missing)
    }

    /// A change: node 0's label `key` set to `k`. Its revision, and when the call began.
    pub async fn change(&self, key: &str, k: usize) -> (u64, Instant) {
        let start = Instant::now();
        let node = self
            .client(0)
            .register_node(pb::RegisterNodeRequest {
                name: name(0),
                addresses: vec![routeplane_bench::agent_e2e::node_address(0)],
                labels: [(key.to_string(), k.to_string())].into(),
            })
            .await
            .unwrap_or_else(|s| panic!("RegisterNode for a change ({key}): {s}"))
            .into_inner();
        (node.revision, start)
    }

    /// Waits until every watcher has `revision` (arrivals of it from now on), at most until
    /// `deadline`: when each that had it read it.
    pub async fn until_every_watcher_has(
        &mut self,
        revision: u64,
        deadline: Instant,
    ) -> Vec<Instant> {
        let mut have = Vec::new();
        while have.len() < self.nodes && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), self.arrivals.recv()).await {
                Ok(Some((r, at))) if r == revision => have.push(at),
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
        have
    }

    /// A burst: `changes` changes (node labels) made at once, 64 calls in flight — as when a
    /// rack of nodes dies or returns. Returns the seconds from the first call until every watcher
    /// has the last of them (or `None` when some did not within `limit`), and how many watchers
    /// had it.
    pub async fn burst(&mut self, changes: usize, limit: Duration) -> (Option<f64>, usize) {
        while self.arrivals.try_recv().is_ok() {}
        let start = Instant::now();
        let revisions: Vec<u64> = futures::stream::iter(0..changes)
            .map(|k| {
                let i = k % self.nodes;
                let mut c = self.client(i);
                async move {
                    c.register_node(pb::RegisterNodeRequest {
                        name: name(i),
                        addresses: vec![routeplane_bench::agent_e2e::node_address(i as u32)],
                        labels: [("burst".to_string(), k.to_string())].into(),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("RegisterNode for the burst: {s}"))
                    .into_inner()
                    .revision
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let last = revisions.into_iter().max().unwrap_or(0);
        let have = self
            .until_every_watcher_has(last, start + limit)
            .await
            .len();
        let took = (have >= self.nodes).then(|| start.elapsed().as_secs_f64());
        (took, have)
    }

    /// A node registered after the simulated ones (to see a change reach the ToR), retried
    /// until IPAM answers, and beating from then on; its pod CIDR.
    pub async fn register_extra(&self, i: usize, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let channel = match dial(&self.endpoint, self.dialer.as_ref()).await {
                Ok(channel) => channel,
                Err(e) if Instant::now() > deadline => panic!("dialling IPAM: {e}"),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match IpamClient::new(channel.clone())
                .register_node(pb::RegisterNodeRequest {
                    name: name(i),
                    addresses: vec![routeplane_bench::agent_e2e::node_address(i as u32)],
                    labels: Default::default(),
                })
                .await
            {
                Ok(n) => {
                    self.beat(channel, i);
                    return n.into_inner().pod_cidrs[0].clone();
                }
                Err(s) if Instant::now() > deadline => panic!("RegisterNode {}: {s}", name(i)),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// What IPAM says of nodes `range` that are not Ready, for a failure's message: each name
    /// with `held_down` or `not ready`, and the beaters running.
    pub async fn not_ready(&self, range: std::ops::Range<usize>) -> String {
        let nodes = match self.client(0).list_nodes(pb::ListNodesRequest {}).await {
            Ok(r) => r.into_inner().nodes,
            Err(s) => return format!("ListNodes failed: {s}"),
        };
        let names: std::collections::HashSet<String> = range.map(name).collect();
        let out: Vec<String> = nodes
            .iter()
            .filter(|n| names.contains(&n.name) && !n.ready)
            .map(|n| {
                let why = if n.held_down {
                    "held down"
                } else {
                    "not ready"
                };
                format!("{} {why}", n.name)
            })
            .collect();
        format!(
            "{} of {} not Ready ({} heartbeat tasks running): {}",
            out.len(),
            names.len(),
            self.beaters.load(Ordering::Relaxed),
            out.join(", ")
        )
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The nodes that do not beat: `from..to`.
#[derive(Debug, Default)]
struct Silent {
    from: AtomicUsize,
    to: AtomicUsize,
}

impl Silent {
    fn holds(&self, i: usize) -> bool {
        (self.from.load(Ordering::Relaxed)..self.to.load(Ordering::Relaxed)).contains(&i)
    }
}

/// Counts a task as running until it is dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(count: &Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A channel that reconnects by itself (IPAM restarts under it): plaintext and lazy, or as an
/// agent dials (mutual TLS, connected before it returns).
async fn dial(endpoint: &str, dialer: Option<&Dialer>) -> Result<Channel, String> {
    match dialer {
        Some(d) => d.connect(endpoint).await.map_err(|e| e.to_string()),
        None => Ok(Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_lazy()),
    }
}

/// The route agent's pauses between attempts.
fn heartbeat_backoff() -> Backoff {
    use routeplane_agent::registration::{HEARTBEAT_RETRY_FIRST, HEARTBEAT_RETRY_MOST};
    Backoff::new(HEARTBEAT_RETRY_FIRST, HEARTBEAT_RETRY_MOST)
}

fn watch_backoff() -> Backoff {
    Backoff::new(
        routeplane_watch::BACKOFF_FIRST,
        routeplane_watch::BACKOFF_MOST,
    )
}

/// Where simulated nodes send heartbeat datagrams from (one socket for all: IPAM goes by the
/// session, not the source), and the IPAM host they go to.
pub struct Datagrams {
    socket: tokio::net::UdpSocket,
    host: String,
}

impl Datagrams {
    pub async fn new(endpoint: &str) -> Datagrams {
        let uri: tonic::transport::Uri = endpoint
            .parse()
            .unwrap_or_else(|e| panic!("the IPAM endpoint {endpoint}: {e}"));
        let host = uri.host().unwrap_or("127.0.0.1").to_string();
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
            .await
            .unwrap_or_else(|e| panic!("a UDP socket for heartbeat datagrams: {e}"));
        Datagrams { socket, host }
    }
}

/// A stream's datagram session as the agent keeps it.
struct Session {
    to: std::net::SocketAddr,
    key: SessionKey,
    id: u64,
    sequence: u64,
}

impl Session {
    async fn open(from: &Datagrams, offer: Option<&pb::DatagramSession>) -> Option<Session> {
        let offer = offer?;
        let port = u16::try_from(offer.port).ok()?;
        let to = tokio::net::lookup_host((from.host.as_str(), port))
            .await
            .ok()?
            .next()?;
        Some(Session {
            to,
            key: SessionKey::from_bytes(&offer.key)?,
            id: offer.id,
            sequence: 0,
        })
    }

    fn send(&mut self, from: &Datagrams) -> bool {
        self.sequence += 1;
        let d = Header {
            session: self.id,
            sequence: self.sequence,
        }
        .seal(&self.key);
        from.socket.try_send_to(&d, self.to).is_ok()
    }
}

/// Beats as the route agent does (`heartbeat.rs`): datagrams when IPAM offers them, on the stream
/// until IPAM hears them and whenever it stops; ends, its stream with it, once `stopped`.
async fn heartbeat(
    channel: Channel,
    name: String,
    datagrams: Arc<Datagrams>,
    stopped: impl Fn() -> bool,
) {
    let beat = pb::HeartbeatRequest { name };
    let mut retry = heartbeat_backoff();
    while !stopped() {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(beat.clone());
        let mut c = IpamClient::new(channel.clone());
        let opened = beating_until(&tx, &beat, async {
            let mut answers = c.heartbeat(ReceiverStream::new(rx)).await?.into_inner();
            let first = answers.message().await?;
            Ok::<_, tonic::Status>((answers, first))
        })
        .await;
        let Ok((mut answers, Some(first))) = opened else {
            tokio::time::sleep(retry.after(false)).await;
            continue;
        };
        let every = Duration::from_millis(u64::from(first.interval_ms).max(50));
        let mut session = Session::open(&datagrams, first.datagrams.as_ref()).await;
        let mut heard = false;
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if stopped() {
                        return;
                    }
                    let sent = session.as_mut().is_some_and(|s| s.send(&datagrams));
                    if !heard || !sent {
                        let _ = tx.try_send(beat.clone());
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(a)) => {
                        if heard && !a.datagrams_heard {
                            let _ = tx.try_send(beat.clone());
                        }
                        heard = a.datagrams_heard;
                    }
                    _ => break,
                },
            }
        }
        tokio::time::sleep(retry.after(true)).await;
    }
}

async fn watch(
    channel: Channel,
    mut revision: u64,
    arrivals: mpsc::UnboundedSender<(u64, Instant)>,
    stop: Arc<AtomicBool>,
) {
    let mut retry = watch_backoff();
    while !stop.load(Ordering::Relaxed) {
        let mut c = IpamClient::new(channel.clone())
            .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES);
        let Ok(stream) = c
            .watch(pb::WatchRequest {
                from_revision: revision,
                ..Default::default()
            })
            .await
        else {
            tokio::time::sleep(retry.after(false)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut delivered = false;
        while let Ok(Some(event)) = stream.message().await {
            delivered = true;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if event.revision > revision {
                revision = event.revision;
                let _ = arrivals.send((revision, Instant::now()));
            }
        }
        tokio::time::sleep(retry.after(delivered)).await;
    }
}
