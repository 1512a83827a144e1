//! Prometheus metrics of the agent, read from its state at scrape time: routes installed, the
//! feed's state, and reconcile passes with their errors and duration.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::agent::{Shared, lock};

struct AgentCollector(Shared);

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
        let (routes, connected, synced, reconciles, errors, seconds, ebpf) = {
            let s = lock(&self.0);
            (
                s.installed.len() as i64,
                s.ipam_connected,
                s.synced,
                s.reconciles,
                s.reconcile_errors,
                s.reconcile_seconds,
                s.ebpf_counters,
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
        if let Some((forwarded, passed)) = ebpf {
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

pub fn registry(shared: Shared) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector(shared)));
    registry
}
