//! Prometheus metrics, read from the live state at scrape time so that allocation pays nothing for
//! them. Names follow what operators of Cilium's operator and MetalLB's allocator look for.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::heartbeat_datagrams::{REFUSALS, Sessions};
use crate::ipam::Ipam;

#[derive(Debug)]
struct IpamCollector(Arc<Ipam>);

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ipam")
    }
}

/// One gauge family: its descriptor once, then a sample per label set.
fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(&[(&str, String)], i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, value) in samples {
        let g = ConstGauge::new(*value);
        if labels.is_empty() {
            g.encode(m.encode_family(&Vec::<(&str, &str)>::new())?)?;
        } else {
            let set: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            g.encode(m.encode_family(&set)?)?;
        }
    }
    Ok(())
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn clamp(v: u128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for IpamCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ipam = &self.0;
        let nodes = ipam.nodes();
        let ready = nodes.iter().filter(|n| n.ready).count() as i64;
        let (t, f) = (
            [("ready", "true".to_string())],
            [("ready", "false".to_string())],
        );
        gauges(
            &mut e,
            "routeplane_ipam_nodes",
            "Registered nodes by readiness",
            &[(&t, ready), (&f, nodes.len() as i64 - ready)],
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_nodes_draining",
            "Nodes drained (DrainNode, a cordon, their agent's shutdown): their prefixes leave the routers gracefully",
            &[(&[], nodes.iter().filter(|n| n.draining).count() as i64)],
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_nodes_held_down",
            "Nodes held down for flapping (they died and came back too often): NotReady until their penalty decays",
            &[(&[], nodes.iter().filter(|n| n.held_down).count() as i64)],
        )?;
        let live = ipam.liveness_stats();
        counter(
            &mut e,
            "routeplane_ipam_node_deaths",
            "Nodes declared dead: no heartbeat (or KeepAlive) before their deadline",
            live.deaths.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "routeplane_ipam_mass_expiry_spared",
            "Lease expiries not believed at once: a third of the nodes or more ran out together (IPAM overloaded or cut off, more likely than that many deaths), so their leases were extended, for at most 20 s",
            live.spared.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "routeplane_ipam_stalls",
            "Times routeplane-ipam found it had not run for longer than a lease-clock tick (paused, starved of CPU) and gave every lease the time back",
            live.stalls.load(Ordering::Relaxed),
        )?;
        let stalled = ConstCounter::new(live.stalled_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        stalled.encode(e.encode_descriptor(
            "routeplane_ipam_stalled_seconds",
            "Time routeplane-ipam did not run, given back to the leases",
            None,
            stalled.metric_type(),
        )?)?;
        gauges(
            &mut e,
            "routeplane_ipam_heartbeat_streams",
            "Heartbeat streams open (one per route agent)",
            &[(&[], live.heartbeat_streams.load(Ordering::Relaxed))],
        )?;

        let (pods, services) = ipam.pools();
        let pod_labels: Vec<[(&str, String); 1]> = pods
            .iter()
            .map(|p| [("pool", p.cidr.to_string())])
            .collect();
        let per_pool =
            |value: &dyn Fn(&crate::state::PodPoolView) -> i64| -> Vec<(&[(&str, String)], i64)> {
                pods.iter()
                    .zip(&pod_labels)
                    .map(|(p, l)| (&l[..], value(p)))
                    .collect()
            };
        gauges(
            &mut e,
            "routeplane_ipam_pod_cidrs_in_use",
            "Node pod CIDRs allocated from the pool",
            &per_pool(&|p| clamp(p.used)),
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_pod_cidrs_free",
            "Node pod CIDRs still free in the pool",
            &per_pool(&|p| clamp(p.total - p.used)),
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_pod_ips_in_use",
            "Pod IPs allocated in the pool's node CIDRs",
            &per_pool(&|p| clamp(u128::from(p.pod_ips_used))),
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_pod_ips_free",
            "Pod IPs still free in the node CIDRs handed out from the pool",
            &per_pool(&|p| {
                clamp(
                    p.pod_ips_capacity
                        .saturating_sub(u128::from(p.pod_ips_used)),
                )
            }),
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_pool_drained",
            "1 when the pool gives no new node CIDRs",
            &per_pool(&|p| i64::from(p.drained)),
        )?;

        let lb_labels: Vec<[(&str, String); 1]> = services
            .iter()
            .map(|(c, _, _)| [("pool", c.name.clone())])
            .collect();
        let per_lb = |value: &dyn Fn(u128, u128) -> i64| -> Vec<(&[(&str, String)], i64)> {
            services
                .iter()
                .zip(&lb_labels)
                .map(|((_, total, used), l)| (&l[..], value(*total, *used)))
                .collect()
        };
        gauges(
            &mut e,
            "routeplane_ipam_lb_addresses_in_use_total",
            "LoadBalancer IPs in use in the address-pool (MetalLB: metallb_allocator_addresses_in_use_total)",
            &per_lb(&|_, used| clamp(used)),
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_lb_addresses_total",
            "LoadBalancer IPs the address-pool holds (MetalLB: metallb_allocator_addresses_total)",
            &per_lb(&|total, _| clamp(total)),
        )?;

        let stats = ipam.stats();
        let revision = clamp(u128::from(stats.durable_revision.load(Ordering::Relaxed)));
        gauges(
            &mut e,
            "routeplane_ipam_revision",
            "Latest durable revision",
            &[(&[], revision)],
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_watchers",
            "Open Watch streams",
            &[(&[], ipam.feed().watchers() as i64)],
        )?;
        counter(
            &mut e,
            "routeplane_ipam_commits",
            "Changes made durable (and idempotent repeats that waited for durability)",
            stats.commits.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "routeplane_ipam_flushes",
            "sled flushes; commits/flushes is the group-commit factor",
            stats.flushes.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "routeplane_ipam_checkpoints",
            "sled checkpoints (each lets the log segments it covers be deleted)",
            stats.checkpoints.load(Ordering::Relaxed),
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_checkpoint_revision",
            "The revision the last checkpoint covered: what a restart needs no log for",
            &[(
                &[],
                clamp(u128::from(
                    stats.checkpoint_revision.load(Ordering::Relaxed),
                )),
            )],
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_materialized_revision",
            "The revision sled has applied (it is written behind the log): routeplane_ipam_revision minus this is the backlog",
            &[(
                &[],
                clamp(u128::from(
                    stats.materialized_revision.load(Ordering::Relaxed),
                )),
            )],
        )?;
        gauges(
            &mut e,
            "routeplane_ipam_log_segments",
            "Segments of the write-ahead log on disk",
            &[(&[], stats.log_segments.load(Ordering::Relaxed) as i64)],
        )?;
        leader(&mut e, true)?;
        gauges(
            &mut e,
            "routeplane_ipam_writes_refused",
            "1 while writes are refused (degraded mode: the disk refuses writes; reads and Watch are served) or the service has failed, 0 while writes are taken",
            &[(&[], i64::from(!*ipam.writable().borrow()))],
        )?;
        counter(
            &mut e,
            "routeplane_ipam_storage_faults",
            "Times the disk refused a write and the service went into degraded mode",
            stats.storage_faults.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "routeplane_ipam_log_segments_removed",
            "Log segments deleted once a checkpoint covered them",
            stats.log_segments_removed.load(Ordering::Relaxed),
        )?;
        let secs = stats.flush_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let c = ConstCounter::new(secs);
        c.encode(e.encode_descriptor(
            "routeplane_ipam_flush_seconds",
            "Time spent flushing sled",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}

fn leader(e: &mut DescriptorEncoder, serving: bool) -> std::fmt::Result {
    gauges(
        e,
        "routeplane_ipam_leader",
        "1 while this process serves (it leads its etcd prefix, or runs on sled), 0 while it stands by for another replica",
        &[(&[], i64::from(serving))],
    )
}

/// What a standby exposes: that it stands by.
#[derive(Debug)]
struct StandbyCollector;

impl Collector for StandbyCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        leader(&mut e, false)
    }
}

/// The registry of a replica standing by (or still opening its state).
pub fn standby_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StandbyCollector));
    registry
}

