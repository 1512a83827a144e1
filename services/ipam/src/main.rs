//! routeplane-ipam: see `routeplane-ipam --help` and the crate documentation.
#![forbid(unsafe_code)]

use clap::Parser;
use routeplane_ipam::server;
use routeplane_ipam::settings::Cli;
use routeplane_ipam::store_check::{self, Verdict};

// glibc's malloc was 8 to 11 % of IPAM's CPU at full load (sled's node copies, h2's buffers);
// mimalloc made durable allocations 5 to 10 % faster in `bench/run-ipam` (same run, A/B).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    if cli.check_store {
        return match store_check::check(&cli.data_dir) {
            Ok((report, verdict)) => {
                print!("{report}");
                match verdict {
                    Verdict::Starts => std::process::ExitCode::SUCCESS,
                    Verdict::Refuses => std::process::ExitCode::from(1),
                }
            }
            Err(e) => {
                eprintln!("routeplane-ipam --check-store: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Some(direction) = cli.copy_store {
        let copied = match cli.etcd_settings() {
            Ok(settings) => {
                routeplane_ipam::migrate::copy(direction, &cli.data_dir, &settings).await
            }
            Err(e) => Err(e),
        };
        return match copied {
            Ok(report) => {
                print!("{report}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("routeplane-ipam --copy-store: {e}");
                std::process::ExitCode::from(1)
            }
        };
    }
    match server::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routeplane-ipam: {e}");
            // Now, not on return: dropping the runtime waits for its blocking threads, and one
            // stuck in sled (the failure that brought us here) would hold the exit for ever.
            std::process::exit(1)
        }
    }
}
