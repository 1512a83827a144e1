//! A disk that refuses writes, under a real routeplane-ipam on a real (small, loop-mounted ext4)
//! filesystem: filled until ENOSPC, and its device failed (EIO) so that ext4 turns read-only.
//! While it refuses, writes are refused with UNAVAILABLE naming the cause, health reports the
//! writes NOT_SERVING (the service itself stays SERVING), reads answer exactly what was
//! acknowledged and Watch streams go on. A full disk that is freed takes writes again by itself;
//! a read-only one after repair and a restart. Either way every acknowledged allocation is there
//! exactly once afterwards, and no address has two owners.

mod common;

mod privileged {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use routeplane_api::ipam::v1 as pb;
    use routeplane_api::ipam::v1::ipam_client::IpamClient;
    use routeplane_testkit::disk::{LoopDisk, TOOLS};
    use routeplane_testkit::privileged::require;
    use tonic::transport::Channel;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use super::common::{Server, values_file};

    /// Owner → addresses, as acknowledged to clients or as the server lists them.
    type Held = BTreeMap<String, Vec<String>>;

    const CLIENTS: usize = 8;
    /// Allocations per client at most while waiting for the disk to refuse (it refuses within a
    /// block or two of log), and before and after it does.
    const UNTIL_REFUSED: usize = 400;
    const A_FEW: usize = 10;

    fn start(data: &Path, dir: &Path) -> Server {
        // Nodes of a /20: room for every allocation the test makes.
        let values = values_file(dir, "10.64.0.0/14", 20);
        Server::start(data, &["--values", values.to_str().unwrap()])
    }

    async fn register(c: &mut IpamClient<Channel>, node: &str) -> Result<(), tonic::Status> {
        c.register_node(pb::RegisterNodeRequest {
            name: node.into(),
            addresses: vec![],
            labels: Default::default(),
        })
        .await
        .map(drop)
    }

    async fn allocate(
        c: &mut IpamClient<Channel>,
        owner: &str,
    ) -> Result<Vec<String>, tonic::Status> {
        let req = pb::AllocatePodIpRequest {
            node: "n1".into(),
            owner: owner.into(),
            family: 0,
        };
        Ok(c.allocate_pod_ip(req).await?.into_inner().ips)
    }

