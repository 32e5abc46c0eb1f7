//! Recorded exec/attach sessions: which requests are sessions, and the tunnel whose
//! two directions run through taps into the recorder (the recording's header and
//! lines are written by `recording::cast`).
//!
//! `recording::fail::decide` settles every recording failure (recorder lost or silent,
//! queue full, a frame the tap cannot parse, a client breaking the protocol):
//! fail-open stops the recording, marks it truncated and lets the session run on;
//! fail-closed ends the session, telling the user why on the error channel when the
//! stream is at a frame boundary. In fail-closed, output reaches the client only once
//! the recorder has acknowledged it, so a stalled recorder freezes the session.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kube::request_info::RequestInfo;
use crate::net::conn::{Input, WriteHalf};
use crate::net::sync::lock;
use crate::net::tunnel::{self, Sink, Totals};
use crate::record::protocol::Outcome;
use crate::recording::cast::{marker_line, CastWriter, SessionRequest};
use crate::recording::client::{RecorderLink, SendError, SILENT_RECORDER};
use crate::recording::fail::{self, Decision, FailMode, Situation};
use crate::recording::tap::{SpdyTap, Tap, TapEvent, WsTap};
use crate::wire::channel;
use crate::wire::http::{self, RequestHead};

/// How often the recorder's health is checked during a session.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// What a request to `pods/exec`, `pods/attach` or `pods/portforward` is, from its
/// classification (`info`, on the decoded path) and head. `Ok(Some)` for an exec or
/// attach upgrade kubetape can record; `Ok(None)` for anything else; `Err` for a
/// session request kubetape could read differently from the API server (a query Go
/// parses otherwise) or could not record (a stream protocol the taps do not parse).
pub fn session_request(head: &RequestHead, info: &RequestInfo) -> Result<Option<SessionRequest>, String> {
    if info.resource != "pods" || !info.api_group.is_empty() || !matches!(info.subresource.as_str(), "exec" | "attach" | "portforward") {
        return Ok(None);
    }
    if !http::query_is_unambiguous(head.query()) {
        return Err(format!("the query of a pods/{} request may not hold ';', a bad '%' escape or non-UTF-8", info.subresource));
    }
    // Without an upgrade the proxy forwards no Upgrade header, so nothing can stream.
    let Some(proto) = head.upgrade() else { return Ok(None) };
    if info.subresource == "portforward" {
        return Ok(None);
    }
    let kind = if info.subresource == "exec" { "exec" } else { "attach" };
    if proto.eq_ignore_ascii_case("websocket") {
        let offered = head.headers.tokens("sec-websocket-protocol");
        if let Some(p) = offered.into_iter().find(|p| !channel::EXEC_PROTOCOLS.contains(p)) {
            return Err(format!("the WebSocket subprotocol {p:?} is not one kubetape records ({})", channel::EXEC_PROTOCOLS.join(", ")));
        }
    } else if !proto.eq_ignore_ascii_case("SPDY/3.1") {
        return Err(format!("the stream protocol {proto:?} is not one kubetape records (SPDY/3.1, websocket)"));
    }
    let q = http::query_pairs(head.query());
    let get = |k: &'static str| q.iter().filter(move |(n, _)| n == k).map(|(_, v)| v.clone());
    Ok(Some(SessionRequest {
        kind,
        namespace: info.namespace.clone(),
        pod: info.name.clone(),
        container: get("container").next().unwrap_or_default(),
        command: get("command").collect(),
        // As kube-apiserver converts it (`Convert_Slice_string_To_bool`): the first
        // value counts, and anything but "0" or "false" is true, even an empty one.
        tty: get("tty").next().is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false")),
        ..SessionRequest::default()
    }))
}

