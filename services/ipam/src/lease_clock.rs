//! The lease clock: the task that declares nodes dead (`state/liveness.rs` decides which), and the
//! liveness figures the metrics show.
//!
//! It ticks a few times per heartbeat interval. A tick that comes later than one period after the
//! one before means IPAM itself did not run meanwhile — the process was paused, the CPU starved,
//! the runtime blocked — and beats sent in that time may still sit unread in its sockets: the lost
//! time is given back to every lease before anyone is judged, so a stall of IPAM's is never taken
//! for the death of a node.

use std::sync::Weak;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ipam::Ipam;

/// What the metrics show of liveness.
#[derive(Debug, Default)]
pub struct LivenessStats {
    /// Nodes declared dead (a lease or heartbeat that ran out).
    pub deaths: AtomicU64,
    /// Expiries not believed: part of a mass expiry, the lease extended (`state/liveness.rs`).
    pub spared: AtomicU64,
    /// Times the clock found IPAM had stalled, and the time given back for it.
    pub stalls: AtomicU64,
    pub stalled_nanos: AtomicU64,
    /// Heartbeat streams open now.
    pub heartbeat_streams: AtomicI64,
}

impl LivenessStats {
    fn stalled(&self, lost: Duration) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
        self.stalled_nanos.fetch_add(
            u64::try_from(lost.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// How often the clock ticks: five times per heartbeat interval, so a death is declared at most a
/// fifth of an interval after the deadline.
pub fn period(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval / 5).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// How late a tick was, given when the one before ran: the time IPAM did not run.
pub fn lateness(previous: Instant, now: Instant, period: Duration) -> Duration {
    now.saturating_duration_since(previous)
        .saturating_sub(period)
}

/// Ticks until the service is dropped or shuts down.
pub async fn run(ipam: Weak<Ipam>) {
    let period = match ipam.upgrade() {
        Some(i) => period(i.liveness().heartbeat_interval),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    // Delay: after a late tick the next comes one period later, so lateness is measured afresh.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut previous = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let late = lateness(previous, now, period);
        previous = now;
        let Some(ipam) = ipam.upgrade() else { return };
        if ipam.is_shutting_down() {
            return;
        }
        if late > period {
            tracing::warn!(
                stalled = ?late,
                "routeplane-ipam did not run for {late:.1?} (paused or starved of CPU): every node's lease gets that time back"
            );
            ipam.liveness_stats().stalled(late);
            ipam.give_back(late);
        }
        ipam.expire_leases(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_ticks_five_times_per_interval_within_bounds() {
        assert_eq!(
            period(Duration::from_millis(500)),
            Duration::from_millis(100)
        );
        assert_eq!(period(Duration::from_millis(20)), Duration::from_millis(10));
        assert_eq!(period(Duration::from_secs(60)), Duration::from_secs(1));
    }

    #[test]
    fn lateness_is_the_time_past_one_period() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        assert_eq!(lateness(t0, t0 + p, p), Duration::ZERO);
        assert_eq!(
            lateness(t0, t0 + Duration::from_millis(3100), p),
            Duration::from_secs(3)
        );
        assert_eq!(
            lateness(t0 + p, t0, p),
            Duration::ZERO,
            "a clock read out of order"
        );
    }
}
