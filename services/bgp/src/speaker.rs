//! The speaker: one session per configured peer, the listener that hands accepted connections to
//! them, and the loop that keeps every peer's desired routes in step with the IPAM feed — on every
//! feed event, when a session comes up, when a NotReady node's grace period ends and when a
//! drained node's drain delay ends (RFC 8326: announced with GRACEFUL_SHUTDOWN until then).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use routeplane_config::{AddressPool, Peer};
use routeplane_net::{Cidr, Family};
use routeplane_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::fsm::SessionConfig;
use crate::message::{AddPath, BgpError, Capabilities, Cease, GracefulRestart, Notification};
use crate::policy::{Announce, Inputs, NodeView, OperatorPath, PeerView, ServiceView};
use crate::rib::Routes;
use crate::rib_in::AdjRibIn;
use crate::session::{Command, Event, PeerStatus, Session, SharedStatus, Transport, lock};
use crate::throttle::Throttle;
use routeplane_watch::{FeedEvent, FeedNode, FeedService};

mod operator_entries;

#[derive(Debug, Clone)]
pub struct SpeakerSettings {
    /// BGP identifier for peers whose config has no router-id.
    pub router_id: Option<Ipv4Addr>,
    /// How long a NotReady node's prefixes stay announced.
    pub grace: Duration,
    /// How long a drained node's prefixes stay announced with GRACEFUL_SHUTDOWN before they are
    /// withdrawn.
    pub drain_delay: Duration,
    pub announce: Announce,
    pub pools: Vec<AddressPool>,
    pub peers: Vec<Peer>,
    pub connect_retry: Duration,
    pub connect_retry_max: Duration,
    /// RFC 4724 restart time offered to peers; zero turns graceful restart off.
    pub graceful_restart: Duration,
    /// On shutdown, how long every path is announced with GRACEFUL_SHUTDOWN before the sessions
    /// end (RFC 8326); zero ends them at once.
    pub shutdown_drain: Duration,
    /// Where operator paths may lie (`--announce-allow`); empty: AnnouncePath is off.
    pub announce_allow: Vec<Cidr>,
}

struct NodeState {
    node: FeedNode,
    not_ready_since: Option<Instant>,
    /// When this replica saw the drain start (a restarted replica starts the delay again: it
    /// cannot know how much of it had passed, and a longer drain is the safe side).
    draining_since: Option<Instant>,
    path_id: u32,
}

pub struct PeerEntry {
    pub config: Peer,
    pub router_id: Ipv4Addr,
    pub status: SharedStatus,
    commands: mpsc::UnboundedSender<Command>,
    /// The session's route table: it reads only the latest.
    desired: watch::Sender<Option<Arc<Routes>>>,
    /// Cancelled with the Stop command, for a session stuck writing to a peer that reads nothing.
    stopping: CancellationToken,
}

/// What the API reads.
pub struct State {
    nodes: BTreeMap<String, NodeState>,
    services: BTreeMap<String, FeedService>,
    pub peers: BTreeMap<IpAddr, PeerEntry>,
    pub ipam_connected: bool,
    /// The IPAM snapshot arrived: until then nothing is announced.
    pub synced: bool,
    next_path_id: u32,
    settings: SpeakerSettings,
    /// Paths announced through the API, as IPAM's operator entries hold them.
    operator: BTreeMap<Cidr, Arc<OperatorPath>>,
    /// Peers added through the API, as IPAM's operator entries hold them; an address the file
    /// defines is the file's, and its entry waits here until the file lets go of it.
    api_peers: BTreeMap<IpAddr, Peer>,
    /// The revision of the last operator change applied (see [`Speaker::wait_applied`]).
    applied_revision: u64,
    /// Operator entries left out because this replica could not take them (each logged).
    pub operator_refused: u64,
    /// Sessions told to stop whose NOTIFICATION may not be out yet, by address. A new session to
    /// the same address waits for it: dialled earlier, it would reach the peer while the old
    /// session is still Established there, which a graceful-restart peer takes for our restart
    /// (RFC 4724 §4.2) instead of the reset it is.
    stopping: BTreeMap<IpAddr, oneshot::Receiver<()>>,
    /// Shutting down with --shutdown-drain: every path goes with GRACEFUL_SHUTDOWN.
    shutting_down: bool,
}

