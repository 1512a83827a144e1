//! Adj-RIB-In (RFC 4271 §3.2): what one peer has sent. routeplane installs nothing from it; it is
//! there to count the peer's prefixes against its limit (RFC 4486 §4) and, when the operator asks
//! (`keep-received`), to show the routes (ListReceived). Memory is bounded either way: nothing past
//! the limit is stored, and without `keep-received` a prefix costs its key alone — about 50 bytes
//! (README, "Limits") instead of its key plus a share of its attributes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use routeplane_net::Family;

use crate::message::{Nlri, Update};
use crate::rib::Routes;

#[derive(Debug)]
enum Held {
    /// The prefixes only: enough to count them and to tell a re-announcement from a new one.
    Prefixes(HashSet<Nlri>),
    Routes(Routes),
}

/// One peer's received routes, bounded by its `max-prefixes`.
#[derive(Debug)]
pub struct AdjRibIn {
    held: Held,
    limit: u32,
}

impl Default for AdjRibIn {
    fn default() -> Self {
        AdjRibIn::new(false, routeplane_config::DEFAULT_MAX_PREFIXES)
    }
}

/// The UPDATE that would take the peer past its limit, and the family of its first prefix too many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded(pub Family);

impl AdjRibIn {
    pub fn new(keep_routes: bool, limit: u32) -> AdjRibIn {
        let held = if keep_routes {
            Held::Routes(BTreeMap::new())
        } else {
            Held::Prefixes(HashSet::new())
        };
        AdjRibIn { held, limit }
    }

    pub fn len(&self) -> usize {
        match &self.held {
            Held::Prefixes(p) => p.len(),
            Held::Routes(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The routes with their attributes, when kept.
    pub fn routes(&self) -> Option<&Routes> {
        match &self.held {
            Held::Prefixes(_) => None,
            Held::Routes(r) => Some(r),
        }
    }

    pub fn clear(&mut self) {
        match &mut self.held {
            Held::Prefixes(p) => *p = HashSet::new(),
            Held::Routes(r) => r.clear(),
        }
    }

    /// Withdrawals first, then announcements (RFC 4271 §9: an UPDATE withdrawing and announcing
    /// the same prefix announces it). A new prefix past the limit is not stored: the error says
    /// the session must end.
    pub fn apply(&mut self, u: &Update) -> Result<(), LimitExceeded> {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        match &mut self.held {
            Held::Prefixes(p) => {
                for n in &u.withdrawn {
                    p.remove(n);
                }
                if u.attributes.is_none() {
                    return Ok(());
                }
                for n in &u.announced {
                    if p.len() >= limit && !p.contains(n) {
                        return Err(LimitExceeded(n.prefix.family()));
                    }
                    p.insert(*n);
                }
            }
            Held::Routes(r) => {
                for n in &u.withdrawn {
                    r.remove(n);
                }
                let Some(a) = &u.attributes else {
                    return Ok(());
                };
                let shared = Arc::new(a.clone());
                for n in &u.announced {
                    if r.len() >= limit && !r.contains_key(n) {
                        return Err(LimitExceeded(n.prefix.family()));
                    }
                    r.insert(*n, Arc::clone(&shared));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Origin, PathAttributes};

    fn nlri(s: &str) -> Nlri {
        Nlri {
            prefix: s.parse().unwrap(),
            path_id: None,
        }
    }

    fn announce(prefixes: &[&str]) -> Update {
        Update {
            withdrawn: vec![],
            attributes: Some(PathAttributes {
                origin: Origin::Igp,
                as_path: vec![64524],
                next_hop: "10.4.36.239".parse().unwrap(),
                med: None,
                local_pref: None,
                communities: vec![],
            }),
            announced: prefixes.iter().map(|p| nlri(p)).collect(),
        }
    }

    fn withdraw(prefixes: &[&str]) -> Update {
        Update {
            withdrawn: prefixes.iter().map(|p| nlri(p)).collect(),
            ..Update::default()
        }
    }

    #[test]
    fn counts_what_is_announced_and_not_withdrawn_in_both_modes() {
        for keep in [false, true] {
            let mut rib = AdjRibIn::new(keep, 10);
            rib.apply(&announce(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/24"]))
                .unwrap();
            rib.apply(&withdraw(&["10.0.1.0/24", "10.9.0.0/16"]))
                .unwrap();
            assert_eq!(rib.len(), 1, "keep {keep}");
            assert_eq!(rib.routes().is_some(), keep);
            rib.clear();
            assert!(rib.is_empty());
        }
    }

    #[test]
    fn the_first_prefix_past_the_limit_is_refused_and_not_stored() {
        for keep in [false, true] {
            let mut rib = AdjRibIn::new(keep, 2);
            rib.apply(&announce(&["10.0.0.0/24", "10.0.1.0/24"]))
                .unwrap();
            // Announcing again what it holds is no new prefix.
            rib.apply(&announce(&["10.0.1.0/24"])).unwrap();
            assert_eq!(
                rib.apply(&announce(&["10.0.2.0/24"])),
                Err(LimitExceeded(Family::V4))
            );
            assert_eq!(rib.len(), 2, "nothing past the limit is held");
            assert_eq!(
                rib.apply(&announce(&["fd00::/64"])),
                Err(LimitExceeded(Family::V6))
            );
            // A withdrawal makes room.
            rib.apply(&withdraw(&["10.0.0.0/24"])).unwrap();
            rib.apply(&announce(&["10.0.2.0/24"])).unwrap();
        }
    }

    #[test]
    fn kept_routes_carry_their_attributes() {
        let mut rib = AdjRibIn::new(true, 10);
        rib.apply(&announce(&["10.0.0.0/24"])).unwrap();
        let routes = rib.routes().unwrap();
        assert_eq!(routes[&nlri("10.0.0.0/24")].as_path, [64524]);
    }
}
