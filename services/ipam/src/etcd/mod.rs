//! IPAM's state on etcd v3 (`--store etcd`): the same records as in sled (`records.rs`), each an
//! etcd key under one prefix, written by [`EtcdJournal`] as transactions fenced on the revision
//! key, so that a change is acknowledged only once etcd's quorum has it.
//!
//! The prefix belongs to one routeplane cluster: its `schema` key names the record layout and the
//! cluster. Opening refuses a prefix holding another cluster's state, a newer layout, or keys
//! routeplane did not write; an empty prefix is claimed (a transaction, so two starting replicas
//! cannot both claim it differently). Everything is then read at one etcd revision, in pages.

// Bytes read back from etcd may be foreign or damaged: no indexing, unwrap or expect that could
// panic.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

pub mod election;
mod journal;

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions,
    Identity, KvClient, TlsOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

pub use journal::EtcdJournal;

use crate::error::{IpamError, Result};
use crate::records::{self, History, REVISION};
use crate::state::Persisted;
use journal::Intent;

/// The record layout this version writes (`records.rs`). A newer one is refused.
pub const LAYOUT: u32 = 1;

/// The key of the replica that serves the prefix (`election.rs`).
pub(crate) const LEADER: &[u8] = b"leader";

/// Records read per etcd range request when loading.
const PAGE: i64 = 5_000;

/// How long one etcd request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the state lives in etcd and how to reach it.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// The key prefix holding this cluster's state; ends with `/`.
    pub prefix: String,
    /// The routeplane cluster's name, recorded under the prefix.
    pub cluster: String,
    pub tls: Option<EtcdTls>,
    /// Set once this replica leads (`election.rs`): the create revision of the leader key it
    /// won, which every write compares against.
    pub leader: Option<i64>,
}

/// Client TLS toward etcd: the CA that signed etcd's certificate, and a client certificate when
/// etcd asks for one (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// What the `schema` key under the prefix holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Schema {
    layout: u32,
    cluster: String,
}

impl EtcdSettings {
    /// Checks the settings before any connection: a usable prefix, endpoints given.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(IpamError::Config(
                "--store etcd needs --etcd-endpoints (e.g. http://127.0.0.1:2379)".into(),
            ));
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(IpamError::Config(format!(
                    "etcd endpoint {e:?} has no scheme: write it as http://HOST:PORT or https://HOST:PORT"
                )));
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            return Err(IpamError::Config(format!(
                "--etcd-prefix {:?} must start and end with '/' and name something, e.g. /routeplane/ipam/",
                self.prefix
            )));
        }
        if self.cluster.is_empty() || self.cluster.len() > 128 {
            return Err(IpamError::Config(format!(
                "--etcd-cluster-name {:?} must be 1 to 128 characters",
                self.cluster
            )));
        }
        Ok(())
    }

    fn key(&self, record: &[u8]) -> Vec<u8> {
        [self.prefix.as_bytes(), record].concat()
    }

    fn schema_key(&self) -> Vec<u8> {
        self.key(b"schema")
    }
}

/// An etcd error as IPAM reports it, naming the endpoints.
pub(crate) fn etcd_error(settings: &EtcdSettings, what: &str, e: etcd_client::Error) -> IpamError {
    let message = format!("etcd at {} {what}: {e}", settings.endpoints.join(","));
    if e.to_string().contains("database space exceeded") {
        IpamError::StorageFull(format!("{message} {NOSPACE_HELP}"))
    } else {
        IpamError::Storage(message)
    }
}

const NOSPACE_HELP: &str = "(etcd's NOSPACE alarm: its quota, --quota-backend-bytes, is used up; compact and defragment etcd, then `etcdctl alarm disarm`)";

/// Fails with [`IpamError::StorageFull`] while etcd's NOSPACE alarm is raised: degraded mode
/// stays on until it is disarmed, instead of taking writes that etcd would refuse.
pub async fn check_space(settings: &EtcdSettings) -> Result<()> {
    let mut client = connect(settings).await?;
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| etcd_error(settings, "did not answer", e))?;
    if alarms
        .alarms()
        .iter()
        .any(|a| a.alarm() == AlarmType::Nospace)
    {
        return Err(IpamError::StorageFull(format!(
            "etcd at {} has raised NOSPACE {NOSPACE_HELP}",
            settings.endpoints.join(",")
        )));
    }
    Ok(())
}