/// What an attach really is, from the pod it attaches to: a `kubectl debug`
/// session (the container is ephemeral), a `kubectl run -it` one (the pod carries
/// kubectl run's `run=NAME` label), or a plain attach; with the container's image,
/// and for debug and run its command (an attach's request names none).
pub fn describe_attach(request: &mut SessionRequest, pod: &serde_json::Value) {
    let spec = &pod["spec"];
    let named = |list: &str| spec[list].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == request.container.as_str()).cloned());
    let (kind, container) = match (named("ephemeralContainers"), named("containers")) {
        (Some(c), _) => ("debug", c),
        (None, Some(c)) if pod["metadata"]["labels"]["run"] == request.pod.as_str() => ("run", c),
        (None, Some(c)) => ("attach", c),
        (None, None) => return,
    };
    let strings = |v: &serde_json::Value| v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect::<Vec<_>>()).unwrap_or_default();
    request.kind = kind;
    // A debug or run session's command is what its user typed; a plain attach's is
    // the pod author's, which may hold secrets readers of recordings should not see.
    if kind != "attach" {
        request.command = [strings(&container["command"]), strings(&container["args"])].concat();
    }
    request.image = container["image"].as_str().unwrap_or("").to_string();
    request.target = container["targetContainerName"].as_str().unwrap_or("").to_string();
}

/// The exit code the pod reports for `container` once it has terminated.
pub fn terminated_exit_code(pod: &serde_json::Value, container: &str) -> Option<i32> {
    ["containerStatuses", "ephemeralContainerStatuses"]
        .iter()
        .filter_map(|f| pod["status"][f].as_array())
        .flatten()
        .find(|s| s["name"] == container)
        .and_then(|s| s["state"]["terminated"]["exitCode"].as_i64())
        .and_then(|c| i32::try_from(c).ok())
}

/// Whether a decoded path reaches the kubelet's streaming endpoints through the node
/// proxy (`nodes/NAME/proxy/exec/...`, or the old `proxy/nodes/NAME/...` form): the
/// kubelet's own protocols cannot be tied to a pod session, so recorded callers are
/// refused them. Compared in any case, as a safe superset of the kubelet's routes.
pub fn reaches_kubelet_stream(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let segs: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segs.as_slice() {
        ["api", _, "nodes", _, "proxy", rest @ ..] | ["api", _, "proxy", "nodes", _, rest @ ..] => rest,
        _ => return false,
    };
    rest.first().is_some_and(|first| KUBELET_STREAMS.contains(first))
}

/// The kubelet's paths that run commands or stream (`/cri/` serves the CRI streaming
/// server behind exec and attach).
const KUBELET_STREAMS: &[&str] = &["exec", "attach", "run", "portforward", "cri"];

/// The subprotocols the client offered (`X-Stream-Protocol-Version` for SPDY,
/// `Sec-WebSocket-Protocol` for WebSocket), in order.
pub fn offered_subprotocols(head: &RequestHead) -> Vec<String> {
    head.headers
        .get_all("x-stream-protocol-version")
        .chain(head.headers.get_all("sec-websocket-protocol"))
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(|p| p.trim().to_string()).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A session's two taps: on what the client sends, and on what the server sends.
pub struct Taps {
    pub client: Box<dyn Tap>,
    pub server: Box<dyn Tap>,
}

/// The taps for the protocol the API server agreed to; `None` for one they do not
/// parse (WebSocket subprotocols other than the binary channel protocols; none at all
/// is the kubelet's binary default).
pub fn taps(upgrade: &str, subprotocol: &str) -> Option<Taps> {
    if upgrade.eq_ignore_ascii_case("websocket") && (subprotocol.is_empty() || channel::EXEC_PROTOCOLS.contains(&subprotocol)) {
        let (c, s) = WsTap::pair();
        Some(Taps { client: Box::new(c), server: Box::new(s) })
    } else if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let (c, s) = SpdyTap::pair();
        Some(Taps { client: Box::new(c), server: Box::new(s) })
    } else {
        None
    }
}

/// Seconds since the session started, for the recording's timestamps.
type Clock = Box<dyn Fn() -> f64 + Send + Sync>;

/// Asks, once the stream has ended, for an exit status the stream did not carry.
pub type ExitProbe = Box<dyn FnOnce() -> Option<i32> + Send>;