/// What WatchEvents streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeakerEvent {
    State {
        peer: IpAddr,
        state: crate::fsm::State,
        reason: String,
    },
    Advertised {
        peer: IpAddr,
        nlri: crate::message::Nlri,
        attributes: Arc<crate::message::PathAttributes>,
    },
    Withdrawn {
        peer: IpAddr,
        nlri: crate::message::Nlri,
    },
}

/// Why an API change to the speaker was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("{0} is already a peer; DeletePeer it first to change it")]
    PeerExists(IpAddr),
    #[error("{0} is not a peer; peers are: {1}")]
    NoSuchPeer(IpAddr, String),
    #[error("{0}")]
    Refused(String),
    #[error(
        "stored in IPAM at revision {0}, but this replica has not applied it within {1:?} (is its IPAM feed connected? see routeplane_bgp_ipam_connected); it applies it when the feed catches up"
    )]
    NotApplied(u64, Duration),
}

/// What starting a session needs besides its peer: the listeners to set its TCP-MD5 key on, the
/// speaker loop's event channel and the WatchEvents broadcast.
pub struct Spawner {
    listeners: Vec<Arc<TcpListener>>,
    sessions: mpsc::UnboundedSender<Event>,
    events: broadcast::Sender<SpeakerEvent>,
}

pub struct Speaker {
    state: Mutex<State>,
    spawner: Spawner,
    /// The revision of the last operator change applied, published after the policy ran on it.
    applied: watch::Sender<u64>,
    /// Connections closed unread because they came from no configured peer's address.
    refused_connections: AtomicU64,
}

/// The policy's inputs, owned, so that callers can build [`Inputs`] from them.
pub struct Views {
    pub nodes: Vec<NodeView>,
    pub services: Vec<ServiceView>,
    pub operator: BTreeMap<Cidr, Arc<OperatorPath>>,
    pub peers: Vec<PeerView>,
    pub pools: Vec<AddressPool>,
    pub announce: Announce,
    pub graceful_shutdown: bool,
}

impl Views {
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            nodes: &self.nodes,
            services: &self.services,
            operator: &self.operator,
            pools: &self.pools,
            peers: &self.peers,
            announce: self.announce,
            graceful_shutdown: self.graceful_shutdown,
        }
    }
}

impl Speaker {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where operator paths may lie (`--announce-allow`).
    pub fn announce_allow(&self) -> Vec<Cidr> {
        self.lock().settings.announce_allow.clone()
    }

    /// Connections closed unread because they came from no configured peer's address.
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }

    pub fn views(&self, now: Instant) -> Views {
        self.lock().views(now)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SpeakerEvent> {
        self.spawner.events.subscribe()
    }

    /// Checks a peer as a session would be started for it (a BGP identifier is needed), without
    /// starting one.
    pub fn check_peer(&self, peer: &Peer) -> Result<(), SpeakerError> {
        session_config(peer, &self.lock().settings)
            .map(drop)
            .map_err(SpeakerError::Refused)
    }

    /// Whether `address` is a running peer that bgp-config defines (not one added through the API).
    pub fn is_file_peer(&self, address: &IpAddr) -> bool {
        let state = self.lock();
        state.peers.contains_key(address) && state.peer_source(address) == "file"
    }

    /// The refusal for an address that is no peer, listing those that are.
    pub fn no_such_peer(&self, address: IpAddr) -> SpeakerError {
        let known = self
            .lock()
            .peers
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        SpeakerError::NoSuchPeer(address, known.join(", "))
    }

    /// Removes a peer bgp-config defines, on this replica until its next reload or restart,
    /// telling it Cease/Peer De-configured. (Peers added through the API are deleted in IPAM and
    /// leave every replica through the feed.)
    pub fn delete_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        let mut state = self.lock();
        let Some(entry) = state.peers.remove(&address) else {
            drop(state);
            return Err(self.no_such_peer(address));
        };
        state.stop(address, &entry, Cease::PeerDeconfigured);
        Ok(())
    }

    /// Waits until this replica has applied the operator change IPAM stored at `revision` and
    /// brought its peers' tables up to date with it.
    pub async fn wait_applied(&self, revision: u64, timeout: Duration) -> Result<(), SpeakerError> {
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SpeakerError::NotApplied(revision, timeout)),
        }
    }
}

