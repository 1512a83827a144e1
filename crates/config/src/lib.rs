//! The two files a Cilium 1.11 BGP-mode user already has, read the way they wrote them.
//!
//! Contract: [`HelmValues`] reads the keys of Cilium's Helm `values.yaml` that routeplane acts on and
//! reports every other key as ignored (it never fails on one); [`BgpConfig`] reads MetalLB's legacy
//! `bgp-config` strictly — an unknown or misspelt key, or a bad value, is an error that names the key
//! and what would be valid. Both accept the seed's files verbatim, and the `bgp-config` ConfigMap as
//! well as its `config.yaml` payload. Each service also has an embedded default ([`HelmValues::embedded`],
//! [`BgpConfig::embedded`]) so that it starts with no file.
#![forbid(unsafe_code)]
// Files are input like any other: no indexing, unwrap or expect that could panic on them.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

mod bgp;
mod duration;
mod selector;
mod values;

#[cfg(test)]
mod proptests;

use std::path::Path;

pub use bgp::{
    AddressPool, BgpAdvertisement, BgpConfig, DEFAULT_MAX_PREFIXES, DEFAULT_MAX_PREFIXES_RESTART,
    ExpressionSpec, Peer, PeerSpec, PoolProtocol, SelectorSpec,
};
pub use duration::parse_go_duration;
pub use selector::{MatchExpression, NodeSelector, Operator};
pub use values::{BgpAnnounce, ClusterPool, HelmValues, Tunnel};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Yaml {
        origin: String,
        source: serde_yaml::Error,
    },
    #[error("{origin}: {key}: {value} is not valid: {expected}")]
    Invalid {
        origin: String,
        key: String,
        value: String,
        expected: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(
        origin: &str,
        key: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }
}

/// The two files as a service was pointed at, or the embedded defaults for those it was not.
pub fn load_or_embedded(
    values: Option<&Path>,
    bgp_config: Option<&Path>,
) -> Result<(HelmValues, BgpConfig), ConfigError> {
    let values = match values {
        Some(p) => HelmValues::load(p)?,
        None => HelmValues::embedded(),
    };
    let bgp = match bgp_config {
        Some(p) => BgpConfig::load(p)?,
        None => BgpConfig::embedded(),
    };
    Ok((values, bgp))
}

pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}
