//! Attempts to run a session the recording does not hold, for a fail-open caller
//! (alice) and a fail-closed one (bob), against `kubetape demo`:
//!
//! - SPDY protocol violations: a stream id reused with another `streamtype`, the error
//!   stream relabelled, unknown stream types, even and decreasing ids, a control frame
//!   over the tap's 1 MiB limit;
//! - WebSocket violations: text frames on a channel protocol, oversized frames and
//!   messages, a continuation without a start, unknown channels, reserved bits;
//! - paths the API server decodes (Go's `URL.Path`) to `pods/exec`, `pods/attach` or
//!   `pods/portforward` although their raw form differs, and queries Go parses to
//!   another argv than a naive parser;
//! - `nodes/NODE/proxy` routes to the kubelet's streaming endpoints.
//!
//! Every case passes in one of three ways: **refused** (a 4xx answer, and the command
//! never ran: its marker file under the pod's scratch directory does not exist),
//! **ended** (the connection closed before the command finished, within
//! [`ENDED_BOUND`] of the violation, and what reached the client is in the recording;
//! after a protocol violation the sidecar says `truncated` and why), or **recorded**
//! (every byte the client received on stdout and stderr is in the recording, exactly
//! when the command finished, with its exit code, and the recording names the
//! namespace, pod, container, argv and tty that ran). A `pods/portforward` variant,
//! which kubetape never records, passes as recorded when the proxy's API event
//! classifies it as `pods/portforward` on `default/web-0`. The test prints a summary
//! and fails if any case fails.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubetape::wire::{asciicast, channel, ws};
use serde_json::Value;
use support::streams::{self, Answer, Received, Session, Upgrade};
use support::{Demo, Kubectl, OutputExt, Proto};

/// A protocol violation must end the session within this.
const ENDED_BOUND: Duration = Duration::from_secs(5);
/// How long one session may run before the test hangs up.
const SESSION_BOUND: Duration = Duration::from_secs(20);
/// How long an attach is watched before the test hangs up.
const ATTACH_WATCH: Duration = Duration::from_millis(1500);
/// How long a recording that exists may take to be finished.
const RECORDING_SETTLE: Duration = Duration::from_secs(8);
/// How long to look for a recording when none had started by the session's end.
const RECORDING_GRACE: Duration = Duration::from_millis(700);
/// How long an API event may take to reach the recorder.
const EVENT_WAIT: Duration = Duration::from_secs(8);
/// The tap refuses control frames larger than this (src/recording/tap.rs).
const TAP_CONTROL_LIMIT: usize = 1024 * 1024;
/// The node every simulated pod runs on (src/sim/api.rs).
const NODE: &str = "kubetape-sim";
const POD_DIR: &str = "sim-data/default/web-0";
const V4: &str = "v4.channel.k8s.io";
const V5: &str = "v5.channel.k8s.io";
const SPDY_V4: Upgrade = Upgrade::Spdy(V4);
const WS_V5: Upgrade = Upgrade::WebSocket(V5);
const PF: Upgrade = Upgrade::Spdy("portforward.k8s.io");
const TICKER: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\n  namespace: default\nspec:\n  containers:\n  - name: main\n    image: busybox\n    command: [\"sh\", \"-c\", \"i=0; while true; do echo tick-$i; echo tock-$i >&2; i=$((i+1)); sleep 0.2; done\"]\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum User {
    Alice,
    Bob,
}

impl User {
    fn name(self) -> &'static str {
        match self {
            User::Alice => "alice",
            User::Bob => "bob",
        }
    }
    fn kubeconfig(self) -> &'static str {
        match self {
            User::Alice => "kubeconfig",
            User::Bob => "bob.kubeconfig",
        }
    }
    fn mode(self) -> &'static str {
        match self {
            User::Alice => "fail-open",
            User::Bob => "fail-closed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Spdy,
    WebSocket,
    Path,
    Query,
    NodeProxy,
}

impl Class {
    fn label(self) -> &'static str {
        match self {
            Class::Spdy => "spdy violations",
            Class::WebSocket => "websocket violations",
            Class::Path => "path encodings",
            Class::Query => "query encodings",
            Class::NodeProxy => "nodes/proxy",
        }
    }
    fn is_violation(self) -> bool {
        matches!(self, Class::Spdy | Class::WebSocket)
    }
}

/// What a case runs, as the API server (Go) reads the request.
#[derive(Clone, Debug)]
enum What {
    Exec {
        argv: Vec<String>,
        container: &'static str,
        tty: bool,
    },
    Attach {
        pod: &'static str,
        container: &'static str,
    },
    /// `pods/portforward` on web-0; `port` is unique to the case.
    PortForward {
        port: u16,
    },
    /// Reaches the kubelet where nothing can record it (`run`, `portForward`).
    Unrecordable,
}

/// What the test does after a 101.
#[derive(Clone, Copy)]
enum After {
    /// SPDY: sends these frames; the kubelet keeps (error, stdout, stderr) ids.
    Spdy(fn(&mut Session) -> Vec<u8>, [u32; 3]),
    /// WebSocket: sends these frames (channels 3, 1, 2).
    Ws(fn() -> Vec<u8>),
    /// Watches the output for [`ATTACH_WATCH`], then hangs up.
    Watch([u32; 3]),
    /// Hangs up at once.
    HangUp,
}

struct Case {
    class: Class,
    name: String,
    method: &'static str,
    target: String,
    upgrade: Upgrade,
    after: After,
    what: What,
    /// The command's marker file in the pod's scratch directory, or its token.
    token: String,
    marker: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Refused,
    Ended,
    Recorded,
    Failed(String),
}

/// What one attempt observed.
struct Observed {
    status: u16,
    body: String,
    error: Option<String>,
    got: Option<Received>,
    violation_at: Option<Instant>,
    ran: bool,
    recording: Option<(Value, String)>,
    recordings_new: usize,
    event: Option<Value>,
}

