//! The BGP session state machine of RFC 4271 §8, without I/O: [`Fsm::process`] takes one input
//! (an event, a received message, a timer firing) and returns what to do — connect, send, close,
//! start or stop a timer, report the session up or down. The session driver (`session.rs`) owns
//! the socket and the clocks; here every transition is a plain function call, tested below
//! without a socket or a sleep.
//!
//! Timers: ConnectRetry (with backoff, RFC 4271 §10 leaves its value to the implementation), Hold
//! and Keepalive (§4.4, §10). Stopping a session sends Cease (RFC 4486). Every error sends the
//! NOTIFICATION §6 prescribes.

use std::net::Ipv4Addr;
use std::time::Duration;

use routeplane_net::Family;

use crate::message::{
    AS_TRANS, AddPath, BgpError, Capabilities, Cease, FsmError, GracefulRestart, Message,
    Notification, Open, OpenError, Update,
};

/// How long a connection may take to deliver the peer's OPEN. RFC 4271 §8 suggests 4 minutes
/// for the OpenSent hold timer; a router sends its OPEN as soon as the connection is up, so 10 s
/// is ample, and a connection that sends nothing or a byte a second (an OPEN is at least 29) is
/// closed before it can pile up with others.
pub const OPEN_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connect => "connect",
            State::Active => "active",
            State::OpenSent => "opensent",
            State::OpenConfirm => "openconfirm",
            State::Established => "established",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

/// What one session is configured to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_asn: u32,
    pub peer_asn: u32,
    pub router_id: Ipv4Addr,
    /// Proposed hold time, seconds (0 or at least 3).
    pub hold_time: u16,
    /// Keepalive interval, seconds; capped at a third of the negotiated hold time.
    pub keepalive_time: u16,
    /// First connect retry; doubles after each failed attempt up to `connect_retry_max`.
    pub connect_retry: Duration,
    pub connect_retry_max: Duration,
    /// Wait for the peer to connect instead of dialling.
    pub passive: bool,
    /// What our OPEN offers.
    pub capabilities: Capabilities,
    /// The most prefixes the peer may send (RFC 4486 §4), and how long the session stays down
    /// when it sends more.
    pub max_prefixes: u32,
    pub max_prefixes_restart: Duration,
}

/// What both sides agreed on in their OPENs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_router_id: Ipv4Addr,
    pub peer_asn: u32,
    pub hold_time: Duration,
    pub keepalive: Duration,
    pub families: Vec<Family>,
    pub asn4: bool,
    pub route_refresh: bool,
    /// Families for which we may send several paths per prefix (we offered send, they receive).
    pub add_path_send: Vec<Family>,
    /// Families whose received NLRI carry path identifiers.
    pub add_path_receive: Vec<Family>,
    pub peer_graceful_restart: Option<GracefulRestart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Start,
    /// Administrative stop: the Cease to send if a session exists, or none to close silently
    /// (what makes a graceful-restart helper keep our routes when it lacks RFC 8538).
    Stop(Option<Notification>),
    TcpConnected,
    TcpFailed(String),
    Received(Message),
    /// A message that did not decode: the NOTIFICATION to send.
    DecodeError(Notification),
    TimerExpired(Timer),
    /// The peer announced one prefix more than `max_prefixes` (the first one past it is of this
    /// family).
    PrefixLimitExceeded(Family),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Connect,
    Send(Message),
    Disconnect,
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    Established(Negotiated),
    /// The session went down (from OpenConfirm or Established) or a connection attempt ended.
    Down(String),
    Update(Update),
    RouteRefresh(Family),
    EndOfRib(Family),
}

#[derive(Debug)]
pub struct Fsm {
    config: SessionConfig,
    state: State,
    enabled: bool,
    retry: Duration,
    negotiated: Option<Negotiated>,
    /// Down for too many prefixes until the ConnectRetry timer fires: connections are refused.
    held_down: bool,
}

impl Fsm {
    pub fn new(config: SessionConfig) -> Fsm {
        let retry = config.connect_retry;
        Fsm {
            config,
            state: State::Idle,
            enabled: false,
            retry,
            negotiated: None,
            held_down: false,
        }
    }

