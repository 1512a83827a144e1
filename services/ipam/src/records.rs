//! The stored record layout, the same in every store (sled, etcd): what a [`Change`] writes and
//! how stored records read back into [`Persisted`]. One layout means one migration path (a record
//! copied from sled to etcd is the same bytes) and one reader to trust.
//!
//! Keys: `m/revision` → u64 BE; `n/NAME` → Node; `p/NODE\0OWNER` → [IpAddr] (AllocatePodIP's) or
//! {ips, agent} (the node's route agent's); `g/NODE` → the generation of the agent's last applied
//! report; `s/SERVICE` → ServiceIp; `c/CIDR` → PoolRecord; `o/KIND\0KEY` → OperatorEntry. Values
//! are JSON so that a stored record can be read with the store's own tools (sled's, etcdctl).
//!
//! The Watch history (etcd only: it is what lets a watcher resume at another replica): `h/REV`
//! (20 digits) → the Event published at that revision, written in the transaction of its change;
//! `m/horizon` → u64 BE: every event after this revision is under `h/`. A store without
//! `m/horizon` holds no history to trust (watchers resuming get a snapshot).

// Records read back may be damaged or foreign: no indexing, unwrap or expect that could panic.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::net::IpAddr;

use crate::error::{IpamError, Result};
use crate::model::{Event, Revision, RevisionedEvent};
use crate::state::{AgentPod, Change, Persisted, PodIps, PoolRecord};

/// The key holding the revision of the last change stored.
pub const REVISION: &[u8] = b"m/revision";

/// The key below which every Watch event is stored (see the module).
pub const HORIZON: &[u8] = b"m/horizon";

/// The key of the Watch event of `revision`: fixed width, so key order is revision order.
pub fn history_key(revision: Revision) -> Vec<u8> {
    format!("h/{revision:020}").into_bytes()
}

/// The write storing the Watch event published at `revision`.
pub fn history_write(revision: Revision, event: &Event) -> Result<Write> {
    Ok(Write::Put(history_key(revision), json(event)?))
}

/// The Watch history a store holds: every event after `horizon`, in revision order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub horizon: Revision,
    pub events: Vec<RevisionedEvent>,
}

/// One write of a change: a key set to a value, or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// A pod-IP record as stored: a bare list for AllocatePodIP's owners (the format from before
/// agents reported pods), an object for an agent's attachment.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum PodRecord {
    Ips(Vec<IpAddr>),
    Agent { ips: Vec<IpAddr>, agent: AgentPod },
}

fn pod_key(node: &str, owner: &str) -> Vec<u8> {
    [b"p/", node.as_bytes(), b"\0", owner.as_bytes()].concat()
}

fn operator_key(kind: &str, key: &str) -> Vec<u8> {
    [b"o/", kind.as_bytes(), b"\0", key.as_bytes()].concat()
}

