//! TCP-MD5 signatures (RFC 2385) through the kernel's TCP_MD5SIG socket option: the key for a
//! peer's address goes on the socket we dial from and on every listener that peer may reach.
//! This is the crate's only unsafe code: one `setsockopt` call.
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
pub fn set_key(socket: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    let opt = encode(peer, key)?;
    // SAFETY: `socket` is a valid open descriptor for the duration of the borrow; the option value
    // points at `opt`, which lives across the call and is exactly `opt.len()` bytes long; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            opt.as_ptr().cast(),
            opt.len() as libc::socklen_t,
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
        set_key(listener.as_fd(), "127.0.0.2".parse().unwrap(), b"secret")
            .expect("TCP_MD5SIG on a listener");
    }
}