    /// Whether the session waits out its restart timer after too many prefixes, refusing the
    /// peer's connections meanwhile (RFC 4486 §4: it must not come straight back).
    pub fn held_down(&self) -> bool {
        self.held_down
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Clears or sets the R bit of the graceful-restart capability in later OPENs (RFC 4724 §3:
    /// set only in the OPENs right after this speaker restarted).
    pub fn set_restarting(&mut self, restarting: bool) {
        if let Some(gr) = self.config.capabilities.graceful_restart.as_mut() {
            gr.restarting = restarting;
        }
    }

    /// Our OPEN.
    pub fn open(&self) -> Open {
        Open {
            asn: self.config.local_asn,
            hold_time: self.config.hold_time,
            router_id: self.config.router_id,
            capabilities: Capabilities {
                asn4: Some(self.config.local_asn),
                ..self.config.capabilities.clone()
            },
        }
    }

    pub fn process(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match (self.state, input) {
            (_, Input::Start) if self.state == State::Idle => {
                self.enabled = true;
                self.begin(&mut out);
            }
            (_, Input::Start) => {}
            (_, Input::Stop(cease)) => {
                self.enabled = false;
                let reason = match &cease {
                    Some(n) => format!("stopped: {}", n.describe()),
                    None => "stopped for a graceful restart".to_string(),
                };
                if let Some(n) = cease
                    && matches!(
                        self.state,
                        State::OpenSent | State::OpenConfirm | State::Established
                    )
                {
                    out.push(Output::Send(Message::Notification(n)));
                }
                self.reset(&mut out, reason, false);
            }
            (State::Idle, Input::TimerExpired(Timer::ConnectRetry)) if self.enabled => {
                self.held_down = false;
                self.begin(&mut out)
            }
            (State::Idle, _) => {}

            (State::Connect | State::Active, Input::TcpConnected) => {
                out.push(Output::StopTimer(Timer::ConnectRetry));
                out.push(Output::Send(Message::Open(self.open())));
                out.push(Output::StartTimer(Timer::Hold, OPEN_WAIT));
                self.state = State::OpenSent;
            }
            (State::Connect, Input::TcpFailed(_)) => {
                self.state = State::Active;
                self.backoff(&mut out);
            }
            (State::Connect | State::Active, Input::TimerExpired(Timer::ConnectRetry)) => {
                if self.config.passive {
                    out.push(Output::StartTimer(Timer::ConnectRetry, self.retry));
                } else {
                    out.push(Output::Disconnect);
                    out.push(Output::Connect);
                    self.state = State::Connect;
                    self.backoff(&mut out);
                }
            }
            (State::Connect | State::Active, _) => {}

            (State::OpenSent, Input::Received(Message::Open(open))) => match self.check_open(&open)
            {
                Ok(negotiated) => {
                    out.push(Output::Send(Message::Keepalive));
                    self.arm_hold(&mut out, negotiated.hold_time);
                    if !negotiated.keepalive.is_zero() {
                        out.push(Output::StartTimer(Timer::Keepalive, negotiated.keepalive));
                    }
                    self.negotiated = Some(negotiated);
                    self.state = State::OpenConfirm;
                }
                Err(notification) => self.fail(&mut out, notification, "refused the peer's OPEN"),
            },
            (State::OpenSent, Input::TcpFailed(why)) => {
                // RFC 4271 §8.2.2: back to Active, waiting or retrying.
                out.push(Output::Disconnect);
                out.push(Output::StopTimer(Timer::Hold));
                out.push(Output::Down(format!("connection lost in OpenSent: {why}")));
                self.state = State::Active;
                self.backoff(&mut out);
            }

            (State::OpenConfirm, Input::Received(Message::Keepalive)) => {
                let negotiated = self.negotiated.clone();
                if let Some(n) = negotiated {
                    self.arm_hold(&mut out, n.hold_time);
                    self.retry = self.config.connect_retry;
                    out.push(Output::Established(n));
                    self.state = State::Established;
                }
            }

            (State::Established, Input::Received(message)) => {
                if let Some(n) = &self.negotiated {
                    let hold = n.hold_time;
                    self.arm_hold(&mut out, hold);
                }
                match message {
                    Message::Keepalive => {}
                    Message::Update(u) => out.push(Output::Update(u)),
                    Message::RouteRefresh(f) => out.push(Output::RouteRefresh(f)),
                    Message::EndOfRib(f) => out.push(Output::EndOfRib(f)),
                    Message::Notification(n) => {
                        self.reset(&mut out, format!("peer sent {}", n.describe()), true)
                    }
                    Message::Open(_) => {
                        let n =
                            Notification::new(BgpError::Fsm(FsmError::UnexpectedInEstablished), []);
                        self.fail(&mut out, n, "OPEN in Established");
                    }
                }
            }

            (State::OpenSent | State::OpenConfirm, Input::Received(Message::Notification(n))) => {
                self.reset(&mut out, format!("peer sent {}", n.describe()), true);
            }
            (State::OpenSent | State::OpenConfirm, Input::Received(other)) => {
                let error = if self.state == State::OpenSent {
                    FsmError::UnexpectedInOpenSent
                } else {
                    FsmError::UnexpectedInOpenConfirm
                };
                let what = format!("unexpected {} in {}", kind(&other), self.state.name());
                self.fail(&mut out, Notification::new(BgpError::Fsm(error), []), &what);
            }

            (State::OpenConfirm | State::Established, Input::TimerExpired(Timer::Keepalive)) => {
                if let Some(n) = &self.negotiated {
                    out.push(Output::Send(Message::Keepalive));
                    out.push(Output::StartTimer(Timer::Keepalive, n.keepalive));
                }
            }
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Input::TimerExpired(Timer::Hold),
            ) => {
                self.fail(
                    &mut out,
                    Notification::new(BgpError::HoldTimerExpired, []),
                    "hold timer expired",
                );
            }
            (State::OpenSent | State::OpenConfirm | State::Established, Input::DecodeError(n)) => {
                let what = format!("malformed message from the peer ({})", n.describe());
                self.fail(&mut out, n, &what);
            }
            (State::Established, Input::PrefixLimitExceeded(family)) => {
                // RFC 4486 §4: AFI, SAFI and the limit as data.
                let (afi, safi): (u16, u8) = match family {
                    Family::V4 => (1, 1),
                    Family::V6 => (2, 1),
                };
                let limit = self.config.max_prefixes;
                let mut data = afi.to_be_bytes().to_vec();
                data.push(safi);
                data.extend_from_slice(&limit.to_be_bytes());
                let n = Notification::new(BgpError::Cease(Cease::MaxPrefixes), data);
                let restart = self.config.max_prefixes_restart;
                let reason = format!(
                    "the peer sent more than {limit} prefixes (max-prefixes): sent {}; restarting in {restart:?}",
                    n.describe()
                );
                out.push(Output::Send(Message::Notification(n)));
                self.reset(&mut out, reason, false);
                self.held_down = true;
                out.push(Output::StartTimer(Timer::ConnectRetry, restart));
            }
            (State::OpenConfirm | State::Established, Input::TcpFailed(why)) => {
                self.reset(&mut out, format!("connection lost: {why}"), true);
            }
            (State::OpenSent | State::OpenConfirm | State::Established, _) => {}
        }
        out
    }

    fn begin(&mut self, out: &mut Vec<Output>) {
        if self.config.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            out.push(Output::Connect);
        }
        out.push(Output::StartTimer(Timer::ConnectRetry, self.retry));
    }

