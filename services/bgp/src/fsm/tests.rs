use super::*;
use crate::message::UpdateError;

const OUR_ID: Ipv4Addr = Ipv4Addr::new(10, 4, 36, 10);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(10, 4, 36, 239);

fn config() -> SessionConfig {
    SessionConfig {
        local_asn: 64513,
        peer_asn: 64524,
        router_id: OUR_ID,
        hold_time: 90,
        keepalive_time: 30,
        connect_retry: Duration::from_secs(5),
        connect_retry_max: Duration::from_secs(60),
        passive: false,
        capabilities: Capabilities {
            families: vec![Family::V4, Family::V6],
            route_refresh: true,
            add_path: vec![AddPath {
                family: Family::V4,
                send: true,
                receive: false,
            }],
            ..Capabilities::default()
        },
        max_prefixes: 100,
        max_prefixes_restart: Duration::from_secs(300),
    }
}

fn peer_open(asn: u32, hold: u16) -> Open {
    Open {
        asn,
        hold_time: hold,
        router_id: PEER_ID,
        capabilities: Capabilities {
            families: vec![Family::V4],
            asn4: Some(asn),
            route_refresh: true,
            ..Capabilities::default()
        },
    }
}

fn sent(out: &[Output]) -> Vec<&Message> {
    out.iter()
        .filter_map(|o| {
            if let Output::Send(m) = o {
                Some(m)
            } else {
                None
            }
        })
        .collect()
}

fn notification(out: &[Output]) -> Option<(u8, u8)> {
    sent(out).into_iter().find_map(|m| {
        if let Message::Notification(n) = m {
            Some((n.code, n.subcode))
        } else {
            None
        }
    })
}

fn timer(out: &[Output], t: Timer) -> Option<Duration> {
    out.iter().rev().find_map(|o| match o {
        Output::StartTimer(x, d) if *x == t => Some(*d),
        _ => None,
    })
}

fn opensent(cfg: SessionConfig) -> Fsm {
    let mut f = Fsm::new(cfg);
    f.process(Input::Start);
    f.process(Input::TcpConnected);
    assert_eq!(f.state(), State::OpenSent);
    f
}

fn established() -> (Fsm, Negotiated) {
    let mut f = opensent(config());
    f.process(Input::Received(Message::Open(peer_open(64524, 90))));
    let out = f.process(Input::Received(Message::Keepalive));
    let n = out
        .iter()
        .find_map(|o| {
            if let Output::Established(n) = o {
                Some(n.clone())
            } else {
                None
            }
        })
        .expect("established");
    (f, n)
}

#[test]
fn start_dials_and_arms_connect_retry() {
    let mut f = Fsm::new(config());
    let out = f.process(Input::Start);
    assert_eq!(f.state(), State::Connect);
    assert_eq!(
        out,
        vec![
            Output::Connect,
            Output::StartTimer(Timer::ConnectRetry, Duration::from_secs(5))
        ]
    );
    assert!(
        f.process(Input::Start).is_empty(),
        "a second start changes nothing"
    );
}

#[test]
fn passive_waits_in_active_without_dialling() {
    let mut f = Fsm::new(SessionConfig {
        passive: true,
        ..config()
    });
    let out = f.process(Input::Start);
    assert_eq!(f.state(), State::Active);
    assert!(!out.contains(&Output::Connect));
    let out = f.process(Input::TimerExpired(Timer::ConnectRetry));
    assert!(!out.contains(&Output::Connect) && f.state() == State::Active);
    f.process(Input::TcpConnected);
    assert_eq!(
        f.state(),
        State::OpenSent,
        "an accepted connection proceeds"
    );
}

#[test]
fn connected_sends_our_open_with_a_large_hold_timer() {
    let mut f = Fsm::new(config());
    f.process(Input::Start);
    let out = f.process(Input::TcpConnected);
    let [Message::Open(open)] = sent(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (open.asn, open.hold_time, open.router_id),
        (64513, 90, OUR_ID)
    );
    assert_eq!(
        open.capabilities.asn4,
        Some(64513),
        "4-octet AS capability always offered"
    );
    assert_eq!(open.capabilities.families, vec![Family::V4, Family::V6]);
    assert_eq!(timer(&out, Timer::Hold), Some(OPEN_WAIT));
}

