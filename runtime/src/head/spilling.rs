//! Keeping each node's shared-memory store under its capacity: the head
//! counts the bytes of stored objects per node and, past the capacity, has
//! the least recently used ones moved to disk, by a background thread for
//! its own node and by the node agent for the others. Nothing is dropped:
//! a failed spill leaves the object where it was.

use std::sync::mpsc;
use std::sync::{Arc, Weak};

use crate::node::object_store::ObjectStore;
use crate::proto::object_value::Payload;

use super::state::{ObjState, State};
use super::Head;

/// Spilling stops once usage is back under this share of the capacity.
const LOW_WATER: f64 = 0.8;

impl State {
    /// An object's value was just stored on its node.
    pub(super) fn stored(&mut self, id: u64) {
        let (node, size) = match self.objects.get(&id).map(|o| &o.state) {
            Some(ObjState::Done(Payload::Stored(loc))) => (loc.node.clone(), loc.size),
            _ => return,
        };
        self.touch(id);
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        n.store_used += size;
        if n.store_used > n.info.store_capacity {
            self.pick_spills(&node);
        }
    }

    /// A stored object was freed; nothing to count if it was spilled.
    pub(super) fn unstored(&mut self, node: &str, size: u64, spilled: bool) {
        if let (false, Some(n)) = (spilled, self.nodes.get_mut(node)) {
            n.store_used = n.store_used.saturating_sub(size);
        }
    }

    pub(super) fn touch(&mut self, id: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(o) = self.objects.get_mut(&id) {
            o.last_used = tick;
        }
    }

    fn pick_spills(&mut self, node: &str) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let target = (n.info.store_capacity as f64 * LOW_WATER) as u64;
        let mut used = n.store_used;
        let mut candidates: Vec<(u64, u64, u64, String)> = self
            .objects
            .iter()
            .filter(|(_, o)| !o.spilled)
            .filter_map(|(id, o)| match &o.state {
                ObjState::Done(Payload::Stored(loc)) if loc.node == node => {
                    Some((o.last_used, id, loc.size, loc.path.clone()))
                }
                _ => None,
            })
            .collect();
        candidates.sort_unstable();
        for (_, id, size, path) in candidates {
            if used <= target {
                break;
            }
            used = used.saturating_sub(size);
            if let Some(o) = self.objects.get_mut(&id) {
                o.spilled = true;
            }
            self.out.spill.push((node.to_string(), id, path));
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.store_used = used;
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
                let (node, size) = (loc.node.clone(), loc.size);
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.store_used += size;
                }
            }
            _ => {}
        }
    }
}

/// Slow file work the head hands off, so its event loop never waits on
/// the kernel copying or freeing hundreds of MiB.
pub(super) enum FileWork {
    /// Move an object's file to disk.
    Spill(u64, String),
    /// Delete freed objects' files.
    Delete(Vec<String>),
}

/// Starts the thread that spills and deletes store files for `head`.
pub(super) fn start_spiller(head: Weak<Head>, store: ObjectStore) -> mpsc::Sender<FileWork> {
    let (tx, rx) = mpsc::channel::<FileWork>();
    std::thread::Builder::new()
        .name("fleet-store-files".into())
        .spawn(move || {
            while let Ok(work) = rx.recv() {
                match work {
                    FileWork::Delete(paths) => paths.iter().for_each(|p| store.discard(p)),
                    FileWork::Spill(id, path) => {
                        let result = store.spill(&path).map_err(|e| e.to_string());
                        let Some(head) = head.upgrade() else { break };
                        spilled(&head, id, result);
                    }
                }
            }
        })
        .expect("starting the store file thread");
    tx
}

pub(super) fn spilled(head: &Arc<Head>, id: u64, result: Result<String, String>) {
    let out = {
        let mut st = head.state.lock();
        st.spill_done(id, result);
        st.take_outbox()
    };
    head.flush(out);
}
