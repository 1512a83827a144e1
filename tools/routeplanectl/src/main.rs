//! routeplanectl: the operator's view of routeplane-ipam, routeplane-bgp and the route agents —
//! `peers`, `routes advertised|received`, `nodes`, `ipam show`, `explain`, `drain`, `watch` — as
//! tables (or `-o json|yaml`). Every failure is one line on stderr naming the endpoint and what
//! was wrong, and a non-zero exit (1: the call failed, 2: bad arguments or config).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod connect;
mod output;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("routeplanectl: cannot start: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplanectl: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
