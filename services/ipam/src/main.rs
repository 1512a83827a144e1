//! routeplane-ipam: see `routeplane-ipam --help` and the crate documentation.
#![forbid(unsafe_code)]

use clap::Parser;
use routeplane_ipam::server;
use routeplane_ipam::settings::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.probe {
        return routeplane_runtime::probe::exit_code(
            cli.grpc_listen,
            routeplane_ipam::GRPC_SERVICE,
            &cli.tls,
        )
        .await;
    }
    match server::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplane-ipam: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
