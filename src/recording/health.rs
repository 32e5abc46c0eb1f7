//! Recorders that failed lately. A recorder that hangs costs a session start its
//! whole connect timeout (3 s by default); remembering the failure lets the next
//! sessions skip it for a while instead, and go straight to the next recorder or to
//! the caller's fail mode. The pause doubles with each failure in a row, so a
//! recorder that is restarting (a second or two) is skipped only briefly, and one
//! that stays down is tried again at most every [`MAX_BACKOFF`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::net::sync::lock;

/// The first pause after a failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest pause: how stale the verdict on a dead recorder may get.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Down {
    until: Instant,
    failures: u32,
    why: String,
}

/// Shared by every session start of a proxy; keyed by recorder name.
#[derive(Default)]
pub struct RecorderHealth {
    down: Mutex<HashMap<String, Down>>,
}

impl RecorderHealth {
    /// Why `name` is skipped now, if it is.
    pub fn skipped(&self, name: &str, now: Instant) -> Option<String> {
        let down = lock(&self.down);
        let d = down.get(name).filter(|d| now < d.until)?;
        Some(format!("skipped for {:.1}s more: it failed {} time(s) in a row, last: {}", d.until.duration_since(now).as_secs_f64(), d.failures, d.why))
    }

    pub fn failed(&self, name: &str, why: &str, now: Instant) {
        let mut down = lock(&self.down);
        let failures = down.get(name).map_or(0, |d| d.failures) + 1;
        let pause = FIRST_BACKOFF.saturating_mul(1 << (failures - 1).min(8)).min(MAX_BACKOFF);
        down.insert(name.to_string(), Down { until: now + pause, failures, why: why.to_string() });
    }

    pub fn succeeded(&self, name: &str) {
        lock(&self.down).remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_pause_a_recorder_longer_each_time_and_a_success_forgets_them() {
        let h = RecorderHealth::default();
        let t0 = Instant::now();
        assert_eq!(h.skipped("a", t0), None);
        h.failed("a", "connect timed out", t0);
        assert!(h.skipped("a", t0).is_some_and(|why| why.contains("connect timed out")));
        assert_eq!(h.skipped("a", t0 + FIRST_BACKOFF), None, "tried again after the first pause");
        h.failed("a", "again", t0 + FIRST_BACKOFF);
        assert!(h.skipped("a", t0 + FIRST_BACKOFF * 2).is_some(), "the second pause is twice as long");
        for i in 0..20 {
            h.failed("a", "still", t0 + Duration::from_secs(i));
        }
        assert_eq!(h.skipped("a", t0 + Duration::from_secs(19) + MAX_BACKOFF), None, "never paused longer than the maximum");
        assert_eq!(h.skipped("b", t0), None, "each recorder on its own");
        h.succeeded("a");
        assert_eq!(h.skipped("a", t0 + Duration::from_secs(19)), None);
    }
}
