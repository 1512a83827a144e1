//! Adj-RIB-Out (RFC 4271 §3.2): what one peer has been sent. [`AdjRibOut::sync`] compares it with
//! what the peer should have and returns the UPDATEs that close the gap — withdrawals for routes
//! no longer wanted, announcements for new or changed ones — packed as RFC 4271 §9.2 asks: one
//! attribute set per UPDATE, as many NLRI as fit in 4,096 octets, sized by the real encoder.

use std::collections::BTreeMap;
use std::sync::Arc;

use routeplane_net::Family;

use crate::message::{Message, Nlri, PathAttributes, Update};
use crate::wire::{self, MAX_MESSAGE_LEN};

/// Routes by NLRI (prefix and, with ADD-PATH, path identifier). Attribute sets are shared:
/// thousands of routes usually carry a handful of them.
pub type Routes = BTreeMap<Nlri, Arc<PathAttributes>>;

/// What one peer has been sent: the very table the speaker computed (shared, not copied).
#[derive(Debug, Default, Clone)]
pub struct AdjRibOut {
    sent: Arc<Routes>,
}

impl AdjRibOut {
    pub fn routes(&self) -> &Arc<Routes> {
        &self.sent
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Forgets everything: the session went down, so the peer has nothing from us.
    pub fn clear(&mut self) {
        self.sent = Arc::default();
    }

    /// The UPDATEs that bring the peer from what it has to `desired`; records them as sent.
    pub fn sync(&mut self, desired: &Arc<Routes>, asn4: bool) -> Vec<Update> {
        let withdrawn: Vec<Nlri> = self
            .sent
            .keys()
            .filter(|n| !desired.contains_key(n))
            .copied()
            .collect();
        let mut updates = pack_withdrawals(&withdrawn);
        // Each UPDATE is filled straight from the table, one open UPDATE per attribute set, so
        // the NLRI are copied once (not gathered per set and then split).
        let mut open: BTreeMap<&PathAttributes, (Vec<Nlri>, usize, usize)> = BTreeMap::new();
        for (nlri, attrs) in desired.iter() {
            if self.sent.get(nlri) == Some(attrs) {
                continue;
            }
            let (nlri_of, used, budget) = open
                .entry(&**attrs)
                .or_insert_with(|| (Vec::new(), 0, budget(attrs, nlri, asn4)));
            let len = wire::nlri_len(nlri);
            if *used + len > *budget && !nlri_of.is_empty() {
                updates.push(Update {
                    withdrawn: vec![],
                    attributes: Some((**attrs).clone()),
                    announced: std::mem::take(nlri_of),
                });
                *used = 0;
            }
            nlri_of.push(*nlri);
            *used += len;
        }
        for (attrs, (nlri, _, _)) in open {
            if !nlri.is_empty() {
                updates.push(Update {
                    withdrawn: vec![],
                    attributes: Some(attrs.clone()),
                    announced: nlri,
                });
            }
        }
        self.sent = Arc::clone(desired);
        updates
    }

    /// Everything sent, again (a ROUTE-REFRESH asked for it), followed by End-of-RIB.
    pub fn resend(&self, family: Family, asn4: bool) -> Vec<Message> {
        let mut groups: BTreeMap<&PathAttributes, Vec<Nlri>> = BTreeMap::new();
        for (nlri, attrs) in self
            .sent
            .iter()
            .filter(|(n, _)| n.prefix.family() == family)
        {
            groups.entry(&**attrs).or_default().push(*nlri);
        }
        let mut out: Vec<Message> = groups
            .into_iter()
            .flat_map(|(a, n)| pack_announcements(a, &n, asn4))
            .map(Message::Update)
            .collect();
        out.push(Message::EndOfRib(family));
        out
    }
}

/// Withdrawals, per family, as many per UPDATE as fit.
fn pack_withdrawals(nlri: &[Nlri]) -> Vec<Update> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let of: Vec<Nlri> = nlri
            .iter()
            .filter(|n| n.prefix.family() == family)
            .copied()
            .collect();
        let Some(first) = of.first() else { continue };
        let one = Update {
            withdrawn: vec![*first],
            ..Update::default()
        };
        let base = wire::encoded_len(&Message::Update(one), true).unwrap_or(MAX_MESSAGE_LEN)
            - wire::nlri_len(first);
        for chunk in chunks(&of, MAX_MESSAGE_LEN.saturating_sub(base)) {
            out.push(Update {
                withdrawn: chunk,
                ..Update::default()
            });
        }
    }
    out
}

/// Octets left for NLRI in an UPDATE carrying `attrs` (measured with the encoder).
fn budget(attrs: &PathAttributes, sample: &Nlri, asn4: bool) -> usize {
    let one = Update {
        withdrawn: vec![],
        attributes: Some(attrs.clone()),
        announced: vec![*sample],
    };
    let base = wire::encoded_len(&Message::Update(one), asn4).unwrap_or(MAX_MESSAGE_LEN)
        - wire::nlri_len(sample);
    MAX_MESSAGE_LEN.saturating_sub(base)
}

fn pack_announcements(attrs: &PathAttributes, nlri: &[Nlri], asn4: bool) -> Vec<Update> {
    let Some(first) = nlri.first() else {
        return Vec::new();
    };
    let one = Update {
        withdrawn: vec![],
        attributes: Some(attrs.clone()),
        announced: vec![*first],
    };
    let base = wire::encoded_len(&Message::Update(one), asn4).unwrap_or(MAX_MESSAGE_LEN)
        - wire::nlri_len(first);
    chunks(nlri, MAX_MESSAGE_LEN.saturating_sub(base))
        .into_iter()
        .map(|announced| Update {
            withdrawn: vec![],
            attributes: Some(attrs.clone()),
            announced,
        })
        .collect()
}

