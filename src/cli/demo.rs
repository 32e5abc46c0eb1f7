//! `kubetape demo`: a simulated cluster and the proxy, each a child process of this
//! binary, with generated certificates, kubeconfigs and a policy under one directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::kube::client::{kubeconfig, Credential};
use crate::net::conn::Conn;
use crate::net::pki::{Ca, Pem};
use crate::net::{signal, tls};

pub const FLAGS: &[Flag] = &[Flag { name: "dir", default: None, help: "where to put certificates, kubeconfigs and data [default: a new temporary directory]" }];

/// How long the components get to answer before the demo gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long children get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Writes a demo file readable by its owner only: many hold keys or tokens.
fn write(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn free_port() -> Result<u16> {
    crate::net::server::free_loopback_port().context("finding a free port")
}

/// The demo policy: sessions and API events of both groups go to the demo's recorder;
/// alice (group sre) is fail-open, bob (group dev) fail-closed.
pub fn policy(recorder_url: &str) -> String {
    serde_json::json!({
        "recorders": [{"name": "demo", "url": recorder_url, "tags": ["tag:recorder"], "caFile": "pki/recorder-ca.pem"}],
        "grants": [
            {"src": ["group:sre"], "impersonate": {"groups": ["system:masters"]}, "recorder": ["tag:recorder"], "enableEvents": true},
            {"src": ["group:dev"], "impersonate": {"groups": ["system:masters"]}, "recorder": ["tag:recorder"], "enforceRecorder": true, "enableEvents": true}
        ]
    })
    .to_string()
}

struct Component {
    name: &'static str,
    child: Child,
}

fn start(dir: &Path, name: &'static str, args: &[String]) -> Result<Component> {
    let exe = std::env::current_exe().context("locating the kubetape binary")?;
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).context("creating log file")?;
    let child = Command::new(&exe).arg(name).args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn().with_context(|| format!("starting {name}"))?;
    let quoted: Vec<String> = std::iter::once(exe.display().to_string()).chain(std::iter::once(name.to_string())).chain(args.iter().cloned()).collect();
    write(&dir.join(format!("{name}.pid")), &format!("{}\n", child.id()))?;
    write(&dir.join(format!("{name}.cmdline")), &format!("{}\n", quoted.join(" ")))?;
    Ok(Component { name, child })
}

/// Whether `GET /healthz` over TLS answers 200.
fn healthy(port: u16, roots: &rustls::RootCertStore) -> bool {
    let probe = || -> Result<bool> {
        let config = tls::client_config(roots.clone(), None)?;
        let sock = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| Error::new(e.to_string()))?;
        let mut c = Conn::connect_tls(sock, &config, name, Duration::from_secs(2))?;
        c.write.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        c.read.set_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 12];
        let mut got = 0;
        while got < buf.len() {
            let n = c.read.read(&mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(buf.starts_with(b"HTTP/1.1 200"))
    };
    probe().unwrap_or(false)
}

