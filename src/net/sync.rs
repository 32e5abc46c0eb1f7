//! Small synchronisation helpers shared by the servers and the recorder clients.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Locks `m`, also when a thread panicked while holding it: every value kept behind
/// these locks stays consistent enough to go on with, or to fail cleanly.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A value one thread sets and another waits for, on a mutex and condition variable:
/// the waiting thread sleeps in the kernel at once instead of spinning and yielding
/// first, which matters when every core is busy (crossbeam's blocking receive spins
/// before it parks).
pub struct Slot<T> {
    value: Mutex<Option<T>>,
    set: Condvar,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot { value: Mutex::new(None), set: Condvar::new() }
    }
}

impl<T> Slot<T> {
    pub fn set(&self, v: T) {
        *lock(&self.value) = Some(v);
        self.set.notify_one();
    }

    /// The value, once set, or `None` after `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut v = lock(&self.value);
        loop {
            if let Some(x) = v.take() {
                return Some(x);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            v = self.set.wait_timeout(v, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn slots() {
        let slot = Arc::new(Slot::default());
        let s2 = slot.clone();
        let t = std::thread::spawn(move || s2.wait(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        slot.set(true);
        assert_eq!(t.join().unwrap(), Some(true));
        assert_eq!(Slot::<bool>::default().wait(Duration::from_millis(5)), None);
    }
}
