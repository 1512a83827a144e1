//! One peer's session on tokio: owns the TCP connection and the clocks, feeds the [`Fsm`] with
//! what happens and carries out what it returns. Keeps the peer's Adj-RIB-Out (sending the
//! difference whenever the speaker hands it new desired routes) and its Adj-RIB-In (for
//! visibility; nothing is installed from it).
//!
//! Connection collision (RFC 4271 §6.8): a connection accepted while one is being opened is held
//! until the peer's OPEN arrives on the first; then the connection opened by the speaker with the
//! higher BGP identifier stays and the other is closed with Cease/Connection Collision Resolution.
//! One accepted while Established is refused the same way.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use routeplane_net::Family;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::fsm::{Fsm, Input, Negotiated, Output, SessionConfig, State, Timer};
use crate::message::{BgpError, Cease, Message, Notification};
use crate::rib::{AdjRibOut, Routes};
use crate::rib_in::{AdjRibIn, LimitExceeded};
use crate::throttle::Throttle;
use crate::wire::{Codec, Repair};
use crate::writer::{DEADLINE_WITHOUT_HOLD_TIME, Writer};

/// How to reach the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub peer: SocketAddr,
    pub source: Option<IpAddr>,
    /// IP TTL of our packets: 1 for directly connected eBGP, 255 with ebgp-multihop or iBGP.
    pub ttl: u32,
    /// TCP-MD5 key (RFC 2385), from the peer's `password`.
    pub password: Option<String>,
    /// GTSM (RFC 5082): the fewest hops left a packet from the peer may arrive with (255 with
    /// `ttl-security`, when `ttl` is 255 too).
    pub min_ttl: Option<u8>,
}

/// What the API shows about a peer.
#[derive(Debug)]
pub struct PeerStatus {
    pub state: State,
    pub since: SystemTime,
    pub negotiated: Option<Negotiated>,
    pub last_error: Option<(String, SystemTime)>,
    pub received: AdjRibIn,
    /// Received UPDATEs repaired instead of ending the session, by handling (RFC 7606).
    pub repairs: BTreeMap<&'static str, u64>,
    /// The Adj-RIB-Out: the same table the session synced to, shared.
    pub advertised: Arc<Routes>,
    pub updates_sent: u64,
    pub updates_received: u64,
}

impl Default for PeerStatus {
    fn default() -> Self {
        PeerStatus {
            state: State::Idle,
            since: SystemTime::now(),
            negotiated: None,
            last_error: None,
            received: AdjRibIn::default(),
            repairs: BTreeMap::new(),
            advertised: Arc::default(),
            updates_sent: 0,
            updates_received: 0,
        }
    }
}

pub type SharedStatus = Arc<Mutex<PeerStatus>>;

pub fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, PeerStatus> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the peer should have now: only the latest table is kept (a session that is behind skips
/// the tables in between), `None` until the speaker has the IPAM state.
pub type Desired = watch::Receiver<Option<Arc<Routes>>>;

pub enum Command {
    /// A connection the speaker accepted from this peer's address.
    Accepted(TcpStream),
    /// Administrative stop (Cease, or a silent close for graceful restart), ending the task.
    Stop(Option<Notification>, oneshot::Sender<()>),
}

/// What the session tells the speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Up(IpAddr),
    Down(IpAddr, String),
    /// The session's new state, and why (when it went down).
    State(IpAddr, State, String),
    /// What one sync sent.
    Sent {
        peer: IpAddr,
        advertised: Vec<(crate::message::Nlri, crate::message::PathAttributes)>,
        withdrawn: Vec<crate::message::Nlri>,
    },
}

struct Conn {
    reader: OwnedReadHalf,
    /// The write half, in its own task (`writer.rs`).
    writer: Writer,
    buf: BytesMut,
    codec: Codec,
    /// Whether we dialled it (for collision resolution).
    outbound: bool,
}