fn stop(components: &mut [Component]) {
    for c in components.iter() {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    for c in components.iter_mut() {
        while Instant::now() < deadline && matches!(c.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(c.child.try_wait(), Ok(None)) {
            let _ = c.child.kill();
        }
        let _ = c.child.wait();
    }
}

/// Stops components restarted by hand from their `.cmdline` (as the README says to):
/// a process whose command line is exactly one the demo recorded. The demo's
/// directory is in every such line, so no other process can match.
fn stop_restarted(dir: &Path) {
    let recorded: Vec<String> =
        ["sim", "recorder", "proxy"].iter().filter_map(|n| std::fs::read_to_string(dir.join(format!("{n}.cmdline"))).ok()).map(|l| l.trim().to_string()).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(p.path().join("cmdline")) else { continue };
        let line = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ");
        if recorded.contains(&line) {
            log::info!("stopping a component restarted by hand pid={pid}");
            // SAFETY: kill(2) with a pid read from /proc; at worst the process is gone.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

fn fresh_dir() -> PathBuf {
    std::env::temp_dir().join(format!("kubetape-demo-{}", crate::net::random::hex(8)))
}

pub fn run(args: &Args) -> Result<()> {
    let dir = match args.path("dir") {
        Some(d) => d,
        None => fresh_dir(),
    };
    let made = !dir.exists();
    std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
    if made {
        // Its owner's only (a directory given that already existed is left as it is).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("--dir {}", dir.display()))?;
    }
    let dir = std::fs::canonicalize(&dir)?;
    let _ = std::fs::remove_file(dir.join("ready"));
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    std::fs::create_dir_all(dir.join("recordings"))?;

    let cluster_ca = Ca::new("kubetape-demo-cluster-ca")?;
    let proxy_ca = Ca::new("kubetape-demo-proxy-ca")?;
    let recorder_ca = Ca::new("kubetape-demo-recorder-ca")?;
    let hosts = ["127.0.0.1", "localhost"];
    let files: Vec<(&str, String)> =
        vec![("cluster-ca.pem", cluster_ca.cert_pem.clone()), ("proxy-ca.pem", proxy_ca.cert_pem.clone()), ("recorder-ca.pem", recorder_ca.cert_pem.clone())];
    for (name, pem) in &files {
        write(&pki.join(name), pem)?;
    }
    let save = |name: &str, pem: &Pem| -> Result<()> {
        write(&pki.join(format!("{name}.pem")), &pem.cert)?;
        write(&pki.join(format!("{name}-key.pem")), &pem.key)
    };
    let sim_cert = cluster_ca.server("kubetape-sim", &hosts)?;
    save("sim", &sim_cert)?;
    let proxy_cert = proxy_ca.server("kubetape-proxy", &hosts)?;
    save("proxy", &proxy_cert)?;
    save("recorder", &recorder_ca.server("kubetape-recorder", &hosts)?)?;
    // The proxy's identity towards the recorder, and a reader for the recorder's API.
    save("recorder-writer", &recorder_ca.client("kubetape-proxy", &[])?)?;
    save("recorder-reader", &recorder_ca.client("auditor", &[])?)?;
    let sim_port = free_port()?;
    let proxy_port = free_port()?;
    let recorder_port = free_port()?;
    let metrics_port = free_port()?;
    let sim_url = format!("https://127.0.0.1:{sim_port}");
    let proxy_url = format!("https://127.0.0.1:{proxy_port}");

    let admin = cluster_ca.client("admin", &["system:masters"])?;
    let upstream = cluster_ca.client("kubetape-proxy", &["system:masters"])?;
    let alice = proxy_ca.client("alice", &["sre"])?;
    let bob = proxy_ca.client("bob", &["dev"])?;
    write(&dir.join("admin.kubeconfig"), &kubeconfig(&sim_url, &cluster_ca.cert_pem, "admin", Credential::Cert(&admin)))?;
    write(&dir.join("proxy-upstream.kubeconfig"), &kubeconfig(&sim_url, &cluster_ca.cert_pem, "kubetape-proxy", Credential::Cert(&upstream)))?;
    write(&dir.join("kubeconfig"), &kubeconfig(&proxy_url, &proxy_ca.cert_pem, "alice", Credential::Cert(&alice)))?;
    write(&dir.join("bob.kubeconfig"), &kubeconfig(&proxy_url, &proxy_ca.cert_pem, "bob", Credential::Cert(&bob)))?;
    write(&dir.join("policy.json"), &policy(&format!("https://127.0.0.1:{recorder_port}")))?;
    // carol (group sre) signs in with a bearer token instead of a certificate.
    let carol_token = crate::net::random::hex(32);
    write(&dir.join("tokens.csv"), &format!("{carol_token},carol,carol-uid,\"sre\"\n"))?;
    write(&dir.join("carol.kubeconfig"), &kubeconfig(&proxy_url, &proxy_ca.cert_pem, "carol", Credential::Token(&carol_token)))?;
    // Tokens for the recorder's web UI, as `kubectl create token` would give: the
    // cluster lets alice watch recordings and bob none (`--recording-viewers`).
    let viewer_tokens = [("alice", crate::net::random::hex(32)), ("bob", crate::net::random::hex(32))];
    let lines: String = viewer_tokens.iter().map(|(user, token)| format!("{token},{user},{user}-uid,\"viewers\"\n")).collect();
    write(&dir.join("viewer-tokens.csv"), &lines)?;
    for (user, token) in &viewer_tokens {
        write(&dir.join(format!("{user}.token")), &format!("{token}\n"))?;
    }
    let recorder_api = cluster_ca.client("kubetape-recorder", &[])?;
    write(&dir.join("recorder-cluster.kubeconfig"), &kubeconfig(&sim_url, &cluster_ca.cert_pem, "kubetape-recorder", Credential::Cert(&recorder_api)))?;

    let p = |name: &str| pki.join(name).display().to_string();
    let s = |v: &str| v.to_string();
    let mut components = Vec::new();
    let started = (|| -> Result<()> {
        components.push(start(
            &dir,
            "sim",
            &[
                s("--listen"),
                format!("127.0.0.1:{sim_port}"),
                s("--tls-cert"),
                p("sim.pem"),
                s("--tls-key"),
                p("sim-key.pem"),
                s("--client-ca"),
                p("cluster-ca.pem"),
                s("--data-dir"),
                dir.join("sim-data").display().to_string(),
                s("--seed"),
                s("--token-file"),
                dir.join("viewer-tokens.csv").display().to_string(),
                s("--recording-viewers"),
                s("alice"),
            ],
        )?);
        components.push(start(
            &dir,
            "recorder",
            &[
                s("--listen"),
                format!("127.0.0.1:{recorder_port}"),
                s("--tls-cert"),
                p("recorder.pem"),
                s("--tls-key"),
                p("recorder-key.pem"),
                s("--client-ca"),
                p("recorder-ca.pem"),
                s("--writers"),
                s("kubetape-proxy"),
                s("--readers"),
                s("auditor"),
                s("--storage-dir"),
                dir.join("recordings").display().to_string(),
                s("--ui"),
                s("--viewers-from-cluster"),
                s("--kubeconfig"),
                dir.join("recorder-cluster.kubeconfig").display().to_string(),
            ],
        )?);
        components.push(start(
            &dir,
            "proxy",
            &[
                s("--listen"),
                format!("127.0.0.1:{proxy_port}"),
                s("--tls-cert"),
                p("proxy.pem"),
                s("--tls-key"),
                p("proxy-key.pem"),
                s("--client-ca"),
                p("proxy-ca.pem"),
                s("--token-file"),
                dir.join("tokens.csv").display().to_string(),
                s("--kubeconfig"),
                dir.join("proxy-upstream.kubeconfig").display().to_string(),
                s("--policy"),
                dir.join("policy.json").display().to_string(),
                s("--recorder-cert"),
                p("recorder-writer.pem"),
                s("--recorder-key"),
                p("recorder-writer-key.pem"),
                s("--metrics-listen"),
                format!("127.0.0.1:{metrics_port}"),
            ],
        )?);
        let checks = [
            ("sim", sim_port, tls::roots_from_pem(cluster_ca.cert_pem.as_bytes(), "cluster CA")?),
            ("recorder", recorder_port, tls::roots_from_pem(recorder_ca.cert_pem.as_bytes(), "recorder CA")?),
            ("proxy", proxy_port, tls::roots_from_pem(proxy_ca.cert_pem.as_bytes(), "proxy CA")?),
        ];
        let deadline = Instant::now() + READY_TIMEOUT;
        for (name, port, roots) in &checks {
            while !healthy(*port, roots) {
                if let Some(c) = components.iter_mut().find(|c| c.name == *name) {
                    if let Ok(Some(status)) = c.child.try_wait() {
                        crate::bail!("{name} exited ({status}); see {}", dir.join(format!("{name}.log")).display());
                    }
                }
                if Instant::now() > deadline {
                    crate::bail!("{name} did not become ready within {READY_TIMEOUT:?}; see {}", dir.join(format!("{name}.log")).display());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    })();
    if let Err(e) = started {
        stop(&mut components);
        return Err(e);
    }
    write(&dir.join("ready"), "ready\n")?;
    let d = dir.display();
    println!("kubetape demo is running in {d}\n");
    println!("  export KUBECONFIG={d}/kubeconfig     # alice (group sre), through the proxy");
    println!("  kubectl get pods");
    println!("  kubectl exec -it web-0 -- sh");
    println!("  kubectl auth whoami");
    println!("\n  {d}/bob.kubeconfig is bob (group dev), {d}/carol.kubeconfig is carol (group sre, bearer token);");
    println!("  {d}/admin.kubeconfig goes straight to the simulated cluster, bypassing the proxy.");
    println!("  Sessions are recorded in {d}/recordings (asciicast v2: asciinema play FILE.cast).");
    println!("  The recorder's API is https://127.0.0.1:{recorder_port}, for the reader certificate:");
    println!("    curl --cacert {d}/pki/recorder-ca.pem --cert {d}/pki/recorder-reader.pem --key {d}/pki/recorder-reader-key.pem \\");
    println!("      https://127.0.0.1:{recorder_port}/v1/recordings");
    println!("  The recorder's web UI is https://localhost:{recorder_port}/ (its CA: {d}/pki/recorder-ca.pem); sign in with a token:");
    println!("    alice may watch every namespace's sessions: {d}/alice.token");
    println!("    bob may watch none:                         {d}/bob.token");
    println!("  Proxy metrics: http://127.0.0.1:{metrics_port}/metrics");
    println!("  Edit {d}/policy.json to change grants; logs are in {d}/*.log.\n\nCtrl-C stops everything.");
    let _ = std::io::stdout().flush();
    let components = Arc::new(std::sync::Mutex::new(components));
    let watched = components.clone();
    std::thread::Builder::new().name("demo-watch".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let mut cs = watched.lock().unwrap_or_else(|e| e.into_inner());
        cs.retain_mut(|c| match c.child.try_wait() {
            Ok(Some(status)) => {
                // Left down on purpose: a demo of what happens without that component.
                log::error!("demo component exited component={} status={status}; restart it with the command in {}.cmdline", c.name, c.name);
                false
            }
            _ => true,
        });
    })?;
    let _ = signal::wait_for_termination();
    println!("stopping");
    stop(&mut components.lock().unwrap_or_else(|e| e.into_inner()));
    stop_restarted(&dir);
    let _ = std::fs::remove_file(dir.join("ready"));
    Ok(())
}
