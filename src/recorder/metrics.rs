//! The recorder's Prometheus metrics (text exposition format 0.0.4).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::record::protocol::Status;
use crate::storage::s3::UploadStats;

#[derive(Default)]
pub struct Metrics {
    started: AtomicU64,
    active: AtomicU64,
    complete: AtomicU64,
    truncated: AtomicU64,
    bytes: AtomicU64,
    events: AtomicU64,
    storage_errors: AtomicU64,
    fsyncs: AtomicU64,
    event_fsyncs: AtomicU64,
    /// Microseconds spent making bytes durable before acknowledging them.
    ack_lag_micros: AtomicU64,
}

impl Metrics {
    pub fn session_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_ended(&self, status: Status) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        let c = if status == Status::Complete { &self.complete } else { &self.truncated };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn synced(&self, bytes: u64, took: Duration) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.ack_lag_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn event_log_synced(&self) {
        self.event_fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    pub fn storage_error(&self) {
        self.storage_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The text, with the S3 uploader's figures (zero without `--s3-bucket`).
    pub fn render(&self, s3: Option<&UploadStats>) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let none = UploadStats::default();
        let s3 = s3.unwrap_or(&none);
        let lines = [
            ("kubetape_recorder_sessions_started_total", "counter", "Sessions whose header was stored.", g(&self.started).to_string()),
            ("kubetape_recorder_sessions_active", "gauge", "Sessions being recorded now.", g(&self.active).to_string()),
            ("kubetape_recorder_sessions_complete_total", "counter", "Sessions that ended normally.", g(&self.complete).to_string()),
            ("kubetape_recorder_sessions_truncated_total", "counter", "Sessions that ended early.", g(&self.truncated).to_string()),
            ("kubetape_recorder_bytes_total", "counter", "Recording bytes made durable.", g(&self.bytes).to_string()),
            ("kubetape_recorder_events_total", "counter", "API events received.", g(&self.events).to_string()),
            ("kubetape_recorder_storage_errors_total", "counter", "Failed storage writes and syncs.", g(&self.storage_errors).to_string()),
            ("kubetape_recorder_fsyncs_total", "counter", "Durable writes of recordings (one per acknowledged batch).", g(&self.fsyncs).to_string()),
            ("kubetape_recorder_event_fsyncs_total", "counter", "Durable writes of the event log (each serves every batch appended before it).", g(&self.event_fsyncs).to_string()),
            ("kubetape_recorder_s3_uploaded_bytes_total", "counter", "Recording bytes copied from the spool to the S3 bucket.", g(&s3.bytes).to_string()),
            ("kubetape_recorder_s3_upload_errors_total", "counter", "Attempts to reach the bucket or upload passes that failed (each is retried).", g(&s3.errors).to_string()),
            ("kubetape_recorder_s3_pending_bytes", "gauge", "Durable recording bytes not yet in the S3 bucket.", g(&s3.pending).to_string()),
            (
                "kubetape_recorder_s3_upload_lag_seconds",
                "gauge",
                "Time since an upload pass last left nothing pending (0 when nothing is): the longest any pending byte has waited.",
                format!("{:.3}", g(&s3.lag_millis) as f64 / 1e3),
            ),
            (
                "kubetape_recorder_spool_bytes",
                "gauge",
                "Bytes in the spool (--storage-dir) with --s3-bucket: what is not uploaded yet, and running sessions.",
                g(&s3.spool_bytes).to_string(),
            ),
        ];
        let mut text: String = lines.iter().map(|(name, kind, help, value)| format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n")).collect();
        // A summary without quantiles: its sum and count, one observation per fsync.
        let lag = "kubetape_recorder_ack_lag_seconds";
        text.push_str(&format!(
            "# HELP {lag} Time spent making bytes durable before acknowledging them.\n# TYPE {lag} summary\n{lag}_sum {:.6}\n{lag}_count {}\n",
            g(&self.ack_lag_micros) as f64 / 1e6,
            g(&self.fsyncs)
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_lag_is_a_summary_with_sum_and_count() {
        let m = Metrics::default();
        m.synced(10, Duration::from_millis(3));
        m.synced(10, Duration::from_millis(1));
        let text = m.render(None);
        for line in ["# TYPE kubetape_recorder_ack_lag_seconds summary", "kubetape_recorder_ack_lag_seconds_sum 0.004000", "kubetape_recorder_ack_lag_seconds_count 2"] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