/// What the tunnel's two directions share about the recording.
struct Recorder {
    recording: Box<dyn RecorderLink>,
    fail: FailMode,
    clock: Clock,
    state: Mutex<RecState>,
    /// Set once the session must end; read by the watchdog and the client-bound pump.
    ended: AtomicBool,
    down: Mutex<DownSide>,
    sockets: [TcpStream; 2],
}

struct RecState {
    active: bool,
    truncated: Option<String>,
    cast: CastWriter,
}

/// The client-bound direction: its tap and the client's write half, under one lock
/// so a goodbye message lands between frames, never inside one.
struct DownSide {
    out: WriteHalf,
    tap: Box<dyn Tap>,
    /// Whether what the client has been sent ends on a frame boundary. In fail-closed
    /// the tap runs ahead of the client by the chunk that waits for its ack.
    client_at_boundary: bool,
}

impl Recorder {
    fn seconds(&self) -> f64 {
        (self.clock)()
    }

    /// Turns tap events into event lines (`CastWriter`) and queues them. Returns the recording's
    /// offset once they are in, when there were any.
    fn record(&self, events: Vec<TapEvent>) -> Option<u64> {
        let mut st = lock(&self.state);
        if !st.active || events.is_empty() {
            return None;
        }
        let lines = st.cast.lines(self.seconds(), events);
        if lines.is_empty() {
            return None;
        }
        let sent = self.recording.send(lines.into_bytes());
        drop(st);
        match sent {
            Ok(offset) => Some(offset),
            Err(SendError::Full) => {
                self.fail(Situation::QueueFull, "the recorder is not keeping up (queue full)".into());
                None
            }
            Err(SendError::Lost(why)) => {
                self.fail(Situation::RecorderLost, why);
                None
            }
        }
    }

    /// A recording failure, decided by the failure policy.
    fn fail(&self, situation: Situation, why: String) {
        let decision = fail::decide(self.fail, situation);
        {
            let mut st = lock(&self.state);
            if st.active {
                if matches!(situation, Situation::ClientViolation | Situation::UnparsableUpstream) {
                    // The recorder still listens: the recording itself says why it ends.
                    let line = marker_line(self.seconds(), &format!("error:kubetape: {why}"));
                    let _ = self.recording.send(line.into_bytes());
                }
                st.active = false;
                st.truncated = Some(why.clone());
            } else if decision != Decision::EndSession {
                return;
            }
        }
        match decision {
            Decision::EndSession => {
                if self.ended.swap(true, Ordering::SeqCst) {
                    return;
                }
                log::warn!("ending session fail_mode={:?} situation={situation:?} reason={why}", self.fail);
                let message = match situation {
                    Situation::ClientViolation => format!("kubetape: session ended: {why}"),
                    _ => format!("kubetape: this session must be recorded and recording failed: {why}"),
                };
                let mut down = lock(&self.down);
                if down.client_at_boundary {
                    let bye = down.tap.goodbye(&message);
                    let _ = down.out.send(&bye);
                }
                for s in &self.sockets {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
            _ => log::warn!("recording stopped, session continues fail_mode={:?} situation={situation:?} reason={why}", self.fail),
        }
    }

    fn active(&self) -> bool {
        lock(&self.state).active
    }

    fn ended_error(&self) -> std::io::Error {
        std::io::Error::other("the session was ended by kubetape")
    }
}

/// The server-bound direction: tap, then forward. The tap always runs, recording or
/// not, because a client that breaks the protocol ends its session either way.
struct UpSink {
    out: WriteHalf,
    tap: Box<dyn Tap>,
    rec: Arc<Recorder>,
}

impl Sink for UpSink {
    fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        // Parsed before it is forwarded, so the server never sees a stream the
        // client-bound tap has not learned, nor a frame that breaks the rules.
        let mut events = Vec::new();
        if let Err(e) = self.tap.feed(data, &mut events) {
            self.rec.fail(Situation::ClientViolation, format!("the client broke the stream protocol: {e}"));
            return Err(self.rec.ended_error());
        }
        self.rec.record(events);
        self.out.send(data)
    }
    fn close(&mut self) {
        self.out.close();
    }
}

struct DownSink {
    rec: Arc<Recorder>,
}

impl Sink for DownSink {
    fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        let rec = &self.rec;
        let mut events = Vec::new();
        let mut down = lock(&rec.down);
        let fed = rec.active();
        let parsed = if fed { down.tap.feed(data, &mut events) } else { Ok(()) };
        // A tap no longer fed knows nothing of where frames end: no goodbye then.
        let at_boundary = fed && parsed.is_ok() && down.tap.at_boundary();
        if rec.fail == FailMode::Open {
            down.out.send(data)?;
            down.client_at_boundary = at_boundary;
            drop(down);
            match parsed {
                Ok(()) => {
                    rec.record(events);
                }
                Err(e) => rec.fail(Situation::UnparsableUpstream, format!("cannot parse the server's stream: {e}")),
            }
            return Ok(());
        }
        // Fail-closed: a chunk reaches the client only once its recording is durable.
        drop(down);
        if let Err(e) = parsed {
            rec.fail(Situation::UnparsableUpstream, format!("cannot parse the server's stream: {e}"));
        } else if let Some(offset) = rec.record(events) {
            if let Err(why) = rec.recording.wait_acked(offset, SILENT_RECORDER) {
                rec.fail(Situation::RecorderStalled, why);
            }
        }
        let mut down = lock(&rec.down);
        if rec.ended.load(Ordering::SeqCst) {
            return Err(rec.ended_error());
        }
        down.out.send(data)?;
        down.client_at_boundary = at_boundary;
        Ok(())
    }
    fn close(&mut self) {
        lock(&self.rec.down).out.close();
    }
}