/// Percent-encodes every byte but RFC 3986 unreserved ones.
fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn argv(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn exec_query(script: &str) -> String {
    format!("command=sh&command=-c&command={}&container=main&stdout=true&stderr=true", enc(script))
}

/// A command that leaves a marker file and says so on both streams.
fn marker_script(token: &str) -> String {
    format!("touch {token}; echo {token}-out; echo {token}-err >&2")
}

/// A command that prints for two seconds, so a session that is not ended runs on. It
/// starts printing after half a second: a WebSocket command starts at the 101, and the
/// violation, sent right after it, should be judged before any output exists.
fn long_script(token: &str) -> String {
    format!("sleep 0.5; for i in 1 2 3 4 5 6 7 8 9 10; do echo {token}-$i; echo {token}-err-$i >&2; sleep 0.2; done")
}

const STD_IDS: [u32; 3] = [1, 3, 5];
const WS_IDS: [u32; 3] = [channel::ERROR as u32, channel::STDOUT as u32, channel::STDERR as u32];

fn open_std(s: &mut Session) -> Vec<u8> {
    let mut f = s.syn_stream(1, &[("streamtype", "error")]);
    f.extend(s.syn_stream(3, &[("streamtype", "stdout")]));
    f.extend(s.syn_stream(5, &[("streamtype", "stderr")]));
    f
}

fn then(mut f: Vec<u8>, more: Vec<u8>) -> Vec<u8> {
    f.extend(more);
    f
}

/// (name, frames after the 101, the (error, stdout, stderr) ids the kubelet keeps)
type SpdyAttack = (&'static str, fn(&mut Session) -> Vec<u8>, [u32; 3]);
/// (name, subprotocol, frames after the 101)
type WsAttack = (&'static str, &'static str, fn() -> Vec<u8>);

fn spdy_cases() -> Vec<SpdyAttack> {
    vec![
        (
            "second SYN_STREAM on stdout's id labelled stdin",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(3, &[("streamtype", "stdin")]))
            },
            STD_IDS,
        ),
        (
            "second SYN_STREAM on stdout's id labelled resize",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(3, &[("streamtype", "resize")]))
            },
            STD_IDS,
        ),
        (
            "second SYN_STREAM on stdout's id labelled error",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(3, &[("streamtype", "error")]))
            },
            STD_IDS,
        ),
        (
            "second SYN_STREAM on stdout's id labelled stdout",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(3, &[("streamtype", "stdout")]))
            },
            STD_IDS,
        ),
        (
            "second SYN_STREAM on stderr's id labelled stdin",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(5, &[("streamtype", "stdin")]))
            },
            STD_IDS,
        ),
        (
            "error stream relabelled stdout",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(1, &[("streamtype", "stdout")]))
            },
            STD_IDS,
        ),
        (
            "error stream relabelled stdin",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(1, &[("streamtype", "stdin")]))
            },
            STD_IDS,
        ),
        (
            "unknown streamtype on a new id",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(7, &[("streamtype", "bogus")]))
            },
            STD_IDS,
        ),
        (
            "unknown streamtype on stdout's id",
            |s| {
                let f = open_std(s);
                then(f, s.syn_stream(3, &[("streamtype", "bogus")]))
            },
            STD_IDS,
        ),
        (
            "even stream ids",
            |s| {
                let mut f = s.syn_stream(2, &[("streamtype", "error")]);
                f.extend(s.syn_stream(4, &[("streamtype", "stdout")]));
                f.extend(s.syn_stream(6, &[("streamtype", "stderr")]));
                f
            },
            [2, 4, 6],
        ),
        (
            "decreasing stream id",
            |s| {
                let mut f = s.syn_stream(1, &[("streamtype", "error")]);
                f.extend(s.syn_stream(5, &[("streamtype", "stdout")]));
                f.extend(s.syn_stream(7, &[("streamtype", "stderr")]));
                f.extend(s.syn_stream(3, &[("streamtype", "stdin")]));
                f
            },
            [1, 5, 7],
        ),
        (
            "control frame over the tap's limit (1 MiB header block)",
            |s| {
                let mut f = s.padded_syn_stream(1, &[("streamtype", "error")], TAP_CONTROL_LIMIT + 64 * 1024);
                f.extend(s.syn_stream(3, &[("streamtype", "stdout")]));
                f.extend(s.syn_stream(5, &[("streamtype", "stderr")]));
                f
            },
            STD_IDS,
        ),
    ]
}

fn ws_cases() -> Vec<WsAttack> {
    vec![
        ("text frame on the channel protocol", V5, || streams::ws_frame(true, ws::OP_TEXT, b"0aGVsbG8K")),
        ("text frame on v4.channel.k8s.io", V4, || streams::ws_frame(true, ws::OP_TEXT, b"0aGVsbG8K")),
        ("frame declaring more than 64 MiB", V5, || {
            let mut f = vec![0x80 | ws::OP_BINARY, 0x80 | 127];
            f.extend_from_slice(&(64u64 * 1024 * 1024 + 1).to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4]);
            f.extend(vec![0x55; 1024]);
            f
        }),
        ("resize message over 64 KiB", V5, || {
            let mut m = vec![channel::RESIZE];
            m.extend(vec![b' '; 70 * 1024]);
            streams::ws_frame(true, ws::OP_BINARY, &m)
        }),
        ("continuation without a start", V5, || streams::ws_frame(true, ws::OP_CONTINUATION, b"\x00abc")),
        ("unknown channel byte", V5, || streams::ws_frame(true, ws::OP_BINARY, b"\x09abc")),
        ("reserved bits set", V5, || {
            let mut f = streams::ws_frame(true, ws::OP_BINARY, b"\x00abc");
            f[0] |= 0x40;
            f
        }),
        ("ping over 125 bytes", V5, || streams::ws_frame(true, ws::OP_PING, &[7u8; 200])),
    ]
}

