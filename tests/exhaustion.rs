//! Capacity is for those who authenticated: connections that have not proved an
//! identity cannot take the slots of callers who have, on the proxy, on the recorder,
//! or through their metrics listeners.
//!
//! Floods come from loopback addresses other than 127.0.0.1 (all of 127/8 is local)
//! and are sustained: a connection the server closes is opened again a second later,
//! so the load holds while kubectl runs. Three kinds: TCP connections that never
//! start TLS (on the metrics listener: never send a request), TLS handshakes
//! completed without a client certificate that then sit idle, and ClientHellos
//! trickled one byte every 200 ms. While a flood holds, alice's `kubectl get pods`
//! and exec and bob's fail-closed exec (which needs the recorder) must succeed, the
//! server must hold no more flood connections than its pool allows, and must close
//! each one within its bound (TLS handshake 5 s, first request head 10 s, metrics
//! 5 s) plus a slack for a loaded machine. The assertions are on what kubectl and
//! the servers' sockets do, never on their logs. Bounded: at most 1,100 flood
//! connections at once, each test about a minute at most.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{connect_from, Demo, Kubectl, OutputExt, Proto};

/// The limits the small-limit cases start the servers with.
const SMALL_LIMITS: &[&str] = &["--max-unauthenticated", "16", "--max-connections", "64"];
const SMALL_MAX_UNAUTHENTICATED: usize = 16;
/// The defaults (README, Limits).
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_MAX_UNAUTHENTICATED: usize = 256;
const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 32;
/// The metrics listener's own bound.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// A TLS handshake must finish within this.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(5);
/// An unauthenticated connection must send its first request head within this.
const FIRST_HEAD_BOUND: Duration = Duration::from_secs(10);
/// A metrics connection is closed after this.
const METRICS_BOUND: Duration = Duration::from_secs(5);
/// Added to every bound: timers on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// A flood connection counts as held once it has been open this long (one the server
/// refuses at once is closed well before).
const SETTLED: Duration = Duration::from_secs(1);
/// Each kubectl command gets this long.
const KUBECTL_LIMIT: Duration = Duration::from_secs(15);
/// The servers' open file descriptors may exceed their idle count by this much
/// beyond the metrics bound while callers come and go.
const FD_SLACK: usize = 16;
/// Descriptors one served connection holds: the socket, the read and write halves'
/// clones, and the pool's handle for closing it.
const FDS_PER_CONNECTION: usize = 4;
/// The metrics floods run against a process whose RLIMIT_NOFILE is this: 500
/// connections then do what 7,000 did at this machine's limit of 20,000.
const METRICS_TEST_NOFILE: u64 = 256;

/// Floods compete for two cores with the servers they flood: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    support::raise_nofile();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// TCP connected, nothing sent.
    Silent,
    /// TLS handshake completed without a client certificate, then nothing.
    CertlessIdle,
    /// A ClientHello, one byte every `TRICKLE_INTERVAL`.
    Trickle,
}

const TRICKLE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the flood looks at its connections.
const TICK: Duration = Duration::from_millis(50);
/// A slot whose connection was closed or refused opens a new one after this.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Connections one flood worker opens per tick at most.
const OPEN_PER_TICK: usize = 50;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// `n` loopback source addresses starting at `first`.
fn sources(first: Ipv4Addr, n: u32) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::from(u32::from(first) + i)).collect()
}

struct FloodConn {
    sock: TcpStream,
    opened: Instant,
    hello: Vec<u8>,
    sent: usize,
}

struct Slot {
    src: Ipv4Addr,
    conn: Option<FloodConn>,
    retry_at: Instant,
}

#[derive(Default, Clone)]
struct Stats {
    opened: usize,
    refused: usize,
    closed_by_server: usize,
    /// The longest a connection lived before the server closed it.
    longest_closed: Duration,
}

#[derive(Default)]
struct Shared {
    stats: Stats,
    /// Per worker: (source, opened) of each open connection, as of its last tick.
    open: Vec<Vec<(Ipv4Addr, Instant)>>,
}

