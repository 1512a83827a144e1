//! routeplane-bgp: see `routeplane-bgp --help` and the crate documentation.
#![forbid(unsafe_code)]

use clap::Parser;
use routeplane_bgp::server;
use routeplane_bgp::settings::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match server::run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplane-bgp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
