//! routeplane-bgp: see `routeplane-bgp --help` and the crate documentation.
#![forbid(unsafe_code)]

use clap::Parser;
use routeplane_bgp::server;
use routeplane_bgp::settings::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.probe {
        return routeplane_runtime::probe::exit_code(
            cli.grpc_listen,
            routeplane_bgp::GRPC_SERVICE,
            &cli.tls,
        )
        .await;
    }
    match server::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplane-bgp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
