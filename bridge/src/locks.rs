//! Per-object operation locks: operations on one object run one at a time,
//! in arrival order as far as the OS scheduler allows; operations on
//! different objects run concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// What the lock hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEvent<'a> {
    /// The operation now holds the object's lock.
    Acquired(&'a str),
    /// The operation is about to release it.
    Released(&'a str),
}

/// Observer of lock transitions, for tests and tracing.
pub type LockHook = Arc<dyn Fn(LockEvent<'_>) + Send + Sync>;

#[derive(Default)]
struct SlotState {
    held: bool,
    waiting: usize,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    freed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The table of object locks, keyed by `class:id`.
#[derive(Default)]
pub(crate) struct LockTable {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    hook: Option<LockHook>,
}

/// Holds one object's lock until dropped.
pub(crate) struct ObjectGuard<'t> {
    table: &'t LockTable,
    key: String,
    slot: Arc<Slot>,
}

impl LockTable {
    pub(crate) fn new(hook: Option<LockHook>) -> Self {
        Self {
            slots: Mutex::default(),
            hook,
        }
    }

    /// Operations waiting for or holding the lock of `key`.
    pub(crate) fn depth(&self, key: &str) -> usize {
        let slots = lock(&self.slots);
        slots.get(key).map_or(0, |s| {
            let st = lock(&s.state);
            st.waiting + usize::from(st.held)
        })
    }

    /// Blocks until the lock of `key` is free, then takes it.
    pub(crate) fn acquire(&self, key: &str) -> ObjectGuard<'_> {
        let slot = Arc::clone(lock(&self.slots).entry(key.to_owned()).or_default());
        {
            let mut st = lock(&slot.state);
            st.waiting += 1;
            while st.held {
                st = slot.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.waiting -= 1;
            st.held = true;
        }
        if let Some(h) = &self.hook {
            h(LockEvent::Acquired(key));
        }
        ObjectGuard {
            table: self,
            key: key.to_owned(),
            slot,
        }
    }
}

impl Drop for ObjectGuard<'_> {
    fn drop(&mut self) {
        if let Some(h) = &self.table.hook {
            h(LockEvent::Released(&self.key));
        }
        let mut slots = lock(&self.table.slots);
        let idle = {
            let mut st = lock(&self.slot.state);
            st.held = false;
            self.slot.freed.notify_one();
            st.waiting == 0
        };
        // Forget idle slots so the table does not grow with every object ever touched.
        if idle && Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_key_is_exclusive_and_idle_slots_are_forgotten() {
        let table = Arc::new(LockTable::new(None));
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (table, inside, max) = (table.clone(), inside.clone(), max.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _g = table.acquire("vm:a");
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);
        assert_eq!(table.depth("vm:a"), 0);
        assert!(lock(&table.slots).is_empty());
    }
}
