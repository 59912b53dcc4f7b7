//! Per-object operation locks: operations on one object run one at a time,
//! in the order they took their place in the object's queue (first come,
//! first served); operations on different objects run concurrently.
//!
//! Taking a place ([`LockTable::enqueue`]) does not block, so a caller that
//! receives requests in order (the agent's consumer) takes their places in
//! that order and only then hands them to threads, whose scheduling can no
//! longer reorder them.
//!
//! A command on several objects (`volume.clone`: its source and its new
//! name) takes a place in each of their lines at once, under the table's
//! one mutex, and waits for them in key order. Every line is then ordered
//! by the same sequence, the order places were taken in: a command only
//! ever waits for commands that took their places before it, so no two can
//! wait for each other.

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

/// A request's places in the lines of the objects it changes, taken with
/// [`Bridge::take_turn`](crate::Bridge::take_turn). Operations on one object
/// run in the order their turns were taken; dropping a turn unused leaves
/// the lines.
pub struct Turn(pub(crate) Vec<Ticket>);

impl Turn {
    /// Whether this turn holds places in exactly the lines `keys` (sorted).
    pub(crate) fn is_for(&self, keys: &[String]) -> bool {
        self.0.len() == keys.len() && self.0.iter().zip(keys).all(|(t, k)| t.key() == k)
    }

    /// Blocks until this turn has come in every line, then holds them all;
    /// they are released together when the guards drop.
    pub(crate) fn wait(self) -> Vec<ObjectGuard> {
        self.0.into_iter().map(Ticket::wait).collect()
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(Ticket::key))
            .finish()
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

    /// Takes the next place in the line of each of `keys` (sorted, without
    /// repeats: [`Plan::lock_keys`](hostbus_protocol::Plan::lock_keys)), all
    /// at once and without blocking.
    pub(crate) fn enqueue_all(&self, keys: &[String]) -> Turn {
        let mut slots = lock(&self.shared.slots);
        Turn(
            keys.iter()
                .map(|k| self.enqueue_in(&mut slots, k))
                .collect(),
        )
    }

    /// Takes the next place in the line of `key`, without blocking.
    #[cfg(test)]
    pub(crate) fn enqueue(&self, key: &str) -> Ticket {
        let mut slots = lock(&self.shared.slots);
        self.enqueue_in(&mut slots, key)
    }