/// Connections held open against one address until dropped.
struct Flood {
    name: String,
    started: Instant,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    workers: Vec<JoinHandle<()>>,
}

fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn client_hello(tls: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut c = rustls::ClientConnection::new(tls.clone(), name).expect("client connection");
    let mut hello = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut hello).expect("ClientHello");
    }
    hello
}

fn open(kind: Kind, src: Ipv4Addr, target: SocketAddrV4, tls: &Option<Arc<rustls::ClientConfig>>) -> std::io::Result<FloodConn> {
    let mut sock = connect_from(src, target, CONNECT_TIMEOUT)?;
    let opened = Instant::now();
    let mut hello = Vec::new();
    match kind {
        Kind::Silent => {}
        Kind::Trickle => hello = client_hello(tls.as_ref().expect("a TLS flood needs a client config")),
        Kind::CertlessIdle => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
            let config = tls.as_ref().expect("a TLS flood needs a client config").clone();
            let mut c = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
            sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
            while c.is_handshaking() {
                c.complete_io(&mut sock)?;
            }
            while c.wants_write() {
                c.write_tls(&mut sock)?;
            }
        }
    }
    sock.set_nonblocking(true)?;
    Ok(FloodConn { sock, opened, hello, sent: 0 })
}

/// Tends `slots` until `stop`: opens what is missing, trickles, notices closes.
fn work(kind: Kind, target: SocketAddrV4, tls: Option<Arc<rustls::ClientConfig>>, mut slots: Vec<Slot>, index: usize, stop: Arc<AtomicBool>, shared: Arc<Mutex<Shared>>) {
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut opened_now = 0;
        let mut delta = Stats::default();
        for slot in slots.iter_mut() {
            match slot.conn.as_mut() {
                None if slot.retry_at <= now && opened_now < OPEN_PER_TICK => {
                    opened_now += 1;
                    match open(kind, slot.src, target, &tls) {
                        Ok(c) => {
                            delta.opened += 1;
                            slot.conn = Some(c);
                        }
                        Err(_) => {
                            delta.refused += 1;
                            slot.retry_at = Instant::now() + REOPEN_AFTER;
                        }
                    }
                }
                None => {}
                Some(c) => {
                    let mut gone = false;
                    if kind == Kind::Trickle {
                        let due = (c.opened.elapsed().as_millis() / TRICKLE_INTERVAL.as_millis()) as usize + 1;
                        while c.sent < due.min(c.hello.len()) && !gone {
                            match c.sock.write(&c.hello[c.sent..c.sent + 1]) {
                                Ok(_) => c.sent += 1,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                                Err(_) => gone = true,
                            }
                        }
                    }
                    if gone || closed_by_peer(&mut c.sock) {
                        delta.closed_by_server += 1;
                        delta.longest_closed = delta.longest_closed.max(c.opened.elapsed());
                        slot.conn = None;
                        slot.retry_at = Instant::now() + REOPEN_AFTER;
                    }
                }
            }
        }
        {
            let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
            sh.stats.opened += delta.opened;
            sh.stats.refused += delta.refused;
            sh.stats.closed_by_server += delta.closed_by_server;
            sh.stats.longest_closed = sh.stats.longest_closed.max(delta.longest_closed);
            sh.open[index] = slots.iter().filter_map(|s| s.conn.as_ref().map(|c| (s.src, c.opened))).collect();
        }
        std::thread::sleep(TICK);
    }
}

