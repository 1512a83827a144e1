//! routeplane-agent: see `routeplane-agent --help` and the crate documentation.
#![forbid(unsafe_code)]

use clap::Parser;
use routeplane_agent::agent::run;
use routeplane_agent::settings::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.probe {
        return routeplane_runtime::probe::exit_code(
            cli.grpc_listen,
            routeplane_agent::GRPC_SERVICE,
            &cli.tls,
        )
        .await;
    }
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplane-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
