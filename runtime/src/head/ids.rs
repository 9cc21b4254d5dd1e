//! The head's tables of objects and tasks, keyed by object id.
//!
//! Each session names its objects `client << 40 | 1, 2, 3, ...` (the
//! driver's `client/slots.rs`), and a task's id is its first result's id,
//! so nearly every id the head tracks is one of a few sessions' dense runs
//! of sequence numbers. [`IdTable`] keeps those in pages of [`PAGE`] slots
//! per session, indexed by sequence number: 8 bytes per entry (a pointer)
//! instead of a hash table's ~34 at a million entries (a bucket of key,
//! value and control byte, and about as many empty buckets again). With a
//! million tasks queued at once that is ~50 MiB of the head's memory less
//! for the two tables.
//!
//! Ids that do not fit a session's run (a page far beyond what the session
//! used so far, or an id of no open session: made up, or the head's own)
//! go to an ordinary hash map, so a bad id costs what it always did.
//!
//! A page is freed once it is empty and the session has moved on to a
//! later page; a session's last page stays until the session closes
//! ([`IdTable::close_prefix`]), so a loop of one task at a time does not
//! allocate a page per task.

use std::collections::VecDeque;

use super::state::FastMap;

/// Slots per page: 1,024 (8 KiB of pointers).
const PAGE_BITS: u32 = 10;
const PAGE: usize = 1 << PAGE_BITS;
/// An id is its session's number above this many bits of sequence.
const SEQ_BITS: u32 = 40;
/// How many pages beyond (or before) a session's current run a new id may
/// start; further ones go to the hash map. Pages in between cost a
/// 24-byte directory entry each until used.
const MAX_GAP: u64 = 16;

/// Values by object id: a session's own ids in dense pages, others hashed
/// (see the module's doc). The methods mirror `HashMap`'s.
pub(super) struct IdTable<V> {
    /// Pages per session number (`id >> 40`).
    runs: FastMap<u64, Run<V>>,
    /// Ids that fit no run.
    other: FastMap<u64, V>,
    len: usize,
}

/// One session's pages.
struct Run<V> {
    /// Page number of `pages[0]`.
    first: u64,
    /// Freed pages have no slots.
    pages: VecDeque<Page<V>>,
    /// The highest page made: pages below it are freed once empty.
    top: u64,
    /// Entries in its pages.
    live: usize,
    /// Its session ended: its last page goes too once empty.
    closed: bool,
}

struct Page<V> {
    live: u32,
    /// `PAGE` slots, or none once freed.
    slots: Box<[Option<V>]>,
}

impl<V> Page<V> {
    fn freed() -> Self {
        Page {
            live: 0,
            slots: Box::default(),
        }
    }
}

/// (session, page, slot) of an id.
fn split(id: u64) -> (u64, u64, usize) {
    let seq = id & ((1 << SEQ_BITS) - 1);
    (
        id >> SEQ_BITS,
        seq >> PAGE_BITS,
        (seq as usize) & (PAGE - 1),
    )
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        IdTable {
            runs: FastMap::default(),
            other: FastMap::default(),
            len: 0,
        }
    }
}

impl<V> Run<V> {
    fn slot(&self, page: u64, slot: usize) -> Option<&Option<V>> {
        let i = page.checked_sub(self.first)?;
        self.pages.get(i as usize)?.slots.get(slot)
    }

    fn slot_mut(&mut self, page: u64, slot: usize) -> Option<&mut Option<V>> {
        let i = page.checked_sub(self.first)?;
        self.pages.get_mut(i as usize)?.slots.get_mut(slot)
    }

    /// Makes room for `page` if it is near enough; false: hash it instead.
    fn reach(&mut self, page: u64) -> bool {
        if self.pages.is_empty() {
            self.first = page;
            self.pages.push_back(Page::freed());
        } else if page < self.first {
            if self.first - page > MAX_GAP {
                return false;
            }
            while page < self.first {
                self.pages.push_front(Page::freed());
                self.first -= 1;
            }
        } else {
            let end = self.first + self.pages.len() as u64;
            if page >= end + MAX_GAP {
                return false;
            }
            for _ in end..=page {
                self.pages.push_back(Page::freed());
            }
        }
        let p = &mut self.pages[(page - self.first) as usize];
        if p.slots.is_empty() {
            p.slots = (0..PAGE).map(|_| None).collect();
        }
        self.top = self.top.max(page);
        true
    }

    /// Frees empty pages it has moved past (all of them once closed), and
    /// trims freed pages off both ends of the directory.
    fn trim(&mut self, page: u64) {
        if let Some(i) = page.checked_sub(self.first) {
            if let Some(p) = self.pages.get_mut(i as usize) {
                if p.live == 0 && (page < self.top || self.closed) {
                    *p = Page::freed();
                }
            }
        }
        while self.pages.front().is_some_and(|p| p.slots.is_empty()) {
            self.pages.pop_front();
            self.first += 1;
        }
        while self.pages.back().is_some_and(|p| p.slots.is_empty()) {
            self.pages.pop_back();
        }
    }
}

