//! How the speaker takes operator entries from IPAM's feed: the peers and paths added through the
//! API, on whichever replica, become this replica's as they arrive.
//!
//! An entry this replica cannot take — a path outside its `--announce-allow`, a peer it cannot
//! start — is left out, logged and counted (`routeplane_bgp_operator_entries_refused`), never
//! half-applied; when an entry is replaced by one that is refused, what the old one announced goes
//! too, so nothing stale is served. A peer whose address bgp-config defines is the file's: its API
//! entry waits until the file lets go of the address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use routeplane_config::Peer;
use routeplane_net::Cidr;
use routeplane_watch::FeedOperatorEntry;

use super::{Spawner, State, spawn_peer};
use crate::message::Cease;
use crate::operator::{PATH_KIND, PEER_KIND, decode_paths, decode_peer, decode_peers};

impl State {
    /// A snapshot's entries replace every API peer and path.
    pub(super) fn replace_operator_entries(
        &mut self,
        entries: Vec<FeedOperatorEntry>,
        spawner: &Spawner,
    ) {
        let (peers, refused) = decode_peers(entries.iter().filter(|e| e.kind == PEER_KIND));
        self.refuse(PEER_KIND, refused);
        let paths = entries.iter().filter(|e| e.kind == PATH_KIND);
        let (paths, refused) = decode_paths(paths, &self.settings.announce_allow);
        self.refuse(PATH_KIND, refused);
        self.operator = paths.into_iter().collect();
        self.set_api_peers(peers, spawner);
    }

    /// One write or delete of entries, applied over what is held.
    pub(super) fn apply_operator_entries(
        &mut self,
        put: Vec<FeedOperatorEntry>,
        deleted: Vec<(String, String)>,
        spawner: &Spawner,
    ) {
        let mut peers = self.api_peers.clone();
        for (kind, key) in &deleted {
            match kind.as_str() {
                PEER_KIND => {
                    peers.retain(|addr, _| addr.to_string() != *key);
                }
                PATH_KIND => {
                    if let Ok(prefix) = key.parse::<Cidr>() {
                        self.operator.remove(&prefix);
                    }
                }
                _ => {}
            }
        }
        let mut refused_peers = Vec::new();
        for e in put.iter().filter(|e| e.kind == PEER_KIND) {
            // The entry replaces whatever was at its key, even when it is refused.
            peers.retain(|addr, _| addr.to_string() != e.key);
            match decode_peer(e) {
                Ok(p) => {
                    peers.insert(p.peer_address, p);
                }
                Err(why) => refused_peers.push((e.key.clone(), why)),
            }
        }
        self.refuse(PEER_KIND, refused_peers);
        let paths: Vec<&FeedOperatorEntry> = put.iter().filter(|e| e.kind == PATH_KIND).collect();
        for e in &paths {
            if let Ok(prefix) = e.key.parse::<Cidr>() {
                self.operator.remove(&prefix);
            }
        }
        let (paths, refused) = decode_paths(paths, &self.settings.announce_allow);
        self.refuse(PATH_KIND, refused);
        self.operator.extend(paths);
        self.set_api_peers(peers, spawner);
    }

    fn refuse(&mut self, kind: &str, refused: Vec<(String, String)>) {
        for (key, why) in refused {
            self.operator_refused += 1;
            tracing::warn!(kind, key, why = %why, "operator entry from IPAM left out: this replica cannot take it");
        }
    }

    /// Makes the running API peers those of `new`: removed ones stop with Cease/Peer
    /// De-configured, changed ones restart with Cease/Other Configuration Change, and addresses the
    /// file defines are left to the file.
    fn set_api_peers(&mut self, new: BTreeMap<IpAddr, Peer>, spawner: &Spawner) {
        let file: BTreeSet<IpAddr> = self.settings.peers.iter().map(|p| p.peer_address).collect();
        let old = std::mem::take(&mut self.api_peers);
        for addr in old
            .keys()
            .filter(|a| !new.contains_key(a) && !file.contains(a))
        {
            if let Some(entry) = self.peers.remove(addr) {
                self.stop(*addr, &entry, Cease::PeerDeconfigured);
                tracing::info!(peer = %addr, "API peer deleted");
            }
        }
        let mut refused = Vec::new();
        for (addr, peer) in &new {
            if old.get(addr) == Some(peer) {
                continue;
            }
            if file.contains(addr) {
                tracing::warn!(peer = %addr, "API peer entry left waiting: bgp-config defines this address, and the file's entry runs");
                continue;
            }
            if let Some(entry) = self.peers.remove(addr) {
                self.stop(*addr, &entry, Cease::OtherConfigurationChange);
            }
            let after = self.stopping.remove(addr);
            match spawn_peer(peer, &self.settings, spawner, after) {
                Ok(entry) => {
                    self.peers.insert(*addr, entry);
                    tracing::info!(peer = %addr, "API peer started");
                }
                Err(why) => refused.push((addr.to_string(), why)),
            }
        }
        self.refuse(PEER_KIND, refused);
        self.api_peers = new;
    }
}
