//! Shared by the integration tests: starts `kubetape demo` (simulated cluster plus
//! proxy) in a temporary directory and stops it on drop, finds real kubectl binaries,
//! and speaks raw HTTP over TLS for what kubectl cannot send.

#![allow(dead_code)]

pub mod browser;
pub mod capture;
pub mod matrix;
pub mod s3;
pub mod streams;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kubetape");

pub fn init_crypto() {
    kubetape::net::tls::install_provider();
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kubetape-test-{tag}-{}", kubetape::net::random::hex(8)));
        std::fs::create_dir_all(&p).expect("creating temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory holding `kubectl.1.27` … `kubectl.1.33` (TESTING.md).
fn kubectl_dir() -> PathBuf {
    let found = Command::new("sh").args(["-c", "readlink -f \"$(command -v kubectl)\""]).output();
    let path = found.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    match Path::new(&path).parent() {
        Some(dir) if !path.is_empty() => dir.to_path_buf(),
        _ => panic!("kubectl is not installed: install Debian's google-cloud-cli package (it ships kubectl.1.27 … kubectl.1.33)"),
    }
}

/// A versioned kubectl, e.g. `kubectl("1.32")`; panics with install advice if missing.
pub fn kubectl(version: &str) -> PathBuf {
    let p = kubectl_dir().join(format!("kubectl.{version}"));
    assert!(p.exists(), "{} is missing: install google-cloud-cli, which ships versioned kubectl binaries", p.display());
    p
}

/// `kubetape demo` running in a temp dir.
pub struct Demo {
    pub dir: TempDir,
    child: Child,
}

impl Demo {
    pub fn start() -> Demo {
        let dir = TempDir::new("demo");
        let child = Command::new(BIN)
            .args(["demo", "--dir"])
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("demo.log")).expect("demo log"))
            .spawn()
            .expect("starting kubetape demo");
        let mut demo = Demo { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !demo.path("ready").exists() {
            if let Ok(Some(status)) = demo.child.try_wait() {
                panic!("kubetape demo exited early ({status}): {}", demo.logs());
            }
            assert!(Instant::now() < deadline, "kubetape demo not ready in 60s: {}", demo.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        demo.wait_for_pod("web-0");
        demo
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub fn logs(&self) -> String {
        ["demo.log", "proxy.log", "sim.log", "recorder.log"].iter().map(|f| format!("--- {f}\n{}", std::fs::read_to_string(self.path(f)).unwrap_or_default())).collect()
    }

    pub fn pid(&self, component: &str) -> i32 {
        std::fs::read_to_string(self.path(&format!("{component}.pid"))).expect("pid file").trim().parse().expect("pid")
    }

    /// The proxy's `host:port` from the alice kubeconfig.
    pub fn proxy_addr(&self) -> String {
        let kc = std::fs::read_to_string(self.path("kubeconfig")).expect("kubeconfig");
        let line = kc.lines().find(|l| l.trim_start().starts_with("server:")).expect("server line");
        line.trim().trim_start_matches("server: https://").to_string()
    }

    /// Every recording on disk: (sidecar, cast text), oldest first.
    pub fn recordings(&self) -> Vec<(serde_json::Value, String)> {
        let mut out = Vec::new();
        for day in std::fs::read_dir(self.path("recordings")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            for f in std::fs::read_dir(day.path()).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
                let p = f.path();
                if p.extension().and_then(|e| e.to_str()) == Some("json") {
                    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap_or_default()).unwrap_or_default();
                    let cast = std::fs::read_to_string(p.with_extension("cast")).unwrap_or_default();
                    out.push((meta, cast));
                }
            }
        }
        out.sort_by(|a, b| a.0["id"].as_str().cmp(&b.0["id"].as_str()));
        out
    }

    /// The `.cast` file of recording `id` (its sidecar `<id>.json` beside it).
    pub fn cast_path(&self, id: &str) -> PathBuf {
        let days = std::fs::read_dir(self.path("recordings")).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
        days.into_iter().map(|d| d.join(format!("{id}.cast"))).find(|p| p.exists()).unwrap_or_else(|| panic!("no {id}.cast under {}", self.path("recordings").display()))
    }

    /// Waits for a session being recorded (its sidecar still says `recording`) whose
    /// cast holds `text`, as the cast's JSON spells it (a newline is `\\n`); its id.
    pub fn wait_running(&self, text: &str) -> String {
        eventually(Duration::from_secs(20), || {
            self.recordings()
                .into_iter()
                .find(|(m, c)| m["status"] == "recording" && c.contains(text))
                .map(|(m, _)| m["id"].as_str().unwrap_or("").to_string())
                .ok_or(format!("no running recording holds {text:?} yet"))
        })
    }

    /// Waits for a recording whose sidecar satisfies `pred` and is no longer `recording`.
    pub fn wait_recording(&self, pred: impl Fn(&serde_json::Value, &str) -> bool) -> (serde_json::Value, String) {
        eventually(Duration::from_secs(20), || {
            self.recordings()
                .into_iter()
                .rev()
                .find(|(m, c)| m["status"] != "recording" && pred(m, c))
                .ok_or_else(|| format!("no matching recording: {:#?}\n{}", self.recordings(), self.logs()))
        })
    }

    /// Sends `signal` to a component the demo started.
    pub fn signal(&self, component: &str, signal: i32) {
        // SAFETY: signalling a child of the demo by its recorded pid.
        unsafe { libc::kill(self.pid(component), signal) };
    }

    /// Starts a component again from its recorded command line (after it was killed).
    pub fn restart(&self, component: &str) -> Spawned {
        let cmdline = std::fs::read_to_string(self.path(&format!("{component}.cmdline"))).expect("cmdline");
        let args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
        let port: u16 = args[args.iter().position(|a| a == "--listen").expect("--listen") + 1].rsplit(':').next().unwrap().parse().unwrap();
        let s = Spawned::start(&args, &self.path(&format!("{component}-restarted.log")));
        wait_for_port(port);
        s
    }

    /// The value of `flag` in a component's recorded command line.
    pub fn cmdline_arg(&self, component: &str, flag: &str) -> Option<String> {
        let cmdline = std::fs::read_to_string(self.path(&format!("{component}.cmdline"))).ok()?;
        cmdline.split_whitespace().skip_while(|a| *a != flag).nth(1).map(String::from)
    }

    /// The loopback port a component serves on (its `--listen`).
    pub fn listen_port(&self, component: &str) -> u16 {
        let listen = self.cmdline_arg(component, "--listen").expect("--listen in cmdline");
        listen.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in --listen")
    }

    /// Kills a component the demo started (SIGKILL) and waits until its port is closed.
    pub fn kill(&self, component: &str) {
        self.signal(component, libc::SIGKILL);
        let port = self.listen_port(component);
        eventually(Duration::from_secs(10), || if port_alive(port) { Err(format!("{component} still listening on {port} after SIGKILL")) } else { Ok(()) });
    }

    /// Starts a component again from its recorded command line (after [`Demo::kill`])
    /// with `extra` flags appended and, when `nofile` is given, that RLIMIT_NOFILE
    /// (soft and hard). Panics with the component's log if it exits before its port
    /// accepts connections, as it does when it does not know a flag.
    pub fn restart_with(&self, component: &str, extra: &[&str], nofile: Option<u64>) -> Spawned {
        self.restart_with_env(component, extra, nofile, &[])
    }

    /// [`Self::restart_with`] with `env` added to the component's environment.
    pub fn restart_with_env(&self, component: &str, extra: &[&str], nofile: Option<u64>, env: &[(&str, &str)]) -> Spawned {
        use std::os::unix::process::CommandExt;
        let cmdline = std::fs::read_to_string(self.path(&format!("{component}.cmdline"))).expect("cmdline");
        let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let port = self.listen_port(component);
        let log = self.path(&format!("{component}-restarted.log"));
        let mut c = Command::new(BIN);
        c.args(&args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(n) = nofile {
            // SAFETY: only setrlimit(2), async-signal-safe, between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut s = Spawned(c.spawn().expect("starting kubetape"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_alive(port) {
            if let Ok(Some(status)) = s.0.try_wait() {
                panic!("restarted {component} with {extra:?} exited before serving ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default().trim());
            }
            assert!(Instant::now() < deadline, "restarted {component} not listening on {port} in 20s");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The value of one counter on the proxy's `--metrics-listen`.
    pub fn proxy_metric(&self, name: &str) -> u64 {
        let cmdline = std::fs::read_to_string(self.path("proxy.cmdline")).expect("proxy.cmdline");
        let addr = cmdline.split_whitespace().skip_while(|a| *a != "--metrics-listen").nth(1).expect("--metrics-listen").to_string();
        let mut s = TcpStream::connect(addr).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").expect("metrics request");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        // A metric that is not exported is a broken test or proxy, never a zero.
        out.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or_else(|| panic!("the proxy exports no metric {name}:\n{out}"))
    }

    /// GET on the recorder's API presenting `pki/<who>.pem` (`None`: no certificate).
    pub fn recorder_get(&self, who: Option<&str>, path: &str) -> (u16, String) {
        self.recorder_get_at(self.listen_port("recorder"), who, path)
    }

    /// [`Self::recorder_get`] on a recorder of the demo's PKI listening on `port`.
    pub fn recorder_get_at(&self, port: u16, who: Option<&str>, path: &str) -> (u16, String) {
        let mut c = self.recorder_client_at(port, who);
        c.send(format!("GET {path} HTTP/1.1\r\nHost: r\r\n\r\n").as_bytes()).expect("request");
        c.response().expect("response")
    }

    /// A connection to the recorder's API presenting `pki/<who>.pem` (`None`: no certificate).
    pub fn recorder_client(&self, who: Option<&str>) -> RawClient {
        self.recorder_client_at(self.listen_port("recorder"), who)
    }

    fn recorder_client_at(&self, port: u16, who: Option<&str>) -> RawClient {
        let addr = format!("127.0.0.1:{port}");
        let pki = self.path("pki");
        let b64 = |f: &str| kubetape::wire::base64::encode(&std::fs::read(pki.join(f)).expect("pki file"));
        let cert = who.unwrap_or("recorder-reader");
        // A kubeconfig-shaped file lets the raw client present the chosen certificate.
        let kc = self.path(&format!("{cert}.recorder-kubeconfig"));
        std::fs::write(
            &kc,
            format!(
                "certificate-authority-data: {}\nclient-certificate-data: {}\nclient-key-data: {}\n",
                b64("recorder-ca.pem"),
                b64(&format!("{cert}.pem")),
                b64(&format!("{cert}-key.pem"))
            ),
        )
        .expect("writing kubeconfig");
        RawClient::connect(&addr, &kc, who.is_some())
    }

    /// Turns API events off in the demo's policy (for tests about sessions alone: with
    /// fail-closed events, bob's discovery would be refused before any exec), and
    /// waits until the proxy has reloaded it.
    pub fn disable_events(&self) {
        self.edit_policy(|v| {
            for g in v["grants"].as_array_mut().expect("grants") {
                g["enableEvents"] = serde_json::Value::Bool(false);
            }
        });
    }

    /// Changes the demo's policy with `edit` and waits until the proxy has reloaded it.
    pub fn edit_policy(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let reloads = || std::fs::read_to_string(self.path("proxy.log")).unwrap_or_default().matches("policy reloaded").count();
        let before = reloads();
        let policy = std::fs::read_to_string(self.path("policy.json")).expect("policy.json");
        let mut v: serde_json::Value = serde_json::from_str(&policy).expect("policy JSON");
        edit(&mut v);
        std::fs::write(self.path("policy.json"), v.to_string()).expect("writing policy.json");
        eventually(Duration::from_secs(10), || if reloads() > before { Ok(()) } else { Err(format!("the proxy did not reload the policy: {}", self.logs())) });
    }

    pub fn wait_for_pod(&self, name: &str) {
        let k = Kubectl::new(self, "admin.kubeconfig", "1.32", Proto::WebSocket);
        eventually(Duration::from_secs(30), || {
            let out = k.run(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
            if out.stdout_str() == "Running" {
                Ok(())
            } else {
                Err(format!("pod {name} not running: {}", out.describe()))
            }
        });
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubetape child process, killed on drop.
pub struct Spawned(pub Child);

impl Spawned {
    pub fn start(args: &[String], log: &Path) -> Spawned {
        let child =
            Command::new(BIN).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(log).expect("log file")).spawn().expect("starting kubetape");
        Spawned(child)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number of open file descriptors of process `pid` (from /proc).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (floods open many sockets).
pub fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A TCP connection to `dst` from the loopback address `src` (any of 127/8), so a
/// test can appear as many sources; `connect(2)` gives up after `timeout`.
pub fn connect_from(src: std::net::Ipv4Addr, dst: std::net::SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket owned by the TcpStream below (or closed on error); the
    // addresses are valid sockaddr_in values that outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        // Linux bounds a blocking connect(2) by the send timeout.
        stream.set_write_timeout(Some(timeout))?;
        let local = sockaddr(std::net::SocketAddrV4::new(src, 0));
        if libc::bind(fd, &local as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(dst);
        if libc::connect(fd, &remote as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_write_timeout(None)?;
        Ok(stream)
    }
}

pub fn free_port() -> u16 {
    kubetape::net::server::free_loopback_port().expect("a free loopback port")
}

/// Whether something accepts TCP connections on loopback `port` now.
pub fn port_alive(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Waits until `host:port` accepts TCP connections.
pub fn wait_for_port(port: u16) {
    eventually(Duration::from_secs(20), || if port_alive(port) { Ok(()) } else { Err(format!("nothing listening on {port}")) });
}

/// What `asciinema cat`, the independent player, prints for a cast.
pub fn asciinema_cat(cast: &str) -> String {
    let dir = TempDir::new("cast");
    let path = dir.0.join("s.cast");
    std::fs::write(&path, cast).expect("writing the cast");
    let out = Command::new("python3").args(["-m", "asciinema", "cat"]).arg(&path).output().expect("python3");
    assert!(out.status.success(), "asciinema cat failed (install it: pip install asciinema==2.4.0): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Waits for state: calls `check` until it returns `Ok`, and panics with its last
/// error when `timeout` has passed. Every wait in the tests goes through here, so none
/// sleeps for a fixed time and hopes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// How kubectl carries exec, attach and port-forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    WebSocket,
    Spdy,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::WebSocket => "websocket",
            Proto::Spdy => "spdy",
        })
    }
}

pub trait OutputExt {
    fn stdout_str(&self) -> String;
    fn describe(&self) -> String;
}

impl OutputExt for Output {
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
    fn describe(&self) -> String {
        format!(
            "status={} stdout={:?} stderr={:?}",
            self.status,
            String::from_utf8_lossy(&self.stdout).chars().take(2000).collect::<String>(),
            String::from_utf8_lossy(&self.stderr).chars().take(2000).collect::<String>()
        )
    }
}

/// A kubectl binary, a kubeconfig and a stream protocol.
#[derive(Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub proto: Proto,
    pub version: String,
}

impl Kubectl {
    pub fn new(demo: &Demo, kubeconfig: &str, version: &str, proto: Proto) -> Kubectl {
        Kubectl { bin: kubectl(version), kubeconfig: demo.path(kubeconfig), proto, version: version.into() }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).env("KUBECONFIG", &self.kubeconfig).env("HOME", std::env::temp_dir()).env_remove("KUBERNETES_SERVICE_HOST");
        let ws = if self.proto == Proto::WebSocket { "true" } else { "false" };
        c.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws).env("KUBECTL_PORT_FORWARD_WEBSOCKETS", ws);
        c
    }

    /// Runs with stdin closed, killed after `timeout`.
    pub fn run_timeout(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("starting kubectl");
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        wait_with_timeout(child, timeout)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_timeout(args, None, Duration::from_secs(60))
    }

    /// Runs under a real terminal of 120x40 (`script`), typing `input` after a pause.
    pub fn run_tty(&self, args: &[&str], input: &str, timeout: Duration) -> Output {
        let cmdline: Vec<String> = std::iter::once(self.bin.display().to_string()).chain(args.iter().map(|a| shell_quote(a))).collect();
        let inner = format!("stty cols 120 rows 40; {}", cmdline.join(" "));
        let mut c = Command::new("script");
        c.args(["-qec", &inner, "/dev/null"]).env("KUBECONFIG", &self.kubeconfig).env("HOME", std::env::temp_dir());
        let ws = if self.proto == Proto::WebSocket { "true" } else { "false" };
        c.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", ws);
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("starting script(1): install bsdutils");
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_string();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            let _ = pipe.write_all(input.as_bytes());
            std::thread::sleep(timeout);
        });
        wait_with_timeout(child, timeout)
    }
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("waiting for killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}

/// A raw HTTP/1.1 client over TLS with an optional client certificate from a kubeconfig.
pub struct RawClient {
    pub stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

fn kubeconfig_field(kubeconfig: &Path, field: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{field} in kubeconfig"));
    let value = line.split_once(':').map(|(_, v)| v.trim()).unwrap_or_default();
    kubetape::wire::base64::decode(value).expect("base64")
}

impl RawClient {
    /// Connects to `addr`, trusting the kubeconfig's CA; presents its client
    /// certificate when `with_cert`.
    pub fn connect(addr: &str, kubeconfig: &Path, with_cert: bool) -> RawClient {
        Self::connect_named(addr, "127.0.0.1", kubeconfig, with_cert)
    }

    /// [`RawClient::connect`], checking the server's certificate for `server_name`.
    pub fn connect_named(addr: &str, server_name: &str, kubeconfig: &Path, with_cert: bool) -> RawClient {
        init_crypto();
        let ca = kubeconfig_field(kubeconfig, "certificate-authority-data");
        let roots = kubetape::net::tls::roots_from_pem(&ca, "ca").expect("roots");
        let identity = with_cert.then(|| {
            let cert = kubeconfig_field(kubeconfig, "client-certificate-data");
            let key = kubeconfig_field(kubeconfig, "client-key-data");
            (kubetape::net::tls::certs_from_pem(&cert, "cert").expect("cert"), kubetape::net::tls::key_from_pem(&key, "key").expect("key"))
        });
        let config = kubetape::net::tls::client_config(roots, identity).expect("client config");
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("name");
        let conn = rustls::ClientConnection::new(config, name).expect("client conn");
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        RawClient { stream: rustls::StreamOwned::new(conn, sock) }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads a response head; returns it with the bytes read after it.
    pub fn head(&mut self) -> Option<(kubetape::wire::http::ResponseHead, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some((head, n))) = kubetape::wire::http::parse_response(&buf) {
                return Some((head, buf[n..].to_vec()));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
    }

    /// Reads one response (head and a Content-Length or chunked body).
    pub fn response(&mut self) -> Option<(u16, String)> {
        let (head, rest) = self.head()?;
        let mut body = Vec::new();
        self.body(&head, rest, |piece| body.extend_from_slice(piece))?;
        Some((head.status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Reads the body after `head` (`rest`: what was read after the head), handing
    /// `sink` each piece as it arrives. Whether the body was whole, or `None` on a
    /// read error or a malformed chunk; a body cut short by the server closing the
    /// connection comes as far as it got. A body framed by the connection's end is
    /// taken as far as it was read with the head.
    pub fn body(&mut self, head: &kubetape::wire::http::ResponseHead, mut rest: Vec<u8>, mut sink: impl FnMut(&[u8])) -> Option<bool> {
        use kubetape::wire::http::BodyLength;
        let mut left = match kubetape::wire::http::response_body("GET", head).ok()? {
            BodyLength::Length(len) => Some(len),
            BodyLength::Chunked => None,
            BodyLength::Empty | BodyLength::UntilClose => {
                sink(&rest);
                return Some(true);
            }
        };
        let mut chunk = [0u8; 4096];
        let mut dec = kubetape::wire::http::ChunkedDecoder::default();
        loop {
            match &mut left {
                Some(left) => {
                    let take = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    sink(&rest[..take]);
                    *left -= take as u64;
                    rest.clear();
                }
                None => {
                    let mut out = Vec::new();
                    let used = dec.decode(&rest, &mut out).ok()?;
                    rest.drain(..used);
                    sink(&out);
                }
            }
            if left == Some(0) || dec.is_done() {
                return Some(true);
            }
            let k = self.stream.read(&mut chunk).ok()?;
            if k == 0 {
                return Some(false);
            }
            rest.extend_from_slice(&chunk[..k]);
        }
    }

    /// Whether the server has closed the connection (reads EOF or an error).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// Every `key: value` pair of a `kubectl auth whoami` table, e.g. `Username`.
pub fn whoami_field(out: &str, field: &str) -> String {
    out.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string()).unwrap_or_default()
}
