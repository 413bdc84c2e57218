//! Work belongs to the execution that started it: the one table every capability keeps its
//! work in (processes, requests, Jobs), keyed by handle.
//!
//! The rules, kept here once: only the owner sees its work — another execution's handle reads
//! as no handle at all, so a plugin cannot inspect or stop what it did not start; and when an
//! execution ends (or is handed over) all of its work leaves the table at once, for the
//! capability to stop (kill, abort, delete) or let go of.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// A capability's work, by handle, each piece with its owner (an execution id).
pub struct Owned<W> {
    table: Mutex<HashMap<String, Entry<W>>>,
}

struct Entry<W> {
    owner: String,
    work: W,
}

impl<W> Default for Owned<W> {
    fn default() -> Self {
        Self { table: Mutex::new(HashMap::new()) }
    }
}

impl<W> Owned<W> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry<W>>> {
        self.table.lock().expect("owned work lock")
    }

    /// Starts tracking `work` of `owner` under `handle` (replacing what was there).
    pub fn insert(&self, handle: impl Into<String>, owner: &str, work: W) {
        self.lock().insert(handle.into(), Entry { owner: owner.to_string(), work });
    }

    /// `f` on the work of `handle`, if `owner` owns it.
    pub fn with<R>(&self, owner: &str, handle: &str, f: impl FnOnce(&mut W) -> R) -> Option<R> {
        self.lock().get_mut(handle).filter(|e| e.owner == owner).map(|e| f(&mut e.work))
    }

    /// `f` on the work of `handle` and its owner, whoever that is: for the capability's own
    /// bookkeeping (a watch event about a Job), never on behalf of a plugin.
    pub fn with_any<R>(&self, handle: &str, f: impl FnOnce(&str, &mut W) -> R) -> Option<R> {
        self.lock().get_mut(handle).map(|e| f(&e.owner, &mut e.work))
    }

    /// Removes the work of `handle` when `owner` owns it and `ready` says so.
    pub fn take_if(&self, owner: &str, handle: &str, ready: impl FnOnce(&W) -> bool) -> Option<W> {
        let mut table = self.lock();
        let take = table.get(handle).is_some_and(|e| e.owner == owner && ready(&e.work));
        take.then(|| table.remove(handle).expect("present").work)
    }

    /// Removes all of `owner`'s work and hands it back, for the caller to stop or let go of.
    pub fn release(&self, owner: &str) -> Vec<(String, W)> {
        let mut table = self.lock();
        let handles: Vec<String> = table.iter().filter(|(_, e)| e.owner == owner).map(|(h, _)| h.clone()).collect();
        handles
            .into_iter()
            .map(|h| {
                let work = table.remove(&h).expect("present").work;
                (h, work)
            })
            .collect()
    }

    /// `f` of each piece of `owner`'s work.
    pub fn owned_by<R>(&self, owner: &str, mut f: impl FnMut(&W) -> R) -> Vec<R> {
        self.lock().values().filter(|e| e.owner == owner).map(|e| f(&e.work)).collect()
    }

    /// `f` on every piece of work, with its handle and owner.
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, &mut W)) {
        for (handle, e) in self.lock().iter_mut() {
            f(handle, &e.owner, &mut e.work);
        }
    }

    /// Whether anyone's work is under `handle`.
    pub fn contains(&self, handle: &str) -> bool {
        self.lock().contains_key(handle)
    }

    /// Whether `owner` has work here.
    pub fn owns_any(&self, owner: &str) -> bool {
        self.lock().values().any(|e| e.owner == owner)
    }

    /// Pieces of work tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_sees_its_work() {
        let owned = Owned::default();
        owned.insert("h1", "a", 1);
        owned.insert("h2", "b", 2);
        assert_eq!(owned.with("a", "h1", |w| *w), Some(1));
        assert_eq!(owned.with("b", "h1", |w| *w), None, "another execution's handle is no handle");
        assert_eq!(owned.with("a", "nope", |w| *w), None);
        assert_eq!(owned.take_if("b", "h1", |_| true), None);
        assert_eq!(owned.with_any("h1", |owner, w| (owner.to_string(), *w)), Some(("a".into(), 1)));
        assert!(owned.owns_any("a") && !owned.owns_any("c"));
        assert_eq!(owned.owned_by("b", |w| *w), vec![2]);
    }

    #[test]
    fn work_is_taken_when_ready_and_released_with_its_execution() {
        let owned = Owned::default();
        owned.insert("h1", "a", 1);
        owned.insert("h2", "a", 2);
        owned.insert("h3", "b", 3);
        assert_eq!(owned.take_if("a", "h1", |w| *w > 5), None, "not ready: kept");
        assert_eq!(owned.len(), 3);
        assert_eq!(owned.take_if("a", "h1", |w| *w == 1), Some(1));
        owned.with("a", "h2", |w| *w = 20);
        let mut released = owned.release("a");
        released.sort();
        assert_eq!(released, vec![("h2".to_string(), 20)]);
        assert!(!owned.owns_any("a"));
        assert_eq!(owned.release("a"), vec![], "released once");
        assert!(owned.contains("h3") && owned.len() == 1);
        let mut seen = Vec::new();
        owned.for_each(|h, o, w| seen.push((h.to_string(), o.to_string(), *w)));
        assert_eq!(seen, vec![("h3".to_string(), "b".to_string(), 3)]);
    }
}
