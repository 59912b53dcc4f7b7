//! The one helper for the agent's short mutexes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a short mutex, going on past a panic of an earlier holder: every
/// mutex of the agent guards data that stays consistent between statements
/// (maps of ids, counters).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
