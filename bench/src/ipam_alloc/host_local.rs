//! CNI host-local, the side-by-side: one exec of the plugin per allocation, as a container
//! runtime does.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cells::Cell;

/// host-local after the same warm-up as routeplane-ipam's: 300 ms of allocations, unmeasured.
pub(crate) fn run_host_local_cell(
    plugin: &Path,
    dir: &Path,
    concurrency: usize,
    seconds: f64,
) -> Cell {
    run_host_local(plugin, &dir.join("warm"), concurrency, 0.3);
    run_host_local(plugin, &dir.join("m"), concurrency, seconds)
}

/// host-local: one exec per allocation (as the container runtime does), CNI ADD with a fresh
/// container ID, the plugin's own flock serialising them.
pub(crate) fn run_host_local(plugin: &Path, dir: &Path, concurrency: usize, seconds: f64) -> Cell {
    let conf = Arc::new(format!(
        r#"{{"cniVersion":"0.4.0","name":"bench","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.0.0.0/8"}}]],"dataDir":"{}"}}}}"#,
        dir.display()
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let (conf, plugin) = (conf.clone(), plugin.to_path_buf());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let mut child = Command::new(&plugin)
                        .env("CNI_COMMAND", "ADD")
                        .env("CNI_CONTAINERID", format!("c{t}-{i}"))
                        .env("CNI_NETNS", "/proc/self/ns/net")
                        .env("CNI_IFNAME", "eth0")
                        .env("CNI_PATH", plugin.parent().unwrap())
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("host-local");
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(conf.as_bytes())
                        .unwrap();
                    let out = child.wait_with_output().unwrap();
                    assert!(
                        out.status.success(),
                        "host-local failed: {}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                    lat.push(begun.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    Cell::timed(
        "CNI host-local",
        concurrency,
        started.elapsed().as_secs_f64(),
        latencies,
    )
}
