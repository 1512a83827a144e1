//! Network namespaces a test creates for itself. Names are unique per test, not per process — two
//! tests running side by side in one process never share (or delete) each other's namespaces or
//! interfaces — and every namespace is deleted when its owner is dropped.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sh;

/// A short identifier, unique among the tests running on this machine now (the process id and a
/// counter, base 36): for namespace and interface names, which Linux limits to 15 bytes.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}{}",
        base36(std::process::id() % 46_656, 3),
        base36(n % 1_296, 2)
    )
}

fn base36(mut n: u32, width: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = digits[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A network namespace, with loopback up; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// `rp-<id>-<role>`: `id` from [`unique_id`], shared by the namespaces of one lab.
    pub fn new(id: &str, role: &str) -> Netns {
        let name = format!("rp-{id}-{role}");
        // A namespace of this name can only be left over from a dead process with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// Runs `f` on a thread of its own that has entered the namespace, so that the sockets it
    /// opens are the namespace's (a gRPC client to a server on its loopback, say).
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let netns =
                std::fs::File::open(&path).unwrap_or_else(|e| panic!("namespace {path}: {e}"));
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering namespace {path}: {e}"));
            f()
        })
    }

    /// A command inside the namespace, which must succeed.
    pub fn sh(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// A command inside the namespace: whether it succeeded, and its stdout then stderr.
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `sysctl -w SETTING` inside the namespace.
    pub fn sysctl(&self, setting: &str) {
        self.sh(&["sysctl", "-qw", setting]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair between two namespaces: `a` in `left`, `b` in `right`, both up, unnumbered.
pub fn veth(left: &Netns, a: &str, right: &Netns, b: &str) {
    sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
    sh(&["ip", "link", "set", a, "netns", left.name()]);
    sh(&["ip", "link", "set", b, "netns", right.name()]);
    left.ip(&["link", "set", a, "up"]);
    right.ip(&["link", "set", b, "up"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_within_one_process_and_fit_interface_names() {
        let (a, b) = (unique_id(), unique_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5);
        assert!(format!("rpveth{a}x").len() <= 15);
    }
}
