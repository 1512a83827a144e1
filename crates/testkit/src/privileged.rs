//! The privileged tier: tests that need root (network namespaces, kernel routes, eBPF, Docker) and
//! real tools (BIRD, GoBGP, grpcurl, containerd…).
//!
//! Contract: such a test lives in a module named `privileged` (its name reads `…privileged::…`),
//! so that `scripts/test --unprivileged` can leave it out by name (`cargo test -- --skip
//! privileged::`) and list it as skipped. Run, it *requires* what it needs: [`require`] fails the
//! test, naming what is missing — a privileged test never reports `ok` without having run.

use std::process::Command;

/// The filter that leaves the privileged tier out (`cargo test -- --skip privileged::`).
pub const FILTER: &str = "privileged::";

/// Fails the calling test unless it runs as root with every one of `tools` on the PATH, and unless
/// it sits in a `privileged` module (so that `--unprivileged` runs can leave it out by name).
pub fn require(tools: &[&str]) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed>");
    assert!(
        test.contains(FILTER) || test == "main",
        "{test} needs root: it belongs in a `mod privileged` so that `scripts/test --unprivileged` can leave it out by name"
    );
    assert!(
        is_root(),
        "{test} needs root (network namespaces, kernel routes): run scripts/test as root, or `scripts/test --unprivileged`, which leaves the privileged tests out and lists them"
    );
    let missing = missing_tools(tools);
    assert!(
        missing.is_empty(),
        "{test} needs {} on the PATH (scripts/test installs them)",
        missing.join(", ")
    );
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Which of `tools` are not on the PATH.
pub fn missing_tools<'a>(tools: &[&'a str]) -> Vec<&'a str> {
    tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect()
}
