//! The README's grpcurl examples, run as a user pastes them (through bash, against a fresh server),
//! so that the documentation cannot drift from the behaviour.

mod common;

use std::process::Command;

use common::{Server, repo_file};

fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let block = readme
        .split("<!-- readme-test:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- readme-test:end -->").next())
        .expect("README has a readme-test block");
    block
        .lines()
        .filter(|l| l.starts_with("grpcurl "))
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_grpcurl_examples_work_verbatim() {
    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "the README block lost its examples: {commands:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut outputs = Vec::new();
    for cmd in &commands {
        assert!(
            cmd.contains("127.0.0.1:50051"),
            "README examples target the address of scripts/run ipam: {cmd}"
        );
        let cmd = cmd
            .replace("127.0.0.1:50051", &server.grpc.to_string())
            .replacen("grpcurl ", "grpcurl -max-time 20 ", 1);
        let (ok, text) = common::output_text(Command::new("bash").arg("-c").arg(&cmd));
        assert!(ok, "README example failed:\n{cmd}\n{text}");
        outputs.push(text);
    }
    let all = outputs.join("\n");
    // What the README's prose promises about these examples.
    for promise in [
        "\"10.5.112.0/24\"",
        "\"10.5.112.1\"",
        "\"10.5.112.2\"",
        "\"10.5.120.53\"",
        "\"10.5.113.0/24\"",
        "\"drained\": true",
        "SERVING",
    ] {
        assert!(
            all.contains(promise),
            "README examples should show {promise}:\n{all}"
        );
    }
}
