//! More clients than the soft open-files limit the server was started with (1,024 under systemd
//! and most shells; 5,000 agents hold 5,000 connections): routeplane-ipam raises its soft limit
//! to the hard one at start, so that every client is served rather than refused with EMFILE at
//! accept. This file holds one test because it lowers the limit its own process starts children
//! with.

mod common;

use std::time::Duration;

use common::Server;
use futures::StreamExt as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use tonic::transport::Endpoint;

/// The soft limit IPAM is started with: the connections below are well past it.
const SOFT: u64 = 128;
const CONNECTIONS: usize = 400;
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Max open files (soft, hard) of a process, from /proc.
fn limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut n = line.split_whitespace().skip(3).map(|v| v.parse().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_clients_than_the_soft_open_files_limit_are_all_served() {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 2 * CONNECTIONS as u64,
        "this test needs a hard open-files limit of at least {} (ulimit -Hn), not {hard}",
        2 * CONNECTIONS
    );
    let dir = tempfile::tempdir().unwrap();
    // Started with a low soft limit, as a child of a shell or a systemd unit would be; then this
    // process takes its own back, to be the many clients.
    setrlimit(Resource::RLIMIT_NOFILE, SOFT, hard).unwrap();
    let server = Server::start(dir.path(), &[]);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert_eq!(limits(server.pid()), (hard, hard), "{}", server.log());
    assert!(
        server.log().contains("raised the open-files limit"),
        "{}",
        server.log()
    );

    // Each on a connection of its own, every one kept open until all have answered.
    let endpoint = server.endpoint();
    let answered: Vec<_> = futures::stream::iter(0..CONNECTIONS)
        .map(|_| {
            let endpoint = endpoint.clone();
            async move {
                let channel = Endpoint::from_shared(endpoint)
                    .unwrap()
                    .connect_timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut c = IpamClient::new(channel);
                // Bounded: a connection the server could not accept sits in the kernel's backlog,
                // connected but never answered.
                tokio::time::timeout(CALL_LIMIT, c.list_nodes(pb::ListNodesRequest::default()))
                    .await
                    .map_err(|_| format!("no answer within {CALL_LIMIT:?}"))?
                    .map_err(|s| s.to_string())?;
                Ok::<_, String>(c)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let failed: Vec<&String> = answered.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CONNECTIONS} connections failed, first: {:?}\n{}",
        failed.len(),
        failed.first(),
        server.log()
    );
    // And all at once: each asks again while every other is still open.
    let again = futures::future::join_all(answered.into_iter().flatten().map(|mut c| async move {
        tokio::time::timeout(CALL_LIMIT, c.list_nodes(pb::ListNodesRequest::default()))
            .await
            .is_ok_and(|r| r.is_ok())
    }))
    .await;
    assert_eq!(again.iter().filter(|ok| **ok).count(), CONNECTIONS);
}
