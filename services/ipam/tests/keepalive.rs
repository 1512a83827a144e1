//! A peer that goes silent without closing its connection — a partition, a host powered off, a
//! process stopped — is noticed through HTTP/2 keepalives, on both sides of a Watch stream: the
//! test stops one side with SIGSTOP (its kernel still acknowledges TCP, so only PINGs can tell)
//! and waits for the other to end the stream. Without keepalives neither side ever would. And a
//! watcher that is alive but stops reading is cut off after --watch-send-deadline, and told why.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_runtime::dial::Dialer;
use routeplane_runtime::grpc::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, SERVER_KEEPALIVE_INTERVAL};

/// Interval and timeout, and time for a PING to be due and the close to reach the other side.
fn detection_bound(interval: Duration) -> Duration {
    interval + KEEPALIVE_TIMEOUT + Duration::from_secs(10)
}

/// SIGSTOP or SIGCONT to a process group (grpcurl runs behind pyenv and Python wrappers).
fn signal_group(signal: &str, pgid: u32) {
    routeplane_testkit::sh(&["kill", signal, "--", &format!("-{pgid}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_notices_a_server_that_went_silent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let channel = Dialer::loopback_only()
        .connect(&server.endpoint())
        .await
        .unwrap();
    let mut watch = IpamClient::new(channel)
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The snapshot came: the stream is open and now quiet.
    watch.message().await.unwrap().unwrap();

    let stopped = Instant::now();
    server.signal("-STOP");
    let ended = tokio::time::timeout(detection_bound(KEEPALIVE_INTERVAL), watch.message()).await;
    server.signal("-CONT");
    let after = stopped.elapsed();
    match ended {
        Ok(Err(status)) => println!("stream ended after {after:?}: {status}"),
        Ok(Ok(None)) => println!("stream closed after {after:?}"),
        Ok(Ok(Some(m))) => panic!("a message from a stopped server: {m:?}"),
        Err(_) => panic!("the stream still looked open {after:?} after the server stopped"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_the_watch_of_a_client_that_went_silent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let watchers = || server.metric("routeplane_ipam_watchers");
    // scripts/test installs grpcurl; without it this fails, loudly.
    let mut client = Command::new("grpcurl")
        .args(["-plaintext", "-d", "{}", &server.grpc.to_string()])
        .arg("routeplane.ipam.v1.Ipam/Watch")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("grpcurl");
    let pgid = client.id();
    let started = Instant::now();
    while watchers() < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "grpcurl never watched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    signal_group("-STOP", pgid);
    let stopped = Instant::now();
    while watchers() > 0.0 && stopped.elapsed() < detection_bound(SERVER_KEEPALIVE_INTERVAL) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = watchers();
    signal_group("-CONT", pgid);
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(
        left,
        0.0,
        "the stopped client's Watch still held {:?} after it went silent",
        stopped.elapsed()
    );
    println!(
        "watch ended {:?} after the client stopped",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_and_told_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--watch-send-deadline", "2s"]);
    let mut c = server.client().await;
    let mut watch = c
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    assert_eq!(server.metric("routeplane_ipam_watchers"), 1.0);
    // Then it reads nothing while nodes with 7 KiB of labels each come and go: some MiB of
    // events, past what HTTP/2's windows and the stream's queue hold.
    let labels: std::collections::HashMap<String, String> = (0..60)
        .map(|i| (format!("label-{i:02}-{}", "k".repeat(50)), "v".repeat(63)))
        .collect();
    for n in 0..400 {
        c.register_node(pb::RegisterNodeRequest {
            name: format!("n{n}"),
            addresses: vec![format!("192.0.2.{}", n % 250 + 1)],
            labels: labels.clone(),
        })
        .await
        .unwrap();
        c.delete_node(pb::DeleteNodeRequest {
            name: format!("n{n}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let started = Instant::now();
    while server.metric("routeplane_ipam_watchers") > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a watcher that does not read is still served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading again, it gets what was queued and then why it was cut off.
    let status = loop {
        match watch.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("took no message for 2s")
            && status.message().contains("fromRevision="),
        "{status:?}"
    );
}