/// Every case for `user`; tokens are unique per case and user.
fn cases(user: User, addr: &str) -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    let u = &user.name()[..1];
    let mut n = 0;
    let mut token = || {
        n += 1;
        format!("bp{n:03}{u}")
    };
    let exec_what = |script: &str| What::Exec { argv: argv(script), container: "main", tty: false };

    for (name, frames, ids) in spdy_cases() {
        let t = token();
        let script = long_script(&t);
        out.push(Case {
            class: Class::Spdy,
            name: name.into(),
            method: "POST",
            target: format!("/api/v1/namespaces/default/pods/web-0/exec?{}", exec_query(&script)),
            upgrade: SPDY_V4,
            after: After::Spdy(frames, ids),
            what: exec_what(&script),
            token: t,
            marker: false,
        });
    }
    for (name, proto, frames) in ws_cases() {
        let t = token();
        let script = long_script(&t);
        let upgrade = if proto == V4 { Upgrade::WebSocket(V4) } else { WS_V5 };
        out.push(Case {
            class: Class::WebSocket,
            name: name.into(),
            method: "GET",
            target: format!("/api/v1/namespaces/default/pods/web-0/exec?{}", exec_query(&script)),
            upgrade,
            after: After::Ws(frames),
            what: exec_what(&script),
            token: t,
            marker: false,
        });
    }

    // Exec paths: `{q}` is the query.
    let exec_paths: &[(&str, &str)] = &[
        ("canonical", "/api/v1/namespaces/default/pods/web-0/exec"),
        ("%65xec", "/api/v1/namespaces/default/pods/web-0/%65xec"),
        ("exec fully percent-encoded", "/api/v1/namespaces/default/pods/web-0/%65%78%65%63"),
        ("%45xec (Exec)", "/api/v1/namespaces/default/pods/web-0/%45xec"),
        ("mixed case Exec", "/api/v1/namespaces/default/pods/web-0/Exec"),
        ("upper case EXEC", "/api/v1/namespaces/default/pods/web-0/EXEC"),
        ("web-0%2Fexec", "/api/v1/namespaces/default/pods/web-0%2Fexec"),
        ("web-0%2fexec (lower-case escape)", "/api/v1/namespaces/default/pods/web-0%2fexec"),
        ("pods%2Fweb-0%2Fexec", "/api/v1/namespaces/default/pods%2Fweb-0%2Fexec"),
        ("namespaces%2Fdefault", "/api/v1/namespaces%2Fdefault/pods/web-0/exec"),
        ("leading %2F", "/%2Fapi/v1/namespaces/default/pods/web-0/exec"),
        ("api%2Fv1", "/api%2Fv1/namespaces/default/pods/web-0/exec"),
        ("exec%2F", "/api/v1/namespaces/default/pods/web-0/exec%2F"),
        ("exec%2F%2F", "/api/v1/namespaces/default/pods/web-0/exec%2F%2F"),
        ("trailing slash", "/api/v1/namespaces/default/pods/web-0/exec/"),
        ("double slash before exec", "/api/v1/namespaces/default/pods/web-0//exec"),
        ("double slash at the start", "//api/v1/namespaces/default/pods/web-0/exec"),
        ("double slash after v1", "/api/v1//namespaces/default/pods/web-0/exec"),
        ("/./ before exec", "/api/v1/namespaces/default/pods/web-0/./exec"),
        ("/x/../ before exec", "/api/v1/namespaces/default/pods/web-0/x/../exec"),
        ("/x/%2E%2E/ before exec", "/api/v1/namespaces/default/pods/web-0/x/%2E%2E/exec"),
        ("x%2F..%2Fexec", "/api/v1/namespaces/default/pods/web-0/x%2F..%2Fexec"),
        ("%2E segment", "/api/v1/namespaces/default/pods/web-0/%2E/exec"),
        ("exec/../exec", "/api/v1/namespaces/default/pods/web-0/exec/../exec"),
        ("pod x%2F..%2Fweb-0", "/api/v1/namespaces/default/pods/x%2F..%2Fweb-0/exec"),
        ("web-0%252Fexec (double-encoded slash)", "/api/v1/namespaces/default/pods/web-0%252Fexec"),
        ("%2565xec (double-encoded e)", "/api/v1/namespaces/default/pods/web-0/%2565xec"),
        ("exec;x=y", "/api/v1/namespaces/default/pods/web-0/exec;x=y"),
        ("web-0;x/exec", "/api/v1/namespaces/default/pods/web-0;x/exec"),
        ("exec%3Bx", "/api/v1/namespaces/default/pods/web-0/exec%3Bx"),
        ("exec%00", "/api/v1/namespaces/default/pods/web-0/exec%00"),
        ("web-0%00/exec", "/api/v1/namespaces/default/pods/web-0%00/exec"),
        ("encoded namespace %64efault", "/api/v1/namespaces/%64efault/pods/web-0/exec"),
        ("encoded pod %77eb-0", "/api/v1/namespaces/default/pods/%77eb-0/exec"),
        ("encoded dash web%2D0", "/api/v1/namespaces/default/pods/web%2D0/exec"),
        ("encoded %70ods", "/api/v1/namespaces/default/%70ods/web-0/exec"),
        ("encoded %6Eamespaces", "/api/v1/%6Eamespaces/default/pods/web-0/exec"),
        ("encoded %61pi", "/%61pi/v1/namespaces/default/pods/web-0/exec"),
        ("encoded v%31", "/api/v%31/namespaces/default/pods/web-0/exec"),
        ("bad escape exec%zz", "/api/v1/namespaces/default/pods/web-0/exec%zz"),
        ("truncated escape exec%2", "/api/v1/namespaces/default/pods/web-0/exec%2"),
        ("exec%3F (encoded ?)", "/api/v1/namespaces/default/pods/web-0/exec%3F"),
        ("exec%23 (encoded #)", "/api/v1/namespaces/default/pods/web-0/exec%23"),
        ("absolute-form target", "https://ADDR/api/v1/namespaces/default/pods/web-0/exec"),
    ];
    for (name, path) in exec_paths {
        let t = token();
        let script = marker_script(&t);
        out.push(Case {
            class: Class::Path,
            name: format!("exec: {name}"),
            method: "POST",
            target: format!("{}?{}", path.replace("ADDR", addr), exec_query(&script)),
            upgrade: SPDY_V4,
            after: After::Spdy(open_std, STD_IDS),
            what: exec_what(&script),
            token: t,
            marker: true,
        });
    }
    let ws_paths: &[(&str, &str)] = &[
        ("canonical", "/api/v1/namespaces/default/pods/web-0/exec"),
        ("%65xec", "/api/v1/namespaces/default/pods/web-0/%65xec"),
        ("web-0%2Fexec", "/api/v1/namespaces/default/pods/web-0%2Fexec"),
        ("exec%2F", "/api/v1/namespaces/default/pods/web-0/exec%2F"),
    ];
    for (name, path) in ws_paths {
        let t = token();
        let script = marker_script(&t);
        out.push(Case {
            class: Class::Path,
            name: format!("exec over websocket: {name}"),
            method: "GET",
            target: format!("{path}?{}", exec_query(&script)),
            upgrade: WS_V5,
            after: After::Ws(Vec::new),
            what: exec_what(&script),
            token: t,
            marker: true,
        });
    }
    let attach_paths: &[(&str, &str, Upgrade)] = &[
        ("canonical", "/api/v1/namespaces/default/pods/ticker/attach", SPDY_V4),
        ("%61ttach", "/api/v1/namespaces/default/pods/ticker/%61ttach", SPDY_V4),
        ("ticker%2Fattach", "/api/v1/namespaces/default/pods/ticker%2Fattach", SPDY_V4),
        ("attach%2F", "/api/v1/namespaces/default/pods/ticker/attach%2F", SPDY_V4),
        ("trailing slash", "/api/v1/namespaces/default/pods/ticker/attach/", SPDY_V4),
        ("encoded namespace %64efault", "/api/v1/namespaces/%64efault/pods/ticker/attach", SPDY_V4),
        ("%61ttach over websocket", "/api/v1/namespaces/default/pods/ticker/%61ttach", WS_V5),
    ];
    for (name, path, upgrade) in attach_paths {
        let ws = matches!(upgrade, Upgrade::WebSocket(_));
        out.push(Case {
            class: Class::Path,
            name: format!("attach: {name}"),
            method: if ws { "GET" } else { "POST" },
            target: format!("{path}?container=main&stdout=true&stderr=true"),
            upgrade: *upgrade,
            after: if ws { After::Watch(WS_IDS) } else { After::Watch(STD_IDS) },
            what: What::Attach { pod: "ticker", container: "main" },
            token: token(),
            marker: false,
        });
    }
    let pf_paths: &[(&str, &str)] = &[
        ("canonical", "/api/v1/namespaces/default/pods/web-0/portforward"),
        ("%70ortforward", "/api/v1/namespaces/default/pods/web-0/%70ortforward"),
        ("web-0%2Fportforward", "/api/v1/namespaces/default/pods/web-0%2Fportforward"),
        ("portforward%2F", "/api/v1/namespaces/default/pods/web-0/portforward%2F"),
        ("trailing slash", "/api/v1/namespaces/default/pods/web-0/portforward/"),
        ("encoded namespace %64efault", "/api/v1/namespaces/%64efault/pods/web-0/portforward"),
        ("mixed case Portforward", "/api/v1/namespaces/default/pods/web-0/Portforward"),
        ("portforward%00", "/api/v1/namespaces/default/pods/web-0/portforward%00"),
    ];
    for (i, (name, path)) in pf_paths.iter().enumerate() {
        let port = 20000 + i as u16 + if user == User::Bob { 500 } else { 0 };
        out.push(Case {
            class: Class::Path,
            name: format!("portforward: {name}"),
            method: "POST",
            target: format!("{path}?ports={port}"),
            upgrade: PF,
            after: After::HangUp,
            what: What::PortForward { port },
            token: token(),
            marker: false,
        });
    }

    // Queries on the canonical exec path: `argv` is what Go's ParseQuery hands on.
    let base = "/api/v1/namespaces/default/pods/web-0/exec";
    let mut query_cases: Vec<(&str, String, What, String)> = Vec::new();
    let mut add = |name: &'static str, q: &dyn Fn(&str, &str) -> String, what: &dyn Fn(&str) -> What| {
        let t = token();
        let s = marker_script(&t);
        query_cases.push((name, q(&s, &enc(&s)), what(&s), t));
    };
    add("a %zz command between others", &|_, e| format!("command=sh&command=-c&command=%zz&command={e}&container=main&stdout=true&stderr=true"), &|s| exec_what(s));
    add("a command pair holding ';' (Go drops it)", &|_, e| format!("command=sh&command=-c&command=echo%20decoy;x&command={e}&container=main&stdout=true&stderr=true"), &|s| {
        exec_what(s)
    });
    add("'-c;' then -c", &|_, e| format!("command=sh&command=-c;&command=-c&command={e}&container=main&stdout=true&stderr=true"), &|s| exec_what(s));
    add("';' as a separator after the script", &|_, e| format!("command=sh&command=-c&command={e}&x=1;command=rm&container=main&stdout=true&stderr=true"), &|s| exec_what(s));
    add("a command ending in a bare %", &|_, e| format!("command=sh&command=-c&command=decoy%&command={e}&container=main&stdout=true&stderr=true"), &|s| exec_what(s));
    add("container=%zz before container=main", &|_, e| format!("command=sh&command=-c&command={e}&container=%zz&container=main&stdout=true&stderr=true"), &|s| exec_what(s));
    add("'+' for spaces", &|s, _| format!("command=sh&command=-c&command={}&container=main&stdout=true&stderr=true", enc(s).replace("%20", "+")), &|s| exec_what(s));
    add("%2B is a literal plus", &|s, _| format!("command=sh&command=-c&command={}%3B%20echo%20a%2Bb&container=main&stdout=true&stderr=true", enc(s)), &|s| {
        exec_what(&format!("{s}; echo a+b"))
    });
    add("encoded key %63ommand", &|_, e| format!("%63ommand=sh&%63ommand=-c&%63ommand={e}&container=main&stdout=true&stderr=true"), &|s| exec_what(s));
    add("a key with a bad escape", &|_, e| format!("command=sh&command=-c&comm%zzand=rm&command={e}&container=main&stdout=true&stderr=true"), &|s| exec_what(s));
    add("tty=false then tty=true", &|_, e| format!("command=sh&command=-c&command={e}&container=main&stdout=true&stderr=true&tty=false&tty=true"), &|s| exec_what(s));
    add("empty pairs", &|_, e| format!("&command=sh&&command=-c&&command={e}&&container=main&stdout=true&stderr=true&"), &|s| exec_what(s));
    for (name, q, what, t) in query_cases {
        out.push(Case {
            class: Class::Query,
            name: name.into(),
            method: "POST",
            target: format!("{base}?{q}"),
            upgrade: SPDY_V4,
            after: After::Spdy(open_std, STD_IDS),
            what,
            token: t,
            marker: true,
        });
    }

    // The kubelet's streaming endpoints through the API server's node proxy.
    let kubelet_query = |script: &str| format!("command=sh&command=-c&command={}&output=1&error=1", enc(script));
    let node_exec: &[(&str, &str, Upgrade)] = &[
        ("exec", "/api/v1/nodes/NODE/proxy/exec/default/web-0/main", SPDY_V4),
        ("exec over websocket", "/api/v1/nodes/NODE/proxy/exec/default/web-0/main", WS_V5),
        ("exec with a pod uid", "/api/v1/nodes/NODE/proxy/exec/default/web-0/0000-uid/main", SPDY_V4),
        ("%65xec", "/api/v1/nodes/NODE/proxy/%65xec/default/web-0/main", SPDY_V4),
        ("/./exec", "/api/v1/nodes/NODE/proxy/./exec/default/web-0/main", SPDY_V4),
        ("/x/../exec", "/api/v1/nodes/NODE/proxy/x/../exec/default/web-0/main", SPDY_V4),
        ("double slash", "/api/v1/nodes/NODE/proxy//exec/default/web-0/main", SPDY_V4),
        ("NODE%2Fproxy%2Fexec", "/api/v1/nodes/NODE%2Fproxy%2Fexec/default/web-0/main", SPDY_V4),
        ("NODE:10250", "/api/v1/nodes/NODE:10250/proxy/exec/default/web-0/main", SPDY_V4),
        ("https:NODE:10250", "/api/v1/nodes/https:NODE:10250/proxy/exec/default/web-0/main", SPDY_V4),
        ("Exec (kubelet routes are case-sensitive)", "/api/v1/nodes/NODE/proxy/Exec/default/web-0/main", SPDY_V4),
        ("legacy /api/v1/proxy/nodes", "/api/v1/proxy/nodes/NODE/exec/default/web-0/main", SPDY_V4),
    ];
    for (name, path, upgrade) in node_exec {
        let t = token();
        let s = marker_script(&t);
        let ws = matches!(upgrade, Upgrade::WebSocket(_));
        out.push(Case {
            class: Class::NodeProxy,
            name: name.to_string(),
            method: if ws { "GET" } else { "POST" },
            target: format!("{}?{}", path.replace("NODE", NODE), kubelet_query(&s)),
            upgrade: *upgrade,
            after: if ws { After::Ws(Vec::new) } else { After::Spdy(open_std, STD_IDS) },
            what: exec_what(&s),
            token: t,
            marker: true,
        });
    }
    for (name, path) in [("run", "/api/v1/nodes/NODE/proxy/run/default/web-0/main"), ("%72un", "/api/v1/nodes/NODE/proxy/%72un/default/web-0/main")] {
        let t = token();
        out.push(Case {
            class: Class::NodeProxy,
            name: name.into(),
            method: "POST",
            target: format!("{}?cmd=touch%20{t}", path.replace("NODE", NODE)),
            upgrade: Upgrade::None,
            after: After::HangUp,
            what: What::Unrecordable,
            token: t,
            marker: true,
        });
    }
    out.push(Case {
        class: Class::NodeProxy,
        name: "attach".into(),
        method: "POST",
        target: format!("/api/v1/nodes/{NODE}/proxy/attach/default/ticker/main?output=1&error=1"),
        upgrade: SPDY_V4,
        after: After::Watch(STD_IDS),
        what: What::Attach { pod: "ticker", container: "main" },
        token: token(),
        marker: false,
    });
    for (name, path) in [
        ("portForward", "/api/v1/nodes/NODE/proxy/portForward/default/web-0"),
        ("portforward (lower case)", "/api/v1/nodes/NODE/proxy/portforward/default/web-0"),
        ("port%46orward", "/api/v1/nodes/NODE/proxy/port%46orward/default/web-0"),
        ("portForward with a pod uid", "/api/v1/nodes/NODE/proxy/portForward/default/web-0/0000-uid"),
    ] {
        out.push(Case {
            class: Class::NodeProxy,
            name: name.into(),
            method: "POST",
            target: format!("{}?port=8080", path.replace("NODE", NODE)),
            upgrade: PF,
            after: After::HangUp,
            what: What::Unrecordable,
            token: token(),
            marker: false,
        });
    }
    out
}