    /// CLIENTS clients allocate at once, each until its first refusal (at most `attempts`): what
    /// was acknowledged, and the refusals by owner.
    async fn allocate_until_refused(
        server: &Server,
        round: &str,
        attempts: usize,
    ) -> (Held, Vec<(String, tonic::Status)>) {
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let mut c = server.client().await;
            let round = round.to_string();
            tasks.push(tokio::spawn(async move {
                let mut acked = Held::new();
                for i in 0..attempts {
                    let owner = format!("{round}-{client}-{i}");
                    match allocate(&mut c, &owner).await {
                        Ok(ips) => acked.insert(owner, ips),
                        Err(status) => return (acked, Some((owner, status))),
                    };
                }
                (acked, None)
            }));
        }
        let (mut acked, mut refusals) = (Held::new(), Vec::new());
        for task in tasks {
            let (a, refused) = task.await.unwrap();
            acked.extend(a);
            refusals.extend(refused);
        }
        (acked, refusals)
    }

    async fn held(server: &Server) -> Held {
        let mut c = server.client().await;
        let list = c
            .list_pod_i_ps(pb::ListPodIPsRequest { node: "n1".into() })
            .await
            .expect("reads are served")
            .into_inner();
        list.allocations
            .into_iter()
            .map(|p| (p.owner, p.ips))
            .collect()
    }

    /// The server holds exactly what was acknowledged — besides, at most, allocations whose
    /// refusal said their fate is unknown (`uncertain`) — and no address twice.
    fn assert_exactly(held: &Held, acked: &Held, uncertain: &BTreeSet<String>, when: &str) {
        let owners = |h: &Held| h.keys().cloned().collect::<BTreeSet<_>>();
        let (lost, extra): (Vec<_>, Vec<_>) = (
            owners(acked).difference(&owners(held)).cloned().collect(),
            owners(held)
                .difference(&owners(acked))
                .filter(|o| !uncertain.contains(*o))
                .cloned()
                .collect(),
        );
        assert!(
            lost.is_empty() && extra.is_empty(),
            "{when}: acknowledged but missing {lost:?}; held but never acknowledged {extra:?}"
        );
        for (owner, ips) in acked {
            assert_eq!(
                held.get(owner),
                Some(ips),
                "{when}: {owner} holds other addresses"
            );
        }
        let addresses: Vec<&String> = held.values().flatten().collect();
        let unique: BTreeSet<&String> = addresses.iter().copied().collect();
        assert_eq!(
            unique.len(),
            addresses.len(),
            "{when}: an address held twice"
        );
    }

    async fn health(server: &Server, service: &str) -> i32 {
        HealthClient::new(server.channel().await)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status
    }

    /// Refused with UNAVAILABLE naming `cause`; health and the metric say so; the service stays
    /// SERVING.
    async fn assert_degraded(
        server: &Server,
        refusals: &[(String, tonic::Status)],
        causes: &[&str],
    ) {
        assert!(!refusals.is_empty(), "the disk never refused a write");
        let named = |status: &tonic::Status| causes.iter().any(|c| status.message().contains(c));
        for (_, status) in refusals {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(named(status), "{status:?} names none of {causes:?}");
        }
        routeplane_testkit::wait_for(
            "routeplane_ipam_writes_refused to be 1",
            Duration::from_secs(10),
            || server.metric("routeplane_ipam_writes_refused") == 1.0,
        );
        assert_eq!(
            health(server, "routeplane.ipam.v1.Ipam/writes").await,
            ServingStatus::NotServing as i32
        );
        assert_eq!(
            health(server, "routeplane.ipam.v1.Ipam").await,
            ServingStatus::Serving as i32,
            "reads and Watch are served"
        );
        let mut c = server.client().await;
        let status = allocate(&mut c, "while-refused").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(named(&status), "{status:?} names none of {causes:?}");
        // A Watch opened now starts with the durable snapshot.
        let mut watch = c
            .watch(pb::WatchRequest::default())
            .await
            .expect("Watch is served")
            .into_inner();
        let first = watch.message().await.unwrap().expect("a snapshot");
        assert!(format!("{first:?}").contains("\"n1\""), "{first:?}");
    }

    /// Refused allocations whose refusal says the disk may yet hold them (a sync failed and the
    /// log could not be cut back: the client retries, by owner, to learn the outcome).
    fn uncertain(refusals: &[(String, tonic::Status)]) -> BTreeSet<String> {
        refusals
            .iter()
            .filter(|(_, s)| s.message().contains("may yet hold them"))
            .map(|(owner, _)| owner.clone())
            .collect()
    }

    async fn open_watch(server: &Server) -> tonic::Streaming<pb::WatchEvent> {
        let mut w = server
            .client()
            .await
            .watch(pb::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        w.message().await.unwrap().expect("the snapshot");
        w
    }

    /// A server on a fresh 64 MiB loop disk, node n1 registered and a few allocations made.
    async fn started_on_a_small_disk() -> (LoopDisk, PathBuf, Server, IpamClient<Channel>, Held) {
        require(TOOLS);
        let disk = LoopDisk::new(64);
        let data = disk.path().join("ipam");
        let server = start(&data, disk.path());
        let mut c = server.client().await;
        register(&mut c, "n1").await.unwrap();
        let (acked, refused) = allocate_until_refused(&server, "before", A_FEW).await;
        assert!(refused.is_empty(), "{refused:?}");
        (disk, data, server, c, acked)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_refuses_writes_serves_reads_and_takes_writes_again_once_freed() {
        let (disk, data, server, mut c, mut acked) = started_on_a_small_disk().await;
        let mut watch = open_watch(&server).await;

        let filled = disk.fill();
        println!("filled the disk with {filled} bytes");
        let (during, refusals) = allocate_until_refused(&server, "full", UNTIL_REFUSED).await;
        acked.extend(during);
        assert_degraded(&server, &refusals, &["No space left on device"]).await;
        // A full disk refuses the write itself, and the log is cut back: nothing is uncertain.
        let none = uncertain(&refusals);
        assert!(none.is_empty(), "{refusals:?}");
        assert_exactly(
            &held(&server).await,
            &acked,
            &none,
            "while the disk is full",
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(500), watch.message())
                .await
                .is_err(),
            "the Watch opened before the disk filled is still open and quiet"
        );

        disk.free();
        let freed = Instant::now();
        let resumed = loop {
            match register(&mut c, "n2").await {
                Ok(()) => break freed.elapsed(),
                Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable),
            }
            assert!(
                freed.elapsed() < Duration::from_secs(20),
                "writes never resumed after the disk was freed:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("writes resumed {resumed:?} after the disk was freed");
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the old Watch carries the change made after the disk was freed")
            .unwrap()
            .unwrap();
        assert!(format!("{event:?}").contains("\"n2\""), "{event:?}");
        assert_eq!(server.metric("routeplane_ipam_writes_refused"), 0.0);
        assert!(server.metric("routeplane_ipam_storage_faults_total") >= 1.0);
        assert_eq!(
            health(&server, "routeplane.ipam.v1.Ipam/writes").await,
            ServingStatus::Serving as i32
        );
        let (after, refused) = allocate_until_refused(&server, "after", A_FEW).await;
        assert!(refused.is_empty(), "{refused:?}");
        acked.extend(after);
        assert_exactly(
            &held(&server).await,
            &acked,
            &none,
            "after the disk was freed",
        );

        assert!(server.terminate().success());
        let server = start(&data, disk.path());
        assert_exactly(&held(&server).await, &acked, &none, "after a restart");
        assert!(server.terminate().success());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_device_turns_the_disk_read_only_reads_are_served_and_nothing_is_lost() {
        let (disk, data, server, _, mut acked) = started_on_a_small_disk().await;

        // The device fails while the clients allocate.
        let load = allocate_until_refused(&server, "failing", UNTIL_REFUSED);
        let fail = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            disk.fail_device();
        };
        let ((during, refusals), ()) = tokio::join!(load, fail);
        acked.extend(during);
        // The first write to fail may be a sync (EIO, and ext4 aborts its journal), the next ones
        // are refused as read-only; a write may find no block for it first.
        let causes = [
            "Read-only file system",
            "Input/output error",
            "No space left on device",
        ];
        assert_degraded(&server, &refusals, &causes).await;
        let none = BTreeSet::new();
        assert_exactly(
            &held(&server).await,
            &acked,
            &none,
            "while the disk is read-only",
        );

        // ext4 does not take writes again by itself after aborting its journal: the operator
        // stops the service, replaces the device (here: gives it room again), repairs the
        // filesystem and starts the service again.
        let stopped = server.terminate();
        assert!(
            stopped.success(),
            "a degraded service stops cleanly: {stopped:?}"
        );
        disk.heal_device();
        disk.repair();
        let server = start(&data, disk.path());
        // A sync that failed on a disk that then refused to cut the log may have left records the
        // restart replays: allocations that were refused as uncertain, never acknowledged ones.
        let uncertain = uncertain(&refusals);
        println!("refused with their outcome unknown: {uncertain:?}");
        assert_exactly(
            &held(&server).await,
            &acked,
            &uncertain,
            "after repair and restart",
        );
        let mut c = server.client().await;
        allocate(&mut c, "after-repair")
            .await
            .expect("writes are taken again");
        assert!(server.terminate().success());
    }
}
