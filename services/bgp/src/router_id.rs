//! The BGP identifier when none is configured (no `--router-id`, no `router-id` on a peer): the
//! IPv4 address this host uses toward its peers, as BIRD and MetalLB take theirs from the host's
//! addresses, so that the seed's bgp-config starts as it is. The address is what the kernel would
//! pick as the source toward the peer (a UDP socket connected to it: nothing is sent), or the
//! peer's `source-address` when set.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use routeplane_config::Peer;

/// The identifier to use and the peer it was found toward: the first peer, in configuration
/// order, toward which this host has an IPv4 address. None when there is none (no peers, or only
/// IPv6 ones): each peer then needs its own router-id.
pub fn toward_peers(peers: &[Peer]) -> Option<(Ipv4Addr, IpAddr)> {
    peers.iter().find_map(|p| {
        let local = p.source_address.or_else(|| source_toward(p.peer_address))?;
        match local {
            IpAddr::V4(v4) if !v4.is_unspecified() => Some((v4, p.peer_address)),
            _ => None,
        }
    })
}

/// The source address the kernel picks toward `peer` (no packet leaves: connecting a UDP socket
/// only chooses a route).
fn source_toward(peer: IpAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect((peer, 179)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use routeplane_config::BgpConfig;

    fn peers(yaml: &str) -> Vec<Peer> {
        BgpConfig::parse(yaml, "test").unwrap().peers
    }

    #[test]
    fn the_ipv4_source_toward_the_first_peer_that_has_one() {
        let v4 =
            peers("peers:\n  - peer-address: 127.0.0.2\n    peer-asn: 64512\n    my-asn: 64513\n");
        assert_eq!(
            toward_peers(&v4),
            Some((Ipv4Addr::LOCALHOST, "127.0.0.2".parse().unwrap()))
        );
        let with_source = peers(
            "peers:\n  - peer-address: 127.0.0.2\n    peer-asn: 64512\n    my-asn: 64513\n    source-address: 127.0.0.9\n",
        );
        assert_eq!(
            toward_peers(&with_source).map(|(id, _)| id),
            Some(Ipv4Addr::new(127, 0, 0, 9))
        );
        let v6_only =
            peers("peers:\n  - peer-address: ::1\n    peer-asn: 64512\n    my-asn: 64513\n");
        assert_eq!(toward_peers(&v6_only), None);
        assert_eq!(toward_peers(&[]), None);
    }
}