/// A registry holding the IPAM collector, and the heartbeat datagrams' when they are taken.
pub fn registry(ipam: Arc<Ipam>, datagrams: Option<Arc<Sessions>>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(IpamCollector(ipam)));
    if let Some(sessions) = datagrams {
        registry.register_collector(Box::new(DatagramCollector(sessions)));
    }
    registry
}

#[derive(Debug)]
struct DatagramCollector(Arc<Sessions>);

impl Collector for DatagramCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0.stats;
        counter(
            &mut e,
            "routeplane_ipam_heartbeat_datagrams_taken",
            "Heartbeat datagrams taken as beats (the session's tag, a new sequence)",
            stats.taken.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "routeplane_ipam_heartbeat_datagrams_unheard",
            "Times an agent was told its heartbeat datagrams stopped arriving while its stream stayed open (it beats on the stream until they arrive again): a firewall on the UDP port, or a stalled agent",
            stats.unheard.load(Ordering::Relaxed),
        )?;
        let refused = ConstCounter::new(0u64);
        let mut family = e.encode_descriptor(
            "routeplane_ipam_heartbeat_datagrams_refused",
            "Heartbeat datagrams dropped: malformed, of no open session, with a wrong tag, or replayed",
            None,
            refused.metric_type(),
        )?;
        for (why, count) in REFUSALS.iter().zip(&stats.refused) {
            let labels = [("reason", why.reason())];
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