impl Flood {
    /// Starts `count` connections of `kind` to `target`, spread evenly over `srcs`.
    fn start(name: &str, kind: Kind, target: SocketAddrV4, count: usize, srcs: &[Ipv4Addr], tls: Option<Arc<rustls::ClientConfig>>) -> Flood {
        // Handshakes cost CPU on both ends: more hands for them.
        let workers_n = if kind == Kind::CertlessIdle { 4.min(count.div_ceil(50)) } else { 1 };
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared { open: vec![Vec::new(); workers_n], ..Default::default() }));
        let now = Instant::now();
        let mut per_worker: Vec<Vec<Slot>> = (0..workers_n).map(|_| Vec::new()).collect();
        for i in 0..count {
            per_worker[i % workers_n].push(Slot { src: srcs[i % srcs.len()], conn: None, retry_at: now });
        }
        let workers = per_worker
            .into_iter()
            .enumerate()
            .map(|(index, slots)| {
                let (stop, shared, tls) = (stop.clone(), shared.clone(), tls.clone());
                std::thread::Builder::new().name(format!("flood-{name}-{index}")).spawn(move || work(kind, target, tls, slots, index, stop, shared)).expect("flood thread")
            })
            .collect();
        Flood { name: name.to_string(), started: now, stop, shared, workers }
    }

    fn snapshot(&self) -> (Stats, Vec<(Ipv4Addr, Instant)>) {
        let sh = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        (sh.stats.clone(), sh.open.iter().flatten().copied().collect())
    }

    /// Open connections older than [`SETTLED`]: those the server holds.
    fn held(&self) -> (usize, usize) {
        let (_, open) = self.snapshot();
        let held: Vec<Ipv4Addr> = open.iter().filter(|(_, t)| t.elapsed() >= SETTLED).map(|(s, _)| *s).collect();
        let mut per: std::collections::HashMap<Ipv4Addr, usize> = Default::default();
        for s in &held {
            *per.entry(*s).or_default() += 1;
        }
        (held.len(), per.values().copied().max().unwrap_or(0))
    }

    /// The longest any connection has lived: closed by the server, or still open.
    fn longest_life(&self) -> Duration {
        let (stats, open) = self.snapshot();
        open.iter().map(|(_, t)| t.elapsed()).fold(stats.longest_closed, Duration::max)
    }

    fn describe(&self) -> String {
        let (s, open) = self.snapshot();
        let (held, per_source) = self.held();
        format!(
            "{}: {:.1}s old, opened={} refused_or_failed={} closed_by_server={} open={} held={held} (most from one source {per_source}) longest_life={:.1}s",
            self.name,
            self.started.elapsed().as_secs_f64(),
            s.opened,
            s.refused,
            s.closed_by_server,
            open.len(),
            self.longest_life().as_secs_f64()
        )
    }

    /// Waits until every slot has had a first go, so the load is in place.
    fn wait_filled(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (s, _) = self.snapshot();
            if s.opened + s.refused >= count {
                break;
            }
            assert!(Instant::now() < deadline, "flood not in place in 40s: {}", self.describe());
            std::thread::sleep(TICK);
        }
        // Let the server sort the last ones into held and refused.
        std::thread::sleep(SETTLED + Duration::from_millis(500));
        eprintln!("exhaustion: flood in place: {}", self.describe());
    }

    /// Err unless the server holds at most `max` (and `per_source` from one address).
    fn check_held(&self, max: usize, per_source: Option<usize>) -> Option<String> {
        let (held, most) = self.held();
        let mut bad = Vec::new();
        if held > max {
            bad.push(format!("the server holds {held} unauthenticated connections, its pool is {max}"));
        }
        if let Some(p) = per_source.filter(|p| most > *p) {
            bad.push(format!("the server holds {most} unauthenticated connections from one source, the cap is {p}"));
        }
        (!bad.is_empty()).then(|| format!("{}; {}", bad.join("; "), self.describe()))
    }

    /// Waits until the flood is older than `bound + SLACK` (so any connection held
    /// past it would show), then Err if one lived longer.
    fn check_closed_within(&self, bound: Duration) -> Option<String> {
        let limit = bound + SLACK;
        while self.started.elapsed() < limit + SETTLED {
            std::thread::sleep(TICK);
        }
        let (stats, _) = self.snapshot();
        assert!(stats.opened > 0, "the flood opened no connection at all: {}", self.describe());
        let longest = self.longest_life();
        (longest > limit).then(|| format!("a connection was held {:.1}s, the bound is {bound:?} (+{SLACK:?} slack); {}", longest.as_secs_f64(), self.describe()))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A client config trusting `pki/<ca>` that presents no certificate.
fn certless(demo: &Demo, ca: &str) -> Arc<rustls::ClientConfig> {
    support::init_crypto();
    let pem = std::fs::read(demo.path("pki").join(ca)).expect("CA file");
    let roots = kubetape::net::tls::roots_from_pem(&pem, ca).expect("roots");
    kubetape::net::tls::client_config(roots, None).expect("client config")
}

fn addr(demo: &Demo, component: &str) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, demo.listen_port(component))
}

