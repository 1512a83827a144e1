//! The IPAM layer's one error type. Every variant's message names the offending value and says what
//! would be valid; `grpc.rs` maps each to its status code in one place.

/// Errors of the IPAM domain and its storage.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IpamError {
    /// Malformed input: a name, address, CIDR or option that can never be valid.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Valid input that the current state refuses (e.g. deleting a node that still has pods).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A pool is full.
    #[error("{0}")]
    Exhausted(String),
    /// A stream ended because the client must resume (e.g. a watcher that fell behind).
    #[error("{0}")]
    Aborted(String),
    /// The server is stopping; retry against it (or its replacement) later.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed; the server stops accepting writes until it is restarted.
    #[error("storage failed: {0}")]
    Storage(String),
    /// Storage is out of space (etcd's NOSPACE alarm): writes are refused, reads go on.
    #[error("storage is full: {0}")]
    StorageFull(String),
    /// Configuration refused at startup.
    #[error("{0}")]
    Config(String),
}

impl From<sled::Error> for IpamError {
    fn from(e: sled::Error) -> Self {
        IpamError::Storage(e.to_string())
    }
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;