/// Connects to etcd (lazily: the first request finds out whether it answers).
pub async fn connect(settings: &EtcdSettings) -> Result<Client> {
    settings.validate()?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        // A member cut off from its quorum answers at once instead of waiting.
        .with_require_leader(true);
    if let Some(tls) = &settings.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                IpamError::Config(format!("cannot read etcd TLS file {}: {e}", p.display()))
            })
        };
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(config);
    }
    Client::connect(settings.endpoints.clone(), Some(options))
        .await
        .map_err(|e| etcd_error(settings, "cannot be reached", e))
}

/// Checks the prefix's schema key, claiming an empty prefix for this cluster.
async fn check_schema(kv: &mut KvClient, settings: &EtcdSettings) -> Result<()> {
    let ours = Schema {
        layout: LAYOUT,
        cluster: settings.cluster.clone(),
    };
    for _ in 0..2 {
        let found = kv
            .get(settings.schema_key(), None)
            .await
            .map_err(|e| etcd_error(settings, "did not answer", e))?;
        if let Some(kv_pair) = found.kvs().first() {
            return check_found_schema(settings, kv_pair.value(), &ours);
        }
        let any = kv
            .get(
                settings.prefix.as_bytes(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_limit(2)
                        .with_keys_only(),
                ),
            )
            .await
            .map_err(|e| etcd_error(settings, "did not answer", e))?;
        // The leader key is written before the prefix is opened (`election.rs`).
        let leader = settings.key(LEADER);
        if let Some(foreign) = any.kvs().iter().find(|kv| kv.key() != leader.as_slice()) {
            return Err(IpamError::Config(format!(
                "etcd prefix {} holds keys routeplane-ipam did not write (the first: {:?}) and no schema key: choose an empty prefix with --etcd-prefix",
                settings.prefix,
                String::from_utf8_lossy(foreign.key())
            )));
        }
        let value = serde_json::to_vec(&ours)
            .map_err(|e| IpamError::Storage(format!("encoding the schema key: {e}")))?;
        let claimed = kv
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        settings.schema_key(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(settings.schema_key(), value, None)]),
            )
            .await
            .map_err(|e| etcd_error(settings, "refused the schema key", e))?;
        if claimed.succeeded() {
            tracing::info!(prefix = %settings.prefix, cluster = %settings.cluster, "claimed an empty etcd prefix");
            return Ok(());
        }
        // Another replica claimed it meanwhile: read what it wrote.
    }
    Err(IpamError::Storage(format!(
        "etcd prefix {}: the schema key changed while being claimed; try again",
        settings.prefix
    )))
}

fn check_found_schema(settings: &EtcdSettings, value: &[u8], ours: &Schema) -> Result<()> {
    let found: Schema = serde_json::from_slice(value).map_err(|e| {
        IpamError::Config(format!(
            "etcd key {}schema holds {:?}, not a routeplane-ipam schema ({e}): this prefix is another program's; choose another with --etcd-prefix",
            settings.prefix,
            String::from_utf8_lossy(value)
        ))
    })?;
    if found.layout > LAYOUT {
        return Err(IpamError::Config(format!(
            "etcd prefix {} holds routeplane-ipam state in layout {}, newer than this version's {LAYOUT}: run the newer routeplane-ipam that wrote it",
            settings.prefix, found.layout
        )));
    }
    if found.layout != LAYOUT {
        return Err(IpamError::Config(format!(
            "etcd prefix {} holds routeplane-ipam state in layout {}, which this version ({LAYOUT}) does not read",
            settings.prefix, found.layout
        )));
    }
    if found.cluster != ours.cluster {
        return Err(IpamError::Config(format!(
            "etcd prefix {} holds the state of routeplane cluster {:?}, not {:?} (--etcd-cluster-name): two clusters must not share a prefix; give each its own --etcd-prefix",
            settings.prefix, found.cluster, ours.cluster
        )));
    }
    Ok(())
}

