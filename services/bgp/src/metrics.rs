//! Prometheus metrics read from the sessions at scrape time, named as MetalLB's speaker names them
//! (metallb_bgp_session_up, metallb_bgp_announced_prefixes_total, metallb_bgp_updates_total).

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::session::lock;
use crate::speaker::Speaker;

struct BgpCollector(Arc<Speaker>, Arc<routeplane_watch::FeedStats>);

impl std::fmt::Debug for BgpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BgpCollector")
    }
}

/// One peer's figures at scrape time.
struct Row {
    peer: String,
    up: bool,
    advertised: usize,
    received: usize,
    updates_sent: u64,
    updates_received: u64,
    repairs: BTreeMap<&'static str, u64>,
}

fn gauges(
    e: &mut DescriptorEncoder,
    rows: &[Row],
    name: &str,
    help: &str,
    value: fn(&Row) -> i64,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for r in rows {
        ConstGauge::new(value(r)).encode(m.encode_family(&[("peer", r.peer.as_str())])?)?;
    }
    Ok(())
}

fn counters(
    e: &mut DescriptorEncoder,
    rows: &[Row],
    name: &str,
    help: &str,
    value: fn(&Row) -> u64,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for r in rows {
        ConstCounter::new(value(r)).encode(m.encode_family(&[("peer", r.peer.as_str())])?)?;
    }
    Ok(())
}

impl Collector for BgpCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (rows, ipam_connected, operator_refused): (Vec<Row>, bool, u64) = {
            let state = self.0.lock();
            let rows = state
                .peers
                .values()
                .map(|p| {
                    let s = lock(&p.status);
                    Row {
                        peer: p.config.peer_address.to_string(),
                        up: s.state == crate::fsm::State::Established,
                        advertised: s.advertised.len(),
                        received: s.received.len(),
                        updates_sent: s.updates_sent,
                        updates_received: s.updates_received,
                        repairs: s.repairs.clone(),
                    }
                })
                .collect();
            (rows, state.ipam_connected, state.operator_refused)
        };
        gauges(
            &mut e,
            &rows,
            "routeplane_bgp_session_up",
            "1 while the session is Established",
            |r| i64::from(r.up),
        )?;
        gauges(
            &mut e,
            &rows,
            "routeplane_bgp_advertised_prefixes",
            "Paths in the peer's Adj-RIB-Out",
            |r| r.advertised as i64,
        )?;
        gauges(
            &mut e,
            &rows,
            "routeplane_bgp_received_prefixes",
            "Paths in the peer's Adj-RIB-In",
            |r| r.received as i64,
        )?;
        counters(
            &mut e,
            &rows,
            "routeplane_bgp_updates_sent",
            "UPDATE messages sent",
            |r| r.updates_sent,
        )?;
        counters(
            &mut e,
            &rows,
            "routeplane_bgp_updates_received",
            "UPDATE messages received",
            |r| r.updates_received,
        )?;
        let mut m = e.encode_descriptor(
            "routeplane_bgp_update_repairs",
            "Malformed UPDATEs handled without a session reset (RFC 7606), by handling",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for r in &rows {
            // Every handling, at 0 until it happens, so that a rate() sees the first one.
            for handling in crate::wire::Handling::REPAIRS.map(|h| h.name()) {
                let n = r.repairs.get(handling).copied().unwrap_or(0);
                let labels = [("peer", r.peer.as_str()), ("handling", handling)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let refused = ConstCounter::new(self.0.refused_connections());
        refused.encode(e.encode_descriptor(
            "routeplane_bgp_refused_connections",
            "BGP connections closed unread because they came from no configured peer's address",
            None,
            refused.metric_type(),
        )?)?;
        let mut m = e.encode_descriptor(
            "routeplane_bgp_ipam_connected",
            "1 while the IPAM Watch feed is connected",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        ConstGauge::new(i64::from(ipam_connected)).encode(m.encode_family(&Vec::<(
            &str,
            &str,
        )>::new(
        ))?)?;
        let refused = ConstCounter::new(operator_refused);
        refused.encode(e.encode_descriptor(
            "routeplane_bgp_operator_entries_refused",
            "API peers and paths from IPAM that this replica left out because it cannot take them (each logged)",
            None,
            refused.metric_type(),
        )?)?;
        let skipped = ConstCounter::new(self.1.skipped());
        skipped.encode(e.encode_descriptor(
            "routeplane_bgp_feed_skipped_entries",
            "Entries of the IPAM feed that did not parse and were left out (each logged)",
            None,
            skipped.metric_type(),
        )?)?;
        Ok(())
    }
}

pub fn registry(speaker: Arc<Speaker>, feed: Arc<routeplane_watch::FeedStats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BgpCollector(speaker, feed)));
    registry
}
