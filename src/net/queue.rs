//! A bounded queue and a one-shot slot on a mutex and condition variable: a waiting
//! thread sleeps in the kernel at once instead of spinning and yielding first, which
//! matters when every core is busy (crossbeam's blocking receive spins before it
//! parks).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    ready: Condvar,
    cap: usize,
}

impl<T> Queue<T> {
    pub fn new(cap: usize) -> Self {
        Queue { items: Mutex::new(VecDeque::new()), ready: Condvar::new(), cap }
    }

    /// Adds `item` unless the queue is full (then it comes back).
    pub fn try_push(&self, item: T) -> Result<(), T> {
        let mut q = lock(&self.items);
        if q.len() >= self.cap {
            return Err(item);
        }
        q.push_back(item);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Up to `max` items, waiting at most `timeout` for the first.
    pub fn pop_batch(&self, max: usize, timeout: Duration) -> Vec<T> {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.items);
        while q.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Vec::new();
            }
            q = self.ready.wait_timeout(q, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let n = q.len().min(max);
        q.drain(..n).collect()
    }
}

/// A value one thread sets and another waits for.
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
    fn bounded_batches_and_slots() {
        let q = Arc::new(Queue::new(3));
        for i in 0..3 {
            q.try_push(i).unwrap();
        }
        assert_eq!(q.try_push(9), Err(9));
        assert_eq!(q.pop_batch(2, Duration::from_millis(1)), vec![0, 1]);
        assert_eq!(q.pop_batch(9, Duration::from_millis(1)), vec![2]);
        assert!(q.pop_batch(9, Duration::from_millis(5)).is_empty());
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop_batch(9, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        q.try_push(7).unwrap();
        assert_eq!(t.join().unwrap(), vec![7]);

        let slot = Arc::new(Slot::default());
        let s2 = slot.clone();
        let t = std::thread::spawn(move || s2.wait(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        slot.set(true);
        assert_eq!(t.join().unwrap(), Some(true));
        assert_eq!(Slot::<bool>::default().wait(Duration::from_millis(5)), None);
    }
}
