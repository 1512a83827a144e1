//! routeplane-agent: see `routeplane-agent --help` and the crate documentation.
#![forbid(unsafe_code)]

use clap::Parser;
use routeplane_agent::agent::{Cli, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplane-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
