//! The table of what this process knows of each object it holds handles
//! to, keyed by object id.
//!
//! Most ids a process holds are its own: the session numbers the objects it
//! creates `prefix | 1, 2, 3, ...`, so they are dense and arrive in order.
//! Those live in pages of [`PAGE`] slots indexed by sequence number: no
//! hashing, no empty buckets (a hash table of a million entries has about
//! as many empty buckets again, each as large as an entry), and the slots of
//! refs made one after another sit side by side in memory, which is what a
//! driver's `get_all` walks. A page is freed once all its slots are empty
//! and all its sequence numbers have been handed out. Ids made by other
//! sessions (refs received inside values) go to a small hash map.
//!
//! Locking: one read-mostly lock over the page directory, then one lock per
//! page, so threads working on different pages do not wait for each other.
//! The closures given to [`Slots::with`] and friends run under the page's
//! lock and must not use the table again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

/// Slots per page: 1,024 (a page of driver slots is ~56 KiB).
const PAGE_BITS: u32 = 10;
const PAGE: usize = 1 << PAGE_BITS;
/// Object ids are the session's id above this many bits of sequence.
const SEQ_BITS: u32 = 40;

/// Slots of type `T` by object id; the session's own ids densely.
pub(crate) struct Slots<T> {
    /// The id bits of this session's objects (`client_id << 40`).
    prefix: u64,
    /// Sequence numbers handed out so far (the last one).
    next: AtomicU64,
    dir: RwLock<Dir<T>>,
    /// Slots of ids other sessions made (foldhash: ids are not secret,
    /// and the seed is still per process).
    foreign: Mutex<HashMap<u64, T, foldhash::fast::RandomState>>,
}

struct Dir<T> {
    /// Page number of `pages[0]`.
    first: u64,
    /// `None`: a page that was emptied and freed.
    pages: VecDeque<Option<Box<Page<T>>>>,
}

struct Page<T>(Mutex<PageInner<T>>);

struct PageInner<T> {
    /// Slots that hold something.
    live: u32,
    slots: Box<[Option<T>]>,
}

impl<T> Page<T> {
    fn new() -> Box<Self> {
        Box::new(Page(Mutex::new(PageInner {
            live: 0,
            slots: (0..PAGE).map(|_| None).collect(),
        })))
    }
}

impl<T> Dir<T> {
    fn page(&self, p: u64) -> Option<&Page<T>> {
        let i = p.checked_sub(self.first)?;
        self.pages.get(i as usize)?.as_deref()
    }

    /// The page `p`, made if it does not exist.
    fn page_or_new(&mut self, p: u64) -> &Page<T> {
        if self.pages.is_empty() {
            self.first = p;
        }
        while p < self.first {
            self.pages.push_front(None);
            self.first -= 1;
        }
        let i = (p - self.first) as usize;
        if i >= self.pages.len() {
            self.pages.resize_with(i + 1, || None);
        }
        self.pages[i].get_or_insert_with(Page::new)
    }

    /// Frees page `p` if it is still empty; drops freed pages at the front.
    fn free_if_empty(&mut self, p: u64) {
        let Some(i) = p.checked_sub(self.first) else {
            return;
        };
        let Some(entry) = self.pages.get_mut(i as usize) else {
            return;
        };
        if entry.as_ref().is_some_and(|page| page.0.lock().live == 0) {
            *entry = None;
        }
        while matches!(self.pages.front(), Some(None)) {
            self.pages.pop_front();
            self.first += 1;
        }
        while matches!(self.pages.back(), Some(None)) {
            self.pages.pop_back();
        }
    }
}

impl<T> Slots<T> {
    /// An empty table for the session numbered `client`.
    pub(crate) fn new(client: u32) -> Self {
        Slots {
            prefix: u64::from(client) << SEQ_BITS,
            next: AtomicU64::new(0),
            dir: RwLock::new(Dir {
                first: 0,
                pages: VecDeque::new(),
            }),
            foreign: Mutex::new(HashMap::default()),
        }
    }