    /// Restarts the connect retry timer and doubles its next value (up to the maximum).
    fn backoff(&mut self, out: &mut Vec<Output>) {
        out.push(Output::StartTimer(Timer::ConnectRetry, self.retry));
        self.retry = (self.retry * 2).min(self.config.connect_retry_max);
    }

    fn arm_hold(&self, out: &mut Vec<Output>, hold: Duration) {
        if hold.is_zero() {
            out.push(Output::StopTimer(Timer::Hold));
        } else {
            out.push(Output::StartTimer(Timer::Hold, hold));
        }
    }

    /// Sends `notification`, closes, and goes Idle (retrying later if still enabled).
    fn fail(&mut self, out: &mut Vec<Output>, notification: Notification, what: &str) {
        let reason = format!("{what}: sent {}", notification.describe());
        out.push(Output::Send(Message::Notification(notification)));
        self.reset(out, reason, true);
    }

    /// Closes the connection, stops the timers, goes Idle; retries after the backoff if enabled.
    fn reset(&mut self, out: &mut Vec<Output>, reason: String, retry: bool) {
        out.push(Output::Disconnect);
        out.extend([Timer::Hold, Timer::Keepalive, Timer::ConnectRetry].map(Output::StopTimer));
        if self.state != State::Idle {
            out.push(Output::Down(reason));
        }
        self.negotiated = None;
        self.state = State::Idle;
        if retry && self.enabled {
            self.backoff(out);
        }
    }