    fn enqueue_in(&self, slots: &mut HashMap<String, Arc<Slot>>, key: &str) -> Ticket {
        let slot = Arc::clone(slots.entry(key.to_owned()).or_default());
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
        // ever touched. Every live ticket has its place in the line until
        // its drop, and places are taken under the table's mutex, held
        // here: an empty line is an idle slot. (Counting the slot's
        // references instead kept it when another ticket had left the line
        // but not yet dropped its reference, its fields dropping after its
        // `drop`: a slot left behind for ever, seen in
        // `one_key_is_exclusive_and_idle_slots_are_forgotten`.)
        if empty {
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

/// Runs `f` on a thread and returns what it returns, failing the test when
/// it is still blocked after `secs` seconds: a test that waits for a lock
/// fails, instead of hanging the crate's test run, when the lock table
/// loses a wake-up or never gives a lock back (cargo mutants makes both).
/// A panic of `f` is the test's.
#[cfg(test)]
pub(crate) fn finishes_within<T: Send + 'static>(
    what: &str,
    secs: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still blocked after {secs} s")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: ended without a result"),
        },
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
        finishes("four threads taking one lock in turn", move || {
            threads.into_iter().for_each(|t| t.join().expect("join"));
        });
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
        let holder = take(&table, "vm:a");
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
        finishes("eight places served in turn", move || {
            threads.into_iter().for_each(|t| t.join().expect("join"));
        });
        assert_eq!(*lock(&order), (0..8).collect::<Vec<_>>());
    }

    /// Turns on several keys, in every combination, from several threads:
    /// each key is held by one turn at a time, and every turn gets all its
    /// keys (no two turns wait for each other), which a watchdog checks.
    #[test]
    fn turns_on_several_keys_never_deadlock_and_stay_exclusive() {
        const SETS: &[&[&str]] = &[
            &["a", "b"],
            &["b", "c"],
            &["a", "c"],
            &["a", "b", "c"],
            &["c"],
        ];
        let table = Arc::new(LockTable::new(None));
        let inside: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (done, finished) = std::sync::mpsc::channel();
        for t in 0..4 {
            let (table, inside, done) = (table.clone(), inside.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    let keys: Vec<String> = SETS[(t + i) % SETS.len()]
                        .iter()
                        .map(|k| (*k).to_owned())
                        .collect();
                    let guards = table.enqueue_all(&keys).wait();
                    for k in &keys {
                        let mut inside = lock(&inside);
                        let n = inside.entry(k.clone()).or_default();
                        *n += 1;
                        assert_eq!(*n, 1, "{k} held twice");
                    }
                    std::thread::yield_now();
                    for k in &keys {
                        *lock(&inside).get_mut(k).expect("counted") -= 1;
                    }
                    drop(guards);
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            finished
                .recv_timeout(Duration::from_secs(20))
                .expect("a thread never finished: turns waited for each other");
        }
        assert!(lock(&table.shared.slots).is_empty());
    }

    /// A turn's places are taken together and in key order: a turn that
    /// came later waits behind it in every line they share.
    #[test]
    fn a_turn_on_several_keys_takes_all_its_places_at_once() {
        let table = LockTable::new(None);
        let keys = |ks: &[&str]| ks.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        let first = table.enqueue_all(&keys(&["a", "b"]));
        let second = table.enqueue_all(&keys(&["a", "b"]));
        assert!(first.is_for(&keys(&["a", "b"])) && !first.is_for(&keys(&["a"])));
        assert_eq!((table.depth("a"), table.depth("b")), (2, 2));
        let waiter = std::thread::spawn(move || drop(second.wait()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "the later turn got a key the earlier holds"
        );
        finishes("the earlier turn", move || drop(first.wait()));
        finishes("the later turn, after the earlier one", move || {
            waiter.join()
        })
        .expect("the later turn ran after the earlier one");
        assert_eq!((table.depth("a"), table.depth("b")), (0, 0));
    }

    /// [`finishes_within`] five seconds.
    fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        finishes_within(what, 5, f)
    }

    /// Takes the lock of `key`, which must be free (or soon), failing the
    /// test instead of blocking it for ever.
    fn take(table: &LockTable, key: &str) -> ObjectGuard {
        let ticket = table.enqueue(key);
        finishes(&format!("taking the lock of {key}"), move || ticket.wait())
    }

    /// Starts waiting for `ticket` on a thread; `true` from the receiver
    /// once it holds the lock (and it then lets go at once).
    fn waiting(ticket: Ticket) -> std::sync::mpsc::Receiver<bool> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(ticket.wait());
            let _ = tx.send(true);
        });
        rx
    }

    /// Whether the waiter behind `rx` got its lock within `ms`.
    fn got_it(rx: &std::sync::mpsc::Receiver<bool>, ms: u64) -> bool {
        rx.recv_timeout(Duration::from_millis(ms)).is_ok()
    }

    fn slots(table: &LockTable) -> Vec<String> {
        let mut keys: Vec<String> = lock(&table.shared.slots).keys().cloned().collect();
        keys.sort();
        keys
    }

    /// A place given up before its turn (the command was refused, its
    /// caller went away) does not hold up those behind it, and leaves the
    /// object's slot to them.
    #[test]
    fn a_place_left_before_its_turn_does_not_block_the_line() {
        let table = LockTable::new(None);
        let holder = take(&table, "vm:a");
        let skipped = table.enqueue("vm:a");
        let next = table.enqueue("vm:a");
        drop(skipped);
        assert_eq!(table.depth("vm:a"), 2, "the holder and the next stay");
        assert_eq!(slots(&table), ["vm:a"], "their slot stays");
        let next = waiting(next);
        assert!(!got_it(&next, 50), "the next got the lock the holder holds");
        drop(holder);
        assert!(got_it(&next, 5000), "the next never got the lock");
        assert_eq!(table.depth("vm:a"), 0);
        assert!(slots(&table).is_empty(), "an idle slot was kept");
    }

    /// The holder's leaving wakes the next in line, which then holds the
    /// lock alone: a newcomer waits behind it.
    #[test]
    fn a_holder_leaving_hands_the_lock_to_the_next_in_line() {
        let table = Arc::new(LockTable::new(None));
        let holder = take(&table, "vm:a");
        let next = table.enqueue("vm:a");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let g = next.wait();
            let _ = held_tx.send(());
            let _ = go_rx.recv();
            drop(g);
        });
        assert!(held_rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(holder);
        held_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the holder left, but the next in line was never woken");
        assert_eq!(table.depth("vm:a"), 1);
        let newcomer = waiting(table.enqueue("vm:a"));
        assert!(!got_it(&newcomer, 50), "a newcomer got a held lock");
        drop(go_tx);
        assert!(got_it(&newcomer, 5000), "the newcomer never got the lock");
        assert!(slots(&table).is_empty());
    }

    /// A place left in the middle of a line keeps the slot for those around
    /// it; whoever leaves last, however (held, waited for or not), forgets
    /// the slot, and only that object's.
    #[test]
    fn only_the_last_place_to_leave_forgets_the_slot() {
        let table = LockTable::new(None);
        let other = take(&table, "vm:b");
        let holder = take(&table, "vm:a");
        let middle = table.enqueue("vm:a");
        let last = table.enqueue("vm:a");
        drop(middle);
        assert_eq!(slots(&table), ["vm:a", "vm:b"]);
        drop(holder);
        assert_eq!(
            slots(&table),
            ["vm:a", "vm:b"],
            "the last one is still in line"
        );
        assert_eq!(table.depth("vm:a"), 1);
        // The last one leaves without having waited.
        drop(last);
        assert_eq!(slots(&table), ["vm:b"]);
        assert_eq!(table.depth("vm:a"), 0);
        // A fresh line on the forgotten object works as a new one.
        let again = finishes("a lock on a forgotten slot", {
            let table = Arc::new(table);
            move || {
                drop(table.acquire("vm:a"));
                table
            }
        });
        assert_eq!(slots(&again), ["vm:b"]);
        drop(other);
        assert!(slots(&again).is_empty());
    }

    /// A turn holds places in exactly its keys; its debug form lists them.
    #[test]
    fn a_turn_knows_its_keys() {
        let table = LockTable::new(None);
        let keys = |ks: &[&str]| ks.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        let turn = table.enqueue_all(&keys(&["a", "b"]));
        assert!(turn.is_for(&keys(&["a", "b"])));
        assert!(!turn.is_for(&keys(&["a"])), "fewer keys");
        assert!(!turn.is_for(&keys(&["a", "b", "c"])), "more keys");
        assert!(!turn.is_for(&keys(&["a", "c"])), "another key");
        assert!(!turn.is_for(&keys(&["b", "a"])), "another order");
        assert_eq!(format!("{turn:?}"), r#"["a", "b"]"#);
    }

    /// The hook hears each acquisition and each release, in order.
    #[test]
    fn the_hook_hears_acquired_then_released() {
        let heard: Arc<Mutex<Vec<String>>> = Arc::default();
        let hook: LockHook = {
            let heard = heard.clone();
            Arc::new(move |ev: LockEvent<'_>| lock(&heard).push(format!("{ev:?}")))
        };
        let table = LockTable::new(Some(hook));
        let a = take(&table, "vm:a");
        let b = take(&table, "vm:b");
        drop(a);
        drop(b);
        assert_eq!(
            *lock(&heard),
            [
                r#"Acquired("vm:a")"#,
                r#"Acquired("vm:b")"#,
                r#"Released("vm:a")"#,
                r#"Released("vm:b")"#
            ]
        );
    }
}