impl State {
    /// Where a peer comes from: "api" (AddPeer, kept across reloads) or "file" (bgp-config).
    pub fn peer_source(&self, address: &IpAddr) -> &'static str {
        if self
            .settings
            .peers
            .iter()
            .any(|p| p.peer_address == *address)
        {
            "file"
        } else {
            "api"
        }
    }

    fn views(&self, now: Instant) -> Views {
        Views {
            operator: self.operator.clone(),
            ..self.views_without_paths(now)
        }
    }

    fn views_without_paths(&self, now: Instant) -> Views {
        let (grace, drain_delay) = (self.settings.grace, self.settings.drain_delay);
        let nodes = self
            .nodes
            .values()
            .map(|s| NodeView {
                name: s.node.name.clone(),
                addresses: s.node.addresses.clone(),
                labels: s.node.labels.clone(),
                pod_cidrs: s.node.pod_cidrs.clone(),
                ready: s.node.ready,
                announce: (s.node.ready || s.not_ready_since.is_some_and(|t| now < t + grace))
                    && s.draining_since.is_none_or(|t| now < t + drain_delay),
                draining: s.node.draining,
                held_down: s.node.held_down,
                path_id: s.path_id,
            })
            .collect();
        let services = self
            .services
            .values()
            .map(|s| ServiceView {
                service: s.service.clone(),
                ip: s.ip,
                pool: s.pool.clone(),
            })
            .collect();
        let peers = self
            .peers
            .values()
            .map(|p| {
                let status = lock(&p.status);
                let n = status
                    .negotiated
                    .as_ref()
                    .filter(|_| status.state == crate::fsm::State::Established);
                PeerView {
                    address: p.config.peer_address,
                    my_asn: p.config.my_asn,
                    peer_asn: p.config.peer_asn,
                    node_selectors: p.config.node_selectors.clone(),
                    families: n.map(|n| n.families.clone()),
                    add_path_send: n.map(|n| n.add_path_send.clone()).unwrap_or_default(),
                    state: status.state.name().to_string(),
                }
            })
            .collect();
        Views {
            nodes,
            services,
            operator: BTreeMap::new(),
            peers,
            pools: self.settings.pools.clone(),
            announce: self.settings.announce,
            graceful_shutdown: self.shutting_down,
        }
    }

    fn upsert_node(&mut self, node: FeedNode, now: Instant) {
        let path_id = match self.nodes.get(&node.name) {
            Some(s) => s.path_id,
            None => {
                self.next_path_id += 1;
                self.next_path_id
            }
        };
        let since = match (self.nodes.get(&node.name), node.ready) {
            (_, true) => None,
            (Some(s), false) if !s.node.ready => s.not_ready_since,
            // Newly NotReady (or first seen NotReady): the grace period starts now.
            (_, false) => Some(now),
        };
        let draining_since = match (self.nodes.get(&node.name), node.draining) {
            (_, false) => None,
            (Some(s), true) if s.node.draining => s.draining_since,
            (_, true) => Some(now),
        };
        self.nodes.insert(
            node.name.clone(),
            NodeState {
                node,
                not_ready_since: since,
                draining_since,
                path_id,
            },
        );
    }

    fn apply(&mut self, event: FeedEvent, now: Instant, spawner: &Spawner) {
        match event {
            FeedEvent::Snapshot {
                revision,
                nodes,
                services,
                operator,
            } => {
                let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
                self.nodes.retain(|k, _| names.contains(k));
                for n in nodes {
                    self.upsert_node(n, now);
                }
                self.services = services
                    .into_iter()
                    .map(|s| (s.service.clone(), s))
                    .collect();
                self.replace_operator_entries(operator, spawner);
                self.applied_revision = revision;
                self.synced = true;
            }
            FeedEvent::Operator {
                revision,
                put,
                deleted,
            } => {
                self.apply_operator_entries(put, deleted, spawner);
                self.applied_revision = revision;
            }
            FeedEvent::Node(n) => self.upsert_node(n, now),
            FeedEvent::NodeDeleted(name) => {
                self.nodes.remove(&name);
            }
            FeedEvent::ServiceAssigned(s) => {
                self.services.insert(s.service.clone(), s);
            }
            FeedEvent::ServiceReleased(name) => {
                self.services.remove(&name);
            }
            FeedEvent::Connected(c) => self.ipam_connected = c,
        }
    }

    /// When the next NotReady node's grace period or drained node's drain delay ends.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let (grace, drain_delay) = (self.settings.grace, self.settings.drain_delay);
        self.nodes
            .values()
            .flat_map(|s| {
                [
                    s.not_ready_since.map(|t| t + grace),
                    s.draining_since.map(|t| t + drain_delay),
                ]
            })
            .flatten()
            .filter(|d| *d > now)
            .min()
    }

    /// Sends every peer whose desired routes changed its new table.
    fn push(&mut self, now: Instant) {
        if !self.synced {
            return;
        }
        // Borrow the operator paths rather than copy them: with many, they are most of the memory.
        let Views {
            nodes,
            services,
            peers,
            ..
        } = self.views_without_paths(now);
        let inputs = Inputs {
            nodes: &nodes,
            services: &services,
            operator: &self.operator,
            pools: &self.settings.pools,
            peers: &peers,
            announce: self.settings.announce,
            graceful_shutdown: self.shutting_down,
        };
        let desired: Vec<Arc<Routes>> = peers
            .iter()
            .map(|view| Arc::new(inputs.desired(view)))
            .collect();
        for (peer, desired) in self.peers.values_mut().zip(desired) {
            // Replaced, not queued: a session still busy with an older table skips to this one.
            peer.desired.send_if_modified(|last| {
                let changed = last.as_deref() != Some(&*desired);
                if changed {
                    *last = Some(desired);
                }
                changed
            });
        }
    }
}