    /// RFC 4271 §6.2 checks, then the capability negotiation.
    fn check_open(&self, open: &Open) -> Result<Negotiated, Notification> {
        // RFC 6793 §4.2: the 4-octet capability carries the real AS; the 2-octet field may be AS_TRANS.
        let peer_asn = open.capabilities.asn4.unwrap_or(open.asn);
        if peer_asn != self.config.peer_asn {
            let two = u16::try_from(open.asn).unwrap_or(AS_TRANS);
            return Err(Notification::new(
                BgpError::Open(OpenError::BadPeerAs),
                two.to_be_bytes(),
            ));
        }
        // RFC 4271 §6.2: 1 and 2 are never acceptable. 0 turns keepalives and the hold timer off
        // for both sides, so that a dead peer is never noticed: a peer may ask for it only when
        // this side is configured for it too (hold-time 0s), as an operator's choice.
        let zero_unasked = open.hold_time == 0 && self.config.hold_time != 0;
        if open.hold_time == 1 || open.hold_time == 2 || zero_unasked {
            return Err(Notification::new(
                BgpError::Open(OpenError::UnacceptableHoldTime),
                [],
            ));
        }
        let id = open.router_id;
        let same_as_ours =
            id == self.config.router_id && self.config.peer_asn == self.config.local_asn;
        if id.is_unspecified() || id.is_multicast() || id.is_broadcast() || same_as_ours {
            return Err(Notification::new(
                BgpError::Open(OpenError::BadBgpIdentifier),
                id.octets(),
            ));
        }
        let hold = self.config.hold_time.min(open.hold_time);
        let hold_time = Duration::from_secs(hold.into());
        let keepalive = if hold == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(
                self.config
                    .keepalive_time
                    .clamp(1, (hold / 3).max(1))
                    .into(),
            )
        };
        let theirs = &open.capabilities;
        let ours = &self.config.capabilities;
        // RFC 4760 §8: a speaker that sends no multiprotocol capability does IPv4 unicast only.
        let their_families = if theirs.families.is_empty() {
            vec![Family::V4]
        } else {
            theirs.families.clone()
        };
        let our_families = if ours.families.is_empty() {
            vec![Family::V4]
        } else {
            ours.families.clone()
        };
        let families = our_families
            .into_iter()
            .filter(|f| their_families.contains(f))
            .collect();
        let pairs = |mine: fn(&AddPath) -> bool, peer: fn(&AddPath) -> bool| -> Vec<Family> {
            ours.add_path
                .iter()
                .filter(|a| {
                    mine(a)
                        && theirs
                            .add_path
                            .iter()
                            .any(|b| b.family == a.family && peer(b))
                })
                .map(|a| a.family)
                .collect()
        };
        Ok(Negotiated {
            peer_router_id: id,
            peer_asn,
            hold_time,
            keepalive,
            families,
            asn4: theirs.asn4.is_some(),
            route_refresh: theirs.route_refresh,
            add_path_send: pairs(|a| a.send, |b| b.receive),
            add_path_receive: pairs(|a| a.receive, |b| b.send),
            peer_graceful_restart: theirs.graceful_restart.clone(),
        })
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "OPEN",
        Message::Update(_) => "UPDATE",
        Message::Notification(_) => "NOTIFICATION",
        Message::Keepalive => "KEEPALIVE",
        Message::RouteRefresh(_) => "ROUTE-REFRESH",
        Message::EndOfRib(_) => "UPDATE (End-of-RIB)",
    }
}

#[cfg(test)]
mod tests;
