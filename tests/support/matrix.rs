//! The kubectl matrix: every case a kubectl user runs through kubetape, against any
//! target cluster reachable with a kubeconfig (the simulated cluster here, a real
//! kube-apiserver in the conformance tier). Each case returns why it failed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::{whoami_field, Kubectl, OutputExt, Proto};

pub struct Target {
    pub kubectl: Kubectl,
    /// A running pod with a shell, in the kubeconfig's namespace.
    pub pod: String,
    /// The user and groups the target should see for the kubeconfig's caller.
    pub user: String,
    pub groups: Vec<String>,
}

pub type CaseResult = Result<(), String>;

pub struct Case {
    pub name: &'static str,
    pub run: fn(&Target) -> CaseResult,
}

pub const CASES: &[Case] = &[
    Case { name: "get", run: get },
    Case { name: "get -w", run: get_watch },
    Case { name: "apply/create/delete", run: apply_create_delete },
    Case { name: "logs -f", run: logs_follow },
    Case { name: "exec (no stdin)", run: exec_plain },
    Case { name: "exec -i (1 MiB stdin)", run: exec_stdin },
    Case { name: "exec -it (terminal)", run: exec_tty },
    Case { name: "exit code", run: exit_code },
    Case { name: "attach", run: attach },
    Case { name: "debug (ephemeral)", run: debug },
    Case { name: "run -it --rm", run: run_rm },
    Case { name: "cp 10 MiB both ways", run: cp },
    Case { name: "port-forward", run: port_forward },
    Case { name: "auth whoami", run: whoami },
];

pub struct Report {
    pub rows: Vec<(&'static str, CaseResult)>,
}

impl Report {
    pub fn failures(&self) -> Vec<String> {
        self.rows.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect()
    }