/// A connection that never delivers an OPEN (or sends it a byte a second) is closed when the
/// short OPEN wait runs out, with Hold Timer Expired.
#[test]
fn no_open_within_the_open_wait_closes_the_connection() {
    let mut f = opensent(config());
    assert!(OPEN_WAIT <= Duration::from_secs(10));
    let out = f.process(Input::TimerExpired(Timer::Hold));
    assert_eq!(notification(&out), Some((4, 0)));
    assert!(out.contains(&Output::Disconnect));
    assert_eq!(f.state(), State::Idle);
}

/// RFC 4486 §4: Cease/Maximum Number of Prefixes Reached with AFI, SAFI and the limit; the
/// session stays down, refusing connections, until the restart timer fires.
#[test]
fn too_many_prefixes_ceases_and_holds_the_session_down_until_the_restart_timer() {
    let (mut f, _) = established();
    let out = f.process(Input::PrefixLimitExceeded(Family::V6));
    let n = sent(&out)
        .into_iter()
        .find_map(|m| match m {
            Message::Notification(n) => Some(n.clone()),
            _ => None,
        })
        .expect("a NOTIFICATION");
    assert_eq!((n.code, n.subcode), (6, 1));
    assert_eq!(n.data, [0, 2, 1, 0, 0, 0, 100], "AFI 2, SAFI 1, limit 100");
    assert_eq!(f.state(), State::Idle);
    assert!(f.held_down());
    assert_eq!(
        timer(&out, Timer::ConnectRetry),
        Some(Duration::from_secs(300)),
        "the restart timer, not the connect backoff"
    );
    assert!(
        matches!(out.iter().find(|o| matches!(o, Output::Down(_))), Some(Output::Down(r)) if r.contains("more than 100 prefixes")),
        "{out:?}"
    );
    let out = f.process(Input::TimerExpired(Timer::ConnectRetry));
    assert!(!f.held_down());
    assert!(out.contains(&Output::Connect), "dials again after the wait");
}

#[test]
fn a_prefix_limit_outside_established_changes_nothing() {
    let mut f = opensent(config());
    assert!(f.process(Input::PrefixLimitExceeded(Family::V4)).is_empty());
    assert_eq!(f.state(), State::OpenSent);
}

#[test]
fn open_then_keepalive_establishes_with_negotiated_timers() {
    let mut f = opensent(config());
    let out = f.process(Input::Received(Message::Open(peer_open(64524, 9))));
    assert_eq!(f.state(), State::OpenConfirm);
    assert_eq!(sent(&out), vec![&Message::Keepalive]);
    assert_eq!(
        timer(&out, Timer::Hold),
        Some(Duration::from_secs(9)),
        "hold = min(90, 9)"
    );
    assert_eq!(
        timer(&out, Timer::Keepalive),
        Some(Duration::from_secs(3)),
        "keepalive capped at hold/3"
    );
    let out = f.process(Input::Received(Message::Keepalive));
    assert_eq!(f.state(), State::Established);
    let Some(Output::Established(n)) = out.iter().find(|o| matches!(o, Output::Established(_)))
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        n.families,
        vec![Family::V4],
        "intersection of offered families"
    );
    assert!(n.asn4 && n.route_refresh);
    assert_eq!(n.peer_router_id, PEER_ID);
}

#[test]
fn wrong_peer_as_is_refused_with_bad_peer_as() {
    let mut f = opensent(config());
    let out = f.process(Input::Received(Message::Open(peer_open(64999, 90))));
    assert_eq!(notification(&out), Some((2, 2)));
    let Some(Message::Notification(n)) = sent(&out).into_iter().next().cloned() else {
        panic!()
    };
    assert_eq!(
        n.data,
        64999u16.to_be_bytes().to_vec(),
        "the data is the AS the peer claimed"
    );
    assert!(out.contains(&Output::Disconnect));
    assert_eq!(f.state(), State::Idle);
    assert_eq!(
        timer(&out, Timer::ConnectRetry),
        Some(Duration::from_secs(5)),
        "retries later"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Down(r) if r.contains("Bad Peer AS")))
    );
}

