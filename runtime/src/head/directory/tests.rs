//! The submitter's subscription (`TaskSpec.subscribe`) and the dense
//! object and task tables, through the head's state as a session drives it.

use super::*;

const DRIVER: u32 = 1;

/// A head with one driver session (no nodes: tasks stay queued).
fn head() -> State {
    let mut st = State::new("head".into());
    st.add_job(7, Some(1), None, String::new(), 0);
    st.open_session(DRIVER, 7);
    st
}

fn task(seq: u64, subscribe: bool) -> proto::TaskSpec {
    proto::TaskSpec {
        task_id: u64::from(DRIVER) << 40 | seq,
        function: "m::f".into(),
        num_cpus: 1.0,
        subscribe,
        ..Default::default()
    }
}

fn value() -> Payload {
    Payload::Inline(vec![1u8, 2, 3].into())
}

/// Ids the head told `client` are ready, in order.
fn readies(st: &mut State, client: u32) -> Vec<u64> {
    st.take_outbox()
        .ops
        .into_iter()
        .filter(|(c, _)| *c == client)
        .filter_map(|(_, op)| match op.op {
            Some(Op::Ready(v)) => Some(v.object_id),
            _ => None,
        })
        .collect()
}

/// With the flag, the result goes to the submitter once, with or without a
/// `Subscribe` op as well.
#[test]
fn a_submit_with_subscribe_hears_of_its_result_once() {
    let mut st = head();
    let (a, b) = (task(1, true), task(2, true));
    let (ida, idb) = (a.task_id, b.task_id);
    st.submit(DRIVER, a);
    st.submit(DRIVER, b);
    // An older client's `Subscribe` after the flag: no second copy.
    st.subscribe(DRIVER, idb);
    assert!(readies(&mut st, DRIVER).is_empty(), "nothing is finished");
    st.complete(ida, value(), Vec::new());
    st.complete(idb, value(), Vec::new());
    assert_eq!(readies(&mut st, DRIVER), vec![ida, idb]);
    // The results stay while the driver holds them, and go on release.
    assert_eq!(st.objects.len(), 2);
    st.release(DRIVER, ida);
    st.release(DRIVER, idb);
    assert_eq!(st.objects.len(), 0);
    assert_eq!(st.tasks.len(), 0);
}

/// Without the flag (sessions that send `Subscribe`, as before protocol
/// 2): no result unless subscribed, and one per `Subscribe`.
#[test]
fn without_the_flag_only_a_subscribe_sends_the_result() {
    let mut st = head();
    let (a, b) = (task(1, false), task(2, false));
    let (ida, idb) = (a.task_id, b.task_id);
    st.submit(DRIVER, a);
    st.submit(DRIVER, b);
    st.subscribe(DRIVER, idb);
    st.complete(ida, value(), Vec::new());
    st.complete(idb, value(), Vec::new());
    assert_eq!(readies(&mut st, DRIVER), vec![idb]);
    // A subscribe after the end is answered at once.
    st.subscribe(DRIVER, ida);
    assert_eq!(readies(&mut st, DRIVER), vec![ida]);
}

/// A submitter that released the result before it finished is not sent
/// it, and the object is freed when the task ends.
#[test]
fn a_released_result_is_not_sent() {
    let mut st = head();
    let a = task(1, true);
    let id = a.task_id;
    st.submit(DRIVER, a);
    st.release(DRIVER, id);
    assert_eq!(st.objects.len(), 1, "its task still makes it");
    st.complete(id, value(), Vec::new());
    assert!(readies(&mut st, DRIVER).is_empty());
    assert_eq!(st.objects.len(), 0);
}

/// Thousands of tasks of one session live in pages (none hashed), and the
/// pages go once the tasks are done and the session has closed.
#[test]
fn a_sessions_tasks_live_in_pages_until_it_closes() {
    let mut st = head();
    let n = 5000;
    for seq in 1..=n {
        st.submit(DRIVER, task(seq, true));
    }
    assert_eq!(st.tasks.len(), n as usize);
    assert_eq!(st.objects.len(), n as usize);
    assert_eq!(st.objects.pages(), 5, "5,000 ids in pages of 1,024");
    assert_eq!(st.tasks.pages(), 5);
    for seq in 1..=n {
        let id = u64::from(DRIVER) << 40 | seq;
        st.complete(id, value(), Vec::new());
    }
    assert_eq!(readies(&mut st, DRIVER).len(), n as usize);
    assert_eq!(st.tasks.len(), 0);
    assert_eq!(st.tasks.pages(), 1, "the session's last page stays");
    st.close_session(DRIVER);
    assert_eq!(
        st.objects.len(),
        0,
        "the closed session's results are freed"
    );
    assert_eq!(st.objects.pages(), 0);
    assert_eq!(st.tasks.pages(), 0);
}

fn put(st: &mut State, client: u32, id: u64) {
    st.put(
        client,
        proto::Put {
            value: Some(proto::ObjectValue {
                object_id: id,
                payload: Some(value()),
            }),
            nested_refs: Vec::new(),
        },
    );
}

/// Closing a session frees what it made, found in its own pages and in
/// its note of objects made elsewhere (ids of another session's run, ids
/// far from its own), and lets go of what it held; another session's
/// objects stay as they were.
#[test]
fn closing_a_session_frees_only_what_it_made_and_held() {
    const OTHER: u32 = 2;
    let mut st = head();
    st.open_session(OTHER, 7);
    let mine = |seq: u64| u64::from(DRIVER) << 40 | seq;
    let theirs = |seq: u64| u64::from(OTHER) << 40 | seq;
    for seq in 1..=3000 {
        put(&mut st, DRIVER, mine(seq));
    }
    for seq in 1..=5 {
        put(&mut st, OTHER, theirs(seq));
    }
    // Made by OTHER with ids that are not in its pages: one in the
    // driver's run (as a generator's item is named by the worker running
    // it), one far beyond its own run (hashed).
    put(&mut st, OTHER, mine(3001));
    put(&mut st, OTHER, theirs(1 << 30));
    assert!(st.objects.in_pages_of(mine(3001), DRIVER));
    assert!(!st.objects.in_pages_of(theirs(1 << 30), OTHER));
    assert!(st.objects.in_pages_of(theirs(1), OTHER));
    assert_eq!(st.sessions[&OTHER].elsewhere.len(), 2);
    // Released before the end: no longer noted.
    put(&mut st, OTHER, theirs(1 << 31));
    st.release(OTHER, theirs(1 << 31));
    assert_eq!(st.sessions[&OTHER].elsewhere.len(), 2);
    // It also holds two of the driver's.
    st.acquire(OTHER, mine(1));
    st.acquire(OTHER, mine(2));
    assert_eq!(st.objects.len(), 3000 + 7);
    st.close_session(OTHER);
    assert_eq!(st.objects.len(), 3000, "OTHER's 7 objects are freed");
    for seq in 1..=3000 {
        let o = st.objects.get(&mine(seq)).expect("the driver's object");
        assert_eq!(o.creator, DRIVER);
        assert_eq!(o.holders, 1, "only the driver holds {seq}");
    }
    assert!(st.objects.get(&mine(3001)).is_none());
    st.close_session(DRIVER);
    assert_eq!(st.objects.len(), 0);
    assert_eq!(st.objects.pages(), 0);
}
