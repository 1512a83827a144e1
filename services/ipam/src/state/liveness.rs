//! Whether a node is alive, without I/O. A node's lease runs until a deadline: a KeepAlive or a
//! registration by its agent renews it for the lease TTL (20 s), a heartbeat for the dead interval
//! (3 × 750 ms); the lease clock declares every Ready node past its deadline dead (NotReady, which
//! routeplane-bgp withdraws). These keep that judgement honest:
//!
//! - After a restart every node has one lease TTL to come back, and no renewal within it ends
//!   its lease sooner: at 5,000 nodes the agents' reconnections (TLS handshakes) saturate IPAM
//!   for seconds, and a node whose first beat was taken, its next ones late, died — a thousand
//!   of them in one measured restart, two Watch events each to every watcher.
//!
//! - IPAM judges only what it could observe. When its own clock ran late (the process paused, the
//!   CPU starved), beats may be waiting unread in its sockets: every deadline is moved on by the
//!   time lost ([`IpamState::give_back`]) before anyone is judged.
//! - A node that dies and returns again and again is damped, as RFC 2439 damps a flapping route:
//!   each death adds a penalty of 1,000 that halves every half-life; above 2,000 the node is held
//!   down (NotReady, `held_down`, however steady its heartbeat) until the penalty decays below 750.
//!   The penalty is capped so that no hold-down outlasts [`MAX_HOLD_DOWN_HALF_LIVES`] half-lives.
//! - A mass expiry is not believed at once. When the leases of a third of the nodes (at least
//!   [`MASS_EXPIRY_MIN`]) run out within one dead interval, the likelier cause is IPAM (overloaded,
//!   its beats unread) or its network, not that many nodes failing together: withdrawing them all
//!   would black-hole a live cluster, and the storm of events it makes loads IPAM further. Their
//!   leases are extended, for at most [`MASS_EXPIRY_GRACE`]; nodes still silent after that are
//!   declared dead. Kubernetes' node lifecycle controller stops evicting for the same reason when
//!   most of a zone goes NotReady at once.

use std::time::{Duration, Instant};

use super::{Change, IpamState, Mutation};
use crate::error::Result;
use crate::model::Event;

/// RFC 2439 §4.2's default figure-of-merit values: per flap, cut-off (suppress) and reuse.
const PENALTY_PER_DEATH: f64 = 1000.0;
const SUPPRESS_ABOVE: f64 = 2000.0;
const REUSE_BELOW: f64 = 750.0;
/// RFC 2439's maximum hold-down, in half-lives of decay from the ceiling to the reuse threshold.
pub const MAX_HOLD_DOWN_HALF_LIVES: u32 = 6;

/// Fewest expiries at once that can be a mass expiry: below it, a small cluster's deaths are
/// always believed.
pub const MASS_EXPIRY_MIN: usize = 10;
/// The longest a mass expiry is spared: the KeepAlive lease TTL, the detection time before
/// heartbeats.
pub const MASS_EXPIRY_GRACE: Duration = Duration::from_secs(20);

/// Deaths within the last dead interval; since when a mass expiry is being spared, and when
/// leases were last extended for it (the episode ends when they are not needed again).
#[derive(Debug, Clone, Default)]
pub(super) struct MassExpiry {
    recent: std::collections::VecDeque<Instant>,
    sparing_since: Option<Instant>,
    last_spared: Option<Instant>,
}

impl MassExpiry {
    fn end_episode(&mut self) {
        self.sparing_since = None;
        self.last_spared = None;
    }
}

/// What one tick of the lease clock decided.
#[derive(Debug, Default)]
pub struct Expiry {
    /// One mutation per node declared dead.
    pub deaths: Vec<Mutation>,
    /// Nodes whose leases ran out and were extended: a mass expiry (see the module).
    pub spared: usize,
    /// This tick began sparing (worth one warning, not one per tick).
    pub sparing_began: bool,
}

/// How liveness is judged (`--heartbeat-interval`, `--heartbeat-detect-multiplier`,
/// `--flap-half-life`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessConfig {
    pub heartbeat_interval: Duration,
    /// Beats missed in a row before the node is dead (BFD's Detect Mult, RFC 5880 §6.8.1).
    pub detect_multiplier: u32,
    /// The damping penalty's half-life; `None` turns damping off.
    pub flap_half_life: Option<Duration>,
}

impl Default for LivenessConfig {
    fn default() -> LivenessConfig {
        LivenessConfig {
            heartbeat_interval: Duration::from_millis(750),
            detect_multiplier: 3,
            flap_half_life: Some(Duration::from_secs(60)),
        }
    }
}