    /// Reserves `n` consecutive new ids of this session; returns the first.
    pub(crate) fn reserve(&self, n: u64) -> u64 {
        self.prefix | (self.next.fetch_add(n, Ordering::Relaxed) + 1)
    }

    /// The sequence number of one of this session's ids.
    fn own(&self, id: u64) -> Option<u64> {
        (id >> SEQ_BITS << SEQ_BITS == self.prefix).then_some(id & ((1 << SEQ_BITS) - 1))
    }

    /// Runs `f` on page `p`'s contents, making the page if `create`.
    fn on_page<R>(
        &self,
        p: u64,
        create: bool,
        f: impl FnOnce(&mut PageInner<T>) -> R,
    ) -> Option<R> {
        {
            let dir = self.dir.read();
            if let Some(page) = dir.page(p) {
                return Some(f(&mut page.0.lock()));
            }
        }
        if !create {
            return None;
        }
        let mut dir = self.dir.write();
        let page = dir.page_or_new(p);
        let out = f(&mut page.0.lock());
        Some(out)
    }

    /// Puts `value` in the slot of `id` (replacing what was there).
    pub(crate) fn insert(&self, id: u64, value: T) {
        match self.own(id) {
            Some(seq) => {
                let i = seq as usize % PAGE;
                self.on_page(seq >> PAGE_BITS, true, |pg| {
                    if pg.slots[i].replace(value).is_none() {
                        pg.live += 1;
                    }
                });
            }
            None => {
                self.foreign.lock().insert(id, value);
            }
        }
    }

    /// Runs `f` on the slot of `id`, if it holds something.
    pub(crate) fn with<R>(&self, id: u64, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        match self.own(id) {
            Some(seq) => {
                let i = seq as usize % PAGE;
                self.on_page(seq >> PAGE_BITS, false, |pg| pg.slots[i].as_mut().map(f))
                    .flatten()
            }
            None => self.foreign.lock().get_mut(&id).map(f),
        }
    }

    /// Runs `modify` on the slot of `id`, or fills it with `make()` if it is
    /// empty; returns whether it was empty.
    pub(crate) fn upsert(
        &self,
        id: u64,
        make: impl FnOnce() -> T,
        modify: impl FnOnce(&mut T),
    ) -> bool {
        let fill = |slot: &mut Option<T>| match slot {
            Some(v) => {
                modify(v);
                false
            }
            None => {
                *slot = Some(make());
                true
            }
        };
        match self.own(id) {
            Some(seq) => {
                let i = seq as usize % PAGE;
                self.on_page(seq >> PAGE_BITS, true, |pg| {
                    let new = fill(&mut pg.slots[i]);
                    pg.live += u32::from(new);
                    new
                })
                .unwrap_or(false)
            }
            None => {
                let mut map = self.foreign.lock();
                let mut slot = map.remove(&id);
                let new = fill(&mut slot);
                if let Some(v) = slot {
                    map.insert(id, v);
                }
                new
            }
        }
    }

    /// Empties the slot of `id` if `pred` says so; returns what it held.
    pub(crate) fn remove_if(&self, id: u64, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let Some(seq) = self.own(id) else {
            let mut map = self.foreign.lock();
            return match map.get(&id) {
                Some(v) if pred(v) => map.remove(&id),
                _ => None,
            };
        };
        let (p, i) = (seq >> PAGE_BITS, seq as usize % PAGE);
        let (taken, emptied) = self
            .on_page(p, false, |pg| match &pg.slots[i] {
                Some(v) if pred(v) => {
                    pg.live -= 1;
                    (pg.slots[i].take(), pg.live == 0)
                }
                _ => (None, false),
            })
            .unwrap_or((None, false));
        // A page is freed once empty and all its ids are handed out (so
        // a loop that makes and drops one ref at a time keeps its page).
        let handed_out = self.next.load(Ordering::Relaxed);
        if emptied && (p + 1) << PAGE_BITS <= handed_out + 1 {
            self.dir.write().free_if_empty(p);
        }
        taken
    }