    pub fn table(&self, label: &str) -> String {
        let mut s = format!("kubectl matrix, {label}\n");
        for (name, r) in &self.rows {
            let verdict = match r {
                Ok(()) => "pass".to_string(),
                Err(e) => format!("FAIL: {}", e.chars().take(300).collect::<String>()),
            };
            s.push_str(&format!("  {name:<24} {verdict}\n"));
        }
        s
    }
}

pub fn run(target: &Target) -> Report {
    Report { rows: CASES.iter().map(|c| (c.name, (c.run)(target))).collect() }
}

fn suffix() -> String {
    kubetape::net::random::hex(6)
}

fn check(ok: bool, what: impl FnOnce() -> String) -> CaseResult {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn pod_yaml(name: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    test: kubetape\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: busybox\n    command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

fn create(t: &Target, yaml: &str) -> CaseResult {
    let out = t.kubectl.run_timeout(&["apply", "-f", "-"], Some(yaml.as_bytes()), Duration::from_secs(30));
    check(out.status.success(), || format!("apply: {}", out.describe()))
}

fn wait_running(t: &Target, name: &str) -> CaseResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = t.kubectl.run(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
        if out.stdout_str() == "Running" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("pod {name} not running: {}", out.describe()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn delete(t: &Target, name: &str) {
    let _ = t.kubectl.run(&["delete", "pod", name, "--wait=false"]);
}

fn get(t: &Target) -> CaseResult {
    let out = t.kubectl.run(&["get", "pods"]);
    let text = out.stdout_str();
    check(out.status.success() && text.contains("NAME") && text.lines().any(|l| l.starts_with(&t.pod) && l.contains("Running")), || out.describe())
}

fn get_watch(t: &Target) -> CaseResult {
    let name = format!("watched-{}", suffix());
    let mut cmd = t.kubectl.command(&["get", "pods", "-w"]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).stdin(std::process::Stdio::null());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    // The watch is open once the initial list has printed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(&t.pod) && Instant::now() < deadline {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(b);
        }
    }
    let created = create(t, &pod_yaml(&name, "sleep 30"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(&name) && Instant::now() < deadline {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(b);
        }
    }
    let still_running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    delete(t, &name);
    created?;
    let text = String::from_utf8_lossy(&seen).into_owned();
    check(text.contains(&name) && still_running, || format!("watch did not show {name} while open: {text:?}"))
}

fn apply_create_delete(t: &Target) -> CaseResult {
    let name = format!("applied-{}", suffix());
    let yaml = pod_yaml(&name, "sleep 60");
    create(t, &yaml)?;
    let again = t.kubectl.run_timeout(&["apply", "-f", "-"], Some(yaml.as_bytes()), Duration::from_secs(30));
    check(again.status.success() && again.stdout_str().contains("unchanged"), || format!("second apply: {}", again.describe()))?;
    let got = t.kubectl.run(&["get", "pod", &name, "-o", "jsonpath={.metadata.labels.test}"]);
    check(got.stdout_str() == "kubetape", || format!("get: {}", got.describe()))?;
    let del = t.kubectl.run(&["delete", "pod", &name]);
    check(del.status.success(), || format!("delete: {}", del.describe()))?;
    let gone = t.kubectl.run(&["get", "pod", &name]);
    check(!gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"), || format!("after delete: {}", gone.describe()))
}

fn logs_follow(t: &Target) -> CaseResult {
    let name = format!("logger-{}", suffix());
    create(t, &pod_yaml(&name, "for i in 1 2 3 4 5; do echo line-$i; sleep 0.4; done"))?;
    wait_running(t, &name)?;
    let out = t.kubectl.run_timeout(&["logs", "-f", &name], None, Duration::from_secs(30));
    delete(t, &name);
    let text = out.stdout_str();
    check(out.status.success() && (1..=5).all(|i| text.contains(&format!("line-{i}"))), || out.describe())
}

fn exec_plain(t: &Target) -> CaseResult {
    let out = t.kubectl.run(&["exec", &t.pod, "--", "sh", "-c", "echo to-out; echo to-err >&2"]);
    check(out.status.success() && out.stdout_str() == "to-out" && String::from_utf8_lossy(&out.stderr).contains("to-err"), || out.describe())
}

fn exec_stdin(t: &Target) -> CaseResult {
    let mut data = vec![0u8; 1024 * 1024];
    kubetape::net::random::fill(&mut data);
    let out = t.kubectl.run_timeout(&["exec", "-i", &t.pod, "--", "cat"], Some(&data), Duration::from_secs(60));
    check(out.status.success() && out.stdout == data, || {
        format!("echoed {} of {} bytes, equal={}: {}", out.stdout.len(), data.len(), out.stdout == data, String::from_utf8_lossy(&out.stderr))
    })
}

fn exec_tty(t: &Target) -> CaseResult {
    let out = t.kubectl.run_tty(&["exec", "-it", &t.pod, "--", "sh", "-c", "stty size; tty"], "", Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    check(out.status.success() && text.contains("40 120") && text.contains("/dev/pts/"), || out.describe())
}

fn exit_code(t: &Target) -> CaseResult {
    let out = t.kubectl.run(&["exec", &t.pod, "--", "sh", "-c", "exit 3"]);
    check(out.status.code() == Some(3), || out.describe())
}

fn attach(t: &Target) -> CaseResult {
    let name = format!("ticker-{}", suffix());
    create(t, &pod_yaml(&name, "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done"))?;
    wait_running(t, &name)?;
    let out = t.kubectl.run_timeout(&["attach", &name], None, Duration::from_secs(4));
    delete(t, &name);
    let text = out.stdout_str();
    check(text.lines().filter(|l| l.starts_with("tick-")).count() >= 3, || out.describe())
}

fn debug(t: &Target) -> CaseResult {
    let out = t.kubectl.run_tty(&["debug", "-it", &t.pod, "--image=busybox", "--target=main", "--", "sh"], "echo dbg-$((6*7)); exit\n", Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    check(out.status.success() && text.contains("dbg-42"), || out.describe())
}

fn run_rm(t: &Target) -> CaseResult {
    let name = format!("runner-{}", suffix());
    let out = t.kubectl.run_tty(&["run", "-it", "--rm", "--restart=Never", "--image=busybox", &name, "--", "sh"], "echo run-$((6*7)); exit 7\n", Duration::from_secs(40));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    check(text.contains("run-42") && out.status.code() == Some(7), || out.describe())?;
    let gone = t.kubectl.run(&["get", "pod", &name]);
    check(!gone.status.success(), || format!("pod {name} not removed: {}", gone.describe()))
}

fn cp(t: &Target) -> CaseResult {
    let dir = super::TempDir::new("cp");
    let mut data = vec![0u8; 10 * 1024 * 1024];
    kubetape::net::random::fill(&mut data);
    let local = dir.0.join("up.bin");
    std::fs::write(&local, &data).map_err(|e| e.to_string())?;
    let remote = format!("cp-{}.bin", suffix());
    let up = t.kubectl.run_timeout(&["cp", local.to_str().unwrap_or_default(), &format!("{}:{remote}", t.pod)], None, Duration::from_secs(120));
    check(up.status.success(), || format!("upload: {}", up.describe()))?;
    let back = dir.0.join("down.bin");
    let down = t.kubectl.run_timeout(&["cp", &format!("{}:{remote}", t.pod), back.to_str().unwrap_or_default()], None, Duration::from_secs(120));
    let _ = t.kubectl.run(&["exec", &t.pod, "--", "rm", "-f", &remote]);
    check(down.status.success(), || format!("download: {}", down.describe()))?;
    let got = std::fs::read(&back).map_err(|e| e.to_string())?;
    check(got == data, || format!("downloaded {} bytes, differ from the {} uploaded", got.len(), data.len()))
}

fn port_forward(t: &Target) -> CaseResult {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&[b"echo:", &buf[..n]].concat());
            }
        }
    });
    let mut cmd = t.kubectl.command(&["port-forward", &format!("pod/{}", t.pod), &format!(":{port}")]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).stdin(std::process::Stdio::null());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let result = (|| {
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        let local = loop {
            let n = stdout.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("port-forward exited: {seen}"));
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(p) = seen.lines().find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:")).and_then(|r| r.split(' ').next()) {
                break p.to_string();
            }
        };
        let mut c = std::net::TcpStream::connect(format!("127.0.0.1:{local}")).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        c.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        check(reply == b"echo:ping", || format!("round trip got {:?}", String::from_utf8_lossy(&reply)))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn whoami(t: &Target) -> CaseResult {
    let out = t.kubectl.run(&["auth", "whoami"]);
    let text = out.stdout_str();
    let user = whoami_field(&text, "Username");
    let groups = whoami_field(&text, "Groups");
    check(out.status.success() && user == t.user && t.groups.iter().all(|g| groups.contains(g.as_str())), || out.describe())
}

/// The matrix for one kubectl version and protocol against the demo's alice.
pub fn against_demo(demo: &super::Demo, version: &str, proto: Proto) -> Report {
    let target =
        Target { kubectl: Kubectl::new(demo, "kubeconfig", version, proto), pod: "web-0".into(), user: "alice".into(), groups: vec!["sre".into(), "system:masters".into()] };
    run(&target)
}