/// Splits NLRI into runs whose encoded sizes add up to at most `budget` octets (at least one each).
fn chunks(nlri: &[Nlri], budget: usize) -> Vec<Vec<Nlri>> {
    let mut out: Vec<Vec<Nlri>> = Vec::new();
    let mut used = usize::MAX;
    for n in nlri {
        let len = wire::nlri_len(n);
        if used.saturating_add(len) > budget {
            out.push(Vec::new());
            used = 0;
        }
        used += len;
        if let Some(last) = out.last_mut() {
            last.push(*n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::message::Origin;
    use crate::wire::Codec;

    fn attrs(nh: &str) -> Arc<PathAttributes> {
        Arc::new(PathAttributes {
            origin: Origin::Igp,
            as_path: vec![64513],
            next_hop: nh.parse().unwrap(),
            med: None,
            local_pref: None,
            communities: vec![],
        })
    }

    fn nlri(s: &str) -> Nlri {
        Nlri {
            prefix: s.parse().unwrap(),
            path_id: None,
        }
    }

    fn many(count: u32) -> Routes {
        (0..count)
            .map(|i| {
                (
                    nlri(&format!("10.{}.{}.0/24", i / 256, i % 256)),
                    attrs("10.4.94.11"),
                )
            })
            .collect()
    }

    #[test]
    fn first_sync_announces_then_nothing_then_the_difference() {
        let mut rib = AdjRibOut::default();
        let mut desired: Routes = [
            (nlri("10.5.112.0/24"), attrs("10.4.94.11")),
            (nlri("10.5.113.0/24"), attrs("10.4.94.12")),
        ]
        .into();
        let first = rib.sync(&Arc::new(desired.clone()), true);
        assert_eq!(first.len(), 2, "two attribute sets, two UPDATEs");
        assert!(
            rib.sync(&Arc::new(desired.clone()), true).is_empty(),
            "nothing changed, nothing sent"
        );

        desired.remove(&nlri("10.5.113.0/24"));
        desired.insert(nlri("10.5.112.0/24"), attrs("10.4.94.99"));
        desired.insert(nlri("fd00::/120"), attrs("fd04::11"));
        let diff = rib.sync(&Arc::new(desired.clone()), true);
        assert_eq!(
            diff[0],
            Update {
                withdrawn: vec![nlri("10.5.113.0/24")],
                ..Update::default()
            }
        );
        let announced: Vec<Nlri> = diff.iter().flat_map(|u| u.announced.clone()).collect();
        assert_eq!(
            announced,
            vec![nlri("10.5.112.0/24"), nlri("fd00::/120")],
            "the changed next hop is re-announced"
        );
        assert_eq!(rib.len(), 2);
    }

    #[test]
    fn updates_are_packed_within_4096_octets() {
        let mut rib = AdjRibOut::default();
        let updates = rib.sync(&Arc::new(many(5000)), true);
        let total: usize = updates.iter().map(|u| u.announced.len()).sum();
        assert_eq!(total, 5000);
        let mut codec = Codec::new();
        codec.set_asn4(true);
        for u in &updates {
            let mut buf = BytesMut::new();
            codec.encode(&Message::Update(u.clone()), &mut buf).unwrap();
            assert!(buf.len() <= MAX_MESSAGE_LEN);
        }
        // /24s take 4 octets each: a full UPDATE holds about a thousand.
        assert!(
            updates.len() <= 6,
            "{} UPDATEs for 5000 prefixes",
            updates.len()
        );
        let withdrawals = rib.sync(&Arc::new(Routes::new()), true);
        assert!(
            withdrawals.len() <= 6
                && withdrawals.iter().map(|u| u.withdrawn.len()).sum::<usize>() == 5000
        );
    }

    #[test]
    fn add_path_keeps_several_paths_per_prefix() {
        let mut rib = AdjRibOut::default();
        let lb = |id: u32, nh: &str| {
            (
                Nlri {
                    prefix: "10.5.120.7/32".parse().unwrap(),
                    path_id: Some(id),
                },
                attrs(nh),
            )
        };
        let desired: Routes = [lb(1, "10.4.94.11"), lb(2, "10.4.94.12")].into();
        let out = rib.sync(&Arc::new(desired.clone()), true);
        assert_eq!(out.iter().map(|u| u.announced.len()).sum::<usize>(), 2);
        let fewer: Routes = [lb(2, "10.4.94.12")].into();
        let out = rib.sync(&Arc::new(fewer.clone()), true);
        assert_eq!(
            out,
            vec![Update {
                withdrawn: vec![lb(1, "10.4.94.11").0],
                ..Update::default()
            }]
        );
    }

    #[test]
    fn resend_repeats_a_family_and_ends_with_end_of_rib() {
        let mut rib = AdjRibOut::default();
        let mut desired = many(3);
        desired.insert(nlri("fd00::/120"), attrs("fd04::11"));
        rib.sync(&Arc::new(desired.clone()), true);
        let again = rib.resend(Family::V4, true);
        assert_eq!(again.len(), 2);
        assert!(matches!(&again[0], Message::Update(u) if u.announced.len() == 3));
        assert_eq!(again[1], Message::EndOfRib(Family::V4));
        rib.clear();
        assert!(rib.is_empty());
    }
}