fn user_of(meta: &Value) -> &str {
    meta["session"]["user"]["name"].as_str().unwrap_or("")
}

/// Recording ids of `user` on disk now, and whether any is still being written.
fn recording_ids(demo: &Demo, user: User) -> (BTreeSet<String>, bool) {
    let recs = demo.recordings();
    let mine = recs.iter().filter(|(m, _)| user_of(m) == user.name());
    let busy = mine.clone().any(|(m, _)| m["status"] == "recording");
    (mine.map(|(m, _)| m["id"].as_str().unwrap_or("").to_string()).collect(), busy)
}

/// Waits for `user`'s recordings not in `before` to be finished; returns them.
fn new_recordings(demo: &Demo, user: User, before: &BTreeSet<String>) -> Vec<(Value, String)> {
    let started = Instant::now();
    loop {
        let fresh: Vec<(Value, String)> = demo.recordings().into_iter().filter(|(m, _)| user_of(m) == user.name() && !before.contains(m["id"].as_str().unwrap_or(""))).collect();
        let busy = fresh.iter().any(|(m, _)| m["status"] == "recording");
        let waited = started.elapsed();
        if (!fresh.is_empty() && !busy) || waited > RECORDING_SETTLE || (fresh.is_empty() && waited > RECORDING_GRACE) {
            return fresh;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events_of(demo: &Demo, user: User) -> Vec<Value> {
    let (code, body) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/events?user={}&limit=100000", user.name()));
    if code != 200 {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&body).ok().and_then(|v| v["items"].as_array().cloned()).unwrap_or_default()
}

/// The API event of a port-forward case, found by its unique port.
fn port_forward_event(demo: &Demo, user: User, port: u16) -> Option<Value> {
    let deadline = Instant::now() + EVENT_WAIT;
    let wanted = format!("ports={port}");
    loop {
        let found = events_of(demo, user).into_iter().find(|e| e["query"].as_str().is_some_and(|q| q.split('&').any(|p| p == wanted)));
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ids_of(after: After) -> [u32; 3] {
    match after {
        After::Spdy(_, ids) | After::Watch(ids) => ids,
        After::Ws(_) => WS_IDS,
        After::HangUp => STD_IDS,
    }
}

fn run_case(demo: &Demo, user: User, case: &Case) -> Observed {
    let (before, _) = recording_ids(demo, user);
    let kubeconfig: PathBuf = demo.path(user.kubeconfig());
    let mut obs = Observed { status: 0, body: String::new(), error: None, got: None, violation_at: None, ran: false, recording: None, recordings_new: 0, event: None };
    match streams::send(&demo.proxy_addr(), &kubeconfig, case.method, &case.target, case.upgrade) {
        Err(e) => obs.error = Some(e),
        Ok(Answer::Response { status, body }) => {
            obs.status = status;
            obs.body = body;
        }
        Ok(Answer::Switched(mut s)) => {
            obs.status = 101;
            let frames = match case.after {
                After::Spdy(f, _) => f(&mut s),
                After::Ws(f) => f(),
                After::Watch(_) => match case.upgrade {
                    Upgrade::WebSocket(_) => Vec::new(),
                    _ => open_std(&mut s),
                },
                After::HangUp => Vec::new(),
            };
            if !frames.is_empty() {
                if let Err(e) = s.send(&frames) {
                    obs.error = Some(format!("sending frames: {e}"));
                }
            }
            obs.violation_at = Some(Instant::now());
            let got = match case.after {
                After::Watch(_) => {
                    s.wait(ATTACH_WATCH, |_| false);
                    s.hang_up()
                }
                After::HangUp => s.hang_up(),
                _ => {
                    s.wait(SESSION_BOUND, |_| false);
                    s.hang_up()
                }
            };
            obs.got = Some(got);
        }
    }
    let recs = new_recordings(demo, user, &before);
    obs.recordings_new = recs.len();
    obs.recording = recs.iter().find(|(_, c)| c.lines().next().is_some_and(|h| h.contains(&case.token))).cloned().or_else(|| recs.last().cloned());
    if case.marker {
        obs.ran = demo.path(POD_DIR).join(&case.token).exists();
    }
    if let (What::PortForward { port }, 101) = (&case.what, obs.status) {
        obs.event = port_forward_event(demo, user, *port);
    }
    obs
}

fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s.chars().take(120).collect();
    format!("{} bytes {s:?}", b.len())
}

fn describe_recording(rec: &Option<(Value, String)>) -> String {
    match rec {
        None => "no recording".into(),
        Some((m, cast)) => {
            let out = asciicast::recover_stream(cast, asciicast::STDOUT).unwrap_or_default();
            let err = asciicast::recover_stream(cast, asciicast::STDERR).unwrap_or_default();
            format!(
                "recording {} status={} reason={} exitCode={} command={} stdout {} stderr {}",
                m["id"].as_str().unwrap_or(""),
                m["status"],
                m["reason"],
                m["exitCode"],
                m["session"]["command"],
                preview(&out),
                preview(&err)
            )
        }
    }
}

/// Decides a case from what it observed (no I/O).
fn judge(case: &Case, obs: &Observed) -> Verdict {
    if let Some(e) = &obs.error {
        if obs.status == 0 {
            return Verdict::Failed(format!("request failed: {e}"));
        }
    }
    match obs.status {
        101 => {}
        400..=499 if obs.ran => return Verdict::Failed(format!("answered {} but the command ran (marker file exists)", obs.status)),
        400..=499 => return Verdict::Refused,
        s => {
            let ran = if obs.ran { " and the command ran" } else { "" };
            return Verdict::Failed(format!("answered {s}{ran}: {}", obs.body.chars().take(200).collect::<String>()));
        }
    }
    let got = obs.got.clone().unwrap_or_default();
    match &case.what {
        What::Unrecordable => return Verdict::Failed("switched protocols: reached the kubelet where nothing records it".into()),
        What::PortForward { .. } => {
            return match &obs.event {
                None => Verdict::Failed("port-forward switched protocols and no API event names it".into()),
                Some(e)
                    if (e["resource"].as_str(), e["subresource"].as_str(), e["namespace"].as_str(), e["name"].as_str())
                        == (Some("pods"), Some("portforward"), Some("default"), Some("web-0")) =>
                {
                    Verdict::Recorded
                }
                Some(e) => Verdict::Failed(format!(
                    "port-forward ran, but its API event says resource={} subresource={} namespace={} name={}",
                    e["resource"], e["subresource"], e["namespace"], e["name"]
                )),
            };
        }
        _ => {}
    }
    let [error_id, out_id, err_id] = ids_of(case.after);
    let (out, err) = (got.bytes(out_id).to_vec(), got.bytes(err_id).to_vec());
    let exit = channel::exit_code(got.bytes(error_id));
    // Every command here exits 0 when it runs to its end; another status (a kubelet
    // killing the process, kubetape's own goodbye) means the session was ended.
    let completed = exit == Some(0);
    let stray: Vec<String> =
        got.data.iter().filter(|(id, d)| ![error_id, out_id, err_id].contains(id) && !d.is_empty()).map(|(id, d)| format!("stream {id}: {}", preview(d))).collect();
    let client = format!("client: stdout {} stderr {} exit {exit:?}{}", preview(&out), preview(&err), if stray.is_empty() { String::new() } else { format!(" other {stray:?}") });
    let recorded = obs
        .recording
        .as_ref()
        .map(|(m, cast)| (m, asciicast::recover_stream(cast, asciicast::STDOUT).unwrap_or_default(), asciicast::recover_stream(cast, asciicast::STDERR).unwrap_or_default()));
    let fail = |why: &str| Verdict::Failed(format!("{why}; {client}; {} ({} new)", describe_recording(&obs.recording), obs.recordings_new));

    let ended_at = got.closed.zip(obs.violation_at).map(|(c, v)| c.saturating_duration_since(v));
    if let (Some(took), false) = (ended_at, completed) {
        if took > ENDED_BOUND {
            return fail(&format!("the connection closed {took:?} after the violation, later than {ENDED_BOUND:?}"));
        }
        let held = match &recorded {
            None => out.is_empty() && err.is_empty() && stray.is_empty(),
            Some((_, ro, re)) => ro.starts_with(&out) && re.starts_with(&err) && stray.is_empty(),
        };
        if !held {
            return fail("ended, but output reached the client that the recording does not hold");
        }
        if case.class.is_violation() {
            if let Some((m, _, _)) = &recorded {
                if m["status"] != "truncated" || m["reason"].as_str().is_none_or(str::is_empty) {
                    return fail("ended, but the sidecar does not say why (expected status truncated with a reason)");
                }
            }
        }
        return Verdict::Ended;
    }
    let watched = matches!(case.after, After::Watch(_));
    if !completed && !watched {
        return fail(&format!("the session neither finished nor ended within {SESSION_BOUND:?}"));
    }
    let Some((meta, rec_out, rec_err)) = recorded else {
        if out.is_empty() && err.is_empty() && stray.is_empty() && !obs.ran {
            return Verdict::Recorded; // nothing happened that a recording could hold
        }
        return fail(if obs.ran { "the command ran and there is no recording" } else { "output reached the client and there is no recording" });
    };
    if !stray.is_empty() {
        return fail("output on a stream the kubelet does not write");
    }
    let same = if completed { rec_out == out && rec_err == err } else { rec_out.starts_with(&out) && rec_err.starts_with(&err) };
    if !same {
        return fail(if completed { "the recording's stdout/stderr differ from what the client received" } else { "the client received output the recording does not hold" });
    }
    if completed && meta["exitCode"].as_i64() != exit.map(i64::from) {
        return fail("the recording's exit code differs from the one the client received");
    }
    let sess = &meta["session"];
    let mut wrong = Vec::new();
    let mut check = |field: &str, want: Value| {
        if sess[field] != want {
            wrong.push(format!("{field}: recorded {} but {want} ran", sess[field]));
        }
    };
    match &case.what {
        What::Exec { argv, container, tty } => {
            check("type", "exec".into());
            check("namespace", "default".into());
            check("pod", "web-0".into());
            check("container", (*container).into());
            check("command", serde_json::json!(argv));
            check("tty", (*tty).into());
        }
        What::Attach { pod, container } => {
            check("type", "attach".into());
            check("namespace", "default".into());
            check("pod", (*pod).into());
            check("container", (*container).into());
        }
        What::PortForward { .. } | What::Unrecordable => {}
    }
    if !wrong.is_empty() {
        return fail(&format!("the recording misnames the session: {}", wrong.join(", ")));
    }
    Verdict::Recorded
}

struct Outcome {
    user: User,
    class: Class,
    name: String,
    verdict: Verdict,
    marker: Option<PathBuf>,
}

fn run_all(demo: &Demo, user: User) -> Vec<Outcome> {
    let mut out = Vec::new();
    for case in cases(user, &demo.proxy_addr()) {
        let obs = run_case(demo, user, &case);
        let verdict = judge(&case, &obs);
        let tag = match &verdict {
            Verdict::Refused => format!("refused {}", obs.status),
            Verdict::Ended => "ended".into(),
            Verdict::Recorded => "recorded".into(),
            Verdict::Failed(_) => "FAILED".into(),
        };
        println!("[{} {}] {}: {} -> {tag}", user.name(), user.mode(), case.class.label(), case.name);
        let marker = (case.marker && verdict == Verdict::Refused).then(|| demo.path(POD_DIR).join(&case.token));
        out.push(Outcome { user, class: case.class, name: case.name, verdict, marker });
    }
    out
}

#[test]
fn no_session_runs_unrecorded_whatever_the_client_sends() {
    let demo = Demo::start();
    let admin = Kubectl::new(&demo, "admin.kubeconfig", "1.32", Proto::WebSocket);
    let out = admin.run_timeout(&["apply", "-f", "-"], Some(TICKER.as_bytes()), Duration::from_secs(30));
    assert!(out.status.success(), "creating the ticker pod: {}", out.describe());
    demo.wait_for_pod("ticker");

    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let runs: Vec<_> = [User::Alice, User::Bob]
            .into_iter()
            .map(|u| {
                s.spawn({
                    let demo = &demo;
                    move || run_all(demo, u)
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().expect("a case runner panicked")).collect()
    });

    // A refused command must not run later either.
    let mut outcomes = outcomes;
    for o in outcomes.iter_mut() {
        if let Some(m) = &o.marker {
            if m.exists() {
                o.verdict = Verdict::Failed(format!("refused, but its command ran later ({} exists)", m.display()));
            }
        }
    }

    let count = |f: &dyn Fn(&Verdict) -> bool, sel: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| sel(o) && f(&o.verdict)).count();
    let line = |label: &str, sel: &dyn Fn(&Outcome) -> bool| {
        format!(
            "{label:<34} tried {:>3}  refused {:>3}  ended {:>3}  recorded {:>3}  failed {:>3}",
            count(&|_| true, sel),
            count(&|v| *v == Verdict::Refused, sel),
            count(&|v| *v == Verdict::Ended, sel),
            count(&|v| *v == Verdict::Recorded, sel),
            count(&|v| matches!(v, Verdict::Failed(_)), sel),
        )
    };
    let mut summary = vec!["\n==== bypass summary ====".to_string(), line("all", &|_| true)];
    for user in [User::Alice, User::Bob] {
        summary.push(line(&format!("{} ({})", user.name(), user.mode()), &|o| o.user == user));
        for class in [Class::Spdy, Class::WebSocket, Class::Path, Class::Query, Class::NodeProxy] {
            summary.push(line(&format!("  {}", class.label()), &|o| o.user == user && o.class == class));
        }
    }
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.verdict {
            Verdict::Failed(why) => Some(format!("- [{} {}] {}: {}\n    {why}", o.user.name(), o.user.mode(), o.class.label(), o.name)),
            _ => None,
        })
        .collect();
    summary.push(format!("==== {} failures ====", failures.len()));
    summary.extend(failures.iter().cloned());
    println!("{}", summary.join("\n"));
    assert!(failures.is_empty(), "{} of {} cases ran unrecorded or misrecorded (summary above)", failures.len(), outcomes.len());
}

/// The decision alone, from made-up observations.
#[test]
fn judge_table() {
    let status = |code: i32| serde_json::to_vec(&channel::exit_status(code, &[])).unwrap();
    let exec = |class: Class| Case {
        class,
        name: "t".into(),
        method: "POST",
        target: String::new(),
        upgrade: SPDY_V4,
        after: After::Spdy(open_std, STD_IDS),
        what: What::Exec { argv: argv("x"), container: "main", tty: false },
        token: "tok".into(),
        marker: true,
    };
    let got = |out: &[u8], exit: Option<i32>, closed: bool| {
        let mut r = Received::default();
        r.data.insert(3, out.to_vec());
        if let Some(c) = exit {
            r.data.insert(1, status(c));
        }
        r.closed = closed.then(Instant::now);
        r
    };
    let rec = |out: &str, st: &str, exit: Option<i32>| {
        let meta = serde_json::json!({"id": "r", "status": st, "reason": if st == "truncated" { "why" } else { "" }, "exitCode": exit,
            "session": {"type": "exec", "namespace": "default", "pod": "web-0", "container": "main", "command": ["sh", "-c", "x"], "tty": false}});
        let cast = format!("{{\"version\":2,\"tok\":1}}\n{}\n", asciicast::event_line(0.0, "o", out));
        (meta, cast)
    };
    let obs = |status: u16, got: Option<Received>, ran: bool, recording: Option<(Value, String)>| Observed {
        status,
        body: String::new(),
        error: None,
        got,
        violation_at: Some(Instant::now() - Duration::from_millis(10)),
        ran,
        recording,
        recordings_new: 0,
        event: None,
    };
    let failed = |v: Verdict| matches!(v, Verdict::Failed(_));
    assert_eq!(judge(&exec(Class::Path), &obs(404, None, false, None)), Verdict::Refused);
    assert!(failed(judge(&exec(Class::Path), &obs(404, None, true, None))), "a refusal after which the command ran");
    assert!(failed(judge(&exec(Class::Path), &obs(200, None, true, None))));
    assert_eq!(judge(&exec(Class::Path), &obs(101, Some(got(b"hi\n", Some(0), true)), true, Some(rec("hi\n", "complete", Some(0))))), Verdict::Recorded);
    assert!(failed(judge(&exec(Class::Path), &obs(101, Some(got(b"hi\n", Some(0), true)), true, Some(rec("", "complete", Some(0)))))), "output missing");
    assert!(failed(judge(&exec(Class::Path), &obs(101, Some(got(b"hi\n", Some(0), true)), true, Some(rec("hi\n", "complete", None))))), "exit missing");
    assert!(failed(judge(&exec(Class::Path), &obs(101, Some(got(b"hi\n", Some(0), true)), true, None))), "no recording");
    assert_eq!(judge(&exec(Class::Spdy), &obs(101, Some(got(b"", None, true)), false, Some(rec("", "truncated", None)))), Verdict::Ended);
    assert!(failed(judge(&exec(Class::Spdy), &obs(101, Some(got(b"", None, true)), false, Some(rec("", "complete", None))))), "ended, sidecar silent");
    assert!(failed(judge(&exec(Class::Spdy), &obs(101, Some(got(b"leak", Some(137), true)), false, Some(rec("", "truncated", None))))), "ended after a leak");
    let mut pf = exec(Class::Path);
    pf.what = What::PortForward { port: 1 };
    let mut o = obs(101, Some(Received::default()), false, None);
    o.event = Some(serde_json::json!({"resource": "pods", "subresource": "portforward", "namespace": "default", "name": "web-0"}));
    assert_eq!(judge(&pf, &o), Verdict::Recorded);
    o.event = Some(serde_json::json!({"resource": "pods", "subresource": "%70ortforward", "namespace": "default", "name": "web-0"}));
    assert!(failed(judge(&pf, &o)));
}