/// What [`open`] read: the state, its Watch history, and the journal that writes after it.
pub struct Opened {
    pub journal: EtcdJournal,
    pub persisted: Persisted,
    pub history: Option<History>,
}

impl Opened {
    fn of(kv: KvClient, settings: &EtcdSettings, read: Read) -> Opened {
        let horizon = read.history.as_ref().map(|h| h.horizon);
        Opened {
            journal: EtcdJournal::new(kv, settings.clone(), read.fence, horizon),
            persisted: read.persisted,
            history: read.history,
        }
    }
}

/// Opens the state on etcd: checks (or claims) the prefix, reads every record at one etcd
/// revision, and returns the journal that writes after it.
pub async fn open(settings: &EtcdSettings) -> Result<Opened> {
    let client = connect(settings).await?;
    let mut kv = client.kv_client();
    check_schema(&mut kv, settings).await?;
    let mut read = read_all(&mut kv, settings).await?;
    let Some(intent) = read.pending.take() else {
        if read.history_beyond {
            let horizon = read.history.as_ref().map(|h| h.horizon);
            EtcdJournal::new(kv.clone(), settings.clone(), read.fence, horizon)
                .delete_history_after(read.persisted.revision)
                .await
                .map_err(|f| f.error)?;
            tracing::warn!(
                revision = read.persisted.revision,
                "deleted the Watch event of a change a stopped writer left before writing it"
            );
        }
        return Ok(Opened::of(kv, settings, read));
    };
    // A mutation too big for one transaction was being written when its writer stopped: it was
    // never acknowledged, but its records may be half there. Rolled forward, it is whole.
    if intent.revision != read.persisted.revision + 1 {
        return Err(IpamError::Storage(format!(
            "etcd key {}m/pending holds the intent of revision {} while the state is at revision {}: refusing to guess (inspect it with etcdctl)",
            settings.prefix, intent.revision, read.persisted.revision
        )));
    }
    let horizon = read.history.as_ref().map(|h| h.horizon);
    let mut journal = EtcdJournal::new(kv.clone(), settings.clone(), read.fence, horizon);
    journal
        .roll_forward(intent.revision, intent.writes()?)
        .await
        .map_err(|f| f.error)?;
    tracing::warn!(
        revision = intent.revision,
        "rolled forward a mutation a stopped writer left half written in etcd"
    );
    let read = read_all(&mut kv, settings).await?;
    Ok(Opened::of(kv, settings, read))
}

/// A migration's copy (`migrate.rs`): writes every record of `source` under the prefix, which
/// must hold no state (no revision key: empty, or the remains of a copy that did not finish,
/// which are overwritten — the read-back comparison afterwards finds anything left over). No
/// Watch history is copied: it starts after the source's revision.
pub async fn write_into_empty(settings: &EtcdSettings, source: &Persisted) -> Result<()> {
    let client = connect(settings).await?;
    let mut kv = client.kv_client();
    check_schema(&mut kv, settings).await?;
    let read = read_all(&mut kv, settings).await?;
    if read.fence != 0 || read.pending.is_some() {
        return Err(IpamError::Config(format!(
            "etcd prefix {} already holds routeplane-ipam state at revision {}: copy into an empty prefix (--etcd-prefix), or delete it first (etcdctl del --prefix {})",
            settings.prefix, read.persisted.revision, settings.prefix
        )));
    }
    let mut writes = Vec::new();
    for change in records::changes_of(source) {
        records::writes(&change, &mut writes)?;
    }
    EtcdJournal::new(kv, settings.clone(), 0, None)
        .roll_forward(source.revision, writes)
        .await
        .map_err(|f| f.error)
}

/// What [`read_all`] found.
struct Read {
    persisted: Persisted,
    history: Option<History>,
    /// The revision key's mod_revision: the fence the next write compares against (0 when there
    /// is none yet).
    fence: i64,
    /// The intent of a mutation left half written (`journal.rs`).
    pending: Option<Intent>,
    /// A Watch event stored after the state's revision (`journal.rs`'s big mutations).
    history_beyond: bool,
}

