//! The socket options socket2 does not offer, set through one raw `setsockopt` call (the crate's
//! only unsafe code):
//! - TCP-MD5 signatures (RFC 2385), TCP_MD5SIG: the key for a peer's address goes on the socket we
//!   dial from and on every listener that peer may reach;
//! - GTSM (RFC 5082), IP_MINTTL and IPV6_MINHOPCOUNT: the kernel drops the peer's packets that
//!   arrive with fewer hops left than the minimum, before they reach the session.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Linux's TCP_MD5SIG_MAXKEYLEN.
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` is 128 octets of sockaddr_storage, flags, prefix length, key length,
/// interface index, then the key.
const OPT_LEN: usize = 128 + 1 + 1 + 2 + 4 + MAX_KEY_LEN;

/// The option's bytes, laid out as the kernel reads them (native byte order for the counts).
fn encode(peer: IpAddr, key: &[u8]) -> io::Result<[u8; OPT_LEN]> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a TCP-MD5 key holds at most {MAX_KEY_LEN} bytes, this one {}",
                key.len()
            ),
        ));
    }
    let mut opt = [0u8; OPT_LEN];
    match peer {
        IpAddr::V4(a) => {
            opt[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            opt[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            opt[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            opt[8..24].copy_from_slice(&a.octets());
        }
    }
    opt[130..132].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    opt[136..136 + key.len()].copy_from_slice(key);
    Ok(opt)
}

/// Signs and checks every segment exchanged with `peer` on `socket` with `key`.
pub fn set_md5_key(socket: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    set(
        socket,
        libc::IPPROTO_TCP,
        libc::TCP_MD5SIG,
        &encode(peer, key)?,
    )
}

/// Drops every packet that reaches `socket` with a TTL (IPv4) or hop limit (IPv6) below `min`.
/// An IPv6 socket may carry IPv4 (a v4-mapped peer on a dual-stack listener), so it gets both
/// options — IP_MINTTL is refused on an IPv6-only socket, which never carries IPv4.
pub fn set_min_ttl(socket: BorrowedFd<'_>, v6: bool, min: u8) -> io::Result<()> {
    let value = i32::from(min).to_ne_bytes();
    if !v6 {
        return set(socket, libc::IPPROTO_IP, libc::IP_MINTTL, &value);
    }
    set(socket, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &value)?;
    match set(socket, libc::IPPROTO_IP, libc::IP_MINTTL, &value) {
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(()),
        other => other,
    }
}

fn set(socket: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `socket` is a valid open descriptor for the duration of the borrow; the option value
    // points at `value`, which lives across the call and is exactly `value.len()` bytes long; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn layout_matches_struct_tcp_md5sig() {
        let opt = encode("10.4.36.239".parse().unwrap(), b"secret").unwrap();
        assert_eq!(opt.len(), 216);
        assert_eq!(u16::from_ne_bytes([opt[0], opt[1]]), libc::AF_INET as u16);
        assert_eq!(&opt[4..8], &[10, 4, 36, 239]);
        assert_eq!(u16::from_ne_bytes([opt[130], opt[131]]), 6);
        assert_eq!(&opt[136..142], b"secret");
        assert!(encode("::1".parse().unwrap(), &[0; 81]).is_err());
    }

    #[test]
    fn the_kernel_takes_the_key() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_md5_key(listener.as_fd(), "127.0.0.2".parse().unwrap(), b"secret")
            .expect("TCP_MD5SIG on a listener");
    }

    /// What the option is for: a segment sent with one hop too few never reaches the reader;
    /// once the sender uses 255, TCP's retransmission delivers it.
    #[test]
    fn segments_below_the_minimum_ttl_are_dropped() {
        use std::io::{Read, Write};
        for (bind, v6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let listener = std::net::TcpListener::bind(bind).unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            set_min_ttl(server.as_fd(), v6, 255).unwrap();
            server
                .set_read_timeout(Some(std::time::Duration::from_millis(500)))
                .unwrap();
            let hops = |s: &std::net::TcpStream, n: u32| {
                let s = socket2::SockRef::from(s);
                if v6 {
                    s.set_unicast_hops_v6(n)
                } else {
                    s.set_ttl_v4(n)
                }
                .unwrap()
            };
            hops(&client, 254);
            client.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            assert!(
                server.read(&mut byte).is_err(),
                "{bind}: a segment with 254 hops left reached the reader"
            );
            hops(&client, 255);
            server
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            assert_eq!(server.read(&mut byte).unwrap(), 1, "{bind}");
            assert_eq!(&byte, b"x");
        }
    }
}
