//! Cutting the Watch feed's snapshot into messages every gRPC client can take.
//!
//! gRPC clients refuse messages over 4 MiB by default (tonic, grpc-go, grpcurl): a snapshot of 500
//! nodes with Kubernetes-sized label sets passes that, and a client that cannot decode its
//! snapshot reconnects for ever. So a chunk ends at a count of entries or at [`CHUNK_BYTES`] of
//! estimated wire size, whichever comes first; nodes come first, then Services, then operator
//! entries (for watchers that asked for them). An entry is never split: one larger than the byte
//! bound travels alone.

use std::ops::Range;

use crate::model::{Node, OperatorEntry, ServiceIp};

/// The estimated wire size at which a chunk ends: a quarter of the usual 4 MiB limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One message of the snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub nodes: Vec<Node>,
    pub services: Vec<ServiceIp>,
    pub operator: Vec<OperatorEntry>,
}

/// An upper estimate of a node's protobuf size (its fields, their tags and lengths).
fn node_bytes(n: &Node) -> usize {
    // Each string or message field: its bytes plus a tag and a length of at most 3 bytes each.
    const FIELD: usize = 6;
    // An IP address or CIDR as text: "ffff:...:ffff/128" is at most 43 bytes.
    const ADDRESS: usize = 43 + FIELD;
    n.name.len()
        + FIELD
        + n.addresses.len() * ADDRESS
        + n.labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 3 * FIELD)
            .sum::<usize>()
        // pod_cidrs and router_ips, one of each per CIDR.
        + n.pod_cidrs.len() * 2 * ADDRESS
        + 2 * FIELD
        + 32
}

fn service_bytes(s: &ServiceIp) -> usize {
    s.service.len() + s.pool.len() + 43 + 4 * 6
}

fn operator_bytes(e: &OperatorEntry) -> usize {
    e.kind.len() + e.key.len() + e.value.len() + 4 * 6
}

/// The state a snapshot is cut from, as of one revision: shared by every watcher that starts at
/// that revision, so that a hundred watchers starting together hold one copy, not a hundred.
#[derive(Debug, Default)]
pub struct SnapshotState {
    pub nodes: Vec<Node>,
    pub services: Vec<ServiceIp>,
    /// Every operator entry; sent only to watchers that asked for them.
    pub operator: Vec<OperatorEntry>,
}

/// Which entries of a [`SnapshotState`] one chunk carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub nodes: Range<usize>,
    pub services: Range<usize>,
    pub operator: Range<usize>,
}

impl SnapshotState {
    /// The chunks of a snapshot, as ranges: at least one (an empty state is one empty chunk),
    /// each with at most `max_entries` entries and, but for an entry that is alone, at most
    /// [`CHUNK_BYTES`] of them. Operator entries only `with_operator`.
    pub fn plan(&self, with_operator: bool, max_entries: usize) -> Vec<Plan> {
        let max_entries = max_entries.max(1);
        let mut out = vec![Plan::default()];
        let (mut entries, mut bytes) = (0, 0);
        // Starts a new chunk where this entry does not fit; returns the chunk it goes in.
        let mut room = |size: usize, out: &mut Vec<Plan>| {
            if entries > 0 && (entries == max_entries || bytes + size > CHUNK_BYTES) {
                let last = out.last().cloned().unwrap_or_default();
                out.push(Plan {
                    nodes: last.nodes.end..last.nodes.end,
                    services: last.services.end..last.services.end,
                    operator: last.operator.end..last.operator.end,
                });
                entries = 0;
                bytes = 0;
            }
            entries += 1;
            bytes += size;
            out.len() - 1
        };
        for n in &self.nodes {
            let i = room(node_bytes(n), &mut out);
            out[i].nodes.end += 1;
        }
        for s in &self.services {
            let i = room(service_bytes(s), &mut out);
            out[i].services.end += 1;
        }
        let operator: &[OperatorEntry] = if with_operator { &self.operator } else { &[] };
        for e in operator {
            let i = room(operator_bytes(e), &mut out);
            out[i].operator.end += 1;
        }
        // Every chunk starts where the one before ends, in each list.
        for i in 1..out.len() {
            out[i].nodes.start = out[i - 1].nodes.end;
            out[i].services.start = out[i - 1].services.end;
            out[i].operator.start = out[i - 1].operator.end;
        }
        out
    }