impl<V> IdTable<V> {
    /// Entries in the table.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, id: &u64) -> Option<&V> {
        let (run, page, slot) = split(*id);
        if let Some(v) = self
            .runs
            .get(&run)
            .and_then(|r| r.slot(page, slot)?.as_ref())
        {
            return Some(v);
        }
        if self.other.is_empty() {
            return None;
        }
        self.other.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        let (run, page, slot) = split(*id);
        let dense = self
            .runs
            .get(&run)
            .and_then(|r| r.slot(page, slot))
            .is_some_and(Option::is_some);
        if dense {
            return self.runs.get_mut(&run)?.slot_mut(page, slot)?.as_mut();
        }
        if self.other.is_empty() {
            return None;
        }
        self.other.get_mut(id)
    }

    pub(super) fn contains_key(&self, id: &u64) -> bool {
        self.get(id).is_some()
    }

    /// Inserts `value` under `id`; returns what was there.
    pub(super) fn insert(&mut self, id: u64, value: V) -> Option<V> {
        if !self.other.is_empty() {
            if let Some(v) = self.other.get_mut(&id) {
                return Some(std::mem::replace(v, value));
            }
        }
        let (run, page, slot) = split(id);
        if let Some(r) = self.runs.get_mut(&run) {
            if !r.reach(page) {
                return self.insert_other(id, value);
            }
            let p = &mut r.pages[(page - r.first) as usize];
            let old = p.slots[slot].replace(value);
            if old.is_none() {
                p.live += 1;
                r.live += 1;
                self.len += 1;
            }
            return old;
        }
        self.insert_other(id, value)
    }

    fn insert_other(&mut self, id: u64, value: V) -> Option<V> {
        let old = self.other.insert(id, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(super) fn remove(&mut self, id: &u64) -> Option<V> {
        let (run, page, slot) = split(*id);
        if let Some(r) = self.runs.get_mut(&run) {
            if let Some(v) = r.slot_mut(page, slot).and_then(Option::take) {
                r.pages[(page - r.first) as usize].live -= 1;
                r.live -= 1;
                self.len -= 1;
                r.trim(page);
                if r.live == 0 && r.closed {
                    self.runs.remove(&run);
                }
                return Some(v);
            }
        }
        if self.other.is_empty() {
            return None;
        }
        let v = self.other.remove(id)?;
        self.len -= 1;
        Some(v)
    }

    /// The session numbered `prefix` began: its ids go to pages from now
    /// on (ids of sessions the head never opened are hashed, so made-up
    /// ids never allocate pages).
    pub(super) fn open_prefix(&mut self, prefix: u32) {
        self.runs.entry(u64::from(prefix)).or_insert_with(|| Run {
            first: 0,
            pages: VecDeque::new(),
            top: 0,
            live: 0,
            closed: false,
        });
    }

    /// The session numbered `prefix` ended: it makes no more ids, so its
    /// pages go as they empty (all of it now if nothing is left).
    pub(super) fn close_prefix(&mut self, prefix: u32) {
        let run = u64::from(prefix);
        if let Some(r) = self.runs.get_mut(&run) {
            r.closed = true;
            if r.live == 0 {
                self.runs.remove(&run);
            }
        }
    }

    /// Whether `id` sits in the pages of session `prefix` (so
    /// [`IdTable::iter_prefix_mut`] finds it), not in the hash map.
    pub(super) fn in_pages_of(&self, id: u64, prefix: u32) -> bool {
        let (run, page, slot) = split(id);
        run == u64::from(prefix)
            && self
                .runs
                .get(&run)
                .and_then(|r| r.slot(page, slot))
                .is_some_and(Option::is_some)
    }

    /// The entries in the pages of session `prefix`, mutably: what a
    /// session made, without a look at any other session's (closing a
    /// session costs its own ids, not the whole table).
    pub(super) fn iter_prefix_mut(&mut self, prefix: u32) -> impl Iterator<Item = (u64, &mut V)> {
        let run = u64::from(prefix);
        self.runs.get_mut(&run).into_iter().flat_map(move |r| {
            let first = r.first;
            r.pages.iter_mut().enumerate().flat_map(move |(i, p)| {
                let page = first + i as u64;
                p.slots.iter_mut().enumerate().filter_map(move |(s, v)| {
                    let id = run << SEQ_BITS | page << PAGE_BITS | s as u64;
                    v.as_mut().map(|v| (id, v))
                })
            })
        })
    }

    /// Every entry with its id, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        let dense = self.runs.iter().flat_map(|(run, r)| {
            r.pages.iter().enumerate().flat_map(move |(i, p)| {
                let page = r.first + i as u64;
                p.slots.iter().enumerate().filter_map(move |(s, v)| {
                    let id = run << SEQ_BITS | page << PAGE_BITS | s as u64;
                    v.as_ref().map(|v| (id, v))
                })
            })
        });
        dense.chain(self.other.iter().map(|(id, v)| (*id, v)))
    }

    /// Every entry with its id, mutably, in no particular order (for
    /// tests: the head itself looks at one session's entries at a time,
    /// [`IdTable::iter_prefix_mut`]).
    #[cfg(test)]
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut V)> {
        let dense = self.runs.iter_mut().flat_map(|(run, r)| {
            let (run, first) = (*run, r.first);
            r.pages.iter_mut().enumerate().flat_map(move |(i, p)| {
                let page = first + i as u64;
                p.slots.iter_mut().enumerate().filter_map(move |(s, v)| {
                    let id = run << SEQ_BITS | page << PAGE_BITS | s as u64;
                    v.as_mut().map(|v| (id, v))
                })
            })
        });
        dense.chain(self.other.iter_mut().map(|(id, v)| (*id, v)))
    }

    /// Every value, in no particular order.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Pages allocated (for tests: pages are freed as sessions move on).
    #[cfg(test)]
    pub(super) fn pages(&self) -> usize {
        self.runs
            .values()
            .map(|r| r.pages.iter().filter(|p| !p.slots.is_empty()).count())
            .sum()
    }

    /// Entries kept in the hash map (for tests).
    #[cfg(test)]
    fn hashed(&self) -> usize {
        self.other.len()
    }
}

#[cfg(test)]
mod tests;
