//! Values of the command-line flags every service has, parsed one way everywhere: a duration is
//! written as Go writes it (`90s`, `1m30s`, `500ms` — as Cilium's and MetalLB's files write them),
//! and a bad one is refused naming the text and what would do.

use std::time::Duration;

/// Any duration, zero included.
pub fn duration(text: &str) -> Result<Duration, String> {
    routeplane_config::parse_go_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration: write it as 10s, 1m30s or 500ms"))
}

/// A duration from `min` to `max`, for clap's `value_parser`.
pub fn duration_within(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let d = duration(text)?;
        if (min..=max).contains(&d) {
            Ok(d)
        } else if max == Duration::MAX {
            Err(format!("{text} is too short: give at least {min:?}"))
        } else {
            Err(format!("{text} is out of range: give {min:?} to {max:?}"))
        }
    }
}

/// A duration of at least `min`.
pub fn duration_at_least(
    min: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    duration_within(min, Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_and_refused_the_same_way_everywhere() {
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert!(
            duration("90")
                .unwrap_err()
                .contains("\"90\" is not a duration")
        );
        let lease = duration_at_least(Duration::from_secs(1));
        assert_eq!(lease("20s"), Ok(Duration::from_secs(20)));
        assert!(
            lease("500ms")
                .unwrap_err()
                .contains("500ms is too short: give at least 1s")
        );
        let interval = duration_within(Duration::from_millis(100), Duration::from_secs(3600));
        assert!(
            interval("2h")
                .unwrap_err()
                .contains("2h is out of range: give 100ms to 3600s")
        );
    }
}