    /// One chunk's entries, copied out of the shared state only when it is sent.
    pub fn chunk(&self, plan: &Plan) -> Chunk {
        Chunk {
            nodes: self.nodes[plan.nodes.clone()].to_vec(),
            services: self.services[plan.services.clone()].to_vec(),
            operator: self.operator[plan.operator.clone()].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every chunk of a state, operator entries included.
    fn chunks(
        nodes: Vec<Node>,
        services: Vec<ServiceIp>,
        operator: Vec<OperatorEntry>,
        max_entries: usize,
    ) -> Vec<Chunk> {
        let state = SnapshotState {
            nodes,
            services,
            operator,
        };
        state
            .plan(true, max_entries)
            .iter()
            .map(|p| state.chunk(p))
            .collect()
    }

    fn node(i: usize, labels: usize) -> Node {
        Node {
            name: format!("node-{i}"),
            addresses: vec!["10.4.94.11".parse().unwrap()],
            labels: (0..labels)
                .map(|k| (format!("example.com/{:a>280}-{k}", ""), "v".repeat(63)))
                .collect::<BTreeMap<_, _>>(),
            pod_cidrs: vec!["10.5.112.0/24".parse().unwrap()],
            ready: true,
            draining: false,
            drain_ends_on_register: false,
            held_down: false,
            revision: 1,
        }
    }

    fn service(i: usize) -> ServiceIp {
        ServiceIp {
            service: format!("default/svc-{i}"),
            ip: "10.5.120.1".parse().unwrap(),
            pool: "default".into(),
        }
    }

    fn sizes(c: &[Chunk]) -> Vec<(usize, usize)> {
        c.iter()
            .map(|c| (c.nodes.len(), c.services.len()))
            .collect()
    }

    #[test]
    fn an_empty_state_is_one_empty_chunk() {
        assert_eq!(chunks(vec![], vec![], vec![], 500), vec![Chunk::default()]);
    }

    #[test]
    fn chunks_end_at_the_entry_count_nodes_first_then_services() {
        let nodes = (0..1_001).map(|i| node(i, 0)).collect();
        let services = (0..600).map(service).collect();
        let c = chunks(nodes, services, vec![], 500);
        assert_eq!(
            sizes(&c),
            [(500, 0), (500, 0), (1, 499), (0, 101)],
            "services are chunked too, not all in the last message"
        );
        assert_eq!(c[2].nodes[0].name, "node-1000");
    }

    #[test]
    fn operator_entries_come_last_and_end_chunks_by_size_too() {
        let entry = |i: usize| OperatorEntry {
            kind: "bgp-path".into(),
            key: format!("192.0.2.{i}/32"),
            value: "x".repeat(16 * 1024),
        };
        let c = chunks(
            vec![node(0, 0)],
            vec![service(0)],
            (0..100).map(entry).collect(),
            500,
        );
        assert_eq!((c[0].nodes.len(), c[0].services.len()), (1, 1));
        assert_eq!(c.iter().map(|c| c.operator.len()).sum::<usize>(), 100);
        assert!(c.len() >= 2, "1.6 MB of entries is more than one chunk");
        for chunk in &c {
            let bytes: usize = chunk.operator.iter().map(operator_bytes).sum();
            assert!(bytes <= CHUNK_BYTES, "{bytes}");
        }
    }

    #[test]
    fn chunks_end_before_a_megabyte_so_that_every_client_decodes_them() {
        // About 11 KB a node: 500 of them would be 5.5 MB, past gRPC's 4 MiB default.
        let nodes: Vec<Node> = (0..500).map(|i| node(i, 30)).collect();
        let one = node_bytes(&nodes[0]);
        assert!(one > 10_000, "{one}");
        let c = chunks(nodes, vec![], vec![], 500);
        assert!(c.len() >= 5, "{:?}", sizes(&c));
        assert_eq!(c.iter().map(|c| c.nodes.len()).sum::<usize>(), 500);
        for chunk in &c {
            let bytes: usize = chunk.nodes.iter().map(node_bytes).sum();
            assert!(bytes <= CHUNK_BYTES, "{bytes}");
        }
    }

    #[test]
    fn an_entry_larger_than_the_bound_travels_alone() {
        let huge = node(0, 4_000);
        assert!(node_bytes(&huge) > CHUNK_BYTES);
        let c = chunks(vec![node(1, 0), huge, node(2, 0)], vec![], vec![], 500);
        assert_eq!(sizes(&c), [(1, 0), (1, 0), (1, 0)]);
    }
}
