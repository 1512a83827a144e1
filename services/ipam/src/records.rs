//! The stored record layout, the same in every store (sled, etcd): what a [`Change`] writes and
//! how stored records read back into [`Persisted`]. One layout means one migration path (a record
//! copied from sled to etcd is the same bytes) and one reader to trust.
//!
//! Keys: `m/revision` → u64 BE; `n/NAME` → Node; `p/NODE\0OWNER` → [IpAddr] (AllocatePodIP's) or
//! {ips, agent} (the node's route agent's); `g/NODE` → the generation of the agent's last applied
//! report; `s/SERVICE` → ServiceIp; `c/CIDR` → PoolRecord; `o/KIND\0KEY` → OperatorEntry. Values
//! are JSON so that a stored record can be read with the store's own tools (sled's, etcdctl).

// Records read back may be damaged or foreign: no indexing, unwrap or expect that could panic.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::net::IpAddr;

use crate::error::{IpamError, Result};
use crate::model::Revision;
use crate::state::{AgentPod, Change, Persisted, PodIps, PoolRecord};

/// The key holding the revision of the last change stored.
pub const REVISION: &[u8] = b"m/revision";

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
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Everything read, each kind in key order (as sled's scans gave it).
    pub fn finish(self) -> Persisted {
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
        p
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
        let p = reader.finish();
        assert_eq!(p.revision, 9);
        assert_eq!(p.nodes, vec![node]);
        assert_eq!(p.pod_ips.len(), 1);
        let e = Reader::default()
            .add(b"n/broken", b"{not json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("n/broken"), "{e}");
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
}
