//! The durable image: every record as of the last durable revision, kept in memory.
//!
//! The committer applies each group's changes here after the log has synced them, and only then
//! acknowledges the writers. So the image never holds a change that a crash could take back, and
//! it is what reads are served from (a read never shows an allocation that is not on disk yet),
//! what Watch snapshots are cut from, and what the core is rebuilt from when storage fails and the
//! changes it was making must be forgotten (`engine.rs`): no disk needs to answer for that.

use std::collections::{BTreeMap, HashMap};

use crate::error::{IpamError, Result};
use crate::model::{Node, OperatorEntry, OperatorKey, Revision, ServiceIp};
use crate::state::{Change, Persisted, PodIps, PoolRecord};

/// The records of [`Persisted`], keyed for reads and for applying changes.
#[derive(Debug, Default)]
pub struct DurableImage {
    revision: Revision,
    nodes: BTreeMap<String, Node>,
    /// Per node, per owner. Kept apart from `nodes` as storage keeps them: a node's record may go
    /// while its pods' records are still being deleted in the same mutation. Owners are hashed
    /// (every allocation inserts one; readers sort).
    pods: BTreeMap<String, HashMap<String, PodIps>>,
    syncs: BTreeMap<String, u64>,
    services: BTreeMap<String, ServiceIp>,
    pools: BTreeMap<String, PoolRecord>,
    /// Operator entries' values, by kind and key.
    operator: BTreeMap<OperatorKey, String>,
}

