//! routeplane-ipam: see `routeplane-ipam --help` and the crate documentation.
#![forbid(unsafe_code)]

use clap::Parser;
use routeplane_ipam::server;
use routeplane_ipam::settings::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match server::run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplane-ipam: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