fn key(prefix: &str, name: &str) -> Vec<u8> {
    [prefix.as_bytes(), name.as_bytes()].concat()
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| IpamError::Storage(format!("encoding a record: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| {
        IpamError::Storage(format!(
            "stored record {:?} is corrupt: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

/// The stored form of a revision.
pub fn revision_value(revision: Revision) -> [u8; 8] {
    revision.to_be_bytes()
}

/// Reads a stored revision.
pub fn read_revision(value: &[u8]) -> Result<Revision> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| IpamError::Storage("stored revision is corrupt".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Appends the writes `change` makes to `out`, in order.
pub fn writes(change: &Change, out: &mut Vec<Write>) -> Result<()> {
    match change {
        Change::PutNode(n) => out.push(Write::Put(key("n/", &n.name), json(n)?)),
        Change::DeleteNode(name) => {
            out.push(Write::Delete(key("n/", name)));
            out.push(Write::Delete(key("g/", name)));
        }
        Change::PutPodIps {
            node,
            owner,
            ips,
            agent,
        } => {
            let record = match agent {
                None => PodRecord::Ips(ips.clone()),
                Some(a) => PodRecord::Agent {
                    ips: ips.clone(),
                    agent: a.clone(),
                },
            };
            out.push(Write::Put(pod_key(node, owner), json(&record)?))
        }
        Change::PutPodSync { node, generation } => {
            out.push(Write::Put(key("g/", node), json(generation)?))
        }
        Change::DeletePodIps { node, owner } => out.push(Write::Delete(pod_key(node, owner))),
        Change::PutServiceIp(s) => out.push(Write::Put(key("s/", &s.service), json(s)?)),
        Change::DeleteServiceIp(service) => out.push(Write::Delete(key("s/", service))),
        Change::PutPool(p) => out.push(Write::Put(key("c/", &p.cidr), json(p)?)),
        Change::PutOperator(e) => out.push(Write::Put(operator_key(&e.kind, &e.key), json(e)?)),
        Change::DeleteOperator(k) => out.push(Write::Delete(operator_key(&k.kind, &k.key))),
    }
    Ok(())
}

/// The changes that write everything `p` holds into an empty store (a migration's copy).
pub fn changes_of(p: &Persisted) -> Vec<Change> {
    let mut out = Vec::new();
    out.extend(p.nodes.iter().cloned().map(Change::PutNode));
    out.extend(
        p.pod_ips
            .iter()
            .map(|(node, owner, held)| Change::PutPodIps {
                node: node.clone(),
                owner: owner.clone(),
                ips: held.ips.clone(),
                agent: held.agent.clone(),
            }),
    );
    out.extend(
        p.pod_syncs
            .iter()
            .map(|(node, generation)| Change::PutPodSync {
                node: node.clone(),
                generation: *generation,
            }),
    );
    out.extend(p.service_ips.iter().cloned().map(Change::PutServiceIp));
    out.extend(p.pools.iter().cloned().map(Change::PutPool));
    out.extend(p.operator.iter().cloned().map(Change::PutOperator));
    out
}

/// Builds [`Persisted`] from stored records, in any order.
#[derive(Default)]
pub struct Reader {
    persisted: Persisted,
    horizon: Option<Revision>,
    history: Vec<RevisionedEvent>,
}

impl Reader {
    /// Takes one record. Returns false for a key outside the layout (the caller decides whether
    /// that is foreign data to refuse); a record of the layout that does not decode is an error
    /// naming its key.
    pub fn add(&mut self, k: &[u8], v: &[u8]) -> Result<bool> {
        let p = &mut self.persisted;
        let rest = |prefix: &[u8]| k.strip_prefix(prefix);
        if k == REVISION {
            p.revision = read_revision(v)?;
        } else if rest(b"n/").is_some() {
            p.nodes.push(decode(k, v)?);
        } else if let Some(name) = rest(b"p/") {
            let held = match decode::<PodRecord>(k, v)? {
                PodRecord::Ips(ips) => PodIps { ips, agent: None },
                PodRecord::Agent { ips, agent } => PodIps {
                    ips,
                    agent: Some(agent),
                },
            };
            let name = String::from_utf8_lossy(name);
            let (node, owner) = name
                .split_once('\0')
                .ok_or_else(|| IpamError::Storage(format!("stored pod key {name:?} is corrupt")))?;
            p.pod_ips.push((node.to_string(), owner.to_string(), held));
        } else if let Some(node) = rest(b"g/") {
            let node = String::from_utf8_lossy(node).into_owned();
            p.pod_syncs.push((node, decode(k, v)?));
        } else if rest(b"s/").is_some() {
            p.service_ips.push(decode(k, v)?);
        } else if rest(b"c/").is_some() {
            p.pools.push(decode::<PoolRecord>(k, v)?);
        } else if rest(b"o/").is_some() {
            p.operator.push(decode(k, v)?);
        } else if k == HORIZON {
            self.horizon = Some(read_revision(v)?);
        } else if let Some(digits) = rest(b"h/") {
            let revision = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| {
                    IpamError::Storage(format!(
                        "stored history key {:?} is corrupt",
                        String::from_utf8_lossy(k)
                    ))
                })?;
            self.history.push(RevisionedEvent {
                revision,
                event: decode(k, v)?,
            });
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether a Watch event is stored for a revision after the state's: a big mutation's event
    /// written ahead of its intent by a writer that stopped in between (`etcd/journal.rs`).
    pub fn history_beyond_revision(&self) -> bool {
        self.history
            .iter()
            .any(|e| e.revision > self.persisted.revision)
    }

    /// Everything read, each kind in key order (as sled's scans gave it), and the Watch history
    /// when the store keeps one (`m/horizon` found): the events after the horizon, up to the
    /// state's revision.
    pub fn finish(self) -> (Persisted, Option<History>) {
        let mut p = self.persisted;
        p.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        p.pod_ips.sort_by(|a, b| {
            (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes()))
        });
        p.pod_syncs.sort();
        p.service_ips.sort_by(|a, b| a.service.cmp(&b.service));
        p.pools.sort_by(|a, b| a.cidr.cmp(&b.cidr));
        p.operator
            .sort_by(|a, b| (&a.kind, &a.key).cmp(&(&b.kind, &b.key)));
        let history = self.horizon.map(|horizon| {
            let mut events = self.history;
            events.retain(|e| e.revision > horizon && e.revision <= p.revision);
            events.sort_by_key(|e| e.revision);
            History { horizon, events }
        });
        (p, history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    #[test]
    fn what_a_change_writes_reads_back() {
        let node = Node {
            name: "node-83-1".into(),
            addresses: vec!["10.4.83.11".parse().unwrap()],
            labels: Default::default(),
            pod_cidrs: vec!["10.5.112.0/24".parse().unwrap()],
            ready: true,
            draining: false,
            drain_ends_on_register: false,
            held_down: false,
            revision: 3,
        };
        let mut out = Vec::new();
        writes(&Change::PutNode(node.clone()), &mut out).unwrap();
        writes(
            &Change::PutPodIps {
                node: "node-83-1".into(),
                owner: "default/web".into(),
                ips: vec!["10.5.112.2".parse().unwrap()],
                agent: None,
            },
            &mut out,
        )
        .unwrap();
        let mut reader = Reader::default();
        for w in &out {
            let Write::Put(k, v) = w else { panic!("{w:?}") };
            assert!(reader.add(k, v).unwrap());
        }
        assert!(reader.add(REVISION, &revision_value(9)).unwrap());
        assert!(!reader.add(b"x/other", b"{}").unwrap(), "foreign key");
        let (p, history) = reader.finish();
        assert_eq!(history, None, "no horizon: no history to trust");
        assert_eq!(p.revision, 9);
        assert_eq!(p.nodes, vec![node]);
        assert_eq!(p.pod_ips.len(), 1);
        let e = Reader::default()
            .add(b"n/broken", b"{not json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("n/broken"), "{e}");
        let e = Reader::default()
            .add(b"h/12x", b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("h/12x"), "{e}");
        let mut deletes = Vec::new();
        writes(&Change::DeleteNode("a".into()), &mut deletes).unwrap();
        assert_eq!(
            deletes,
            vec![
                Write::Delete(b"n/a".to_vec()),
                Write::Delete(b"g/a".to_vec())
            ]
        );
    }

    #[test]
    fn history_reads_back_in_revision_order_after_its_horizon() {
        let event = |name: &str| Event::NodeDeleted {
            name: name.into(),
            pod_cidrs: vec![],
        };
        let mut reader = Reader::default();
        // Out of order, one at the horizon (left over) and one past the state (never trusted).
        for (r, name) in [(12, "b"), (5, "old"), (9, "a"), (20, "future")] {
            let Write::Put(k, v) = history_write(r, &event(name)).unwrap() else {
                panic!()
            };
            assert!(reader.add(&k, &v).unwrap());
        }
        assert_eq!(history_key(9), b"h/00000000000000000009".to_vec());
        assert!(reader.add(HORIZON, &revision_value(5)).unwrap());
        assert!(reader.add(REVISION, &revision_value(15)).unwrap());
        assert!(reader.history_beyond_revision());
        let (_, history) = reader.finish();
        let history = history.unwrap();
        assert_eq!(history.horizon, 5);
        let got: Vec<(Revision, Event)> = history
            .events
            .into_iter()
            .map(|e| (e.revision, e.event))
            .collect();
        assert_eq!(got, vec![(9, event("a")), (12, event("b"))]);
    }
}
