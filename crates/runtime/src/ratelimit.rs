//! Calls per second per caller identity, as token buckets: one client — an agent gone into a loop,
//! a script, a stolen certificate — cannot take a server's whole capacity from the others. Each
//! identity (its certificate's URI; all callers without one share a bucket) may make `rate` calls a
//! second on average and `2 × rate` in a burst; a call past it is refused with RESOURCE_EXHAUSTED
//! by the gate (`authz.rs`). A stream is one call. Plaintext listeners are not limited: they cannot
//! tell callers apart, and only loopback (or `--insecure`) serves them.
//!
//! Without I/O: [`RateLimiter::admit`] takes the time, so the tests below need no clock.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Identities tracked at once. They come from the CA's certificates, so there are few; past this
/// many, buckets idle long enough to be full again are forgotten (they would admit anyway).
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `per_second` calls a second per identity; `None` for 0 (no limit).
    pub fn new(per_second: u32) -> Option<RateLimiter> {
        (per_second > 0).then(|| RateLimiter {
            rate: f64::from(per_second),
            burst: 2.0 * f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    pub fn per_second(&self) -> f64 {
        self.rate
    }

    /// Whether `identity` may make one more call at `now` (taking it from its bucket if so).
    pub fn admit(&self, identity: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(identity) {
            let full_after = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        let bucket = buckets.entry(identity.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_then_the_rate() {
        let l = RateLimiter::new(10).unwrap();
        let t0 = Instant::now();
        let admitted = (0..30).filter(|_| l.admit("a", t0)).count();
        assert_eq!(admitted, 20, "the burst");
        assert!(!l.admit("a", t0));
        // A second later, ten more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..30).filter(|_| l.admit("a", t1)).count(), 10);
    }

    #[test]
    fn identities_have_buckets_of_their_own() {
        let l = RateLimiter::new(1).unwrap();
        let t0 = Instant::now();
        assert!(l.admit("a", t0) && l.admit("a", t0) && !l.admit("a", t0));
        assert!(l.admit("b", t0), "b is not slowed by a");
    }

    #[test]
    fn zero_means_no_limit_and_the_table_stays_bounded() {
        assert!(RateLimiter::new(0).is_none());
        let l = RateLimiter::new(1).unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED + 10 {
            l.admit(&format!("id{i}"), t0 + Duration::from_secs(i as u64));
        }
        let tracked = l.buckets.lock().unwrap().len();
        assert!(tracked <= MAX_TRACKED, "{tracked} identities tracked");
    }
}
