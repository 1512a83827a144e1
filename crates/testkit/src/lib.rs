//! What routeplane's namespace tests and benchmarks share.
//!
//! Contract: [`sh`] runs a set-up command and ends the caller with the command's stderr when it
//! fails; [`grpcurl`] makes one call with the real grpcurl, in a network namespace if asked, and
//! gives the reply as JSON or the failure as text; [`bird`] reads BIRD's route listings;
//! [`privileged`] says whether a test that needs root and some tools can run, skipping
//! loudly when it cannot — and failing instead when ROUTEPLANE_REQUIRE_PRIVILEGED=1 (CI).
#![forbid(unsafe_code)]

pub mod bird;

use std::process::Command;

/// Runs a set-up command (ip, mount, sysctl…); a failure panics with its stderr.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One unary call with the real grpcurl (scripts/test installs it), inside the network namespace
/// `netns` when given, to a plaintext server at `addr`: the reply as JSON, or grpcurl's complaint.
pub fn grpcurl(
    netns: Option<&str>,
    addr: &str,
    method: &str,
    body: &str,
) -> Result<serde_json::Value, String> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "grpcurl"]);
            c
        }
        None => Command::new("grpcurl"),
    };
    let out = command
        .args(["-plaintext", "-max-time", "10", "-d", body, addr, method])
        .output()
        .map_err(|e| format!("grpcurl (scripts/test installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "grpcurl {addr} {method} {body}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{method}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Whether `test` can run: root, and every one of `tools` on the PATH. Otherwise it prints a
/// SKIPPED banner and returns false — or panics under ROUTEPLANE_REQUIRE_PRIVILEGED=1.
pub fn privileged(test: &str, tools: &[&str]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = if root {
        format!(
            "{} missing (scripts/test installs them)",
            missing.join(", ")
        )
    } else {
        "it needs root (network namespaces)".to_string()
    };
    skip(test, &why)
}

/// Skips `test` loudly, saying `why`, and returns false — or panics under
/// ROUTEPLANE_REQUIRE_PRIVILEGED=1, where nothing may be skipped.
pub fn skip(test: &str, why: &str) -> bool {
    assert!(
        std::env::var("ROUTEPLANE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test}: cannot run: {why}, and ROUTEPLANE_REQUIRE_PRIVILEGED=1"
    );
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    false
}
