//! Waiting for an event instead of sleeping for it: [`wait_until`] polls a condition until it
//! holds or a deadline passes, and then fails with what it was waiting for and the last reason.

use std::time::{Duration, Instant};

/// Polls `check` (every 50 ms, backing off to 250 ms) until it gives a value or `limit` passes;
/// then panics with `what` and the condition's last reason. Returns the value and how long it took.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match check() {
            Ok(value) => return (value, start.elapsed()),
            Err(why) if start.elapsed() >= limit => {
                panic!("{what}: not within {limit:?}: {why}")
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// The longest time within [from, to] without an event of `times` (in any order): how long a
/// service under faults went without a success, counting the edges of the window.
pub fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut points: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    points.sort();
    points.insert(0, from);
    points.push(to);
    points
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// [`wait_until`] for a yes/no condition.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    wait_until(what, limit, || {
        if check() {
            Ok(())
        } else {
            Err("the condition does not hold".to_string())
        }
    })
    .1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_comes_back_once_the_condition_holds() {
        let mut calls = 0;
        let (v, _) = wait_until("three calls", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("{calls} calls"))
            }
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "never: not within")]
    fn a_condition_that_never_holds_fails_with_its_reason() {
        wait_until::<()>("never", Duration::from_millis(120), || {
            Err("still no".into())
        });
    }
}