impl Conn {
    /// Closes the connection as RFC 4271 §6 means it after a NOTIFICATION: our FIN follows it,
    /// then whatever the peer still sends is read and dropped until its own FIN. Dropping the
    /// socket instead would answer unread data with a RST, and a peer that gets the RST first may
    /// discard the NOTIFICATION unread. Bounded by [`LINGER`], as a peer may never close (or never
    /// read what is queued: the socket is then dropped).
    async fn linger(self) {
        let Conn {
            mut reader, writer, ..
        } = self;
        let mut flushed = writer.close();
        let _ = tokio::time::timeout(LINGER, async {
            let _ = (&mut flushed).await;
            let mut scratch = [0u8; 4096];
            while matches!(reader.read(&mut scratch).await, Ok(n) if n > 0) {}
        })
        .await;
        flushed.abort();
    }
}

/// How long a closed connection waits for the peer's FIN.
const LINGER: Duration = Duration::from_secs(1);

/// At most one log line per peer this often about repaired UPDATEs (the metric counts them all).
const REPAIR_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct Session {
    address: IpAddr,
    transport: Transport,
    fsm: Fsm,
    conn: Option<Conn>,
    pending: Option<TcpStream>,
    timers: HashMap<Timer, Instant>,
    dialing: Option<oneshot::Receiver<std::io::Result<TcpStream>>>,
    /// `None` until the speaker has the IPAM state: End-of-RIB waits for it.
    desired: Option<Arc<Routes>>,
    eor_pending: bool,
    rib: AdjRibOut,
    status: SharedStatus,
    events: mpsc::UnboundedSender<Event>,
    /// WatchEvents: published to only while someone subscribes.
    watch: tokio::sync::broadcast::Sender<crate::speaker::SpeakerEvent>,
    /// The last connection closed, until the peer has closed its side (see [`Conn::linger`]).
    closing: Option<tokio::task::JoinHandle<()>>,
    /// Repairs of received UPDATEs are logged, but not one line per UPDATE of a flood.
    repair_log: Throttle,
    /// Why the connection's writer failed, when a write found out: handled by the run loop.
    write_failed: Option<String>,
    /// Cancelled when the speaker has told the session to stop: a write waiting for a peer that
    /// reads nothing gives up then, so that the Stop command is taken at once.
    stopping: CancellationToken,
}

impl Session {
    pub fn new(
        config: SessionConfig,
        transport: Transport,
        status: SharedStatus,
        events: mpsc::UnboundedSender<Event>,
        watch: tokio::sync::broadcast::Sender<crate::speaker::SpeakerEvent>,
        stopping: CancellationToken,
    ) -> Session {
        Session {
            address: transport.peer.ip(),
            transport,
            fsm: Fsm::new(config),
            conn: None,
            pending: None,
            timers: HashMap::new(),
            dialing: None,
            desired: None,
            eor_pending: false,
            rib: AdjRibOut::default(),
            status,
            events,
            watch,
            closing: None,
            repair_log: Throttle::new(REPAIR_LOG_INTERVAL),
            write_failed: None,
            stopping,
        }
    }

