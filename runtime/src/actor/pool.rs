//! A fixed set of actors that work is spread over, one call per actor at
//! a time (Ray's `ActorPool`).

use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::object_ref::ObjectRef;

/// Maps values over a set of actor handles.
pub struct ActorPool<H> {
    actors: Vec<H>,
}

impl<H> ActorPool<H> {
    /// A pool over these handles.
    pub fn new(actors: Vec<H>) -> Self {
        assert!(!actors.is_empty(), "an ActorPool needs at least one actor");
        ActorPool { actors }
    }

    /// The handles in the pool.
    pub fn actors(&self) -> &[H] {
        &self.actors
    }

    /// Calls `call(actor, value)` for every value, keeping each actor busy
    /// with one call at a time, and returns the results in input order.
    pub fn map<V, R, F>(&self, values: impl IntoIterator<Item = V>, call: F) -> Result<Vec<R>>
    where
        F: Fn(&H, V) -> ObjectRef<R>,
        R: DeserializeOwned,
    {
        let mut results: Vec<Option<R>> = Vec::new();
        self.run(values, call, |i, r| {
            if results.len() <= i {
                results.resize_with(i + 1, || None);
            }
            results[i] = Some(r);
        })?;
        Ok(results.into_iter().flatten().collect())
    }

    /// Like [`map`](Self::map), but yields `(index, result)` pairs in the
    /// order they finish.
    pub fn map_unordered<V, R, F>(
        &self,
        values: impl IntoIterator<Item = V>,
        call: F,
    ) -> Result<Vec<(usize, R)>>
    where
        F: Fn(&H, V) -> ObjectRef<R>,
        R: DeserializeOwned,
    {
        let mut out = Vec::new();
        self.run(values, call, |i, r| out.push((i, r)))?;
        Ok(out)
    }

    fn run<V, R, F>(
        &self,
        values: impl IntoIterator<Item = V>,
        call: F,
        mut sink: impl FnMut(usize, R),
    ) -> Result<()>
    where
        F: Fn(&H, V) -> ObjectRef<R>,
        R: DeserializeOwned,
    {
        let mut values = values.into_iter().enumerate();
        // In flight: (input index, actor index, ref).
        let mut busy: Vec<(usize, usize, ObjectRef<R>)> = Vec::new();
        let mut idle: Vec<usize> = (0..self.actors.len()).rev().collect();
        loop {
            while let Some(a) = idle.pop() {
                match values.next() {
                    Some((i, v)) => busy.push((i, a, call(&self.actors[a], v))),
                    None => {
                        idle.push(a);
                        break;
                    }
                }
            }
            if busy.is_empty() {
                return Ok(());
            }
            let refs: Vec<ObjectRef<R>> = busy.iter().map(|b| b.2.clone()).collect();
            let (ready, _) = crate::wait(&refs, 1, None)?;
            for r in ready {
                if let Some(pos) = busy.iter().position(|b| b.2 == r) {
                    let (i, a, r) = busy.swap_remove(pos);
                    sink(i, crate::get(&r)?);
                    idle.push(a);
                }
            }
        }
    }
}