/// Every record under the prefix, at one etcd revision.
async fn read_all(kv: &mut KvClient, settings: &EtcdSettings) -> Result<Read> {
    let mut reader = records::Reader::default();
    let end = prefix_end(settings.prefix.as_bytes());
    let mut from = settings.prefix.as_bytes().to_vec();
    let mut at: Option<i64> = None;
    let mut fence = 0;
    let mut pending = None;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if let Some(r) = at {
            options = options.with_revision(r);
        }
        let page = kv
            .get(from.clone(), Some(options))
            .await
            .map_err(|e| etcd_error(settings, "did not answer a read", e))?;
        if at.is_none() {
            at = page.header().map(|h| h.revision());
        }
        for pair in page.kvs() {
            let Some(record) = pair.key().strip_prefix(settings.prefix.as_bytes()) else {
                continue;
            };
            if record == b"schema" || record == LEADER {
                continue;
            }
            if record == journal::WRITER {
                continue;
            }
            if record == journal::PENDING {
                pending = Some(serde_json::from_slice(pair.value()).map_err(|e| {
                    IpamError::Storage(format!(
                        "etcd key {}m/pending is corrupt: {e}",
                        settings.prefix
                    ))
                })?);
                continue;
            }
            if record == REVISION {
                fence = pair.mod_revision();
            }
            if !reader.add(record, pair.value())? {
                return Err(IpamError::Config(format!(
                    "etcd prefix {} holds a key routeplane-ipam does not write: {:?} (another program shares the prefix; give routeplane its own with --etcd-prefix)",
                    settings.prefix,
                    String::from_utf8_lossy(pair.key())
                )));
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = [last.key(), b"\0"].concat();
            }
            _ => break,
        }
    }
    let history_beyond = reader.history_beyond_revision();
    let (persisted, history) = reader.finish();
    Ok(Read {
        history_beyond,
        persisted,
        history,
        fence,
        pending,
    })
}

/// The end of the range holding every key that starts with `prefix` (etcd's convention: the
/// prefix with its last byte incremented).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(prefix: &str) -> EtcdSettings {
        EtcdSettings {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: prefix.into(),
            cluster: "default".into(),
            tls: None,
            leader: None,
        }
    }

    #[test]
    fn settings_name_what_is_wrong() {
        assert!(settings("/routeplane/ipam/").validate().is_ok());
        for (bad, needle) in [
            ("routeplane/", "start and end"),
            ("/routeplane", "start and end"),
            ("/", "start and end"),
        ] {
            let e = settings(bad).validate().unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(bad), "{e}");
        }
        let mut s = settings("/r/");
        s.endpoints = vec!["127.0.0.1:2379".into()];
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:2379") && e.contains("http://"), "{e}");
        s.endpoints.clear();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("--etcd-endpoints")
        );
    }

    #[test]
    fn a_schema_of_another_cluster_or_a_newer_layout_is_refused() {
        let s = settings("/r/");
        let ours = Schema {
            layout: LAYOUT,
            cluster: "default".into(),
        };
        let value = |layout: u32, cluster: &str| {
            serde_json::to_vec(&Schema {
                layout,
                cluster: cluster.into(),
            })
            .unwrap()
        };
        assert!(check_found_schema(&s, &value(LAYOUT, "default"), &ours).is_ok());
        let e = check_found_schema(&s, &value(LAYOUT, "prod-east"), &ours)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prod-east") && e.contains("--etcd-prefix"),
            "{e}"
        );
        let e = check_found_schema(&s, &value(LAYOUT + 1, "default"), &ours)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("layout {}", LAYOUT + 1)), "{e}");
        let e = check_found_schema(&s, b"hello", &ours)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hello") && e.contains("another program"), "{e}");
    }

    #[test]
    fn the_prefix_range_ends_after_the_prefix() {
        assert_eq!(prefix_end(b"/r/"), b"/r0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
