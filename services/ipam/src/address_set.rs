//! Which offsets of an address space are taken. Allocation is next-fit from a cursor, so a released
//! address is not handed out again at once (a pod's old address may still sit in peers' conntrack or
//! ARP caches), and a search costs the length of the run of taken offsets it crosses, not the space.

use std::collections::BTreeSet;

#[derive(Debug, Clone, Default)]
pub struct AddressSet {
    taken: BTreeSet<u128>,
    cursor: u128,
}

impl AddressSet {
    pub fn len(&self) -> usize {
        self.taken.len()
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    pub fn contains(&self, offset: u128) -> bool {
        self.taken.contains(&offset)
    }

    /// Marks an offset taken; false if it already was.
    pub fn insert(&mut self, offset: u128) -> bool {
        self.taken.insert(offset)
    }

    pub fn remove(&mut self, offset: u128) -> bool {
        self.taken.remove(&offset)
    }

    /// Takes the next free offset in `0..size` at or after the cursor (wrapping), skipping those
    /// `reserved` rejects. `reserved` must be cheap: it is asked once per skipped offset.
    pub fn allocate(&mut self, size: u128, reserved: impl Fn(u128) -> bool) -> Option<u128> {
        if size == 0 {
            return None;
        }
        let start = if self.cursor < size { self.cursor } else { 0 };
        let found = self
            .first_free(start, size, &reserved)
            .or_else(|| self.first_free(0, start, &reserved))?;
        self.taken.insert(found);
        self.cursor = found.wrapping_add(1);
        Some(found)
    }

    /// The first offset in `from..to` neither taken nor reserved.
    fn first_free(&self, from: u128, to: u128, reserved: &impl Fn(u128) -> bool) -> Option<u128> {
        let mut candidate = from;
        let mut taken = self.taken.range(from..to).peekable();
        while candidate < to {
            match taken.peek() {
                Some(&&t) if t == candidate => {
                    taken.next();
                }
                _ if reserved(candidate) => {}
                _ => return Some(candidate),
            }
            candidate += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_skips_reserved_and_wraps() {
        let mut s = AddressSet::default();
        let reserved = |o: u128| o == 0 || o == 1 || o == 7;
        let got: Vec<_> = std::iter::from_fn(|| s.allocate(8, reserved)).collect();
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        assert_eq!(s.allocate(8, reserved), None, "full");
        assert!(s.remove(3));
        assert!(s.remove(5));
        assert_eq!(s.allocate(8, reserved), Some(3), "wraps to the first gap");
        assert_eq!(s.allocate(8, reserved), Some(5));
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn released_address_is_not_reused_immediately() {
        let mut s = AddressSet::default();
        let a = s.allocate(100, |_| false).unwrap();
        let b = s.allocate(100, |_| false).unwrap();
        s.remove(a);
        assert_eq!(s.allocate(100, |_| false), Some(b + 1));
    }

    #[test]
    fn huge_spaces_are_cheap() {
        let mut s = AddressSet::default();
        for _ in 0..1000 {
            s.allocate(u128::MAX, |_| false).unwrap();
        }
        assert_eq!(s.len(), 1000);
        assert!(s.insert(u128::MAX - 1));
        assert!(!s.insert(u128::MAX - 1));
    }
}