    /// Runs `f` on every slot that holds something.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&mut T)) {
        {
            let dir = self.dir.read();
            for page in dir.pages.iter().flatten() {
                page.0.lock().slots.iter_mut().flatten().for_each(&mut f);
            }
        }
        self.foreign.lock().values_mut().for_each(f);
    }

    /// Pages held (for tests).
    #[cfg(test)]
    fn pages(&self) -> usize {
        self.dir.read().pages.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn own_and_foreign_ids() {
        let s: Slots<u32> = Slots::new(7);
        let a = s.reserve(1);
        assert_eq!(a, (7 << 40) | 1);
        let b = s.reserve(3);
        assert_eq!(b, (7 << 40) | 2);
        assert_eq!(s.reserve(1), (7 << 40) | 5);
        s.insert(a, 10);
        s.insert(b + 2, 12);
        let other = (9 << 40) | 1;
        s.insert(other, 99);
        assert_eq!(s.with(a, |v| *v), Some(10));
        assert_eq!(s.with(b, |v| *v), None);
        assert_eq!(s.with(b + 2, |v| *v), Some(12));
        assert_eq!(s.with(other, |v| *v), Some(99));
        assert!(!s.upsert(other, || 0, |v| *v += 1));
        assert_eq!(s.with(other, |v| *v), Some(100));
        assert!(s.upsert(b, || 5, |_| unreachable!()));
        assert_eq!(s.with(b, |v| *v), Some(5));
        assert_eq!(s.remove_if(other, |v| *v == 1), None);
        assert_eq!(s.remove_if(other, |v| *v == 100), Some(100));
        assert_eq!(s.with(other, |v| *v), None);
        let mut all = Vec::new();
        s.for_each(|v| all.push(*v));
        all.sort();
        assert_eq!(all, vec![5, 10, 12]);
    }

    #[test]
    fn pages_are_freed_once_empty_and_handed_out() {
        let s: Slots<u64> = Slots::new(1);
        let ids: Vec<u64> = (0..3 * PAGE).map(|_| s.reserve(1)).collect();
        for &id in &ids {
            s.insert(id, id);
        }
        assert_eq!(s.pages(), 4, "seq 1.. spans pages 0..=3");
        // Keep one ref of the first page: the pages after it go.
        for &id in &ids[1..] {
            assert_eq!(s.remove_if(id, |_| true), Some(id));
        }
        // The last page is not fully handed out yet: it stays.
        assert_eq!(s.pages(), 2);
        assert_eq!(s.with(ids[0], |v| *v), Some(ids[0]));
        s.remove_if(ids[0], |_| true);
        assert_eq!(s.pages(), 1);
        // A ref made and dropped one at a time reuses the current page.
        for _ in 0..10 {
            let id = s.reserve(1);
            s.insert(id, 1);
            s.remove_if(id, |_| true);
            assert_eq!(s.pages(), 1);
        }
        // An id handed out before its page was freed still finds a place.
        let late = ids[5];
        s.insert(late, 5);
        assert_eq!(s.with(late, |v| *v), Some(5));
        assert_eq!(s.remove_if(late, |_| true), Some(5));
    }

    #[test]
    fn threads_share_the_table() {
        let s: Arc<Slots<u64>> = Arc::new(Slots::new(3));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let ids: Vec<u64> = (0..20_000).map(|_| s.reserve(1)).collect();
                    for &id in &ids {
                        s.insert(id, 0);
                    }
                    for &id in &ids {
                        s.with(id, |v| *v += id);
                    }
                    for &id in ids.iter().step_by(2) {
                        assert_eq!(s.remove_if(id, |_| true), Some(id));
                    }
                    ids
                })
            })
            .collect();
        let mut kept = 0;
        for t in threads {
            for id in t.join().unwrap().into_iter().skip(1).step_by(2) {
                assert_eq!(s.with(id, |v| *v), Some(id));
                kept += 1;
            }
        }
        let mut n = 0;
        s.for_each(|_| n += 1);
        assert_eq!(n, kept);
    }
}
