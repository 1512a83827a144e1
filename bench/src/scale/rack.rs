//! A rack dying: a tenth of the simulated nodes (at least one) stop beating at once, their
//! heartbeat streams ended as their agents' processes end with the rack's power. Timed from then:
//! until IPAM has declared them all dead, and until the ToR has withdrawn all their pod CIDRs —
//! routeplane-bgp is sent the deaths at the same time as every simulated watcher, so on this
//! machine it waits for the CPU behind IPAM's fan-out of them and the 5,000 simulated agents'
//! reading of it. Run twice per cluster size, on two different racks (so that no node's damping
//! penalty carries from the first into the second): once with everything sharing the cores, once
//! with the control plane first on the CPU (`renice -19`: IPAM, routeplane-bgp, BIRD, and the
//! simulated agents' beats, which run on a thread of their own) and the simulated agents' reading
//! of their Watch feeds last — as in a cluster, where none of those shares a host with 5,000
//! agents (BIRD on the ToR, IPAM and routeplane-bgp on control-plane nodes) and each agent reads
//! only its own feed. Then the rack beats again, and the phase ends once the ToR has every route
//! back and every watcher has caught up, so that what follows is not measured against its
//! backlog.

use std::ops::Range;
use std::time::{Duration, Instant};

use routeplane_bench::cpu_seconds;

use super::{LIMIT, Plane, capture, sim};

/// How long the revived rack may take to be back at the ToR.
const BACK: Duration = Duration::from_secs(120);

/// What one rack's death took.
#[derive(Debug, Clone, Copy)]
pub struct RackDeath {
    /// Seconds until IPAM had declared every node of the rack dead.
    pub declared: f64,
    /// Seconds until the ToR had withdrawn every one of their pod CIDRs.
    pub withdrawn: f64,
}

impl Default for RackDeath {
    fn default() -> RackDeath {
        RackDeath {
            declared: f64::NAN,
            withdrawn: f64::NAN,
        }
    }
}

/// The racks of a cluster of `n`: the last tenth, and the tenth before it.
pub fn racks(n: usize) -> [Range<usize>; 2] {
    let size = (n / 10).max(1);
    [
        n.saturating_sub(size)..n,
        n.saturating_sub(2 * size)..n.saturating_sub(size),
    ]
}

/// `rack` dies and comes back; with `first`, the control plane runs first on the CPU until the
/// ToR has withdrawn it.
pub fn dies(
    rt: &tokio::runtime::Runtime,
    sim: &mut sim::Sim,
    plane: &Plane,
    rack: Range<usize>,
    first: bool,
) -> RackDeath {
    let size = rack.len();
    let (bgp, bird) = (Plane::pid(&plane.bgp), plane.bird.pid());
    let control_plane = |nice| {
        for pid in [Plane::pid(&plane.ipam), bgp, bird] {
            capture::renice(pid, nice);
        }
        capture::renice_threads(sim::BEATS_THREAD, nice);
    };
    if first {
        control_plane(-19);
    }
    let (deaths, routes) = (plane.ipam_deaths(), plane.imported());
    let bgp_cpu = cpu_seconds(bgp).unwrap_or(0.0);
    let start = Instant::now();
    sim.silence(rack.start, rack.end);
    let (mut declared, mut withdrawn) = (None, None);
    while declared.is_none() || withdrawn.is_none() {
        assert!(
            start.elapsed() < LIMIT,
            "a rack of {size} dead nodes: declared dead after {declared:?} s, withdrawn at the ToR after {withdrawn:?} s; not both within {LIMIT:?}"
        );
        if declared.is_none() && plane.ipam_deaths() - deaths >= size as f64 {
            declared = Some(start.elapsed().as_secs_f64());
        }
        if withdrawn.is_none() && plane.imported() + size <= routes {
            withdrawn = Some(start.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "rack of {size}{}: routeplane-bgp's CPU until withdrawn {:.3} s",
        if first {
            ", the control plane first"
        } else {
            ""
        },
        cpu_seconds(bgp).unwrap_or(0.0) - bgp_cpu
    );
    if first {
        control_plane(0);
    }
    rt.block_on(sim.revive());
    let back = Instant::now();
    while plane.imported() < routes {
        if back.elapsed() > BACK {
            let told = rt.block_on(sim.not_ready(rack.clone()));
            panic!(
                "the rack of {size} back: {} of {routes} routes at the ToR {BACK:?} after it beat again; IPAM: {told}",
                plane.imported()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every watcher past the revivals: a change after them, read by all.
    let (revision, made) = rt.block_on(sim.change("rack-back", rack.start));
    let have = rt.block_on(sim.until_every_watcher_has(revision, made + LIMIT));
    assert!(
        have.len() >= sim.nodes,
        "after the rack came back, {} of {} watchers caught up within {LIMIT:?}",
        have.len(),
        sim.nodes
    );
    eprintln!(
        "rack of {size}: back at the ToR and every watcher caught up in {:.2} s",
        back.elapsed().as_secs_f64()
    );
    RackDeath {
        declared: declared.unwrap_or(f64::NAN),
        withdrawn: withdrawn.unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::racks;

    #[test]
    fn two_racks_of_a_tenth_that_do_not_overlap() {
        assert_eq!(racks(5000), [4500..5000, 4000..4500]);
        assert_eq!(racks(100), [90..100, 80..90]);
        assert_eq!(racks(5), [4..5, 3..4]);
    }
}
