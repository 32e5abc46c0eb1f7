//! What a request gives the recorders before it goes upstream: its API event (for
//! callers whose grants enable events) and, for an exec or attach session, a
//! recording whose header a recorder has acknowledged. Each phase applies the
//! caller's fail mode: fail-closed callers are refused when recording is impossible,
//! fail-open ones go on unrecorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::kube::request_info::RequestInfo;
use crate::net::tls;
use crate::record::event::{ApiEvent, EventUser};
use crate::recording::cast;
use crate::recording::client::{RecorderTarget, Recording};
use crate::recording::events_client::EventSink;
use crate::recording::fail::{self, Decision, Situation};
use crate::wire::http::{self, RequestHead};

use super::admission::Caller;
use super::policy::{self, FailMode};
use super::respond::Refusal;
use super::rewrite::Mode;
use super::{metrics, session, Connection};

/// A fail-closed request waits this long for its event to be acknowledged.
const EVENT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests whose completion may be far off, as kube-apiserver's long-running check.
pub(super) fn long_running(head: &RequestHead, info: &RequestInfo) -> bool {
    // `follow` as the API server parses a bool (Go's strconv.ParseBool).
    let follow = |v: &str| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True");
    info.verb == "watch" || head.upgrade().is_some() || http::query_pairs(head.query()).iter().any(|(k, v)| k == "follow" && follow(v))
}

/// A request's API event, sent or queued, to be completed with the response.
pub struct EventPlan {
    sink: Arc<EventSink>,
    /// Completed in place once the response is known (no copy per request).
    event: std::cell::RefCell<ApiEvent>,
    /// Keep up to this many bytes of the request body (level `Request`).
    pub capture: Option<usize>,
    /// When the request was received, for the event's latency.
    received: Instant,
    /// The caller's, for what its stream's follow-up needs.
    fail: FailMode,
}

/// A session recording whose header a recorder acknowledged.
pub struct SessionStart {
    pub recording: Recording,
    pub fail: FailMode,
    /// The session's id, in its recording and in the request's API event.
    pub id: String,
    /// For an attach: where its exit status is found once it ends.
    pub exit_probe: Option<session::ExitProbe>,
    /// The command an exec runs (empty otherwise): a `kubectl cp` is known by it.
    pub command: Vec<String>,
}

/// What an upgraded stream carried (a file transfer, a port-forward), sent as an event
/// of its own once the stream ends: the request's event as completed, and its sink.
pub struct FollowUp {
    sink: Arc<EventSink>,
    pub event: ApiEvent,
    /// The caller's fail mode.
    pub fail: FailMode,
}

impl EventPlan {
    /// Taken once the request's event is complete, so the follow-up repeats its id,
    /// status and session id.
    pub fn follow_up(&self) -> FollowUp {
        FollowUp { sink: self.sink.clone(), event: self.event.borrow().clone(), fail: self.fail }
    }
}

impl FollowUp {
    /// Queues the `kind` event, filled in by `fill`, without waiting: the stream has
    /// ended and nothing is left to hold back.
    pub fn send(self, kind: &str, fill: impl FnOnce(&mut ApiEvent)) {
        let mut ev = self.event.stream_event(kind);
        fill(&mut ev);
        self.sink.send(&ev);
    }
}

/// After an attach, the pod is asked this often for its container's exit status
/// (the kubelet reports a container's end on its next status sync, about a second).
const EXIT_PROBE_ATTEMPTS: u32 = 5;
const EXIT_PROBE_INTERVAL: Duration = Duration::from_millis(250);

