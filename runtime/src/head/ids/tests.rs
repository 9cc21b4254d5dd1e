use super::*;

fn id(session: u64, seq: u64) -> u64 {
    session << SEQ_BITS | seq
}

/// A session's ids go to pages, behave as a map, and pages it has moved
/// past are freed once empty.
#[test]
fn dense_ids_live_in_pages_freed_as_the_session_moves_on() {
    let mut t: IdTable<u64> = IdTable::default();
    t.open_prefix(1);
    let n = 3 * PAGE as u64;
    for s in 1..=n {
        assert_eq!(t.insert(id(1, s), s), None);
    }
    assert_eq!(t.len(), n as usize);
    assert_eq!(t.hashed(), 0);
    assert_eq!(t.pages(), 4, "seq 1..=3072 spans pages 0..=3");
    assert_eq!(t.get(&id(1, 5)), Some(&5));
    assert_eq!(t.get(&id(2, 5)), None);
    assert_eq!(t.get(&id(1, n + 1)), None);
    assert_eq!(t.insert(id(1, 5), 50), Some(5));
    *t.get_mut(&id(1, 5)).unwrap() += 1;
    assert_eq!(t.get(&id(1, 5)), Some(&51));
    assert_eq!(t.len(), n as usize);
    // Finish the first two pages' worth out of order.
    for s in (1..2 * PAGE as u64).rev() {
        assert!(t.remove(&id(1, s)).is_some());
    }
    assert_eq!(t.remove(&id(1, 1)), None);
    assert_eq!(t.pages(), 2, "pages 0 and 1 are empty and behind the top");
    assert_eq!(t.len(), n as usize - (2 * PAGE - 1));
    // The rest, including the last page: it stays while the session is open.
    for s in 2 * PAGE as u64..=n {
        assert_eq!(t.remove(&id(1, s)), Some(s));
    }
    assert_eq!(t.len(), 0);
    assert_eq!(t.pages(), 1);
    t.close_prefix(1);
    assert_eq!(t.pages(), 0);
    assert!(t.runs.is_empty());
}

/// A loop of one id at a time reuses its page instead of making one per id.
#[test]
fn one_at_a_time_keeps_one_page() {
    let mut t: IdTable<u64> = IdTable::default();
    t.open_prefix(3);
    for s in 1..=500 {
        t.insert(id(3, s), s);
        assert_eq!(t.pages(), 1);
        assert_eq!(t.remove(&id(3, s)), Some(s));
        assert_eq!(t.pages(), 1);
    }
    assert_eq!(t.len(), 0);
}

/// Ids far from a session's run, or of no open session, go to the hash map and are
/// found, replaced and removed like the others; none allocates pages.
#[test]
fn far_and_made_up_ids_are_hashed() {
    let mut t: IdTable<&str> = IdTable::default();
    t.open_prefix(1);
    t.insert(id(1, 1), "a");
    let far = id(1, (MAX_GAP + 5) * PAGE as u64);
    let before = id(1, 0);
    t.insert(far, "far");
    t.insert(u64::MAX, "max");
    t.insert(0, "zero");
    assert_eq!(t.hashed(), 3, "far, and two ids of sessions never opened");
    assert_eq!(t.pages(), 1);
    assert_eq!(t.get(&far), Some(&"far"));
    assert_eq!(t.insert(far, "far2"), Some("far"));
    assert_eq!(t.get(&u64::MAX), Some(&"max"));
    assert_eq!(t.get(&0), Some(&"zero"));
    assert_eq!(t.get(&before), None);
    assert_eq!(t.len(), 4);
    let mut all: Vec<(u64, &str)> = t.iter().map(|(k, v)| (k, *v)).collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            (0, "zero"),
            (id(1, 1), "a"),
            (far, "far2"),
            (u64::MAX, "max")
        ]
    );
    for (_, v) in t.iter_mut() {
        *v = "x";
    }
    assert!(t.values().all(|v| *v == "x"));
    assert_eq!(t.remove(&far), Some("x"));
    assert_eq!(t.remove(&u64::MAX), Some("x"));
    assert_eq!(t.remove(&far), None);
    assert_eq!(t.hashed(), 1);
    assert_eq!(t.len(), 2);
}

/// An id once hashed stays one entry when the run later grows over it.
#[test]
fn an_id_is_never_in_both_places() {
    let mut t: IdTable<u32> = IdTable::default();
    t.open_prefix(1);
    t.insert(id(1, 1), 1);
    let later = id(1, (MAX_GAP + 2) * PAGE as u64);
    t.insert(later, 7);
    assert_eq!(t.hashed(), 1);
    // The session's run reaches that page one step at a time.
    for p in 1..=MAX_GAP + 2 {
        t.insert(id(1, p * PAGE as u64 + 1), 0);
    }
    assert_eq!(t.insert(later, 8), Some(7));
    assert_eq!(t.hashed(), 1);
    assert_eq!(t.get(&later), Some(&8));
    assert_eq!(t.remove(&later), Some(8));
    assert_eq!(t.get(&later), None);
    assert_eq!(t.len(), 1 + MAX_GAP as usize + 2);
}

/// Ids re-inserted behind the run (a task rebuilt from lineage) come back
/// into pages in front; a closed session's pages go as they empty.
#[test]
fn ids_behind_the_run_and_closed_sessions() {
    let mut t: IdTable<u64> = IdTable::default();
    t.open_prefix(2);
    for s in 1..=4 * PAGE as u64 {
        t.insert(id(2, s), s);
    }
    for s in 1..=4 * PAGE as u64 - 1 {
        t.remove(&id(2, s));
    }
    assert_eq!(t.pages(), 1);
    t.insert(id(2, 7), 7);
    assert_eq!(t.hashed(), 0);
    assert_eq!(t.pages(), 2);
    t.close_prefix(2);
    assert_eq!(t.pages(), 2);
    t.remove(&id(2, 4 * PAGE as u64));
    assert_eq!(t.pages(), 1);
    t.remove(&id(2, 7));
    assert_eq!(t.pages(), 0);
    assert!(t.runs.is_empty());
    assert_eq!(t.len(), 0);
}

/// A session's own entries are found without looking at others': those
/// in its pages, not those hashed, nor another session's.
#[test]
fn a_prefix_yields_only_the_entries_in_its_pages() {
    let mut t: IdTable<u64> = IdTable::default();
    t.open_prefix(1);
    t.open_prefix(2);
    for s in 1..=2 * PAGE as u64 {
        t.insert(id(1, s), s);
    }
    for s in 1..=10 {
        t.insert(id(2, s), 100 + s);
    }
    // Far beyond session 2's run: hashed.
    t.insert(id(2, 1 << 30), 7);
    assert!(t.in_pages_of(id(2, 3), 2));
    assert!(!t.in_pages_of(id(2, 3), 1));
    assert!(!t.in_pages_of(id(2, 1 << 30), 2));
    assert!(!t.in_pages_of(id(2, 11), 2), "no entry there");
    let mut seen: Vec<(u64, u64)> = t.iter_prefix_mut(2).map(|(k, v)| (k, *v)).collect();
    seen.sort_unstable();
    let expected: Vec<(u64, u64)> = (1..=10).map(|s| (id(2, s), 100 + s)).collect();
    assert_eq!(seen, expected);
    for (_, v) in t.iter_prefix_mut(2) {
        *v += 1;
    }
    assert_eq!(t.get(&id(2, 4)), Some(&105));
    assert_eq!(t.get(&id(1, 4)), Some(&4), "session 1 untouched");
    assert_eq!(t.iter_prefix_mut(3).count(), 0, "no such session");
}