#[test]
fn unacceptable_hold_time_and_bad_identifier() {
    let mut f = opensent(config());
    let out = f.process(Input::Received(Message::Open(peer_open(64524, 2))));
    assert_eq!(notification(&out), Some((2, 6)));

    let mut f = opensent(config());
    let zero = Open {
        router_id: Ipv4Addr::UNSPECIFIED,
        ..peer_open(64524, 90)
    };
    let out = f.process(Input::Received(Message::Open(zero)));
    assert_eq!(notification(&out), Some((2, 3)));

    // iBGP peers must have distinct identifiers; eBGP peers may share ours.
    let ibgp = SessionConfig {
        local_asn: 64512,
        peer_asn: 64512,
        ..config()
    };
    let mut f = opensent(ibgp);
    let out = f.process(Input::Received(Message::Open(Open {
        router_id: OUR_ID,
        ..peer_open(64512, 90)
    })));
    assert_eq!(notification(&out), Some((2, 3)));
    let mut f = opensent(config());
    let out = f.process(Input::Received(Message::Open(Open {
        router_id: OUR_ID,
        ..peer_open(64524, 90)
    })));
    assert_eq!(notification(&out), None);
}

#[test]
fn four_octet_as_arrives_in_the_capability_behind_as_trans() {
    let cfg = SessionConfig {
        peer_asn: 4_200_000_001,
        ..config()
    };
    let mut f = opensent(cfg);
    let open = Open {
        asn: u32::from(AS_TRANS),
        ..peer_open(4_200_000_001, 90)
    };
    f.process(Input::Received(Message::Open(open)));
    assert_eq!(f.state(), State::OpenConfirm);
    assert_eq!(f.negotiated().unwrap().peer_asn, 4_200_000_001);
}

#[test]
fn a_peer_without_multiprotocol_capabilities_gets_ipv4_only() {
    let mut f = opensent(config());
    let bare = Open {
        capabilities: Capabilities::default(),
        ..peer_open(64524, 90)
    };
    f.process(Input::Received(Message::Open(bare)));
    let n = f.negotiated().unwrap();
    assert_eq!(n.families, vec![Family::V4]);
    assert!(!n.asn4 && !n.route_refresh);
}

#[test]
fn add_path_send_needs_the_peer_to_receive() {
    let mut f = opensent(config());
    let mut open = peer_open(64524, 90);
    open.capabilities.add_path = vec![AddPath {
        family: Family::V4,
        send: false,
        receive: true,
    }];
    f.process(Input::Received(Message::Open(open)));
    assert_eq!(f.negotiated().unwrap().add_path_send, vec![Family::V4]);
    assert!(
        f.negotiated().unwrap().add_path_receive.is_empty(),
        "we did not offer receive"
    );

    let mut f = opensent(config());
    let mut open = peer_open(64524, 90);
    open.capabilities.add_path = vec![AddPath {
        family: Family::V4,
        send: true,
        receive: false,
    }];
    f.process(Input::Received(Message::Open(open)));
    assert!(f.negotiated().unwrap().add_path_send.is_empty());
}

#[test]
fn zero_hold_time_is_refused_unless_configured_here_too() {
    let mut f = opensent(config());
    let out = f.process(Input::Received(Message::Open(peer_open(64524, 0))));
    assert_eq!(
        notification(&out),
        Some((2, 6)),
        "a peer cannot switch our liveness checks off"
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn zero_hold_time_configured_means_no_hold_timer_and_no_keepalives() {
    let mut f = opensent(SessionConfig {
        hold_time: 0,
        ..config()
    });
    let out = f.process(Input::Received(Message::Open(peer_open(64524, 0))));
    assert!(out.contains(&Output::StopTimer(Timer::Hold)));
    assert_eq!(timer(&out, Timer::Keepalive), None);
    let out = f.process(Input::Received(Message::Keepalive));
    assert_eq!(timer(&out, Timer::Hold), None);
}

#[test]
fn hold_timer_expiry_sends_notification_and_goes_down() {
    let (mut f, _) = established();
    let out = f.process(Input::TimerExpired(Timer::Hold));
    assert_eq!(notification(&out), Some((4, 0)));
    assert!(out.contains(&Output::Disconnect));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Down(r) if r.contains("hold timer expired")))
    );
    assert_eq!(f.state(), State::Idle);
    let out = f.process(Input::TimerExpired(Timer::ConnectRetry));
    assert!(
        out.contains(&Output::Connect),
        "an enabled session tries again"
    );
}