impl DurableImage {
    /// The image of what storage held at startup.
    pub fn new(persisted: &Persisted) -> DurableImage {
        let mut pods: BTreeMap<String, HashMap<String, PodIps>> = BTreeMap::new();
        for (node, owner, held) in &persisted.pod_ips {
            pods.entry(node.clone())
                .or_default()
                .insert(owner.clone(), held.clone());
        }
        DurableImage {
            revision: persisted.revision,
            nodes: persisted
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.clone()))
                .collect(),
            pods,
            syncs: persisted.pod_syncs.iter().cloned().collect(),
            services: persisted
                .service_ips
                .iter()
                .map(|s| (s.service.clone(), s.clone()))
                .collect(),
            pools: persisted
                .pools
                .iter()
                .map(|p| (p.cidr.clone(), p.clone()))
                .collect(),
            operator: persisted
                .operator
                .iter()
                .map(|e| (e.name(), e.value.clone()))
                .collect(),
        }
    }

    /// Applies one durable change, as `Store::apply` does to sled.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutNode(n) => {
                self.nodes.insert(n.name.clone(), n.clone());
            }
            Change::DeleteNode(name) => {
                self.nodes.remove(name);
                self.syncs.remove(name);
            }
            Change::PutPodIps {
                node,
                owner,
                ips,
                agent,
            } => {
                let held = PodIps {
                    ips: ips.clone(),
                    agent: agent.clone(),
                };
                // No key copied for a node already present: this runs once per allocation.
                match self.pods.get_mut(node) {
                    Some(held_by_node) => held_by_node.insert(owner.clone(), held),
                    None => self
                        .pods
                        .entry(node.clone())
                        .or_default()
                        .insert(owner.clone(), held),
                };
            }
            Change::DeletePodIps { node, owner } => {
                if let Some(held) = self.pods.get_mut(node) {
                    held.remove(owner);
                    if held.is_empty() {
                        self.pods.remove(node);
                    }
                }
            }
            Change::PutPodSync { node, generation } => {
                self.syncs.insert(node.clone(), *generation);
            }
            Change::PutServiceIp(s) => {
                self.services.insert(s.service.clone(), s.clone());
            }
            Change::DeleteServiceIp(service) => {
                self.services.remove(service);
            }
            Change::PutPool(p) => {
                self.pools.insert(p.cidr.clone(), p.clone());
            }
            Change::PutOperator(e) => {
                self.operator.insert(e.name(), e.value.clone());
            }
            Change::DeleteOperator(k) => {
                self.operator.remove(k);
            }
        }
    }

    pub fn set_revision(&mut self, revision: Revision) {
        self.revision = self.revision.max(revision);
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.get(name).ok_or_else(|| {
            IpamError::NotFound(format!(
                "node {name:?} is not registered; its route agent registers it (RegisterNode)"
            ))
        })
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The pod IPs held on `node`, by owner.
    pub fn pod_ips(&self, node: &str) -> Result<BTreeMap<String, PodIps>> {
        self.node(node)?;
        Ok(self
            .pods
            .get(node)
            .map(|held| held.iter().map(|(o, p)| (o.clone(), p.clone())).collect())
            .unwrap_or_default())
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceIp> {
        self.services.values()
    }

    pub fn service(&self, service: &str) -> Option<&ServiceIp> {
        self.services.get(service)
    }

    /// The operator entries of `kind` (every kind when empty), in key order.
    pub fn operator_entries(&self, kind: &str) -> impl Iterator<Item = OperatorEntry> + '_ {
        let kind = kind.to_string();
        self.operator
            .iter()
            .filter(move |(k, _)| kind.is_empty() || k.kind == kind)
            .map(|(k, v)| OperatorEntry {
                kind: k.kind.clone(),
                key: k.key.clone(),
                value: v.clone(),
            })
    }

    /// Everything, as storage would give it back: what the core is rebuilt from.
    pub fn to_persisted(&self) -> Persisted {
        Persisted {
            revision: self.revision,
            nodes: self.nodes.values().cloned().collect(),
            pod_ips: self
                .pods
                .iter()
                .flat_map(|(node, held)| {
                    let mut owners: Vec<_> = held.iter().collect();
                    owners.sort_unstable_by_key(|(owner, _)| *owner);
                    owners
                        .into_iter()
                        .map(move |(owner, ips)| (node.clone(), owner.clone(), ips.clone()))
                })
                .collect(),
            pod_syncs: self.syncs.iter().map(|(n, g)| (n.clone(), *g)).collect(),
            service_ips: self.services.values().cloned().collect(),
            pools: self.pools.values().cloned().collect(),
            operator: self.operator_entries("").collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn entry(kind: &str, key: &str, value: &str) -> OperatorEntry {
        OperatorEntry::new(kind, key, value)
    }

    /// The image and sled, given the same changes, give back the same records.
    #[test]
    fn the_image_holds_what_sled_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut image = DurableImage::default();
        let node = |name: &str| Node {
            name: name.into(),
            addresses: vec![],
            labels: Default::default(),
            pod_cidrs: vec!["10.0.1.0/24".parse().unwrap()],
            ready: true,
            draining: false,
            drain_ends_on_register: false,
            held_down: false,
            revision: 1,
        };
        let pod = |node: &str, owner: &str, ip: &str| Change::PutPodIps {
            node: node.into(),
            owner: owner.into(),
            ips: vec![ip.parse().unwrap()],
            agent: None,
        };
        let mutations = [
            vec![Change::PutNode(node("a")), Change::PutNode(node("b"))],
            vec![pod("a", "p1", "10.0.1.2"), pod("a", "p2", "10.0.1.3")],
            vec![
                Change::PutPodSync {
                    node: "b".into(),
                    generation: 7,
                },
                pod("b", "p3", "10.0.1.4"),
            ],
            vec![
                Change::DeletePodIps {
                    node: "a".into(),
                    owner: "p1".into(),
                },
                Change::DeletePodIps {
                    node: "b".into(),
                    owner: "p3".into(),
                },
                Change::DeleteNode("b".into()),
            ],
            vec![Change::PutPool(PoolRecord {
                cidr: "10.9.0.0/16".into(),
                mask: 24,
                drained: true,
                added: true,
            })],
            vec![
                Change::PutOperator(entry("bgp-peer", "10.0.0.1", "{}")),
                Change::PutOperator(entry(
                    "bgp-path",
                    "192.0.2.0/24",
                    "{\"next-hop\":\"10.0.0.9\"}",
                )),
                Change::PutOperator(entry("bgp-path", "198.51.100.0/24", "{}")),
            ],
            vec![Change::DeleteOperator(OperatorKey {
                kind: "bgp-path".into(),
                key: "198.51.100.0/24".into(),
            })],
        ];
        for (i, changes) in mutations.into_iter().enumerate() {
            let m = crate::state::Mutation {
                revision: i as u64 + 1,
                changes,
                event: None,
            };
            store.apply(&m).unwrap();
            m.changes.iter().for_each(|c| image.apply(c));
            image.set_revision(m.revision);
        }
        let (from_sled, from_image) = (store.load().unwrap(), image.to_persisted());
        assert_eq!(format!("{from_sled:?}"), format!("{from_image:?}"));
        assert_eq!(from_image.revision, 7);
        assert_eq!(from_image.operator.len(), 2);
        assert_eq!(image.operator_entries("bgp-path").count(), 1);
        assert_eq!(image.pod_ips("a").unwrap().len(), 1);
        assert!(image.pod_ips("b").is_err(), "b was deleted");
        assert_eq!(
            format!("{:?}", DurableImage::new(&from_sled).to_persisted()),
            format!("{from_image:?}")
        );
    }
}
