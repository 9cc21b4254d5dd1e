//! Keeping the node's shared-memory store under its capacity: the head
//! counts the bytes of stored objects and, past the capacity, has the least
//! recently used ones moved to disk by a background thread. Nothing is
//! dropped: a failed spill leaves the object where it was.

use std::sync::mpsc;
use std::sync::{Arc, Weak};

use crate::node::object_store::ObjectStore;
use crate::proto::object_value::Payload;

use super::state::{ObjState, State};
use super::Head;

/// Spilling stops once usage is back under this share of the capacity.
const LOW_WATER: f64 = 0.8;

impl State {
    /// An object's value was just stored on this node.
    pub(super) fn stored(&mut self, id: u64) {
        let size = match self.objects.get(&id).map(|o| &o.state) {
            // Only the head's own node is accounted and spilled here.
            Some(ObjState::Done(Payload::Stored(loc))) if loc.node == self.local_node => loc.size,
            _ => return,
        };
        self.store_used += size;
        self.touch(id);
        if self.store_used > self.store_capacity {
            self.pick_spills();
        }
    }

    /// A stored object was freed; false if it was spilled already.
    pub(super) fn unstored(&mut self, size: u64, spilled: bool) {
        if !spilled {
            self.store_used = self.store_used.saturating_sub(size);
        }
    }

    pub(super) fn touch(&mut self, id: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(o) = self.objects.get_mut(&id) {
            o.last_used = tick;
        }
    }

    fn pick_spills(&mut self) {
        let target = (self.store_capacity as f64 * LOW_WATER) as u64;
        let mut candidates: Vec<(u64, u64, u64, String)> = self
            .objects
            .iter()
            .filter(|(_, o)| !o.spilled)
            .filter_map(|(id, o)| match &o.state {
                ObjState::Done(Payload::Stored(loc)) if loc.node == self.local_node => {
                    Some((o.last_used, *id, loc.size, loc.path.clone()))
                }
                _ => None,
            })
            .collect();
        candidates.sort_unstable();
        for (_, id, size, path) in candidates {
            if self.store_used <= target {
                break;
            }
            self.store_used = self.store_used.saturating_sub(size);
            if let Some(o) = self.objects.get_mut(&id) {
                o.spilled = true;
            }
            self.out.spill.push((id, path));
        }
    }

    /// The spiller finished with `id`: its file is at `path` now, or (on
    /// failure) still where it was.
    pub(super) fn spill_done(&mut self, id: u64, result: Result<String, String>) {
        let Some(o) = self.objects.get_mut(&id) else {
            // Freed meanwhile: the spilled copy is garbage.
            if let Ok(path) = result {
                ObjectStore::delete(&path);
            }
            return;
        };
        match (result, &mut o.state) {
            (Ok(path), ObjState::Done(Payload::Stored(loc))) => loc.path = path,
            (Err(e), ObjState::Done(Payload::Stored(loc))) => {
                tracing::error!("cannot spill object {id:016x}; it stays in memory: {e}");
                o.spilled = false;
                self.store_used += loc.size;
            }
            _ => {}
        }
    }
}

/// Starts the thread that moves files to disk for `head`.
pub(super) fn start_spiller(head: Weak<Head>, store: ObjectStore) -> mpsc::Sender<(u64, String)> {
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    std::thread::Builder::new()
        .name("fleet-spiller".into())
        .spawn(move || {
            while let Ok((id, path)) = rx.recv() {
                let result = store.spill(&path).map_err(|e| e.to_string());
                let Some(head) = head.upgrade() else { break };
                spilled(&head, id, result);
            }
        })
        .expect("starting the spiller thread");
    tx
}

fn spilled(head: &Arc<Head>, id: u64, result: Result<String, String>) {
    let out = {
        let mut st = head.state.lock();
        st.spill_done(id, result);
        st.take_outbox()
    };
    head.flush(out);
}
