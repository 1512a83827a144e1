//! Asking BIRD 2 what it knows: [`birdc`] runs one command on a control socket and fails when
//! BIRD refuses it or does not answer (birdc's exit status — never an error message read as a
//! listing), and [`parse_routes`] reads `show route` and `show route all`, as the BGP lab tests
//! and the compose e2e test ask a router what it learned.
//!
//! A route line is `PREFIX  unicast [PROTOCOL TIME …] * (PREF) …` — the prefix left out on a
//! prefix's further paths, `*` marking the preferred one — followed by tab-indented lines: the hop
//! (`via ADDR on IFACE`, or `dev IFACE`) and, with `all`, attributes such as `BGP.next_hop: …`.

use std::path::Path;

/// One birdc command on the control socket `socket`, run in network namespace `netns` when given:
/// its output, or an error with birdc's complaint (BIRD not running, a command it refuses).
pub fn birdc(netns: Option<&str>, socket: &Path, command: &str) -> Result<String, String> {
    let out = crate::command_in(netns, "birdc")
        .arg("-s")
        .arg(socket)
        .args(command.split_whitespace())
        .output()
        .map_err(|e| format!("birdc (scripts/test installs bird2): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "birdc -s {} {command}: {}{text}{}",
            socket.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One path of one prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BirdPath {
    pub prefix: String,
    /// The protocol that gave it (`routeplane`, `tor83`, `direct1`…).
    pub protocol: String,
    /// BIRD's choice among the prefix's paths (`*`).
    pub preferred: bool,
    /// The hop: the gateway address, or `dev IFACE` for a device route.
    pub via: String,
    /// `BGP.next_hop`, `BGP.as_path` and `BGP.local_pref` (`show route all` only; else empty).
    pub next_hop: String,
    pub as_path: String,
    pub local_pref: String,
}

/// Every path in `text`, in BIRD's order.
pub fn parse_routes(text: &str) -> Vec<BirdPath> {
    let mut paths: Vec<BirdPath> = Vec::new();
    for line in text.lines() {
        if let Some((head, rest)) = line.split_once(" unicast [") {
            let prefix = match head.split_whitespace().next() {
                Some(p) if !line.starts_with(char::is_whitespace) => p.to_string(),
                _ => paths.last().map(|p| p.prefix.clone()).unwrap_or_default(),
            };
            paths.push(BirdPath {
                prefix,
                protocol: rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                preferred: rest.contains("] * ("),
                ..BirdPath::default()
            });
            continue;
        }
        let (Some(path), Some(detail)) = (paths.last_mut(), line.strip_prefix('\t')) else {
            continue;
        };
        let detail = detail.trim();
        let words: Vec<&str> = detail.split_whitespace().collect();
        match words[..] {
            ["via", addr, ..] if path.via.is_empty() => path.via = addr.to_string(),
            ["dev", iface, ..] if path.via.is_empty() => path.via = format!("dev {iface}"),
            _ => {
                let value = |key: &str| detail.strip_prefix(key).map(|v| v.trim().to_string());
                if let Some(v) = value("BGP.next_hop:") {
                    path.next_hop = v;
                } else if let Some(v) = value("BGP.as_path:") {
                    path.as_path = v;
                } else if let Some(v) = value("BGP.local_pref:") {
                    path.local_pref = v;
                }
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW_ROUTE: &str = "BIRD 2.0.12 ready.\nTable master4:\n\
        10.4.36.0/24         unicast [direct1 09:41:26.210] * (240)\n\tdev eth0\n\
        \x20                    unicast [tor94 09:41:33.635] (100) [AS64524i]\n\tvia 10.4.36.239 on eth0\n\
        10.5.112.0/24        unicast [routeplane 09:41:30.536 from 10.4.36.10] * (100) [i]\n\tvia 10.4.83.12 on eth1\n";

    const SHOW_ROUTE_ALL: &str = "BIRD 2.0.12 ready.\nTable master4:\n\
        10.5.114.0/24        unicast [routeplane 10:23:24.119 from 10.4.36.10] * (100) [i]\n\
        \tvia 10.4.83.11 on eth1\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: \n\
        \tBGP.next_hop: 10.4.83.11\n\tBGP.local_pref: 100\n";

    #[test]
    fn birdc_without_a_bird_is_an_error_not_an_empty_listing() {
        let dir = std::env::temp_dir().join("routeplane-no-bird.ctl");
        match birdc(None, &dir, "show route") {
            Err(e) => assert!(e.contains("show route"), "{e}"),
            Ok(text) => panic!("no BIRD runs, yet birdc answered: {text}"),
        }
    }

    #[test]
    fn every_path_with_its_protocol_preference_and_hop() {
        let paths = parse_routes(SHOW_ROUTE);
        assert_eq!(paths.len(), 3);
        assert_eq!(
            (
                paths[0].prefix.as_str(),
                paths[0].protocol.as_str(),
                paths[0].preferred,
                paths[0].via.as_str()
            ),
            ("10.4.36.0/24", "direct1", true, "dev eth0")
        );
        assert_eq!(
            (
                paths[1].prefix.as_str(),
                paths[1].protocol.as_str(),
                paths[1].preferred,
                paths[1].via.as_str()
            ),
            ("10.4.36.0/24", "tor94", false, "10.4.36.239")
        );
        assert_eq!(
            (paths[2].prefix.as_str(), paths[2].via.as_str()),
            ("10.5.112.0/24", "10.4.83.12")
        );
    }

    #[test]
    fn all_adds_the_bgp_attributes() {
        let paths = parse_routes(SHOW_ROUTE_ALL);
        assert_eq!(paths.len(), 1);
        let p = &paths[0];
        assert_eq!(
            (
                p.via.as_str(),
                p.next_hop.as_str(),
                p.as_path.as_str(),
                p.local_pref.as_str()
            ),
            ("10.4.83.11", "10.4.83.11", "", "100")
        );
    }
}
