//! A head's state with one node, a job and its workers, for the unit
//! tests of the scheduler: what every such test sets up before the part
//! it looks at.

use super::state::State;
use crate::proto;

/// The job every session of [`one_node`] belongs to.
pub(super) const JOB: u32 = 7;

/// A head with one node `n1` of `cpus` CPUs and job [`JOB`], with a
/// driver session `driver` if given.
pub(super) fn one_node(cpus: f64, driver: Option<u32>) -> State {
    let mut st = State::new("head".into());
    st.add_node(
        "n1".into(),
        None,
        proto::NodeInfo {
            address: "n1".into(),
            num_cpus: cpus,
            ..Default::default()
        },
    );
    st.add_job(JOB, driver, None, String::new(), 0);
    if let Some(d) = driver {
        st.open_session(d, JOB);
    }
    st
}

/// A worker of [`JOB`] on `n1` connects as session `session`;
/// `direct_address` empty: it serves no direct stream.
pub(super) fn connect_worker(st: &mut State, session: u32, worker_id: u64, direct_address: &str) {
    st.open_session(session, JOB);
    st.worker_connected(
        session,
        &proto::Hello {
            node: "n1".into(),
            job: JOB,
            worker_id,
            direct_address: direct_address.into(),
            ..Default::default()
        },
    );
}
