//! Operator entries in the domain core: other services' operator state (routeplane-bgp's API peers
//! and paths) that IPAM keeps durable and publishes on Watch, so that it outlives their restarts
//! and every replica of them applies the same.
//!
//! The core knows only which entries exist — enough for create-only writes, deletes that say what
//! they removed, and the cap on their number; the values live in the durable image (`image.rs`),
//! which snapshots and reads are cut from. IPAM checks kinds, keys and sizes; what a value means
//! is its owner's to check.

use std::collections::BTreeSet;

use super::{Change, IpamState, Mutation};
use crate::error::{IpamError, Result};
use crate::model::{self, Event, OperatorEntry, OperatorKey};

/// The most entries one PutOperatorEntries or DeleteOperatorEntries may carry, and the most bytes
/// of keys and values: one call is one Watch event, which must stay well under a client's 4 MiB.
pub const MAX_BATCH_ENTRIES: usize = 1_000;
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The default of `--max-operator-entries`: room for a full table of operator paths (a ToR's
/// 100k-prefix benchmark), bounded so that a caller cannot fill IPAM's memory.
pub const DEFAULT_MAX_OPERATOR_ENTRIES: usize = 250_000;

impl IpamState {
    /// Writes `entries` in one mutation (replacing those that exist); with `create_only`, refuses
    /// the whole call when any exists. Returns how many were written.
    pub fn put_operator_entries(
        &mut self,
        entries: Vec<OperatorEntry>,
        create_only: bool,
    ) -> Result<(u64, Option<Mutation>)> {
        check_batch(entries.len(), || {
            entries
                .iter()
                .map(|e| e.kind.len() + e.key.len() + e.value.len())
                .sum()
        })?;
        let mut names = BTreeSet::new();
        for e in &entries {
            model::validate_operator_entry(e)?;
            let name = e.name();
            if create_only && self.operator.contains(&name) {
                return Err(IpamError::AlreadyExists(format!(
                    "operator entry {}/{} already exists; delete it first to replace it, or put without createOnly",
                    e.kind, e.key
                )));
            }
            if !names.insert(name) {
                return Err(IpamError::InvalidArgument(format!(
                    "operator entry {}/{} is given twice in one call; give each once",
                    e.kind, e.key
                )));
            }
        }
        let new = names.iter().filter(|n| !self.operator.contains(n)).count();
        if self.operator.len() + new > self.max_operator_entries {
            return Err(IpamError::Exhausted(format!(
                "{new} new operator entries would pass the limit of {} (--max-operator-entries; {} are held): delete some first",
                self.max_operator_entries,
                self.operator.len()
            )));
        }
        if entries.is_empty() {
            return Ok((0, None));
        }
        self.operator.extend(names);
        self.bump();
        let changes = entries.iter().cloned().map(Change::PutOperator).collect();
        let count = entries.len() as u64;
        let event = Event::OperatorEntries {
            put: entries,
            deleted: Vec::new(),
        };
        Ok((count, Some(self.mutation(changes, Some(event)))))
    }

    /// Deletes the entries of `kind` named by `keys` that exist, in one mutation; returns how many.
    pub fn delete_operator_entries(
        &mut self,
        kind: &str,
        keys: Vec<String>,
    ) -> Result<(u64, Option<Mutation>)> {
        check_batch(keys.len(), || keys.iter().map(String::len).sum())?;
        let mut gone = Vec::new();
        for key in keys {
            model::validate_operator_key(kind, &key)?;
            let name = OperatorKey {
                kind: kind.to_string(),
                key,
            };
            if self.operator.remove(&name) {
                gone.push(name);
            }
        }
        if gone.is_empty() {
            return Ok((0, None));
        }
        self.bump();
        let changes = gone.iter().cloned().map(Change::DeleteOperator).collect();
        let count = gone.len() as u64;
        let event = Event::OperatorEntries {
            put: Vec::new(),
            deleted: gone,
        };
        Ok((count, Some(self.mutation(changes, Some(event)))))
    }

    pub fn operator_entry_count(&self) -> usize {
        self.operator.len()
    }
}

fn check_batch(count: usize, bytes: impl FnOnce() -> usize) -> Result<()> {
    if count > MAX_BATCH_ENTRIES {
        return Err(IpamError::InvalidArgument(format!(
            "{count} operator entries in one call are too many: send at most {MAX_BATCH_ENTRIES} per call"
        )));
    }
    let bytes = bytes();
    if bytes > MAX_BATCH_BYTES {
        return Err(IpamError::InvalidArgument(format!(
            "operator entries of {bytes} bytes in one call are too large: send at most {MAX_BATCH_BYTES} bytes per call"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::core_with;

    fn entry(kind: &str, key: &str, value: &str) -> OperatorEntry {
        OperatorEntry::new(kind, key, value)
    }

    #[test]
    fn entries_are_put_replaced_and_deleted_in_one_mutation_each() {
        let mut s = core_with(3);
        let (n, m) = s
            .put_operator_entries(
                vec![
                    entry("bgp-path", "192.0.2.0/24", "{}"),
                    entry("bgp-peer", "10.0.0.1", "{}"),
                ],
                false,
            )
            .unwrap();
        let m = m.unwrap();
        assert_eq!((n, m.changes.len()), (2, 2));
        assert!(matches!(m.event, Some(Event::OperatorEntries { ref put, .. }) if put.len() == 2));
        // Replacing is a write; create-only refuses the whole call and writes nothing.
        let (n, m) = s
            .put_operator_entries(vec![entry("bgp-path", "192.0.2.0/24", "{\"a\":1}")], false)
            .unwrap();
        assert_eq!(n, 1);
        assert!(m.is_some());
        let revision = s.revision();
        let e = s
            .put_operator_entries(
                vec![
                    entry("bgp-peer", "10.0.0.2", "{}"),
                    entry("bgp-peer", "10.0.0.1", "{}"),
                ],
                true,
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("bgp-peer/10.0.0.1 already exists"),
            "{e}"
        );
        assert_eq!((s.revision(), s.operator_entry_count()), (revision, 2));
        // Deletes say what went; deleting nothing changes nothing.
        let (n, m) = s
            .delete_operator_entries("bgp-peer", vec!["10.0.0.1".into(), "10.0.0.9".into()])
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            m.unwrap().changes,
            vec![Change::DeleteOperator(OperatorKey {
                kind: "bgp-peer".into(),
                key: "10.0.0.1".into()
            })]
        );
        let (n, m) = s
            .delete_operator_entries("bgp-peer", vec!["10.0.0.1".into()])
            .unwrap();
        assert_eq!((n, m.is_none()), (0, true));
    }

    #[test]
    fn bad_entries_are_refused_with_what_is_valid_and_the_count_is_capped() {
        let mut s = core_with(2);
        for (bad, says) in [
            (entry("BGP", "k", ""), "kind \"BGP\" is not valid"),
            (
                entry("bgp-peer", "", ""),
                "key \"\" of kind bgp-peer is not valid",
            ),
            (entry("bgp-peer", "a\nb", ""), "is not valid"),
            (
                entry("bgp-peer", "k", &"x".repeat(model::MAX_OPERATOR_VALUE + 1)),
                "at most 16384",
            ),
        ] {
            let e = s
                .put_operator_entries(vec![bad], false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
        let twice = vec![entry("bgp-peer", "k", ""), entry("bgp-peer", "k", "")];
        let e = s
            .put_operator_entries(twice, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let many: Vec<OperatorEntry> = (0..=MAX_BATCH_ENTRIES)
            .map(|i| entry("bgp-path", &i.to_string(), ""))
            .collect();
        let e = s.put_operator_entries(many, false).unwrap_err().to_string();
        assert!(e.contains("at most 1000 per call"), "{e}");
        // The cap (2 here) counts new entries only: replacing one at the cap is fine.
        s.put_operator_entries(
            vec![entry("bgp-path", "a", ""), entry("bgp-path", "b", "")],
            false,
        )
        .unwrap();
        let e = s
            .put_operator_entries(vec![entry("bgp-path", "c", "")], false)
            .unwrap_err();
        assert!(matches!(e, IpamError::Exhausted(_)), "{e}");
        assert!(e.to_string().contains("--max-operator-entries"), "{e}");
        assert!(
            s.put_operator_entries(vec![entry("bgp-path", "a", "1")], false)
                .is_ok()
        );
        assert_eq!(s.operator_entry_count(), 2);
    }
}
