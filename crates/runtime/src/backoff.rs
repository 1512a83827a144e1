//! The pause before a client tries again: doubling from a first pause to a ceiling, back to the
//! first once a connection has worked, and **jittered** — each pause is drawn from its upper half
//! — so that the thousands of agents a restarted IPAM lost do not all come back in the same
//! millisecond (what AWS's "exponential backoff and jitter" and gRPC's connection-backoff.md ask
//! of clients). Without jitter, 5,000 agents reconnecting at once held a cold-started control
//! plane for 105 s (README, scale).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    most: Duration,
    next: Duration,
}

impl Backoff {
    /// From `first`, doubling up to `most`.
    pub fn new(first: Duration, most: Duration) -> Backoff {
        Backoff {
            first,
            most: most.max(first),
            next: first,
        }
    }

    /// The pause to take now, in [half, whole] of the current step; the next step is longer.
    pub fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.most);
        jitter(step)
    }

    /// A connection delivered: the next disconnect starts over.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The pause after a connection ended, having `delivered` or not.
    pub fn after(&mut self, delivered: bool) -> Duration {
        if delivered {
            self.reset();
        }
        self.pause()
    }
}

/// A duration drawn uniformly from [step / 2, step]. Randomness from the standard library's
/// per-process random hash keys: jitter needs to differ between processes and calls, not to be
/// unpredictable.
pub fn jitter(step: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    step.div_f64(2.0) + step.div_f64(2.0).mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(200);
    const MOST: Duration = Duration::from_secs(5);

    fn within(pause: Duration, step: Duration) -> bool {
        pause >= step / 2 && pause <= step
    }

    #[test]
    fn grows_to_its_ceiling_and_starts_over_after_a_connection_that_worked() {
        let mut b = Backoff::new(FIRST, MOST);
        let pauses: Vec<Duration> = (0..7).map(|_| b.pause()).collect();
        assert!(within(pauses[0], FIRST), "{pauses:?}");
        assert!(within(pauses[1], FIRST * 2), "{pauses:?}");
        assert!(within(pauses[6], MOST), "{pauses:?}");
        assert!(
            within(b.after(false), MOST),
            "nothing delivered: still long"
        );
        assert!(
            within(b.after(true), FIRST),
            "not 5 s for ever after five disconnects"
        );
        assert!(within(b.after(false), FIRST * 2));
    }

    #[test]
    fn pauses_are_spread_not_synchronised() {
        let pauses: std::collections::BTreeSet<Duration> = (0..200)
            .map(|_| Backoff::new(FIRST, MOST).pause())
            .collect();
        assert!(pauses.iter().all(|p| within(*p, FIRST)));
        // 200 draws from 100 ms of range: a fixed pause would give one value.
        assert!(pauses.len() > 150, "{} distinct pauses", pauses.len());
        let (low, high) = (pauses.first().unwrap(), pauses.last().unwrap());
        assert!(
            *high - *low > Duration::from_millis(80),
            "{low:?}..{high:?}"
        );
    }
}