impl LivenessConfig {
    /// How long a node may go without a beat.
    pub fn dead_after(&self) -> Duration {
        self.heartbeat_interval * self.detect_multiplier
    }
}

/// A node's damping penalty: its value when last changed, and when.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Damping {
    penalty: f64,
    at: Option<Instant>,
}

impl Damping {
    /// The penalty at `now`: halved every `half_life` since it last changed.
    fn penalty(&self, now: Instant, half_life: Duration) -> f64 {
        let Some(at) = self.at else { return 0.0 };
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        self.penalty * 0.5f64.powf(elapsed / half_life.as_secs_f64())
    }

    /// Counts a death; returns whether the node is now to be held down.
    fn died(&mut self, now: Instant, half_life: Duration) -> bool {
        let ceiling = REUSE_BELOW * f64::from(1u32 << MAX_HOLD_DOWN_HALF_LIVES);
        self.penalty = (self.penalty(now, half_life) + PENALTY_PER_DEATH).min(ceiling);
        self.at = Some(now);
        self.penalty > SUPPRESS_ABOVE
    }

    /// Whether a held-down node may come back at `now`.
    fn reusable(&self, now: Instant, half_life: Duration) -> bool {
        self.penalty(now, half_life) < REUSE_BELOW
    }
}

/// Whether a held-down node stays held at `now`: its penalty has not decayed below the reuse
/// threshold (never, with damping off).
fn still_held(entry: &super::NodeEntry, now: Instant, half_life: Option<Duration>) -> bool {
    half_life.is_some_and(|h| entry.node.held_down && !entry.damping.reusable(now, h))
}

/// What a heartbeat found: the node's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub ready: bool,
    pub held_down: bool,
}

/// How a renewal renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// KeepAlive: for the lease TTL.
    Lease,
    /// A heartbeat: for the dead interval.
    Beat,
}

impl IpamState {
    pub fn liveness(&self) -> LivenessConfig {
        self.liveness
    }

    /// Renews a node's lease for the lease TTL; a NotReady node becomes Ready (a published
    /// change) unless it is held down. Returns whether it came back.
    pub fn keep_alive(&mut self, name: &str, now: Instant) -> Result<(bool, Option<Mutation>)> {
        let (beat, m) = self.renew(name, now, Renewal::Lease)?;
        Ok((beat.ready && m.is_some(), m))
    }

    /// A heartbeat: renews the node's lease for the dead interval (see [`IpamState::keep_alive`]).
    pub fn beat(&mut self, name: &str, now: Instant) -> Result<(Beat, Option<Mutation>)> {
        self.renew(name, now, Renewal::Beat)
    }

    fn renew(
        &mut self,
        name: &str,
        now: Instant,
        renewal: Renewal,
    ) -> Result<(Beat, Option<Mutation>)> {
        let period = match renewal {
            Renewal::Lease => self.lease_ttl,
            Renewal::Beat => self.liveness.dead_after(),
        };
        // One lookup of the node per beat (thousands a second at scale), not two.
        let half_life = self.liveness.flap_half_life;
        let floor = self.restart_lease_until;
        let entry = self.entry_mut(name)?;
        let held = still_held(entry, now, half_life);
        let (ready, held_down) = (!held, held);
        // A beat never cuts short the full lease a restart gave: thousands of agents reconnect at
        // once (a TLS handshake each), and a beat the saturated server takes late must not kill
        // a node its first beat had just moved to a 2.25 s lease.
        entry.lease_deadline = floor.map_or(now + period, |f| f.max(now + period));
        let before = (entry.node.ready, entry.node.held_down);
        let beat = Beat { ready, held_down };
        if before == (ready, held_down) {
            return Ok((beat, None));
        }
        Ok((beat, Some(self.set_ready(name, ready, held_down))))
    }

    /// The (ready, held_down) a renewal of `name` brings at `now`: Ready, unless the node is
    /// held down and its penalty has not yet decayed below the reuse threshold.
    pub(super) fn revival(&self, name: &str, now: Instant) -> Result<(bool, bool)> {
        let held = still_held(self.entry(name)?, now, self.liveness.flap_half_life);
        Ok((!held, held))
    }

    pub(super) fn set_ready(&mut self, name: &str, ready: bool, held_down: bool) -> Mutation {
        let revision = self.bump();
        let node = match self.nodes.get_mut(name) {
            Some(e) => {
                e.node.ready = ready;
                e.node.held_down = held_down;
                e.node.revision = revision;
                e.node.clone()
            }
            None => return self.mutation(Vec::new(), None),
        };
        self.mutation(
            vec![Change::PutNode(node.clone())],
            Some(Event::NodeUpdated(node)),
        )
    }

