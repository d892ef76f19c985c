//! Locks shared by the control plane and the server.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking the data even if a holder panicked: every value
/// kept behind these locks (windows, caches, logs) stays valid after a
/// partial update, and a panic elsewhere must not take the server down
/// with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