    /// Runs until stopped.
    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut desired: Desired,
    ) {
        self.input(Input::Start).await;
        let mut desired_open = true;
        loop {
            if let Some(reason) = self.write_failed.take() {
                self.connection_failed(reason).await;
                continue;
            }
            let deadline = self
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(t, at)| (*t, *at));
            tokio::select! {
                changed = desired.changed(), if desired_open => match changed {
                    Ok(()) => {
                        self.desired = desired.borrow_and_update().clone();
                        self.sync().await;
                    }
                    // The speaker dropped the peer: the commands channel closes too.
                    Err(_) => desired_open = false,
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Accepted(stream)) => self.accepted(stream).await,
                    Some(Command::Stop(cease, done)) => {
                        self.input(Input::Stop(cease)).await;
                        // Stopped means the peer has read our NOTIFICATION and closed (or
                        // LINGER has passed): a new session to it may start without the peer
                        // seeing the two overlap.
                        if let Some(closing) = self.closing.take() {
                            let _ = closing.await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        let cease = Notification::new(BgpError::Cease(Cease::PeerDeconfigured), []);
                        self.input(Input::Stop(Some(cease))).await;
                        return;
                    }
                },
                () = sleep_until(deadline.map(|d| d.1)) => {
                    if let Some((timer, _)) = deadline {
                        self.timers.remove(&timer);
                        self.input(Input::TimerExpired(timer)).await;
                    }
                }
                dialed = recv_dial(&mut self.dialing) => {
                    self.dialing = None;
                    match dialed {
                        Ok(stream) => self.attach(stream, true).await,
                        Err(e) => {
                            // Not a session going down, so the FSM reports nothing: record it for the API.
                            let why = format!("connect to {}: {e}", self.transport.peer);
                            lock(&self.status).last_error = Some((why.clone(), SystemTime::now()));
                            self.input(Input::TcpFailed(why)).await;
                        }
                    }
                }
                happened = on_connection(&mut self.conn) => match happened {
                    OnConnection::Read(read) => self.received(read).await,
                    OnConnection::WriteFailed(reason) => self.connection_failed(reason).await,
                },
            }
        }
    }

    /// The connection's writer failed (the peer stopped reading past the hold time, or the
    /// socket broke): the connection has failed.
    async fn connection_failed(&mut self, reason: String) {
        tracing::warn!(peer = %self.address, %reason, "connection failed");
        lock(&self.status).last_error = Some((reason.clone(), SystemTime::now()));
        self.input(Input::TcpFailed(reason)).await;
    }

    async fn accepted(&mut self, stream: TcpStream) {
        if self.fsm.held_down() {
            tracing::info!(peer = %self.address, "refused a connection: the session waits out its max-prefixes restart timer");
            return drop(stream);
        }
        match self.fsm.state() {
            State::Idle | State::Connect | State::Active => {
                self.dialing = None;
                self.attach(stream, false).await;
            }
            State::OpenSent => self.pending = Some(stream),
            State::OpenConfirm => self.resolve_collision(stream).await,
            State::Established => refuse(stream).await,
        }
    }

    /// RFC 4271 §6.8, once the peer's identifier is known from its OPEN on the first connection.
    async fn resolve_collision(&mut self, incoming: TcpStream) {
        let (ours, theirs) = match self.fsm.negotiated() {
            Some(n) => (self.fsm.config().router_id, n.peer_router_id),
            None => return refuse(incoming).await,
        };
        let current_outbound = self.conn.as_ref().is_some_and(|c| c.outbound);
        // The connection initiated by the higher identifier survives.
        let keep_current = (u32::from(ours) > u32::from(theirs)) == current_outbound;
        let survivor = if keep_current && current_outbound {
            "the one we dialled"
        } else {
            "the one the peer dialled"
        };
        tracing::info!(
            peer = %self.address, ours = %ours, theirs = %theirs,
            "connection collision (RFC 4271 §6.8): keeping {survivor}, closing the other with Cease/Connection Collision Resolution"
        );
        if keep_current {
            refuse(incoming).await;
        } else {
            let cease = Notification::new(BgpError::Cease(Cease::ConnectionCollision), []);
            self.write(&[Message::Notification(cease)]).await;
            self.close();
            self.input(Input::TcpFailed(
                "replaced by the colliding connection".into(),
            ))
            .await;
            self.attach(incoming, false).await;
        }
    }

    async fn attach(&mut self, stream: TcpStream, outbound: bool) {
        let _ = stream.set_nodelay(true);
        // An accepted connection has the listener's hop limit until now; ours already has it.
        if let Err(e) = set_hop_limit(socket2::SockRef::from(&stream), self.transport.ttl)
            .and_then(|()| set_min_ttl(&stream, self.transport.min_ttl))
        {
            // Sending with the system's default would reach a peer that is not directly connected
            // when the configuration says it must be: refuse the connection rather.
            let reason = format!(
                "cannot set the hop limit {} (minimum {:?}) on the connection: {e}",
                self.transport.ttl, self.transport.min_ttl
            );
            tracing::warn!(peer = %self.transport.peer, "{reason}");
            drop(stream);
            return self.input(Input::TcpFailed(reason)).await;
        }
        let (reader, writer) = stream.into_split();
        self.conn = Some(Conn {
            reader,
            writer: Writer::spawn(writer),
            buf: BytesMut::with_capacity(8192),
            codec: Codec::new(),
            outbound,
        });
        if matches!(self.fsm.state(), State::Idle) {
            self.fsm.process(Input::Start);
        }
        self.input(Input::TcpConnected).await;
    }

    async fn received(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(0) => {
                return self
                    .input(Input::TcpFailed("the peer closed the connection".into()))
                    .await;
            }
            Err(e) => return self.input(Input::TcpFailed(e.to_string())).await,
            Ok(_) => {}
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let decoded = conn.codec.decode(&mut conn.buf);
            let repairs = conn.codec.take_repairs();
            if !repairs.is_empty() {
                self.repaired(repairs);
            }
            match decoded {
                Ok(Some(message)) => {
                    self.input(Input::Received(message)).await;
                }
                Ok(None) => return,
                Err(notification) => {
                    tracing::warn!(peer = %self.address, error = %notification.describe(), "malformed message from peer");
                    return self.input(Input::DecodeError(notification)).await;
                }
            }
        }
    }

    /// Counts what was repaired in a received UPDATE and logs it, throttled.
    fn repaired(&mut self, repairs: Vec<Repair>) {
        {
            let mut s = lock(&self.status);
            for r in &repairs {
                *s.repairs.entry(r.handling.name()).or_default() += 1;
            }
        }
        let now = Instant::now();
        for r in repairs {
            if let Some(suppressed) = self.repair_log.allow(now) {
                tracing::warn!(peer = %self.address, suppressed, "malformed UPDATE from the peer, repaired: {r}");
            }
        }
    }

    /// Runs one FSM input and carries out its outputs.
    async fn input(&mut self, input: Input) {
        let before = self.fsm.state();
        let mut exceeded = None;
        for output in self.fsm.process(input) {
            match output {
                Output::Connect => self.dial(),
                Output::Send(m) => self.write(&[m]).await,
                Output::Disconnect => {
                    self.close();
                    self.dialing = None;
                }
                Output::StartTimer(t, d) => {
                    self.timers.insert(t, Instant::now() + d);
                }
                Output::StopTimer(t) => {
                    self.timers.remove(&t);
                }
                Output::Established(n) => self.established(n).await,
                Output::Down(reason) => self.down(reason),
                Output::Update(u) => exceeded = exceeded.or(self.learn(&u).err()),
                Output::RouteRefresh(f) => self.refresh(f).await,
                Output::EndOfRib(_) => {}
            }
        }
        if let Some(LimitExceeded(family)) = exceeded {
            return Box::pin(self.input(Input::PrefixLimitExceeded(family))).await;
        }
        let after = self.fsm.state();
        if before == after {
            return;
        }
        tracing::info!(peer = %self.address, from = before.name(), to = after.name(), "session state");
        let reason = {
            let mut s = lock(&self.status);
            s.state = after;
            s.since = SystemTime::now();
            if after == State::Idle {
                s.last_error
                    .as_ref()
                    .map(|e| e.0.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        };
        let _ = self.watch.send(crate::speaker::SpeakerEvent::State {
            peer: self.address,
            state: after,
            reason,
        });
        if let Some(incoming) = self.pending.take() {
            match after {
                State::OpenConfirm => Box::pin(self.resolve_collision(incoming)).await,
                // The first connection failed before its OPEN: the held one takes over.
                State::Idle | State::Active | State::Connect => {
                    Box::pin(self.attach(incoming, false)).await
                }
                _ => self.pending = Some(incoming),
            }
        }
    }

    /// Lets go of the connection, closing it in the background (see [`Conn::linger`]).
    fn close(&mut self) {
        // A failed write of this connection is moot once it is let go; left pending, it would be
        // taken for a failure of the next one.
        self.write_failed = None;
        if let Some(conn) = self.conn.take() {
            self.closing = Some(tokio::spawn(conn.linger()));
        }
    }

    fn dial(&mut self) {
        let (tx, rx) = oneshot::channel();
        let transport = self.transport.clone();
        tokio::spawn(async move {
            let _ = tx.send(connect(&transport).await);
        });
        self.dialing = Some(rx);
    }

    /// Queues messages for the connection's writer. Waits while its queue is full — at most the
    /// hold time, after which the writer fails (see `writer.rs`); the run loop then takes the
    /// connection as failed.
    async fn write(&mut self, messages: &[Message]) {
        let deadline = self.write_deadline();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if self.write_failed.is_some() {
            return;
        }
        let mut buf = BytesMut::new();
        for m in messages {
            if let Err(e) = conn.codec.encode(m, &mut buf) {
                tracing::error!(peer = %self.address, error = %e, "dropping a message that cannot be encoded");
            }
        }
        tokio::select! {
            // Room in the queue wins, even when stopping: the Cease NOTIFICATION goes out.
            biased;
            sent = conn.writer.send(buf, deadline) => {
                if let Err(reason) = sent {
                    self.write_failed = Some(reason);
                }
            }
            () = self.stopping.cancelled() => {
                self.write_failed =
                    Some("the session was stopped while the peer was not reading".into());
            }
        }
    }

    /// How long a write may wait for the peer to take data: the negotiated hold time, or the
    /// configured one before negotiation (or RFC 4271's 4 minutes when either is 0).
    fn write_deadline(&self) -> Duration {
        let hold = match self.fsm.negotiated() {
            Some(n) => n.hold_time,
            None => Duration::from_secs(u64::from(self.fsm.config().hold_time)),
        };
        if hold.is_zero() {
            DEADLINE_WITHOUT_HOLD_TIME
        } else {
            hold
        }
    }

    async fn established(&mut self, n: Negotiated) {
        tracing::info!(peer = %self.address, hold = ?n.hold_time, families = ?n.families, "session established");
        if let Some(c) = self.conn.as_mut() {
            c.codec.set_asn4(n.asn4);
        }
        {
            // Established in the status before the speaker hears Up: the table it computes for
            // Up reads the peer's families from there, and a status still saying OpenConfirm
            // gave an empty one — a race the session then never recovered from (the speaker sends
            // a table only when it changes).
            let mut s = lock(&self.status);
            s.negotiated = Some(n.clone());
            s.state = State::Established;
            s.since = SystemTime::now();
        }
        let _ = self.events.send(Event::Up(self.address));
        // RFC 4724 §3: the R bit only in the OPENs right after our own restart.
        self.fsm.set_restarting(false);
        self.rib.clear();
        self.eor_pending = true;
        self.sync().await;
    }

    fn down(&mut self, reason: String) {
        tracing::warn!(peer = %self.address, %reason, "session down");
        self.rib.clear();
        let mut s = lock(&self.status);
        s.negotiated = None;
        s.received.clear();
        s.advertised = Arc::default();
        s.last_error = Some((reason.clone(), SystemTime::now()));
        let _ = self.events.send(Event::Down(self.address, reason));
    }

    fn learn(&mut self, u: &crate::message::Update) -> Result<(), LimitExceeded> {
        let mut s = lock(&self.status);
        s.updates_received += 1;
        s.received.apply(u)
    }

    /// Sends the peer the difference between what it has and what it should have.
    /// After the first sync of a session, End-of-RIB for each family (RFC 4724 §2).
    async fn sync(&mut self) {
        let Some(n) = self
            .fsm
            .negotiated()
            .filter(|_| self.fsm.state() == State::Established)
        else {
            return;
        };
        let Some(desired) = self.desired.clone() else {
            return;
        };
        let (asn4, families) = (n.asn4, n.families.clone());
        let updates = self.rib.sync(&desired, asn4);
        let count = updates.len() as u64;
        // Only when someone watches: per-route events cost as much as the routes.
        if !updates.is_empty() && self.watch.receiver_count() > 0 {
            use crate::speaker::SpeakerEvent;
            let peer = self.address;
            for u in &updates {
                for nlri in &u.withdrawn {
                    let _ = self
                        .watch
                        .send(SpeakerEvent::Withdrawn { peer, nlri: *nlri });
                }
                if let Some(a) = &u.attributes {
                    let shared = Arc::new(a.clone());
                    for nlri in &u.announced {
                        let _ = self.watch.send(SpeakerEvent::Advertised {
                            peer,
                            nlri: *nlri,
                            attributes: Arc::clone(&shared),
                        });
                    }
                }
            }
        }
        let messages: Vec<Message> = updates.into_iter().map(Message::Update).collect();
        for batch in messages.chunks(64) {
            self.write(batch).await;
        }
        if std::mem::take(&mut self.eor_pending) {
            let eor: Vec<Message> = families.into_iter().map(Message::EndOfRib).collect();
            self.write(&eor).await;
        }
        let mut s = lock(&self.status);
        s.updates_sent += count;
        s.advertised = Arc::clone(self.rib.routes());
    }

    async fn refresh(&mut self, family: Family) {
        let asn4 = self.fsm.negotiated().is_some_and(|n| n.asn4);
        let messages = self.rib.resend(family, asn4);
        tracing::info!(
            peer = %self.address, ?family, updates = messages.len(),
            "ROUTE-REFRESH from the peer: sending its Adj-RIB-Out again"
        );
        self.write(&messages).await;
    }
}

async fn connect(t: &Transport) -> std::io::Result<TcpStream> {
    let socket = match t.peer {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(key) = &t.password {
        crate::sockopt::set_md5_key(
            std::os::fd::AsFd::as_fd(&socket),
            t.peer.ip(),
            key.as_bytes(),
        )?;
    }
    if let Some(source) = t.source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    set_min_ttl(&socket, t.min_ttl)?;
    // Before connecting, so that the SYN already carries it.
    set_hop_limit(socket2::SockRef::from(&socket), t.ttl)?;
    tokio::time::timeout(Duration::from_secs(10), socket.connect(t.peer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))?
}

/// The hop limit of our packets (RFC 4271 §8.2.1's directly connected eBGP sends with 1): IP_TTL
/// for IPv4, IPV6_UNICAST_HOPS for IPv6 — IP_TTL on an IPv6 socket leaves IPv6 packets at the
/// default of 64. An IPv6 socket may carry IPv4 (a v4-mapped peer on a dual-stack listener), so it
/// gets both.
fn set_hop_limit(socket: socket2::SockRef<'_>, hops: u32) -> std::io::Result<()> {
    if socket.local_addr()?.domain() != socket2::Domain::IPV6 {
        return socket.set_ttl_v4(hops);
    }
    socket.set_unicast_hops_v6(hops)?;
    // Refused on an IPv6-only socket, which never carries IPv4.
    match socket.set_ttl_v4(hops) {
        Err(_) if socket.only_v6().unwrap_or(false) => Ok(()),
        other => other,
    }
}

/// GTSM (RFC 5082 §3): the kernel drops what arrives with fewer hops left than `min`.
fn set_min_ttl(socket: &impl std::os::fd::AsFd, min: Option<u8>) -> std::io::Result<()> {
    let Some(min) = min else {
        return Ok(());
    };
    let fd = socket.as_fd();
    let v6 = socket2::SockRef::from(&fd).local_addr()?.domain() == socket2::Domain::IPV6;
    crate::sockopt::set_min_ttl(fd, v6, min)
}

/// Closes a connection we will not use, telling the peer why.
async fn refuse(mut stream: TcpStream) {
    let mut buf = BytesMut::new();
    let cease = Notification::new(BgpError::Cease(Cease::ConnectionCollision), []);
    if Codec::new()
        .encode(&Message::Notification(cease), &mut buf)
        .is_ok()
    {
        let _ = stream.write_all(&buf).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn recv_dial(
    dialing: &mut Option<oneshot::Receiver<std::io::Result<TcpStream>>>,
) -> std::io::Result<TcpStream> {
    match dialing {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("connect task ended"))),
        None => std::future::pending().await,
    }
}

/// What the connection did: bytes arrived (or its read side ended), or its writer failed.
enum OnConnection {
    Read(std::io::Result<usize>),
    WriteFailed(String),
}

async fn on_connection(conn: &mut Option<Conn>) -> OnConnection {
    let Some(c) = conn else {
        return std::future::pending().await;
    };
    tokio::select! {
        read = c.reader.read_buf(&mut c.buf) => OnConnection::Read(read),
        reason = c.writer.failed() => OnConnection::WriteFailed(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each family's option is set, and read back as the kernel has it.
    #[test]
    fn the_hop_limit_reaches_the_option_of_the_sockets_family() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        set_hop_limit(socket2::SockRef::from(&s), 1).unwrap();
        assert_eq!(socket2::SockRef::from(&s).ttl_v4().unwrap(), 1);

        let v6 = std::net::TcpListener::bind("[::1]:0").expect("IPv6 loopback");
        let s = std::net::TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        set_hop_limit(socket2::SockRef::from(&s), 1).unwrap();
        let s = socket2::SockRef::from(&s);
        assert_eq!(s.unicast_hops_v6().unwrap(), 1, "not left at 64");
        assert_eq!(s.ttl_v4().unwrap(), 1, "v4-mapped traffic too");
    }
}