    /// Declares every Ready node whose lease ran out dead (NotReady, held down when it died too
    /// often), one mutation each — unless that is a mass expiry, whose leases are extended
    /// instead (see the module).
    pub fn expire_leases(&mut self, now: Instant) -> Expiry {
        let expired: Vec<String> = self
            .nodes
            .values()
            .filter(|e| e.node.ready && e.lease_deadline <= now)
            .map(|e| e.node.name.clone())
            .collect();
        let window = self.liveness.dead_after();
        let mass = &mut self.mass;
        while mass
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            mass.recent.pop_front();
        }
        if expired.is_empty() {
            // Spared leases run one more dead interval: only past that unneeded is it over.
            if mass
                .last_spared
                .is_none_or(|t| now.saturating_duration_since(t) > window * 2)
            {
                mass.end_episode();
            }
            return Expiry::default();
        }
        let ready = self.nodes.values().filter(|e| e.node.ready).count();
        let failing = mass.recent.len() + expired.len();
        // Of the nodes Ready at the window's start: those Ready now and those that died in it.
        let population = ready + mass.recent.len();
        let is_mass = failing >= MASS_EXPIRY_MIN && failing * 3 > population;
        let since = *mass.sparing_since.get_or_insert(now);
        if is_mass && now.saturating_duration_since(since) < MASS_EXPIRY_GRACE {
            mass.last_spared = Some(now);
            for name in &expired {
                if let Some(e) = self.nodes.get_mut(name) {
                    e.lease_deadline = now + window;
                }
            }
            return Expiry {
                deaths: Vec::new(),
                spared: expired.len(),
                sparing_began: since == now,
            };
        }
        if !is_mass {
            mass.end_episode();
        }
        mass.recent.extend(std::iter::repeat_n(now, expired.len()));
        let half_life = self.liveness.flap_half_life;
        let deaths = expired
            .iter()
            .map(|name| {
                let held_down = match (self.nodes.get_mut(name), half_life) {
                    (Some(e), Some(h)) => e.damping.died(now, h),
                    _ => false,
                };
                self.set_ready(name, false, held_down)
            })
            .collect();
        Expiry {
            deaths,
            spared: 0,
            sparing_began: false,
        }
    }

    /// IPAM itself was stalled for `lost`: every lease gets that time back, since beats sent
    /// meanwhile may still be unread.
    pub fn give_back(&mut self, lost: Duration) {
        for entry in self.nodes.values_mut() {
            entry.lease_deadline += lost;
        }
    }

    /// The node's damping penalty at `now` (0 without damping), for ExplainPrefix and tests.
    pub fn penalty(&self, name: &str, now: Instant) -> f64 {
        match (self.nodes.get(name), self.liveness.flap_half_life) {
            (Some(e), Some(h)) => e.damping.penalty(now, h),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: Duration = Duration::from_secs(60);

    #[test]
    fn the_penalty_halves_every_half_life() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        assert!(!d.died(t0, HALF), "one death is no flapping");
        assert!((d.penalty(t0 + HALF, HALF) - 500.0).abs() < 1e-6);
        assert!((d.penalty(t0 + 2 * HALF, HALF) - 250.0).abs() < 1e-6);
    }

    #[test]
    fn a_third_death_in_quick_succession_holds_down_until_the_penalty_decays() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        assert!(!d.died(t0, HALF));
        assert!(
            !d.died(t0 + Duration::from_secs(1), HALF),
            "1,988 is not above 2,000"
        );
        assert!(d.died(t0 + Duration::from_secs(2), HALF));
        let at = t0 + Duration::from_secs(2);
        // About 2,970: below 750 after log2(2970/750) ≈ 1.99 half-lives.
        assert!(!d.reusable(at + Duration::from_secs(115), HALF));
        assert!(d.reusable(at + Duration::from_secs(121), HALF));
    }

    #[test]
    fn deaths_far_apart_never_hold_down() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        for i in 0..20 {
            assert!(!d.died(t0 + 2 * HALF * i, HALF), "death {i}");
        }
    }

    #[test]
    fn the_penalty_is_capped_so_no_hold_down_lasts_forever() {
        let t0 = Instant::now();
        let mut d = Damping::default();
        for _ in 0..1000 {
            d.died(t0, HALF);
        }
        let max = HALF * (MAX_HOLD_DOWN_HALF_LIVES + 1);
        assert!(d.reusable(t0 + max, HALF));
    }
}