fn session_config(peer: &Peer, settings: &SpeakerSettings) -> Result<SessionConfig, String> {
    let router_id = peer.router_id.or(settings.router_id).ok_or_else(|| {
        format!(
            "peer {}: no BGP identifier: set router-id on the peer in bgp-config, or --router-id",
            peer.peer_address
        )
    })?;
    let secs = |d: Duration| u16::try_from(d.as_secs()).unwrap_or(u16::MAX);
    Ok(SessionConfig {
        local_asn: peer.my_asn,
        peer_asn: peer.peer_asn,
        router_id,
        hold_time: secs(peer.hold_time),
        keepalive_time: secs(peer.keepalive_time),
        connect_retry: settings.connect_retry,
        connect_retry_max: settings.connect_retry_max,
        passive: false,
        capabilities: Capabilities {
            families: vec![Family::V4, Family::V6],
            asn4: None,
            route_refresh: true,
            // F bit set: the nodes, not this process, forward traffic, and they go on while it restarts.
            graceful_restart: (!settings.graceful_restart.is_zero()).then(|| GracefulRestart {
                restarting: true,
                restart_time: u16::try_from(settings.graceful_restart.as_secs())
                    .unwrap_or(4095)
                    .min(4095),
                notification: true,
                families: vec![(Family::V4, true), (Family::V6, true)],
            }),
            add_path: [Family::V4, Family::V6]
                .map(|family| AddPath {
                    family,
                    send: true,
                    receive: false,
                })
                .to_vec(),
        },
        max_prefixes: peer.max_prefixes,
        max_prefixes_restart: peer.max_prefixes_restart,
    })
}

