//! Running routeplane's binaries (and BIRD, gobgpd…) from tests: find the binary in the build,
//! start it — inside a network namespace if asked — keep everything it prints, read the addresses
//! it says it listens on, and stop it with a deadline. One harness for every test crate and bench.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A workspace binary (`routeplane-ipam`, `routeplane-cni`…) of the build running this test: they
/// sit beside each other in cargo's target directory. Fails, saying how to build it, when missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    // target/debug/deps/TEST-HASH for tests, target/debug/NAME for binaries (benches).
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// A process started by a test; killed when dropped.
pub struct Service {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Service {
    /// Starts `program` with `args` (in network namespace `netns` when given) with OTLP export
    /// off; whatever it prints on stdout and stderr is kept (see [`Service::log`]).
    pub fn spawn(name: &str, netns: Option<&str>, program: &Path, args: &[&str]) -> Service {
        let mut command = crate::command_in(netns, &program.to_string_lossy());
        command.args(args).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        Service::start(name, command)
    }

    /// Starts a prepared command (its environment as given, working directory…), keeping its
    /// output the same way.
    pub fn start(name: &str, mut command: Command) -> Service {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let out = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        for stream in [out, err].into_iter().flatten() {
            let sink = log.clone();
            // Drained for the life of the process, so that it never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Service {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory now, in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{}: /proc status: {e}", self.name));
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{}: no VmRSS in /proc status", self.name))
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The address of the first `WHAT listening … addr=ADDR` line routeplane's services log
    /// (`what`: "gRPC", "metrics", "BGP"), waiting up to 30 s; fails with the log if the process
    /// exits or never says it.
    pub fn listen_addr(&mut self, what: &str) -> SocketAddr {
        let needle = format!("{what} listening");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if let Some(addr) = log
                .lines()
                .filter(|l| l.contains(&needle))
                .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
                .and_then(|a| a.parse().ok())
            {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before \"{needle}\":\n{log}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no \"{needle}\" in 30 s:\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`"-TERM"`, `"-HUP"`, `"-STOP"`…).
    pub fn signal(&self, signal: &str) {
        crate::sh(&["kill", signal, &self.pid().to_string()]);
    }

    /// SIGTERM, then the exit status; fails if it is still running after 15 s.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit(Duration::from_secs(15))
    }

    /// The exit status once the process has exited; fails with the log after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for a child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_address_is_read_from_the_log() {
        let mut s = Service::spawn(
            "echo",
            None,
            Path::new("sh"),
            &[
                "-c",
                "echo 'INFO gRPC listening addr=127.0.0.1:4321 service=x' >&2; sleep 5",
            ],
        );
        assert_eq!(s.listen_addr("gRPC"), "127.0.0.1:4321".parse().unwrap());
        s.kill9();
    }

    #[test]
    #[should_panic(expected = "exited with")]
    fn a_process_that_exits_before_listening_fails_with_its_log() {
        let mut s = Service::spawn("false", None, Path::new("sh"), &["-c", "echo boom; exit 3"]);
        s.listen_addr("gRPC");
    }
}