#[test]
fn keepalives_are_sent_and_any_message_rearms_hold() {
    let (mut f, n) = established();
    let out = f.process(Input::TimerExpired(Timer::Keepalive));
    assert_eq!(sent(&out), vec![&Message::Keepalive]);
    assert_eq!(timer(&out, Timer::Keepalive), Some(n.keepalive));
    let update = Update {
        withdrawn: vec![],
        attributes: None,
        announced: vec![],
    };
    let out = f.process(Input::Received(Message::Update(update.clone())));
    assert_eq!(timer(&out, Timer::Hold), Some(n.hold_time));
    assert!(out.contains(&Output::Update(update)));
    let out = f.process(Input::Received(Message::RouteRefresh(Family::V4)));
    assert!(out.contains(&Output::RouteRefresh(Family::V4)));
}

#[test]
fn peer_notification_in_established_goes_down_without_answering() {
    let (mut f, _) = established();
    let cease = Notification::new(BgpError::Cease(Cease::AdministrativeShutdown), []);
    let out = f.process(Input::Received(Message::Notification(cease)));
    assert_eq!(
        notification(&out),
        None,
        "a NOTIFICATION is never answered with one"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Down(r) if r.contains("Administrative Shutdown")))
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let mut f = opensent(config());
    let out = f.process(Input::Received(Message::Keepalive));
    assert_eq!(notification(&out), Some((5, 1)));

    let mut f = opensent(config());
    f.process(Input::Received(Message::Open(peer_open(64524, 90))));
    let out = f.process(Input::Received(Message::Update(Update::default())));
    assert_eq!(notification(&out), Some((5, 2)));

    let (mut f, _) = established();
    let out = f.process(Input::Received(Message::Open(peer_open(64524, 90))));
    assert_eq!(notification(&out), Some((5, 3)));
}

#[test]
fn a_decode_error_sends_the_notification_it_carries() {
    let (mut f, _) = established();
    let malformed = Notification::new(BgpError::Update(UpdateError::MalformedAttributeList), []);
    let out = f.process(Input::DecodeError(malformed.clone()));
    assert_eq!(sent(&out), vec![&Message::Notification(malformed)]);
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn stop_sends_cease_and_does_not_retry_until_started() {
    let (mut f, _) = established();
    let cease = Notification::new(BgpError::Cease(Cease::AdministrativeShutdown), []);
    let out = f.process(Input::Stop(Some(cease.clone())));
    assert_eq!(sent(&out), vec![&Message::Notification(cease)]);
    assert_eq!(timer(&out, Timer::ConnectRetry), None);
    assert!(
        f.process(Input::TimerExpired(Timer::ConnectRetry))
            .is_empty()
    );
    assert!(f.process(Input::Start).contains(&Output::Connect));

    let mut idle = Fsm::new(config());
    let out = idle.process(Input::Stop(Some(Notification::new(
        BgpError::Cease(Cease::AdministrativeShutdown),
        [],
    ))));
    assert_eq!(notification(&out), None, "no session, nothing to tell");

    let (mut g, _) = established();
    let out = g.process(Input::Stop(None));
    assert_eq!(
        notification(&out),
        None,
        "a graceful stop closes without a NOTIFICATION"
    );
    assert!(out.contains(&Output::Disconnect));
}

#[test]
fn connect_failures_back_off_up_to_the_maximum() {
    let mut f = Fsm::new(config());
    f.process(Input::Start);
    let mut delays = Vec::new();
    for _ in 0..6 {
        let out = f.process(Input::TcpFailed("refused".into()));
        delays.push(timer(&out, Timer::ConnectRetry).unwrap().as_secs());
        let out = f.process(Input::TimerExpired(Timer::ConnectRetry));
        assert!(out.contains(&Output::Connect));
        delays.push(timer(&out, Timer::ConnectRetry).unwrap().as_secs());
    }
    assert_eq!(delays, vec![5, 10, 20, 40, 60, 60, 60, 60, 60, 60, 60, 60]);
    // Establishing resets the backoff.
    f.process(Input::TcpConnected);
    f.process(Input::Received(Message::Open(peer_open(64524, 90))));
    f.process(Input::Received(Message::Keepalive));
    let out = f.process(Input::TimerExpired(Timer::Hold));
    assert_eq!(
        timer(&out, Timer::ConnectRetry),
        Some(Duration::from_secs(5))
    );
}

#[test]
fn losing_the_connection_in_opensent_returns_to_active() {
    let mut f = opensent(config());
    let out = f.process(Input::TcpFailed("reset".into()));
    assert_eq!(f.state(), State::Active);
    assert!(timer(&out, Timer::ConnectRetry).is_some());
    assert_eq!(notification(&out), None);
}
