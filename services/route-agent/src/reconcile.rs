//! Reconcile, don't replay: compare the routes this agent should have with the routes carrying
//! its protocol number that the kernel actually has, and return the difference as actions. Routes
//! of other owners never reach this function (the netlink seam lists only ours), so they are never
//! touched. Run on start (sweeping what is stale), on every feed event, and periodically (repairing
//! a route someone deleted or changed).

use std::collections::BTreeMap;

use routeplane_net::Cidr;

use crate::desired::Route;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add(Route),
    /// The destination is ours but its next hop or interface is not what it should be.
    Replace(Route),
    Delete(Route),
}

pub fn plan(desired: &BTreeMap<Cidr, Route>, installed: &[Route]) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut seen: BTreeMap<Cidr, &Route> = BTreeMap::new();
    for route in installed {
        match desired.get(&route.destination) {
            // Several routes of ours for one destination: keep one, delete the others.
            _ if seen.contains_key(&route.destination) => actions.push(Action::Delete(*route)),
            None => actions.push(Action::Delete(*route)),
            Some(_) => {
                seen.insert(route.destination, route);
            }
        }
    }
    for (destination, want) in desired {
        match seen.get(destination) {
            None => actions.push(Action::Add(*want)),
            Some(have) if **have != *want => actions.push(Action::Replace(*want)),
            Some(_) => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dest: &str, gw: &str, ifindex: u32) -> Route {
        Route {
            destination: dest.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            ifindex,
        }
    }

    fn map(routes: &[Route]) -> BTreeMap<Cidr, Route> {
        routes.iter().map(|r| (r.destination, *r)).collect()
    }

    #[test]
    fn missing_routes_are_added_and_nothing_else_happens_when_all_is_well() {
        let want = [
            r("10.5.114.0/24", "10.4.94.12", 2),
            r("10.5.115.0/24", "10.4.94.13", 2),
        ];
        assert_eq!(
            plan(&map(&want), &[]),
            vec![Action::Add(want[0]), Action::Add(want[1])]
        );
        assert!(plan(&map(&want), &want).is_empty(), "nothing to do");
    }

    #[test]
    fn stale_routes_are_swept_and_changed_ones_replaced() {
        let want = [r("10.5.114.0/24", "10.4.94.22", 2)];
        let have = [
            r("10.5.114.0/24", "10.4.94.12", 2),
            r("10.5.119.0/24", "10.4.94.19", 2),
        ];
        assert_eq!(
            plan(&map(&want), &have),
            vec![Action::Delete(have[1]), Action::Replace(want[0])]
        );
        let moved = [r("10.5.114.0/24", "10.4.94.22", 3)];
        assert_eq!(
            plan(&map(&moved), &want),
            vec![Action::Replace(moved[0])],
            "a new interface too"
        );
    }

    #[test]
    fn duplicates_of_ours_are_cleaned_up() {
        let want = [r("10.5.114.0/24", "10.4.94.12", 2)];
        let have = [want[0], r("10.5.114.0/24", "10.4.94.99", 2)];
        assert_eq!(plan(&map(&want), &have), vec![Action::Delete(have[1])]);
    }
}
