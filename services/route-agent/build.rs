//! Compiles the eBPF datapath (bpf/route.c) with clang when there is one; without clang the agent
//! is built without it (cfg `ebpf` unset) and says so when asked for it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/route.c");
    // Build again when clang or libbpf's headers arrive (or go): a build made without them lacks
    // the datapath.
    println!("cargo:rerun-if-changed=/usr/bin/clang-14");
    println!("cargo:rerun-if-changed=/usr/include/bpf/bpf_helpers.h");
    println!("cargo::rustc-check-cfg=cfg(ebpf)");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("route.bpf.o");
    let Some(clang) = ["clang-14", "clang"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        println!(
            "cargo:warning=clang not found: routeplane-agent is built without its eBPF datapath (Debian: clang-14, libbpf-dev)"
        );
        return;
    };
    let status = Command::new(clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
            "bpf/route.c",
            "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo:rustc-cfg=ebpf"),
        other => println!(
            "cargo:warning=compiling bpf/route.c failed ({other:?}): routeplane-agent is built without its eBPF datapath"
        ),
    }
}
