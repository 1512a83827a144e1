//! The open-files limit a server with thousands of clients needs. Every agent holds a connection
//! to routeplane-ipam (its calls, heartbeat and Watch), so 5,000 nodes are 5,000 sockets —
//! five times the soft limit of 1,024 that systemd and many shells start a process with, while the
//! hard limit (524,288 under systemd, 1,048,576 in containerd's and Docker's containers) allows far
//! more. Past the soft limit `accept` fails with EMFILE and the node looks dead to IPAM. So each
//! service raises its soft limit to the hard one at start, as Go's runtime has done for every Go
//! program since 1.19 (gobgpd, etcd, Cilium's agent among them), and says so in its log.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What [`raise_open_files`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFiles {
    /// The soft limit was below the hard one and now equals it.
    Raised { from: u64, to: u64 },
    /// Already at the hard limit.
    AtHardLimit(u64),
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (no privilege needed for that).
pub fn raise_open_files() -> Result<OpenFiles, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(OpenFiles::AtHardLimit(soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(OpenFiles::Raised {
        from: soft,
        to: hard,
    })
}

/// [`raise_open_files`], logged: at info when raised, a warning when it could not be (the service
/// still runs, with fewer clients than it could serve).
pub fn raise_open_files_logged() {
    match raise_open_files() {
        Ok(OpenFiles::Raised { from, to }) => {
            tracing::info!(
                from,
                to,
                "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
            );
        }
        Ok(OpenFiles::AtHardLimit(n)) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(
            error = %e,
            "could not raise the open-files limit (RLIMIT_NOFILE): connections past it will be refused"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        // This test process's own limit: raising the soft limit needs no privilege.
        raise_open_files().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert!(matches!(raise_open_files(), Ok(OpenFiles::AtHardLimit(n)) if n == hard));
    }
}
