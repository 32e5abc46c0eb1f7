//! The proxy's counters, served in Prometheus text format on `--metrics-listen`
//! (a separate plain-HTTP listener, so `/metrics` on the proxy's own port still
//! reaches the API server).

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::net::conn::{Conn, Input};
use crate::net::head::HeadLimits;
use crate::net::server::{self, Lifecycle, Limits};
use crate::wire::http;

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub sessions_recorded: AtomicU64,
    pub sessions_unrecorded: AtomicU64,
    pub sessions_refused_unrecordable: AtomicU64,
    pub recordings_truncated: AtomicU64,
    pub sessions_ended_by_recording_failure: AtomicU64,
    pub events_refused: AtomicU64,
    /// Shared with the event streams, which count what they lose.
    pub events_dropped: Arc<AtomicU64>,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 10] = [
            ("kubetape_proxy_requests_total", "Requests received from clients.", &self.requests),
            ("kubetape_proxy_refused_total", "Requests refused by the proxy (401, 403, 4xx framing).", &self.refused),
            ("kubetape_proxy_upstream_errors_total", "Requests the API server could not be reached for.", &self.upstream_errors),
            ("kubetape_proxy_sessions_recorded_total", "Sessions whose recording started.", &self.sessions_recorded),
            ("kubetape_proxy_sessions_unrecorded_total", "Fail-open sessions that ran without a recording.", &self.sessions_unrecorded),
            ("kubetape_proxy_sessions_refused_unrecordable_total", "Fail-closed sessions refused because recording was impossible.", &self.sessions_refused_unrecordable),
            ("kubetape_proxy_recordings_truncated_total", "Recordings that ended early.", &self.recordings_truncated),
            ("kubetape_proxy_sessions_ended_by_recording_failure_total", "Fail-closed sessions ended because recording failed.", &self.sessions_ended_by_recording_failure),
            ("kubetape_proxy_events_refused_total", "Fail-closed requests refused because their API event could not be recorded.", &self.events_refused),
            ("kubetape_proxy_events_dropped_total", "API events nobody waited for that could not be recorded.", &*self.events_dropped),
        ];
        rows.iter().map(|(name, help, v)| format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", v.load(Ordering::Relaxed))).collect()
    }
}

/// Scrapers served at once; more are closed at accept (a flood of idle connections
/// must not take the process's file descriptors).
const MAX_SCRAPERS: usize = 16;
/// A scrape's request head is a few hundred bytes.
const MAX_SCRAPE_HEAD: usize = 16 * 1024;
/// A scraper must send its request, and take the answer, within this.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until the process ends.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let life = Arc::new(Lifecycle::default());
    server::serve(listener, "metrics", Limits::flat(MAX_SCRAPERS), life, move |sock, _, _| {
        let _ = sock.set_write_timeout(Some(SCRAPE_TIMEOUT));
        let Ok(conn) = Conn::plain(sock) else { return };
        let mut input = Input::new(conn.read);
        let mut out = conn.write;
        let resp = match input.next_request(&HeadLimits { max_len: MAX_SCRAPE_HEAD, idle: SCRAPE_TIMEOUT, whole: SCRAPE_TIMEOUT }) {
            Ok(None) => return,
            Err(bad) => http::response(bad.status(), "text/plain", bad.to_string().as_bytes()),
            Ok(Some(head)) if head.method == "GET" && head.path() == "/metrics" => http::response(200, "text/plain; version=0.0.4", metrics.render().as_bytes()),
            Ok(Some(_)) => http::response(404, "text/plain", b"not found"),
        };
        let _ = out.write_all(&resp);
    });
}
