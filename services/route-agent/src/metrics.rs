//! Prometheus metrics of the agent, read from its state at scrape time: routes installed, the
//! feed's state, reconcile passes with their errors and duration, the pods it owns and their
//! addresses per pod CIDR, and the eBPF programs' counters.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;

use crate::agent::{Shared, lock};
use crate::pods::PodNetwork;

struct AgentCollector(Shared, Arc<PodNetwork>, Arc<routeplane_watch::FeedStats>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CidrLabel {
    cidr: String,
}

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCollector")
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for AgentCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (
            partition,
            (routes, connected, synced, reconciles, errors, seconds, ebpf, ebpf_routes),
        ) = {
            let s = lock(&self.0);
            // How long the feed has been lost (0 while connected), and how often it was.
            let lost_for = s
                .ipam_disconnected_since
                .and_then(|t| t.elapsed().ok())
                .map_or(0.0, |d| d.as_secs_f64());
            (
                (lost_for, s.ipam_disconnects),
                (
                    s.installed.len() as i64,
                    s.ipam_connected,
                    s.synced,
                    s.reconciles,
                    s.reconcile_errors,
                    s.reconcile_seconds,
                    s.ebpf_counters,
                    s.ebpf_routes.len() as i64,
                ),
            )
        };
        gauge(
            &mut e,
            "routeplane_agent_routes_installed",
            "Kernel routes carrying the agent's protocol number",
            routes,
        )?;
        gauge(
            &mut e,
            "routeplane_agent_ipam_connected",
            "1 while the IPAM Watch feed is connected",
            i64::from(connected),
        )?;
        let g = ConstGauge::new(partition.0);
        g.encode(e.encode_descriptor(
            "routeplane_agent_ipam_disconnected_seconds",
            "How long the IPAM Watch feed has been lost (a partition, IPAM down); 0 while connected",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(partition.1);
        c.encode(e.encode_descriptor(
            "routeplane_agent_ipam_disconnects",
            "Times a connected IPAM Watch feed was lost",
            None,
            c.metric_type(),
        )?)?;
        gauge(
            &mut e,
            "routeplane_agent_synced",
            "1 once the feed's first snapshot has arrived",
            i64::from(synced),
        )?;
        let c = ConstCounter::new(reconciles);
        c.encode(e.encode_descriptor(
            "routeplane_agent_reconciles",
            "Reconcile passes",
            None,
            c.metric_type(),
        )?)?;
        let c = ConstCounter::new(errors);
        c.encode(e.encode_descriptor(
            "routeplane_agent_reconcile_errors",
            "Reconcile passes that failed",
            None,
            c.metric_type(),
        )?)?;
        let pods = &self.1;
        gauge(
            &mut e,
            "routeplane_agent_pods",
            "Pod attachments this agent owns (routeplane-cni)",
            pods.attachments().len() as i64,
        )?;
        gauge(
            &mut e,
            "routeplane_agent_pods_report_pending",
            "1 while a change of the pods waits to be reported to routeplane-ipam",
            i64::from(pods.reported().1),
        )?;
        let usage = pods.usage();
        for (name, help, of) in [
            (
                "routeplane_agent_pod_ips_in_use",
                "Pod IPs held in a pod CIDR of this node",
                (|used, _| used) as fn(u128, u128) -> u128,
            ),
            (
                "routeplane_agent_pod_ips_free",
                "Pod IPs still free in a pod CIDR of this node",
                |used, cap: u128| cap.saturating_sub(used),
            ),
        ] {
            let mut family = e.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (cidr, used, cap) in &usage {
                let g = ConstGauge::new(i64::try_from(of(*used, *cap)).unwrap_or(i64::MAX));
                g.encode(family.encode_family(&CidrLabel {
                    cidr: cidr.to_string(),
                })?)?;
            }
        }
        gauge(
            &mut e,
            "routeplane_agent_ebpf_routes",
            "Entries of the eBPF route maps as of the last reconcile (0 without --datapath=ebpf)",
            ebpf_routes,
        )?;
        if let Some(counters) = ebpf {
            let c = ConstCounter::new(counters.hop_drops);
            c.encode(e.encode_descriptor(
                "routeplane_agent_ebpf_hop_drops",
                "Packets whose TTL (hop limit) ran out on this node, dropped without an ICMP answer",
                None,
                c.metric_type(),
            )?)?;
            let (forwarded, passed) = (counters.forwarded, counters.passed);
            let c = ConstCounter::new(forwarded);
            c.encode(e.encode_descriptor(
                "routeplane_agent_ebpf_forwarded_packets",
                "Packets the eBPF classifier sent to another node",
                None,
                c.metric_type(),
            )?)?;
            let c = ConstCounter::new(passed);
            c.encode(e.encode_descriptor(
                "routeplane_agent_ebpf_passed_packets",
                "Packets the eBPF classifier left to the kernel",
                None,
                c.metric_type(),
            )?)?;
        }
        let c = ConstCounter::new(self.2.skipped());
        c.encode(e.encode_descriptor(
            "routeplane_agent_feed_skipped_entries",
            "Entries of the IPAM feed that did not parse and were left out (each logged)",
            None,
            c.metric_type(),
        )?)?;
        let c = ConstCounter::new(seconds);
        c.encode(e.encode_descriptor(
            "routeplane_agent_reconcile_seconds",
            "Time spent reconciling",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}

pub fn registry(
    shared: Shared,
    pods: Arc<PodNetwork>,
    feed: Arc<routeplane_watch::FeedStats>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector(shared, pods, feed)));
    registry
}
