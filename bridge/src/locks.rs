//! Per-object operation locks: operations on one object run one at a time,
//! in the order they took their place in the object's queue (first come,
//! first served); operations on different objects run concurrently.
//!
//! Taking a place ([`LockTable::enqueue`]) does not block, so a caller that
//! receives requests in order (the agent's consumer) takes their places in
//! that order and only then hands them to threads, whose scheduling can no
//! longer reorder them.

use std::collections::{HashMap, VecDeque};
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
    /// Places in line, oldest first; the first one holds the lock or may take it.
    line: VecDeque<u64>,
    next: u64,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    turn: Condvar,
}

/// Locks a short mutex, going on past a panic of an earlier holder (every
/// mutex of the bridge guards data that stays consistent between statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request's place in the line of the object it changes, taken with
/// [`Bridge::take_turn`](crate::Bridge::take_turn). Operations on one object
/// run in the order their turns were taken; dropping a turn unused leaves
/// the line.
pub struct Turn(pub(crate) Ticket);

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Turn").field(&self.0.key()).finish()
    }
}

#[derive(Default)]
struct Shared {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    hook: Option<LockHook>,
}

/// The table of object locks, keyed by `class:id`.
#[derive(Default)]
pub(crate) struct LockTable {
    shared: Arc<Shared>,
}

/// A place in one object's line. Dropping it (waited for or not) leaves the
/// line.
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    key: String,
    slot: Arc<Slot>,
    id: u64,
}

/// Holds one object's lock until dropped.
pub(crate) struct ObjectGuard {
    ticket: Ticket,
}

impl LockTable {
    pub(crate) fn new(hook: Option<LockHook>) -> Self {
        Self {
            shared: Arc::new(Shared {
                slots: Mutex::default(),
                hook,
            }),
        }
    }

    /// Operations in line for the lock of `key`, the holder included.
    pub(crate) fn depth(&self, key: &str) -> usize {
        let slots = lock(&self.shared.slots);
        slots.get(key).map_or(0, |s| lock(&s.state).line.len())
    }

    /// Takes the next place in the line of `key`, without blocking.
    pub(crate) fn enqueue(&self, key: &str) -> Ticket {
        let slot = Arc::clone(lock(&self.shared.slots).entry(key.to_owned()).or_default());
        let id = {
            let mut st = lock(&slot.state);
            let id = st.next;
            st.next += 1;
            st.line.push_back(id);
            id
        };
        Ticket {
            shared: self.shared.clone(),
            key: key.to_owned(),
            slot,
            id,
        }
    }

    /// Blocks until the lock of `key` is free for a newcomer, then takes it.
    #[cfg(test)]
    pub(crate) fn acquire(&self, key: &str) -> ObjectGuard {
        self.enqueue(key).wait()
    }
}

impl Ticket {
    /// The key of the object this place is for.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Blocks until every earlier place in line has left, then holds the lock.
    pub(crate) fn wait(self) -> ObjectGuard {
        {
            let mut st = lock(&self.slot.state);
            while st.line.front() != Some(&self.id) {
                st = self
                    .slot
                    .turn
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        if let Some(h) = &self.shared.hook {
            h(LockEvent::Acquired(&self.key));
        }
        ObjectGuard { ticket: self }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut slots = lock(&self.shared.slots);
        let empty = {
            let mut st = lock(&self.slot.state);
            let first = st.line.front() == Some(&self.id);
            st.line.retain(|&i| i != self.id);
            if first {
                self.slot.turn.notify_all();
            }
            st.line.is_empty()
        };
        // Forget idle slots so the table does not grow with every object
        // ever touched (the map and this ticket hold the only references).
        if empty && Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.key);
        }
    }
}

impl Drop for ObjectGuard {
    fn drop(&mut self) {
        if let Some(h) = &self.ticket.shared.hook {
            h(LockEvent::Released(&self.ticket.key));
        }
        // The ticket leaves the line right after, waking the next in line.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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
        assert!(lock(&table.shared.slots).is_empty());
    }

    /// Places taken in order are served in that order, however the threads
    /// that wait on them are scheduled (here: started in reverse, with the
    /// lock held meanwhile).
    #[test]
    fn places_are_served_in_the_order_they_were_taken() {
        let table = LockTable::new(None);
        let holder = table.acquire("vm:a");
        let tickets: Vec<Ticket> = (0..8).map(|_| table.enqueue("vm:a")).collect();
        assert_eq!(table.depth("vm:a"), 9);
        let order = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = tickets
            .into_iter()
            .enumerate()
            .rev()
            .map(|(i, t)| {
                let order = order.clone();
                let th = std::thread::spawn(move || {
                    let _g = t.wait();
                    lock(&order).push(i);
                });
                std::thread::sleep(Duration::from_millis(5));
                th
            })
            .collect();
        drop(holder);
        for t in threads {
            t.join().expect("join");
        }
        assert_eq!(*lock(&order), (0..8).collect::<Vec<_>>());
    }

    /// A place given up before its turn (the command was refused, its
    /// caller went away) does not hold up those behind it.
    #[test]
    fn a_place_left_before_its_turn_does_not_block_the_line() {
        let table = LockTable::new(None);
        let holder = table.acquire("vm:a");
        let skipped = table.enqueue("vm:a");
        let next = table.enqueue("vm:a");
        drop(skipped);
        let waiter = std::thread::spawn(move || drop(next.wait()));
        drop(holder);
        waiter.join().expect("the next in line got the lock");
        assert_eq!(table.depth("vm:a"), 0);
    }
}