/// How a recorded session ended.
pub struct Summary {
    pub totals: Option<Totals>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub sent: u64,
    pub acked: u64,
}

/// The recording side of a session: where its lines go, the fail mode that settles a
/// failure, the clock that stamps the lines, and where a missing exit status is found.
pub struct Link {
    recording: Box<dyn RecorderLink>,
    fail: FailMode,
    clock: Clock,
    exit_probe: Option<ExitProbe>,
}

impl Link {
    /// A link on the wall clock, from the session's start.
    pub fn new(recording: impl RecorderLink + 'static, fail: FailMode, exit_probe: Option<ExitProbe>) -> Link {
        let started = Instant::now();
        Link { recording: Box::new(recording), fail, clock: Box::new(move || started.elapsed().as_secs_f64()), exit_probe }
    }
}

/// Runs the tunnel with both directions tapped into the link's recording.
pub fn run(name: &str, client: (Input, WriteHalf), server: (Input, WriteHalf), taps: Taps, link: Link, subprotocol: &str) -> Summary {
    let Link { recording, fail, clock, exit_probe } = link;
    let (client_in, client_out) = client;
    let (server_in, server_out) = server;
    let sockets = match (client_in.half.shutdown_handle(), server_in.half.shutdown_handle()) {
        (Ok(a), Ok(b)) => [a, b],
        _ => {
            let (sent, acked) = recording.finish(Outcome::Truncated, None, Some("cannot clone sockets".into()));
            return Summary { totals: None, outcome: Outcome::Truncated, reason: Some("cannot clone sockets".into()), exit_code: None, sent, acked };
        }
    };
    let rec = Arc::new(Recorder {
        recording,
        fail,
        clock,
        state: Mutex::new(RecState { active: true, truncated: None, cast: CastWriter::default() }),
        ended: AtomicBool::new(false),
        down: Mutex::new(DownSide { out: client_out, tap: taps.server, client_at_boundary: true }),
        sockets,
    });
    if !subprotocol.is_empty() {
        let line = marker_line(0.0, &format!("subprotocol:{subprotocol}"));
        if rec.recording.send(line.into_bytes()).is_err() {
            rec.fail(Situation::RecorderLost, "the recorder is not accepting events".into());
        }
    }
    // Dropping `done` wakes the watchdog at once when the session ends.
    let (done, stop) = crossbeam_channel::bounded::<()>(0);
    let watchdog = {
        let rec = rec.clone();
        std::thread::Builder::new().name(format!("{name}-rec")).spawn(move || {
            while stop.recv_timeout(WATCH_INTERVAL) == Err(crossbeam_channel::RecvTimeoutError::Timeout) && !rec.ended.load(Ordering::SeqCst) {
                if rec.active() {
                    if let Some(why) = rec.recording.lost() {
                        rec.fail(Situation::RecorderLost, why);
                    }
                }
            }
        })
    };
    let up = UpSink { out: server_out, tap: taps.client, rec: rec.clone() };
    let totals = tunnel::tunnel(name, (client_in, DownSink { rec: rec.clone() }), (server_in, up)).ok();
    drop(done);
    if let Ok(w) = watchdog {
        let _ = w.join();
    }
    let Ok(rec) = Arc::try_unwrap(rec) else {
        return Summary { totals, outcome: Outcome::Truncated, reason: Some("session state still shared".into()), exit_code: None, sent: 0, acked: 0 };
    };
    let ended = rec.seconds();
    let mut st = rec.state.into_inner().unwrap_or_else(|e| e.into_inner());
    if st.cast.exit_code().is_none() {
        st.cast.learn_exit_code(exit_probe.and_then(|probe| probe()));
    }
    let tail = st.cast.finish(ended);
    let exit_code = st.cast.exit_code();
    if st.active && !tail.is_empty() {
        let _ = rec.recording.send(tail.into_bytes());
    }
    if st.truncated.is_none() {
        st.truncated = rec.recording.gaps();
    }
    let outcome = if st.truncated.is_some() { Outcome::Truncated } else { Outcome::Complete };
    // A command that failed (to start, say) says why even when the recording is whole.
    let reason = st.truncated.or_else(|| st.cast.failure().map(String::from));
    let (sent, acked) = rec.recording.finish(outcome, exit_code, reason.clone());
    Summary { totals, outcome, reason, exit_code, sent, acked }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::conn_pair;
    use crate::wire::ws;
    use std::io::{Read, Write};

    fn classify(h: &RequestHead) -> Result<Option<SessionRequest>, String> {
        let path = http::decode_path(h.path()).unwrap();
        session_request(h, &crate::kube::request_info::request_info(&h.method, &path, h.query()))
    }

    fn upgrade(mut h: RequestHead, proto: &str) -> RequestHead {
        h.headers.push("Connection", "Upgrade");
        h.headers.push("Upgrade", proto);
        h
    }

    #[test]
    fn sessions_are_recognised() {
        let h =
            upgrade(RequestHead::new("POST", "/api/v1/namespaces/default/pods/web-0/exec?command=sh&command=-c&command=echo%20hi&container=main&tty=true&stdin=true"), "SPDY/3.1");
        let s = classify(&h).unwrap().unwrap();
        assert_eq!(
            s,
            SessionRequest {
                kind: "exec",
                namespace: "default".into(),
                pod: "web-0".into(),
                container: "main".into(),
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                tty: true,
                ..SessionRequest::default()
            }
        );
        let a = RequestHead::new("GET", "/api/v1/namespaces/ns/pods/p/attach?container=c");
        assert_eq!(classify(&a), Ok(None), "not an upgrade");
        assert_eq!(classify(&upgrade(a, "websocket")).unwrap().unwrap().kind, "attach");
        let pf = upgrade(RequestHead::new("POST", "/api/v1/namespaces/ns/pods/p/portforward"), "SPDY/3.1");
        assert_eq!(classify(&pf), Ok(None));
        for encoded in [
            "/api/v1/namespaces/default/pods/web-0/%65xec",
            "/api/v1/namespaces/default/pods/web-0%2Fexec",
            "/api/v1/namespaces/default/pods/web-0/exec%2F",
            "/api/v1/namespaces/default/pods/web-0/exec/",
        ] {
            let s = classify(&upgrade(RequestHead::new("POST", &format!("{encoded}?command=id")), "SPDY/3.1")).unwrap();
            assert_eq!(s.map(|s| (s.kind, s.pod, s.command)), Some(("exec", "web-0".to_string(), vec!["id".to_string()])), "{encoded}");
        }
        for (q, tty) in [("tty=1", true), ("tty=True", true), ("tty=", true), ("tty=yes", true), ("tty=0", false), ("tty=FALSE", false), ("tty=false&tty=true", false), ("", false)]
        {
            let h = upgrade(RequestHead::new("POST", &format!("/api/v1/namespaces/d/pods/p/exec?command=sh&{q}")), "SPDY/3.1");
            assert_eq!(classify(&h).unwrap().unwrap().tty, tty, "{q}");
        }
    }

    #[test]
    fn an_attach_says_whether_it_is_a_debug_or_a_run_session() {
        let pod = serde_json::json!({
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "main", "image": "nginx", "command": ["nginx"], "args": ["-g", "daemon off;"]}],
                "ephemeralContainers": [{"name": "debugger-x", "image": "busybox", "command": ["sh"], "targetContainerName": "main"}]
            },
            "status": {"ephemeralContainerStatuses": [{"name": "debugger-x", "state": {"terminated": {"exitCode": 3}}}], "containerStatuses": [{"name": "main", "state": {"running": {}}}]}
        });
        let attach = |container: &str, pod_name: &str| SessionRequest { kind: "attach", pod: pod_name.into(), container: container.into(), ..SessionRequest::default() };
        let mut debug = attach("debugger-x", "web-0");
        describe_attach(&mut debug, &pod);
        assert_eq!((debug.kind, debug.image.as_str(), debug.target.as_str(), debug.command.clone()), ("debug", "busybox", "main", vec!["sh".to_string()]));
        let mut plain = attach("main", "web-0");
        describe_attach(&mut plain, &pod);
        assert_eq!((plain.kind, plain.command.len(), plain.image.as_str()), ("attach", 0, "nginx"), "a plain attach shows no pod command");
        let mut run_pod = pod.clone();
        run_pod["metadata"]["labels"] = serde_json::json!({"run": "web-0"});
        let mut run = attach("main", "web-0");
        describe_attach(&mut run, &run_pod);
        assert_eq!(run.kind, "run");
        let mut unknown = attach("nope", "web-0");
        describe_attach(&mut unknown, &pod);
        assert_eq!(unknown, attach("nope", "web-0"), "a container the pod does not have changes nothing");
        assert_eq!((terminated_exit_code(&pod, "debugger-x"), terminated_exit_code(&pod, "main")), (Some(3), None));
    }

    #[test]
    fn session_requests_kubetape_could_misread_are_refused() {
        let exec = |q: &str, proto: &str| upgrade(RequestHead::new("POST", &format!("/api/v1/namespaces/default/pods/web-0/exec?{q}")), proto);
        for q in ["command=rm&command=%zz&command=-rf", "command=sh;command=x", "command=%ff"] {
            assert!(classify(&exec(q, "SPDY/3.1")).is_err(), "{q}");
        }
        assert!(classify(&upgrade(RequestHead::new("POST", "/api/v1/namespaces/d/pods/p/portforward?ports=1;2"), "SPDY/3.1")).is_err());
        assert!(classify(&exec("command=id", "h2c")).is_err());
        let mut ws = exec("command=id", "websocket");
        ws.headers.push("Sec-WebSocket-Protocol", "v5.channel.k8s.io, base64.channel.k8s.io");
        assert!(classify(&ws).is_err(), "base64 text frames are not recorded");
    }

    #[test]
    fn node_proxy_to_kubelet_streams() {
        for p in [
            "/api/v1/nodes/n1/proxy/exec/default/web-0/main",
            "/api/v1/nodes/n1:10250/proxy/run/default/web-0/main",
            "/api/v1/nodes/n1/proxy/portForward/default/web-0",
            "/API/v1/Nodes/n1/Proxy/Attach/x",
            "/api/v1/proxy/nodes/n1/exec/a/b/c",
            "/api/v1/nodes/n1/proxy/cri/exec/tok",
        ] {
            assert!(reaches_kubelet_stream(p), "{p}");
        }
        for p in ["/api/v1/nodes/n1/proxy/metrics", "/api/v1/nodes/n1/proxy/containerLogs/a/b/c", "/api/v1/namespaces/default/pods/web-0/exec", "/api/v1/nodes/n1"] {
            assert!(!reaches_kubelet_stream(p), "{p}");
        }
    }

    /// How the scripted recorder misbehaves once told to.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fault {
        Lost,
        Stalled,
        QueueFull,
        /// Not the recorder: the API server sends a frame the tap cannot parse.
        UnparsableFrame,
    }

    /// What the scripted recorder was sent, and how it was ended.
    #[derive(Default)]
    struct Script {
        lines: Mutex<String>,
        /// Woken on every line sent.
        sent: std::sync::Condvar,
        fault: Mutex<Option<Fault>>,
        waited_for_acks: AtomicBool,
        ended: Mutex<Option<(Outcome, Option<String>)>>,
    }

    impl Script {
        /// Waits until the recording holds `text` (fail-open writes to the client
        /// before it records).
        fn wait_for(&self, text: &str) {
            let (lines, timeout) = self.sent.wait_timeout_while(lock(&self.lines), Duration::from_secs(10), |l| !l.contains(text)).unwrap();
            assert!(!timeout.timed_out(), "{text} was never recorded: {}", *lines);
        }
    }

    struct Scripted(Arc<Script>);

    impl RecorderLink for Scripted {
        fn send(&self, lines: Vec<u8>) -> Result<u64, SendError> {
            match *lock(&self.0.fault) {
                Some(Fault::Lost) => return Err(SendError::Lost("the recorder went away".into())),
                Some(Fault::QueueFull) => return Err(SendError::Full),
                _ => {}
            }
            let mut all = lock(&self.0.lines);
            all.push_str(&String::from_utf8_lossy(&lines));
            self.0.sent.notify_all();
            Ok(all.len() as u64)
        }
        fn wait_acked(&self, _offset: u64, _silence: Duration) -> Result<(), String> {
            self.0.waited_for_acks.store(true, Ordering::SeqCst);
            match *lock(&self.0.fault) {
                Some(Fault::Stalled) => Err("the recorder stopped acknowledging".into()),
                _ => Ok(()),
            }
        }
        fn lost(&self) -> Option<String> {
            (*lock(&self.0.fault) == Some(Fault::Lost)).then(|| "the recorder went away".into())
        }
        fn finish(self: Box<Self>, outcome: Outcome, _exit_code: Option<i32>, reason: Option<String>) -> (u64, u64) {
            *lock(&self.0.ended) = Some((outcome, reason));
            (0, 0)
        }
    }

    /// A connection: the session's end, and the test's (playing kubectl or the API server).
    fn socket_pair() -> ((Input, WriteHalf), TcpStream) {
        let (test_side, conn) = conn_pair();
        ((Input::new(conn.read), conn.write), test_side)
    }

    fn stdout(data: &[u8]) -> Vec<u8> {
        ws::encode_frame(true, ws::OP_BINARY, None, &[&[channel::STDOUT], data].concat())
    }

    /// Reads what kubectl is sent until the session closes its side.
    fn read_to_end(kubectl: &mut TcpStream) -> String {
        kubectl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = kubectl.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Every mid-session failure in both fail modes, over a WebSocket exec, with a
    /// scripted recorder and a fixed clock: what kubectl receives after the failure
    /// and what the recording says. (`NoRecorderAtStart` happens before a session
    /// exists: `fail::decide`'s table and the proxy's integration tests cover it.)
    #[test]
    fn every_recording_failure_in_both_fail_modes() {
        let faults = [Fault::Lost, Fault::Stalled, Fault::QueueFull, Fault::UnparsableFrame];
        for mode in [FailMode::Open, FailMode::Closed] {
            for fault in faults {
                let case = format!("{mode:?} × {fault:?}");
                let (client, mut kubectl) = socket_pair();
                let (server, mut apiserver) = socket_pair();
                let script = Arc::new(Script::default());
                let link = Box::new(Scripted(script.clone()));
                let session = std::thread::spawn(move || {
                    let taps = taps("websocket", "v4.channel.k8s.io").unwrap();
                    let link = Link { recording: link, fail: mode, clock: Box::new(|| 1.5), exit_probe: None };
                    run("t", client, server, taps, link, "v4.channel.k8s.io")
                });
                apiserver.write_all(&stdout(b"one")).unwrap();
                let mut first = vec![0u8; stdout(b"one").len()];
                kubectl.read_exact(&mut first).unwrap();
                assert_eq!(first, stdout(b"one"), "{case}: output before the failure arrives");
                script.wait_for(r#"[1.500000, "o", "one"]"#);

                match fault {
                    // Reserved bits set: not a frame any WebSocket peer may send.
                    Fault::UnparsableFrame => apiserver.write_all(&[0xf2, 0x00]).unwrap(),
                    f => *lock(&script.fault) = Some(f),
                }
                // The session may already be gone in fail-closed: writes can fail.
                let _ = apiserver.write_all(&stdout(b"two"));
                let _ = apiserver.shutdown(Shutdown::Write);
                let after = read_to_end(&mut kubectl);
                drop(kubectl);
                let summary = session.join().unwrap();

                let open_and_never_waiting = mode == FailMode::Open && fault == Fault::Stalled;
                let reason = match fault {
                    Fault::Lost => "the recorder went away",
                    Fault::Stalled => "the recorder stopped acknowledging",
                    Fault::QueueFull => "the recorder is not keeping up (queue full)",
                    Fault::UnparsableFrame => "cannot parse the server's stream: expected reserved bits clear",
                };
                let lines = lock(&script.lines).clone();
                let ended = lock(&script.ended).clone().unwrap();
                if open_and_never_waiting {
                    // Fail-open never waits for acknowledgements, so a stalled recorder
                    // costs the session nothing (the real client then counts it lost).
                    assert!(!script.waited_for_acks.load(Ordering::SeqCst), "{case}");
                    assert!(after.contains("two") && lines.contains(r#"[1.500000, "o", "two"]"#), "{case}: {after:?} {lines}");
                    assert_eq!((summary.outcome, ended), (Outcome::Complete, (Outcome::Complete, None)), "{case}");
                    continue;
                }
                assert_eq!(summary.outcome, Outcome::Truncated, "{case}");
                assert!(summary.reason.as_deref().is_some_and(|r| r.starts_with(reason)), "{case}: {:?}", summary.reason);
                assert_eq!(ended.0, Outcome::Truncated, "{case}");
                if fault != Fault::Stalled {
                    // (A stalled recorder was sent "two" before its ack was awaited.)
                    assert!(!lines.contains(r#""two""#), "{case}: nothing is recorded after the failure: {lines}");
                }
                if fault == Fault::UnparsableFrame {
                    assert!(lines.contains("error:kubetape: cannot parse the server's stream"), "{case}: the recording says why it ends: {lines}");
                }
                match mode {
                    FailMode::Open => assert!(after.contains("two"), "{case}: the session runs on: {after:?}"),
                    FailMode::Closed => {
                        assert!(!after.contains("two"), "{case}: unrecorded output never reaches kubectl: {after:?}");
                        assert!(after.contains("this session must be recorded and recording failed"), "{case}: kubectl is told why: {after:?}");
                    }
                }
            }
        }
    }
}