fn metrics_addr(listen: &str) -> SocketAddrV4 {
    listen.parse().expect("a host:port metrics address")
}

/// A complete recording whose output holds `word`, within a few seconds.
fn recorded(demo: &Demo, word: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if demo.recordings().iter().any(|(m, c)| m["status"] == "complete" && c.contains(word)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// alice's `get pods` and exec, bob's fail-closed exec: what goes wrong, if anything.
fn callers_get_through(demo: &Demo, tag: &str, check_recorded: bool) -> Vec<String> {
    let alice = Kubectl::new(demo, "kubeconfig", "1.32", Proto::WebSocket);
    let bob = Kubectl::new(demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    let mut failures = Vec::new();
    let t = Instant::now();
    let out = alice.run_timeout(&["get", "pods"], None, KUBECTL_LIMIT);
    if !(out.status.success() && out.stdout_str().contains("web-0")) {
        failures.push(format!("alice's kubectl get pods failed under the flood ({:.1}s): {}", t.elapsed().as_secs_f64(), out.describe()));
    }
    for (who, k) in [("alice", &alice), ("bob", &bob)] {
        let word = format!("ok-{who}-{tag}");
        let t = Instant::now();
        let out = k.run_timeout(&["exec", "web-0", "--", "echo", &word], None, KUBECTL_LIMIT);
        if !(out.status.success() && out.stdout_str() == word) {
            failures.push(format!("{who}'s kubectl exec failed under the flood ({:.1}s): {}", t.elapsed().as_secs_f64(), out.describe()));
        } else if check_recorded && !recorded(demo, &word) {
            failures.push(format!("{who}'s session under the flood has no complete recording: {:#?}", demo.recordings().iter().map(|(m, _)| m.clone()).collect::<Vec<_>>()));
        }
    }
    failures
}

/// One plain-HTTP `GET /metrics`: Ok(body) for a 200 that names `metric`.
fn scrape(addr: SocketAddrV4, metric: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.starts_with("HTTP/1.1 200") && text.contains(metric) {
        Ok(text)
    } else {
        Err(format!("read={read:?} response={:?}", text.chars().take(300).collect::<String>()))
    }
}

fn report(test: &str, started: Instant, failures: Vec<String>) {
    eprintln!("exhaustion: {test} took {:.1}s", started.elapsed().as_secs_f64());
    for f in &failures {
        eprintln!("exhaustion:   FAIL {f}");
    }
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n"));
}

/// The proxy with small limits, one flood of `kind`: callers get through, the flood
/// is held to its pool and closed within `bound`.
fn proxy_small_limits(test: &str, kind: Kind, bound: Duration) {
    let _serial = serial();
    let started = Instant::now();
    let demo = Demo::start();
    demo.kill("proxy");
    let _proxy = demo.restart_with("proxy", SMALL_LIMITS, None);
    let count = 300;
    let flood = Flood::start(&format!("{kind:?}"), kind, addr(&demo, "proxy"), count, &sources(Ipv4Addr::new(127, 0, 0, 2), 10), Some(certless(&demo, "proxy-ca.pem")));
    flood.wait_filled(count);
    let mut failures = flood.check_held(SMALL_MAX_UNAUTHENTICATED, Some(MAX_UNAUTHENTICATED_PER_SOURCE)).into_iter().collect::<Vec<_>>();
    failures.extend(callers_get_through(&demo, test, false));
    failures.extend(flood.check_closed_within(bound));
    eprintln!("exhaustion: {}", flood.describe());
    report(test, started, failures);
}

#[test]
fn proxy_tcp_connections_that_never_start_tls_leave_room_for_callers() {
    proxy_small_limits("proxy_silent", Kind::Silent, HANDSHAKE_BOUND);
}

#[test]
fn proxy_certless_tls_connections_left_idle_leave_room_for_callers() {
    proxy_small_limits("proxy_certless_idle", Kind::CertlessIdle, FIRST_HEAD_BOUND);
}

#[test]
fn proxy_handshakes_trickled_a_byte_at_a_time_leave_room_for_callers() {
    proxy_small_limits("proxy_trickle", Kind::Trickle, HANDSHAKE_BOUND);
}

/// The defaults, and more certless connections than `--max-connections`: today's
/// lock-out of authenticated users.
#[test]
fn proxy_default_limits_certless_flood_past_max_connections_leaves_room_for_callers() {
    let test = "proxy_defaults";
    let _serial = serial();
    let started = Instant::now();
    let demo = Demo::start();
    let tls = Some(certless(&demo, "proxy-ca.pem"));
    let mut failures = Vec::new();
    {
        let one = Flood::start("one-source", Kind::CertlessIdle, addr(&demo, "proxy"), 100, &[Ipv4Addr::new(127, 0, 1, 1)], tls.clone());
        one.wait_filled(100);
        failures.extend(one.check_held(DEFAULT_MAX_UNAUTHENTICATED, Some(MAX_UNAUTHENTICATED_PER_SOURCE)));
    }
    let count = DEFAULT_MAX_CONNECTIONS + 76;
    let flood = Flood::start("certless-1100", Kind::CertlessIdle, addr(&demo, "proxy"), count, &sources(Ipv4Addr::new(127, 0, 2, 1), 40), tls);
    flood.wait_filled(count);
    failures.extend(flood.check_held(DEFAULT_MAX_UNAUTHENTICATED, Some(MAX_UNAUTHENTICATED_PER_SOURCE)));
    failures.extend(callers_get_through(&demo, test, false));
    failures.extend(flood.check_closed_within(FIRST_HEAD_BOUND));
    eprintln!("exhaustion: {}", flood.describe());
    report(test, started, failures);
}

/// The recorder with small limits, all three floods at once: the proxy still gets
/// its sessions recorded, so fail-closed runs and fail-open is recorded.
#[test]
fn recorder_unauthenticated_floods_leave_room_for_the_proxy() {
    let test = "recorder_small";
    let _serial = serial();
    let started = Instant::now();
    let demo = Demo::start();
    demo.kill("recorder");
    let _recorder = demo.restart_with("recorder", SMALL_LIMITS, None);
    let tls = Some(certless(&demo, "recorder-ca.pem"));
    let target = addr(&demo, "recorder");
    let floods = [
        (Flood::start("silent", Kind::Silent, target, 100, &sources(Ipv4Addr::new(127, 0, 4, 1), 4), tls.clone()), HANDSHAKE_BOUND),
        (Flood::start("certless-idle", Kind::CertlessIdle, target, 100, &sources(Ipv4Addr::new(127, 0, 5, 1), 4), tls.clone()), FIRST_HEAD_BOUND),
        (Flood::start("trickle", Kind::Trickle, target, 100, &sources(Ipv4Addr::new(127, 0, 6, 1), 4), tls), HANDSHAKE_BOUND),
    ];
    for (f, _) in &floods {
        f.wait_filled(100);
    }
    let mut failures = Vec::new();
    let held: usize = floods.iter().map(|(f, _)| f.held().0).sum();
    if held > SMALL_MAX_UNAUTHENTICATED {
        let each: Vec<String> = floods.iter().map(|(f, _)| f.describe()).collect();
        failures.push(format!("the recorder holds {held} unauthenticated connections, its pool is {SMALL_MAX_UNAUTHENTICATED}; {}", each.join("; ")));
    }
    failures.extend(callers_get_through(&demo, test, true));
    for (f, bound) in &floods {
        failures.extend(f.check_closed_within(*bound));
        eprintln!("exhaustion: {}", f.describe());
    }
    report(test, started, failures);
}

/// The recorder's defaults, and more certless connections than `--max-connections`:
/// today fail-closed sessions are refused and fail-open ones go unrecorded.
#[test]
fn recorder_default_limits_certless_flood_past_max_connections_leaves_room_for_the_proxy() {
    let test = "recorder_defaults";
    let _serial = serial();
    let started = Instant::now();
    let demo = Demo::start();
    let count = DEFAULT_MAX_CONNECTIONS + 76;
    let flood =
        Flood::start("certless-1100", Kind::CertlessIdle, addr(&demo, "recorder"), count, &sources(Ipv4Addr::new(127, 0, 7, 1), 40), Some(certless(&demo, "recorder-ca.pem")));
    flood.wait_filled(count);
    let mut failures: Vec<String> = flood.check_held(DEFAULT_MAX_UNAUTHENTICATED, Some(MAX_UNAUTHENTICATED_PER_SOURCE)).into_iter().collect();
    failures.extend(callers_get_through(&demo, test, true));
    failures.extend(flood.check_closed_within(FIRST_HEAD_BOUND));
    eprintln!("exhaustion: {}", flood.describe());
    report(test, started, failures);
}

/// 500 idle connections on a metrics listener: its own bound of 16, so the process
/// keeps its file descriptors and its main listener; one fresh scrape afterwards.
fn metrics_flood(test: &str, demo: &Demo, pid: u32, metrics: SocketAddrV4, metric: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let baseline = support::open_fds(pid);
    let count = 500;
    let flood = Flood::start("metrics-500", Kind::Silent, metrics, count, &sources(Ipv4Addr::new(127, 0, 3, 1), 20), None);
    flood.wait_filled(count);
    let fds = support::open_fds(pid);
    if fds > baseline + METRICS_MAX_CONNECTIONS * FDS_PER_CONNECTION + FD_SLACK {
        failures.push(format!("the process holds {fds} file descriptors under the flood, {baseline} before (metrics bound {METRICS_MAX_CONNECTIONS}); {}", flood.describe()));
    }
    failures.extend(callers_get_through(demo, test, true));
    failures.extend(flood.check_closed_within(METRICS_BOUND));
    eprintln!("exhaustion: {} fds={baseline}->{fds}", flood.describe());
    drop(flood);
    // The flood's connections close as the server notices; a fresh scrape must then
    // succeed within the metrics bound.
    let deadline = Instant::now() + METRICS_BOUND;
    let mut scraped = scrape(metrics, metric);
    while scraped.is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        scraped = scrape(metrics, metric);
    }
    if let Err(e) = scraped {
        failures.push(format!("no fresh scrape after the flood was dropped: {e}"));
    }
    failures
}

#[test]
fn proxy_metrics_listener_flood_is_bounded() {
    let test = "proxy_metrics";
    let _serial = serial();
    let started = Instant::now();
    let demo = Demo::start();
    demo.kill("proxy");
    let proxy = demo.restart_with("proxy", &[], Some(METRICS_TEST_NOFILE));
    let metrics = metrics_addr(&demo.cmdline_arg("proxy", "--metrics-listen").expect("--metrics-listen"));
    let failures = metrics_flood(test, &demo, proxy.0.id(), metrics, "kubetape_proxy_requests_total");
    report(test, started, failures);
}

// The recorder has no separate metrics listener: its `/metrics` is served to readers
// on the main listener, whose pools the recorder floods above exercise.
