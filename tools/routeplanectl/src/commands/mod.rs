//! Each command: connect, one or a few calls, a view that prints as tables or JSON/YAML.

mod bgp;
mod ipam;

use crate::cli::{Args, Command, IpamCommand};
use crate::connect::{self, BGP, CtlError, IPAM};
use crate::output;

pub async fn run(args: Args) -> Result<(), CtlError> {
    let endpoints = args.endpoints()?;
    let dialer = connect::dialer(&endpoints)?;
    let format = args.output;
    match args.command {
        Command::Peers => {
            let bgp = connect::connect(&dialer, BGP, &endpoints.bgp).await?;
            output::print(format, &bgp::peers(&bgp).await?)
        }
        Command::Routes { direction, peer } => {
            let bgp = connect::connect(&dialer, BGP, &endpoints.bgp).await?;
            let routes = bgp::routes(&bgp, direction, peer.as_deref()).await?;
            output::print(format, &routes)?;
            for note in &routes.notes {
                eprintln!("note: {note}");
            }
            Ok(())
        }
        Command::Explain { prefix } => {
            let bgp = connect::connect(&dialer, BGP, &endpoints.bgp).await?;
            output::print(format, &bgp::explain(&bgp, &prefix).await?)
        }
        Command::Nodes => {
            let ipam = connect::connect(&dialer, IPAM, &endpoints.ipam).await?;
            output::print(format, &ipam::nodes(&ipam).await?)
        }
        Command::Ipam {
            what: IpamCommand::Show,
        } => {
            let ipam = connect::connect(&dialer, IPAM, &endpoints.ipam).await?;
            output::print(format, &ipam::show(&ipam).await?)
        }
        Command::Drain { node, cancel } => {
            let ipam = connect::connect(&dialer, IPAM, &endpoints.ipam).await?;
            let drained = ipam::drain(&ipam, &node, cancel).await?;
            output::print(format, &drained)?;
            eprintln!("{}", ipam::drain_note(&drained, cancel));
            Ok(())
        }
        Command::Watch {
            from_revision,
            count,
        } => {
            let ipam = connect::connect(&dialer, IPAM, &endpoints.ipam).await?;
            ipam::watch(&ipam, format, from_revision, count).await
        }
    }
}

/// Seconds as operators read them: 45s, 12m3s, 5h2m, 3d4h.
pub fn age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_as_operators_write_them() {
        assert_eq!(super::age(45), "45s");
        assert_eq!(super::age(723), "12m3s");
        assert_eq!(super::age(18_120), "5h2m");
        assert_eq!(super::age(273_600), "3d4h");
    }
}
