//! Bookkeeping kept off the hit path, in side arrays over the primary entries: the eviction order (the
//! sacrificable and protected lists, doubly linked) and the occupancy bitmap the expiry hand skips free entries
//! with. Both are written on insert, eviction, removal and class change, never on a plain hit.

use super::entry::NIL;
use super::memory::boxed_slice;

/// Which list a connection is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ListId {
    /// Sacrificable connections (not established TCP), oldest first: the eviction order.
    Evictable,
    /// Established TCP connections: never evicted.
    Protected,
}

#[derive(Clone, Copy, Debug)]
struct Link {
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy, Debug)]
struct Ends {
    head: u32,
    tail: u32,
}

impl Ends {
    const EMPTY: Ends = Ends {
        head: NIL,
        tail: NIL,
    };
}

/// The two connection lists over primary entries `0..capacity`.
pub(super) struct Lists {
    links: Box<[Link]>,
    evictable: Ends,
    protected: Ends,
}

impl Lists {
    pub fn new(capacity: usize, advise: Option<fn(*mut u8, usize)>) -> Lists {
        Lists {
            links: boxed_slice(capacity, advise, |_| Link {
                prev: NIL,
                next: NIL,
            }),
            evictable: Ends::EMPTY,
            protected: Ends::EMPTY,
        }
    }

    fn ends(&mut self, list: ListId) -> &mut Ends {
        match list {
            ListId::Evictable => &mut self.evictable,
            ListId::Protected => &mut self.protected,
        }
    }

    /// The oldest connection on `list`.
    pub fn head(&self, list: ListId) -> Option<u32> {
        let head = match list {
            ListId::Evictable => self.evictable.head,
            ListId::Protected => self.protected.head,
        };
        (head != NIL).then_some(head)
    }

    /// Where `id`'s list link lives, for a prefetch.
    pub fn link_address(&self, id: u32) -> Option<&impl Copy> {
        self.links.get(id as usize)
    }

    /// The connection after `id` on its list.
    pub fn next(&self, id: u32) -> Option<u32> {
        let next = self.links[id as usize].next;
        (next != NIL).then_some(next)
    }

    pub fn push_back(&mut self, list: ListId, id: u32) {
        let tail = self.ends(list).tail;
        self.links[id as usize] = Link {
            prev: tail,
            next: NIL,
        };
        if tail == NIL {
            self.ends(list).head = id;
        } else {
            self.links[tail as usize].next = id;
        }
        self.ends(list).tail = id;
    }

    /// Takes `id` off `list`, which must be the list it is on.
    pub fn unlink(&mut self, list: ListId, id: u32) {
        let Link { prev, next } = self.links[id as usize];
        if prev == NIL {
            self.ends(list).head = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.ends(list).tail = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
    }

    pub fn bytes(&self) -> usize {
        self.links.len() * std::mem::size_of::<Link>()
    }
}

/// One bit per primary entry: set while a connection holds it.
pub(super) struct Occupancy {
    words: Box<[u64]>,
}

impl Occupancy {
    pub fn new(capacity: usize) -> Occupancy {
        Occupancy {
            words: vec![0; capacity.div_ceil(64)].into_boxed_slice(),
        }
    }

    /// Where `id`'s bit lives, for a prefetch.
    pub fn word_address(&self, id: u32) -> Option<&u64> {
        self.words.get(id as usize / 64)
    }

    pub fn set(&mut self, id: u32, occupied: bool) {
        let bit = 1u64 << (id % 64);
        let word = &mut self.words[id as usize / 64];
        if occupied {
            *word |= bit;
        } else {
            *word &= !bit;
        }
    }

    /// How many entries from `id` on (up to the end of its 64-entry word) are free: 0 when `id` is occupied.
    #[inline]
    pub fn free_run(&self, id: usize) -> usize {
        let bits = self.words[id / 64] >> (id % 64);
        if bits == 0 {
            64 - id % 64
        } else {
            bits.trailing_zeros() as usize
        }
    }

    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(lists: &Lists, list: ListId) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = lists.head(list);
        while let Some(id) = at {
            out.push(id);
            at = lists.next(id);
        }
        out
    }

    #[test]
    fn lists_keep_insertion_order_across_moves() {
        let mut lists = Lists::new(8, None);
        for id in [3, 1, 4, 5] {
            lists.push_back(ListId::Evictable, id);
        }
        lists.unlink(ListId::Evictable, 1);
        lists.push_back(ListId::Protected, 1);
        lists.unlink(ListId::Evictable, 5);
        lists.unlink(ListId::Evictable, 3);
        lists.push_back(ListId::Evictable, 3);
        assert_eq!(collect(&lists, ListId::Evictable), vec![4, 3]);
        assert_eq!(collect(&lists, ListId::Protected), vec![1]);
    }

    #[test]
    fn free_runs_stop_at_the_word_end_or_an_occupied_entry() {
        let mut occupancy = Occupancy::new(130);
        assert_eq!(occupancy.free_run(0), 64);
        assert_eq!(occupancy.free_run(70), 58);
        occupancy.set(5, true);
        assert_eq!(occupancy.free_run(0), 5);
        assert_eq!(occupancy.free_run(5), 0);
        assert_eq!(occupancy.free_run(6), 58);
        occupancy.set(5, false);
        assert_eq!(occupancy.free_run(0), 64);
    }
}