impl Connection<'_> {
    /// For a caller whose grants enable events: the request's event, recorded before
    /// the request goes upstream. Fail-closed callers wait for the recorder to make it
    /// durable and are refused if it cannot; fail-open ones never wait.
    pub(super) fn start_event(&self, head: &RequestHead, info: &RequestInfo, audit_id: &str, caller: &Caller<'_>) -> std::result::Result<Option<EventPlan>, Refusal> {
        let received = Instant::now();
        let Some(grants) = caller.grants.as_ref().filter(|g| g.events) else { return Ok(None) };
        let policy = self.state.policy.get();
        let capture = match policy.events.level(info) {
            policy::Level::None => return Ok(None),
            policy::Level::Metadata => None,
            policy::Level::Request => Some(policy.events.max_body_bytes),
        };
        let mut ev = ApiEvent::received(audit_id.to_string(), info, &head.method, head.path(), head.query());
        ev.user = caller.user.map(|u| EventUser { name: u.name.clone(), groups: u.groups.clone(), authenticated_by: u.method.to_string() });
        ev.impersonated = caller.impersonation.as_ref().map(|i| i.record());
        ev.user_agent = head.headers.get_str("user-agent").unwrap_or("").to_string();
        ev.source_address = self.client_ip.to_string();
        ev.proxy = self.state.config.proxy_id.clone();
        let who = caller.who();
        let unrecordable = |e: &dyn std::fmt::Display| match fail::decide(grants.fail_mode, Situation::EventUnrecordable) {
            Decision::Refuse => {
                metrics::inc(&self.state.metrics.events_refused);
                log::warn!("request refused conn={} user={who} reason=events-unrecordable error={e}", self.id);
                Err(Refusal::Unrecordable { why: format!("API requests must be recorded, and recording is not possible: {e}"), discovery: !info.is_resource_request })
            }
            _ => {
                metrics::inc(&self.state.metrics.events_dropped);
                log::debug!("api event not recorded conn={} error={e}", self.id);
                Ok(None)
            }
        };
        let sink = match self.event_sink(&grants.recorder_tags) {
            Ok(s) => s,
            Err(e) => return unrecordable(&e),
        };
        if grants.fail_mode == FailMode::Closed {
            if let Err(e) = sink.send_and_wait(&ev, EVENT_ACK_TIMEOUT) {
                return unrecordable(&e);
            }
        } else if long_running(head, info) {
            // Fail-open: the completion event alone carries when the request was
            // received, so only requests that may run for long (watches, follows,
            // sessions) are announced now; nothing waits (the sink counts drops).
            sink.send(&ev);
        }
        Ok(Some(EventPlan { sink, event: std::cell::RefCell::new(ev), capture, received, fail: grants.fail_mode }))
    }

    /// Completes the request's event and queues it without waiting.
    pub(super) fn complete_event(&self, plan: &EventPlan, status: u16, bytes: u64, finish: impl FnOnce(&mut ApiEvent)) {
        let mut ev = plan.event.borrow_mut();
        ev.complete(status, bytes, plan.received.elapsed().as_secs_f64() * 1000.0);
        finish(&mut ev);
        plan.sink.send(&*ev);
    }

    /// The event stream to the recorders carrying `tags`, started on first use.
    /// The event stream for a set of recorder tags, sent where the policy says now:
    /// after a reload its recorders are looked up again, and the stream follows; after
    /// a certificate renewal it connects anew with the renewed client certificate.
    fn event_sink(&self, tags: &[String]) -> Result<Arc<EventSink>> {
        let key = tags.join(",");
        let policy = self.state.policy.get();
        let generation = self.state.cluster_recorders.as_ref().map_or(0, |c| c.generation());
        // A renewed client certificate reaches a long-lived stream by a reroute too.
        let certs = self.state.config.certs.generation();
        let mut sinks = self.state.event_sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, sink)) = sinks.get_mut(&key) {
            if !Arc::ptr_eq(&seen.0, &policy) || seen.1 != generation || seen.2 != certs {
                *seen = (policy, generation, certs);
                // Tags that no longer name a recorder leave nowhere to send (dropped, or
                // refused in fail-closed, as with a recorder down).
                sink.reroute(self.recorder_targets(tags).unwrap_or_default());
                log::info!("api event stream rerouted: the policy, the cluster's recorders or the certificates changed tags={key}");
            }
            return Ok(sink.clone());
        }
        let sink = EventSink::start(&key, self.recorder_targets(tags)?, self.state.metrics.events_dropped.clone());
        sinks.insert(key, ((policy, generation, certs), sink.clone()));
        Ok(sink)
    }

    /// For an exec or attach session whose grants name recorders: connects to one
    /// and gets the header acknowledged, before anything goes upstream. Fail-closed
    /// callers are refused when that is impossible; fail-open ones run unrecorded.
    pub(super) fn start_recording(&self, head: &RequestHead, path: &str, info: &RequestInfo, caller: &Caller<'_>) -> std::result::Result<Option<SessionStart>, Refusal> {
        let Some(grants) = &caller.grants else { return Ok(None) };
        let who = caller.who();
        let recorded = !grants.recorder_tags.is_empty() || grants.fail_mode == FailMode::Closed;
        if recorded && session::reaches_kubelet_stream(path) {
            metrics::inc(&self.state.metrics.sessions_refused_unrecordable);
            log::warn!("request refused conn={} user={who} reason=kubelet-stream-via-node-proxy", self.id);
            return Err(Refusal::Forbidden(
                "the kubelet's exec, attach, run and port-forward endpoints cannot be recorded through nodes/proxy: use kubectl exec, attach or port-forward".into(),
            ));
        }
        let mut request = match session::session_request(head, info) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(why) if recorded => {
                metrics::inc(&self.state.metrics.sessions_refused_unrecordable);
                log::warn!("session refused conn={} user={who} reason=unrecordable-request error={why}", self.id);
                return Err(Refusal::BadRequest(format!("this session cannot be recorded: {why}")));
            }
            Err(_) => return Ok(None),
        };
        let (ns, pod, kind) = (request.namespace.clone(), request.pod.clone(), request.kind);
        let refuse_or_skip = |why: String| {
            if fail::decide(grants.fail_mode, Situation::NoRecorderAtStart) == Decision::Refuse {
                metrics::inc(&self.state.metrics.sessions_refused_unrecordable);
                log::warn!("session refused conn={} user={who} ns={ns} pod={pod} reason={why}", self.id);
                Err(Refusal::Forbidden(format!("'kubectl {kind}' sessions must be recorded, and recording is not possible: {why}")))
            } else {
                metrics::inc(&self.state.metrics.sessions_unrecorded);
                log::warn!("session not recorded conn={} user={who} ns={ns} pod={pod} fail_mode=open reason={why}", self.id);
                Ok(None)
            }
        };
        if grants.recorder_tags.is_empty() {
            return if grants.fail_mode == FailMode::Closed { refuse_or_skip("no recorder is configured for you".into()) } else { Ok(None) };
        }
        let targets = match self.recorder_targets(&grants.recorder_tags) {
            Ok(t) => t,
            Err(e) => return refuse_or_skip(e.to_string()),
        };
        // Only a session that will be recorded is looked up in its pod.
        let exit_probe = self.describe_attach(&mut request, caller);
        let id = crate::record::protocol::new_id();
        let impersonated = caller.impersonation.as_ref().map(|i| i.record());
        let ctx = cast::HeaderContext {
            id: &id,
            request: &request,
            protocol: head.upgrade().unwrap_or(""),
            offered: &session::offered_subprotocols(head),
            user: caller.user,
            impersonated: impersonated.as_ref(),
            source: self.client_ip,
            proxy_id: &self.state.config.proxy_id,
            started: std::time::SystemTime::now(),
            fail: grants.fail_mode,
        };
        match Recording::start(&targets, &id, &cast::header(&ctx), self.state.config.recorder_timeout, &self.state.recorder_health, grants.fail_mode == FailMode::Open) {
            Ok(r) => {
                metrics::inc(&self.state.metrics.sessions_recorded);
                log::info!("session recording conn={} session={id} user={who} ns={} pod={} type={} recorder={}", self.id, request.namespace, request.pod, request.kind, r.recorder);
                // Only an exec's command is what the client asked to run (a cp's tar).
                let command = if request.kind == "exec" { request.command } else { Vec::new() };
                Ok(Some(SessionStart { recording: r, fail: grants.fail_mode, id, exit_probe, command }))
            }
            Err(e) => refuse_or_skip(format!("recorders unreachable: {e}")),
        }
    }

    /// An attach is looked up in its pod, as the caller (impersonated, so the API
    /// server applies the caller's own rights): what it really is (`session::
    /// describe_attach`), and a probe for the exit status its stream will not carry.
    /// In `noauth` mode the proxy has no identity of its own to ask with.
    fn describe_attach(&self, request: &mut cast::SessionRequest, caller: &Caller<'_>) -> Option<session::ExitProbe> {
        let config = &self.state.config;
        if request.kind != "attach" || config.mode != Mode::Auth {
            return None;
        }
        let path = http::encode_path(&format!("/api/v1/namespaces/{}/pods/{}", request.namespace, request.pod));
        let identity = caller.impersonation.as_ref().map(|i| i.headers()).unwrap_or_default();
        let get_pod = {
            let api = config.upstream.clone();
            move || match api.request_as("GET", &path, None, &[], &identity) {
                Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(&body).ok(),
                _ => None,
            }
        };
        match get_pod() {
            Some(pod) => session::describe_attach(request, &pod),
            None => log::debug!("attach not described conn={} ns={} pod={}", self.id, request.namespace, request.pod),
        }
        let container = request.container.clone();
        Some(Box::new(move || {
            for attempt in 0..EXIT_PROBE_ATTEMPTS {
                if attempt > 0 {
                    std::thread::sleep(EXIT_PROBE_INTERVAL);
                }
                if let Some(code) = get_pod().and_then(|pod| session::terminated_exit_code(&pod, &container)) {
                    return Some(code);
                }
            }
            None
        }))
    }

    /// The policy's recorders that carry one of `tags` (or are named by one), in
    /// order, then the cluster's ready Recorder replicas that do.
    fn recorder_targets(&self, tags: &[String]) -> Result<Vec<RecorderTarget>> {
        let policy = self.state.policy.get();
        let base = self.state.config.policy.as_deref().and_then(|p| p.parent()).unwrap_or(std::path::Path::new("."));
        let certs = self.state.config.certs.get();
        let mut out = Vec::new();
        for r in policy.recorders.iter().filter(|r| tags.iter().any(|t| r.tags.contains(t) || &r.name == t)) {
            let roots = match &r.ca_file {
                Some(f) => tls::roots_from_pem(&tls::read_file(&base.join(f))?, &format!("recorder {} caFile", r.name))?,
                None => crate::bail!("recorder {}: caFile is required", r.name),
            };
            out.push(crate::recording::client::target(&r.name, &r.url, roots, certs.identity())?);
        }
        if let Some(cluster) = &self.state.cluster_recorders {
            out.extend(cluster.targets(tags));
        }
        if out.is_empty() {
            let from = if self.state.cluster_recorders.is_some() { "the policy or among the cluster's ready Recorder replicas" } else { "the policy" };
            crate::bail!("no recorder in {from} carries tags {tags:?}");
        }
        Ok(out)
    }
}