/// Sets a peer's TCP-MD5 key on every listener (IPv4-mapped on IPv6 ones).
fn set_listener_keys(peer: &Peer, listeners: &[Arc<TcpListener>]) -> Result<(), String> {
    let Some(key) = &peer.password else {
        return Ok(());
    };
    for l in listeners {
        let addr = match (l.local_addr().map(|a| a.is_ipv6()), peer.peer_address) {
            (Ok(true), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (_, a) => a,
        };
        crate::sockopt::set_md5_key(std::os::fd::AsFd::as_fd(&**l), addr, key.as_bytes()).map_err(
            |e| {
                format!(
                    "peer {}: cannot set its TCP-MD5 password on the BGP listener: {e}",
                    peer.peer_address
                )
            },
        )?;
    }
    Ok(())
}

/// Starts one peer's session.
fn spawn_peer(
    peer: &Peer,
    settings: &SpeakerSettings,
    spawner: &Spawner,
    after: Option<oneshot::Receiver<()>>,
) -> Result<PeerEntry, String> {
    let config = session_config(peer, settings)?;
    let ebgp = peer.my_asn != peer.peer_asn;
    let transport = Transport {
        peer: SocketAddr::new(peer.peer_address, peer.peer_port),
        source: peer.source_address,
        // GTSM (RFC 5082 §3) sends with 255 and expects 255: the peer is one hop away.
        ttl: if ebgp && !peer.ebgp_multihop && !peer.ttl_security {
            1
        } else {
            255
        },
        password: peer.password.clone(),
        min_ttl: peer.ttl_security.then_some(255),
    };
    set_listener_keys(peer, &spawner.listeners)?;
    let status = SharedStatus::new(Mutex::new(PeerStatus {
        received: AdjRibIn::new(peer.keep_received, peer.max_prefixes),
        ..PeerStatus::default()
    }));
    let (tx, rx) = mpsc::unbounded_channel();
    let (desired, desired_rx) = watch::channel(None);
    let router_id = config.router_id;
    let stopping = CancellationToken::new();
    let session = Session::new(
        config,
        transport,
        status.clone(),
        spawner.sessions.clone(),
        spawner.events.clone(),
        stopping.clone(),
    );
    tokio::spawn(async move {
        if let Some(stopped) = after {
            // Bounded: a peer that stalls the old session's NOTIFICATION must not keep this one
            // from ever starting; its hold timer ends the old one anyway.
            let _ = tokio::time::timeout(STOP_WAIT, stopped).await;
        }
        session.run(rx, desired_rx).await;
    });
    Ok(PeerEntry {
        config: peer.clone(),
        router_id,
        status,
        commands: tx,
        desired,
        stopping,
    })
}

impl State {
    /// Tells a removed session to stop with `cease`, remembering it until it has.
    fn stop(&mut self, address: IpAddr, entry: &PeerEntry, cease: Cease) {
        // Forget the ones that are done, so deleted peers leave nothing behind.
        self.stopping.retain(|_, stopped| {
            matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        });
        let (done, stopped) = oneshot::channel();
        let _ = entry.commands.send(Command::Stop(
            Some(Notification::new(BgpError::Cease(cease), [])),
            done,
        ));
        entry.stopping.cancel();
        self.stopping.insert(address, stopped);
    }

    /// Applies a reloaded configuration: new peers start, removed ones stop with Cease/Peer
    /// De-configured, changed ones (or ones whose router ID changed) restart with Cease/Other
    /// Configuration Change; the others are left alone. Peers added through the API stay, but
    /// where the file now defines their address, the file's entry is the one that runs. Returns
    /// what it did, for the log.
    fn reload(
        &mut self,
        settings: SpeakerSettings,
        spawner: &Spawner,
    ) -> Result<Vec<String>, String> {
        // Check every file peer before touching anything, so a bad file changes nothing.
        for p in &settings.peers {
            session_config(p, &settings)?;
        }
        let mut wanted: BTreeMap<IpAddr, Peer> = settings
            .peers
            .iter()
            .map(|p| (p.peer_address, p.clone()))
            .collect();
        for (addr, p) in &self.api_peers {
            // An API peer the new settings cannot run (no BGP identifier) stays out, as it
            // would have when it came from the feed.
            if !wanted.contains_key(addr) && session_config(p, &settings).is_ok() {
                wanted.insert(*addr, p.clone());
            }
        }
        let mut done = Vec::new();
        let current: Vec<IpAddr> = self.peers.keys().copied().collect();
        for addr in current {
            let keep = wanted.get(&addr).is_some_and(|p| {
                let entry = &self.peers[&addr];
                *p == entry.config
                    && session_config(p, &settings).is_ok_and(|c| c.router_id == entry.router_id)
            });
            if keep {
                continue;
            }
            if let Some(entry) = self.peers.remove(&addr) {
                let cease = if wanted.contains_key(&addr) {
                    Cease::OtherConfigurationChange
                } else {
                    Cease::PeerDeconfigured
                };
                self.stop(addr, &entry, cease);
                done.push(format!(
                    "{} {addr}",
                    if wanted.contains_key(&addr) {
                        "reset"
                    } else {
                        "removed"
                    }
                ));
            }
        }
        for (addr, peer) in &wanted {
            let addr = *addr;
            if let std::collections::btree_map::Entry::Vacant(slot) = self.peers.entry(addr) {
                let after = self.stopping.remove(&addr);
                slot.insert(spawn_peer(peer, &settings, spawner, after)?);
                if !done.iter().any(|d| d.ends_with(&addr.to_string())) {
                    done.push(format!("added {addr}"));
                }
            }
        }
        self.settings = settings;
        Ok(done)
    }
}

/// How long a new session waits for the old one to the same address to have sent its Cease.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// IPAM changes applied together before one policy run, at most (the rest wait for the next).
const COALESCE_AT_MOST: usize = 10_000;

/// Starts a session per peer and the speaker loop; returns the shared state for the API and the
/// loop's task, which ends once every session has been stopped after shutdown. New settings sent
/// on `reloads` are applied as [`State::reload`] says.
pub fn start(
    settings: SpeakerSettings,
    listeners: Vec<TcpListener>,
    mut feed: mpsc::UnboundedReceiver<FeedEvent>,
    mut reloads: mpsc::UnboundedReceiver<SpeakerSettings>,
    shutdown: Shutdown,
) -> Result<(Arc<Speaker>, tokio::task::JoinHandle<()>), String> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let listeners: Vec<Arc<TcpListener>> = listeners.into_iter().map(Arc::new).collect();
    let spawner = Spawner {
        listeners: listeners.clone(),
        sessions: events_tx,
        events: broadcast::channel(4096).0,
    };
    let mut peers = BTreeMap::new();
    for peer in &settings.peers {
        peers.insert(
            peer.peer_address,
            spawn_peer(peer, &settings, &spawner, None)?,
        );
    }
    let speaker = Arc::new(Speaker {
        state: Mutex::new(State {
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            peers,
            ipam_connected: false,
            synced: false,
            next_path_id: 0,
            settings,
            operator: BTreeMap::new(),
            api_peers: BTreeMap::new(),
            applied_revision: 0,
            operator_refused: 0,
            stopping: BTreeMap::new(),
            shutting_down: false,
        }),
        spawner,
        applied: watch::channel(0).0,
        refused_connections: AtomicU64::new(0),
    });
    for listener in &listeners {
        tokio::spawn(accept(listener.clone(), speaker.clone(), shutdown.clone()));
    }
    let s = speaker.clone();
    let task = tokio::spawn(async move {
        let mut feed_open = true;
        loop {
            let deadline = s.lock().next_deadline(Instant::now());
            tokio::select! {
                // Shutdown first: the feed closes on the same signal, and the sessions must be
                // stopped deliberately (gracefully where agreed), not left to notice a dropped channel.
                biased;
                () = shutdown.wait() => {
                    drain_before_stopping(&s).await;
                    stop_all(&s).await;
                    return;
                }
                ev = feed.recv(), if feed_open => match ev {
                    // Whatever else has queued meanwhile goes in too, before one recomputation:
                    // a burst of IPAM changes costs one policy run, not one per change.
                    Some(ev) => {
                        let mut state = s.lock();
                        let now = Instant::now();
                        state.apply(ev, now, &s.spawner);
                        for _ in 0..COALESCE_AT_MOST {
                            match feed.try_recv() {
                                Ok(ev) => state.apply(ev, now, &s.spawner),
                                Err(_) => break,
                            }
                        }
                    }
                    None => feed_open = false,
                },
                // A session that came up needs its table; a down one is already cleared.
                Some(ev) = events.recv() => if !matches!(ev, Event::Up(_)) {
                    continue;
                },
                Some(new) = reloads.recv() => match s.lock().reload(new, &s.spawner) {
                    Ok(done) if done.is_empty() => tracing::info!("configuration reloaded: no peer changed"),
                    Ok(done) => tracing::info!(changes = %done.join(", "), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused: the running configuration stays"),
                },
                () = sleep_until(deadline) => {}
            }
            let applied = {
                let mut state = s.lock();
                state.push(Instant::now());
                state.applied_revision
            };
            // After the push: an API call waiting on this revision answers once the peers'
            // tables have it.
            s.applied.send_if_modified(|r| {
                let newer = applied > *r;
                *r = (*r).max(applied);
                newer
            });
        }
    });
    Ok((speaker, task))
}

/// RFC 8326 on our own shutdown: every path re-sent with GRACEFUL_SHUTDOWN, then
/// `--shutdown-drain` for routers to move traffic to other paths (another replica's, another
/// node's) before the sessions end. Skipped when no session is up: nobody would hear it.
async fn drain_before_stopping(speaker: &Speaker) {
    let delay = {
        let mut state = speaker.lock();
        let delay = state.settings.shutdown_drain;
        let up = state
            .peers
            .values()
            .any(|p| lock(&p.status).negotiated.is_some());
        if delay.is_zero() || !up || !state.synced {
            return;
        }
        state.shutting_down = true;
        state.push(Instant::now());
        delay
    };
    tracing::info!(
        ?delay,
        "shutting down: every path re-announced with GRACEFUL_SHUTDOWN (RFC 8326); the sessions end after --shutdown-drain"
    );
    tokio::time::sleep(delay).await;
}

/// Ends every session (waiting, bounded, for the last message to go out). A peer that agreed to
/// graceful restart keeps our routes: with RFC 8538's N bit it gets the clean Cease (which it then
/// treats as a restart), without it the connection closes silently, which is what starts its
/// helper mode. Any other peer gets Cease/Administrative Shutdown.
async fn stop_all(speaker: &Speaker) {
    let mut waits = Vec::new();
    let graceful_on = !speaker.lock().settings.graceful_restart.is_zero();
    for peer in speaker.lock().peers.values() {
        let (done, wait) = oneshot::channel();
        let helper = lock(&peer.status)
            .negotiated
            .as_ref()
            .and_then(|n| n.peer_graceful_restart.clone())
            .filter(|_| graceful_on);
        let cease = Notification::new(BgpError::Cease(Cease::AdministrativeShutdown), []);
        let stop = match helper {
            Some(gr) if !gr.notification => None,
            _ => Some(cease),
        };
        if peer.commands.send(Command::Stop(stop, done)).is_ok() {
            waits.push(wait);
        }
        peer.stopping.cancel();
    }
    // One deadline for all: the sessions stop in parallel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for w in waits {
        let _ = tokio::time::timeout_at(deadline, w).await;
    }
}

async fn accept(listener: Arc<TcpListener>, speaker: Arc<Speaker>, shutdown: Shutdown) {
    let mut refusals = Throttle::new(REFUSAL_LOG_INTERVAL);
    loop {
        let (stream, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.wait() => return,
        };
        // An IPv4 peer reaching an IPv6 socket shows as ::ffff:a.b.c.d.
        let ip = match from.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let commands = speaker.lock().peers.get(&ip).map(|p| p.commands.clone());
        match commands {
            Some(c) => {
                let _ = c.send(Command::Accepted(stream));
            }
            // Dropped unread: the connection closes before a byte of it is looked at.
            None => {
                drop(stream);
                speaker.refused_connections.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = refusals.allow(Instant::now()) {
                    tracing::warn!(from = %ip, suppressed, "refused a BGP connection from an address that is not a configured peer")
                }
            }
        }
    }
}

/// At most one log line per listener this often about connections from unknown addresses.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
