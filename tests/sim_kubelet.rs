//! `kubetape sim --kubelet` as the kubelet of a real kube-apiserver 1.20.2 (built by
//! scripts/build-kube-apiserver), in a network namespace of the test's own: the test
//! runs itself again under `unshare -n` (as root), brings `lo` up, starts etcd, the
//! API server and the simulator with `--pod-cidr`, `--image-map` and
//! `--apiserver-address`, and judges with real kubectl 1.32 what a kubelet must do:
//! pod addresses from the range, env from fieldRef/secretKeyRef and `$(VAR)`, Secret,
//! ConfigMap, projected token and claim volumes at their mount paths (read-only where
//! they must be), a token that authenticates, a readiness probe that makes the pod
//! Ready, a ConfigMap change reaching a running pod, a container missing its Secret
//! waiting with CreateContainerConfigError until it appears, a crash loop's restart
//! count climbing, a process that exits at once ending Succeeded, a graceful deletion
//! freeing the address, and the node Lease renewed.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kubetape::kube::client::{kubeconfig, ApiServer, Credential};
use kubetape::net::pki::Ca;
use serde_json::{json, Value};
use support::{eventually, free_port, kubectl, OutputExt, TempDir};

/// Set in the copy of this test that runs inside the network namespace.
const INNER: &str = "KUBETAPE_TEST_SIM_KUBELET_NETNS";
const POD_CIDR: &str = "10.244.0.0/24";
/// The API server's advertised address (the `kubernetes` Service's endpoint): a
/// namespace without a default route has none to find.
const ADVERTISE: &str = "10.255.255.1";
const STATE_WAIT: Duration = Duration::from_secs(30);
/// How often API state is looked at again (each look is a request to a real API server).
const POLL: Duration = Duration::from_millis(250);

/// A readiness-probed web server that does no reverse DNS lookup (Python's
/// `http.server` does one per bind, which hangs for seconds in a namespace with no
/// network).
const SERVER: &str = r#"
import http.server, socketserver, sys
class S(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
print("serving", sys.argv[1], flush=True)
S((sys.argv[1], 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

#[test]
fn kubelet_mode_runs_pods_for_a_real_api_server() {
    if std::env::var_os(INNER).is_some() {
        return inside_the_namespace();
    }
    let apiserver = apiserver_binary();
    for (tool, package) in [("etcd", "etcd-server"), ("unshare", "util-linux"), ("ip", "iproute2")] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success()).unwrap_or(false);
        assert!(found, "{tool} is missing: install Debian's {package} package (scripts/build-kube-apiserver installs etcd-server)");
    }
    assert!(Path::new("/usr/bin/python3").exists(), "/usr/bin/python3 is missing: install Debian's python3 package");
    let _ = kubectl("1.32");
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root: it creates a network namespace (unshare -n) and mount namespaces");
    let exe = std::env::current_exe().expect("the test binary's path");
    // The token's mount point is made on the host, where it is missing (as a runtime
    // makes it); what this test made is removed again.
    let secrets = Path::new("/var/run/secrets");
    let made = !secrets.exists();
    let status = Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args(["--exact", "kubelet_mode_runs_pods_for_a_real_api_server", "--nocapture", "--test-threads=1"])
        .env(INNER, apiserver)
        .status()
        .expect("running unshare");
    if made {
        for d in ["kubernetes.io/serviceaccount", "kubernetes.io", ""] {
            let _ = std::fs::remove_dir(secrets.join(d));
        }
    }
    assert!(status.success(), "the test inside the network namespace failed (its output is above)");
}

fn apiserver_binary() -> PathBuf {
    let cache = std::env::var_os("KUBETAPE_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kubetape"));
    let bin = cache.join("kube-apiserver-1.20.2");
    assert!(bin.exists(), "{} is missing: run scripts/build-kube-apiserver (it builds and caches kube-apiserver 1.20.2)", bin.display());
    bin
}

/// Children killed on drop, their logs kept to show on failure.
struct Procs {
    children: Vec<(String, Child)>,
    dir: PathBuf,
}

impl Procs {
    fn start(&mut self, name: &str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log file")).stderr(log).spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.push((name.to_string(), child));
    }

    fn exited(&mut self, name: &str) -> bool {
        self.children.iter_mut().any(|(n, c)| n == name && !matches!(c.try_wait(), Ok(None)))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, _) in &self.children {
                let log = self.log(name);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!("--- last lines of {name}.log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", out.describe());
}

/// Waits for state with [`POLL`] between looks.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    eventually(STATE_WAIT, || {
        let r = check();
        if r.is_err() {
            std::thread::sleep(POLL);
        }
        r.map_err(|e| format!("{what}: {e}"))
    })
}

struct Cluster {
    api: ApiServer,
    kubeconfig: PathBuf,
    ca: PathBuf,
    api_port: u16,
    home: PathBuf,
}

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(kubectl("1.32")).arg("--kubeconfig").arg(&self.kubeconfig).args(args).env("HOME", &self.home).env_remove("KUBERNETES_SERVICE_HOST").output().expect("kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", out.describe());
        out.stdout_str()
    }

    fn apply(&self, objects: &[Value]) {
        let file = self.home.join(format!("objects-{}.json", kubetape::net::random::hex(4)));
        std::fs::write(&file, json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()).expect("writing objects");
        self.ok(&["apply", "-f", &file.display().to_string()]);
    }

    fn pod(&self, name: &str) -> Result<Value, String> {
        let (code, pod) = self.api.json("GET", &format!("/api/v1/namespaces/default/pods/{name}"), "", None).map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("pod {name}: status {code}"));
        }
        Ok(pod)
    }

    fn exec(&self, pod: &str, script: &str) -> Result<String, String> {
        let out = self.kubectl(&["exec", pod, "--", "sh", "-c", script]);
        if out.status.success() {
            Ok(out.stdout_str())
        } else {
            Err(out.describe())
        }
    }
}

fn condition(pod: &Value, kind: &str) -> Value {
    pod["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == json!(kind)).cloned().unwrap_or(Value::Null)
}

fn lo_addresses() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["-4", "addr", "show", "dev", "lo"]).output().expect("ip").stdout).into_owned()
}

fn start_cluster(procs: &mut Procs, dir: &Path, apiserver: &Path) -> Cluster {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let ca = Ca::new("kubetape-test-ca").expect("ca");
    let write = |name: &str, text: &str| {
        let p = pki.join(name);
        std::fs::write(&p, text).expect("writing pki");
        p.display().to_string()
    };
    let ca_file = write("ca.crt", &ca.cert_pem);
    let serving = ca.server("kube-apiserver", &["127.0.0.1", "localhost", "10.96.0.1", ADVERTISE]).expect("apiserver cert");
    let kubelet = ca.server("kubetape-sim", &["127.0.0.1", "localhost"]).expect("kubelet cert");
    let to_kubelet = ca.client("kube-apiserver-kubelet-client", &["system:masters"]).expect("kubelet client cert");
    let admin = ca.client("admin", &["system:masters"]).expect("admin cert");
    let sa = rcgen::KeyPair::generate().expect("service account key");
    let (sa_key, sa_pub) = (write("sa.key", &sa.serialize_pem()), write("sa.pub", &sa.public_key_pem()));
    let (etcd_port, peer_port, api_port, kubelet_port) = (free_port(), free_port(), free_port(), free_port());
    procs.start(
        "etcd",
        Command::new("etcd").args([
            "--data-dir",
            &dir.join("etcd").display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{etcd_port}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{etcd_port}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ]),
    );
    procs.start(
        "apiserver",
        Command::new(apiserver).args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--advertise-address={ADVERTISE}"),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", write("apiserver.crt", &serving.cert)),
            format!("--tls-private-key-file={}", write("apiserver.key", &serving.key)),
            format!("--client-ca-file={ca_file}"),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={sa_pub}"),
            format!("--service-account-signing-key-file={sa_key}"),
            "--api-audiences=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--kubelet-client-certificate={}", write("to-kubelet.crt", &to_kubelet.cert)),
            format!("--kubelet-client-key={}", write("to-kubelet.key", &to_kubelet.key)),
            format!("--kubelet-certificate-authority={ca_file}"),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]),
    );
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig_path = dir.join("admin.kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig(&server, &ca.cert_pem, "admin", Credential::Cert(&admin))).expect("kubeconfig");
    let api = ApiServer::from_kubeconfig(&kubeconfig_path, None).expect("admin kubeconfig");
    wait_for("the API server ready", || match api.request("GET", "/readyz", None, b"") {
        _ if procs.exited("apiserver") => panic!("kube-apiserver exited"),
        Ok((200, _)) => Ok(()),
        Ok((code, body)) => Err(format!("status {code}: {}", String::from_utf8_lossy(&body))),
        Err(e) => Err(e.to_string()),
    });
    procs.start(
        "sim",
        Command::new(support::BIN).env("RUST_LOG", "info").args([
            "sim",
            "--kubelet",
            "--schedule",
            "--node-name",
            "kubetape-sim",
            "--kubeconfig",
            &kubeconfig_path.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{kubelet_port}"),
            "--tls-cert",
            &write("kubelet.crt", &kubelet.cert),
            "--tls-key",
            &write("kubelet.key", &kubelet.key),
            "--client-ca",
            &ca_file,
            "--data-dir",
            &dir.join("sim-data").display().to_string(),
            "--pod-cidr",
            POD_CIDR,
            "--image-map",
            "test/python:1=/usr/bin/python3,test/shell:1=/bin/sh",
            "--apiserver-address",
            &format!("127.0.0.1:{api_port}"),
        ]),
    );
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("home");
    Cluster { api, kubeconfig: kubeconfig_path, ca: PathBuf::from(ca_file), api_port, home }
}

fn pod(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["serviceAccountName"] = json!("web"); // ServiceAccount admission is off
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}}, "spec": spec})
}

fn inside_the_namespace() {
    support::init_crypto();
    let apiserver = PathBuf::from(std::env::var_os(INNER).unwrap_or_default());
    run("ip", &["link", "set", "lo", "up"]);
    let dir = TempDir::new("sim-kubelet");
    let mut procs = Procs { children: Vec::new(), dir: dir.0.clone() };
    let c = start_cluster(&mut procs, &dir.0, &apiserver);
    wait_for("the node registered", || {
        c.api.json("GET", "/api/v1/nodes/kubetape-sim", "", None).map_err(|e| e.to_string()).and_then(|(code, _)| if code == 200 { Ok(()) } else { Err(format!("status {code}")) })
    });
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/kubetape-sim";
    let first_renewal = wait_for("the node lease", || match c.api.json("GET", lease_path, "", None) {
        Ok((200, l)) => l["spec"]["renewTime"].as_str().map(String::from).ok_or_else(|| format!("no renewTime: {l}")),
        Ok((code, _)) => Err(format!("status {code}")),
        Err(e) => Err(e.to_string()),
    });
    assert_eq!(first_renewal.len(), "2026-12-01T21:04:18.502670Z".len(), "renewTime is a MicroTime: {first_renewal}");

    // Mount points are made where missing, so all but the token's are in the test's
    // directory, to leave nothing behind on the host.
    let mnt = dir.0.join("mnt").display().to_string();
    let volume_mounts = json!([
        {"name": "creds", "mountPath": format!("{mnt}/creds")},
        {"name": "policy", "mountPath": format!("{mnt}/policy")},
        {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        {"name": "data", "mountPath": format!("{mnt}/data")},
    ]);
    let volumes = json!([
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "policy", "configMap": {"name": "policy"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
        ]}}
    ]);
    c.apply(&[
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"password": "s3cr3t"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "policy"}, "data": {"policy.json": "{\"v\": 1}"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": std::fs::read_to_string(&c.ca).unwrap_or_default()}}),
        pod(
            "web",
            json!({"terminationGracePeriodSeconds": 5, "volumes": volumes, "containers": [{
                "name": "main", "image": "test/python:1",
                "args": ["-c", SERVER, "$(POD_IP)"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "GREETING", "value": "hello $(PASSWORD) $$(PASSWORD)"}
                ],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "volumeMounts": volume_mounts
            }]}),
        ),
        pod("crash", json!({"containers": [{"name": "main", "image": "test/shell:1", "args": ["-c", "echo crashing; exit 3"]}]})),
        pod(
            "quick",
            json!({"restartPolicy": "Never", "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}], "containers": [{
                "name": "main", "image": "busybox", "command": ["sh", "-c", format!("echo kept > {mnt}/data/f")],
                "volumeMounts": [{"name": "data", "mountPath": format!("{mnt}/data")}]
            }]}),
        ),
        pod(
            "later",
            json!({"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo $LATE; exec sleep 600"],
            "env": [{"name": "LATE", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}]}]}),
        ),
    ]);

    // A process that exits at once ends Succeeded, never left showing Running.
    let quick = wait_for("quick Succeeded", || c.pod("quick").and_then(|p| if p["status"]["phase"] == json!("Succeeded") { Ok(p) } else { Err(format!("{}", p["status"])) }));
    assert_eq!(quick["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], json!("Completed"), "{}", quick["status"]);

    // A missing Secret keeps the container waiting, with the reason, until it exists.
    let waiting = wait_for("later waiting", || {
        c.pod("later").and_then(|p| {
            let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
            if w["reason"] == json!("CreateContainerConfigError") {
                Ok(w)
            } else {
                Err(format!("{}", p["status"]))
            }
        })
    });
    assert_eq!(waiting["message"], json!("secrets \"late\" not found"));
    c.ok(&["create", "secret", "generic", "late", "--from-literal=k=arrived"]);

    // The web pod: an address of the range, Ready once its probe passes.
    let web = wait_for("web Ready", || c.pod("web").and_then(|p| if condition(&p, "Ready")["status"] == json!("True") { Ok(p) } else { Err(format!("{}", p["status"])) }));
    let ip: Ipv4Addr = web["status"]["podIP"].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("podIP: {}", web["status"]));
    assert!(ip.octets()[..3] == [10, 244, 0] && ip.octets()[3] != 0 && ip.octets()[3] != 255, "{ip} is not a pod address of {POD_CIDR}");
    assert_eq!(web["status"]["podIPs"], json!([{"ip": ip.to_string()}]));
    assert_eq!(web["status"]["hostIP"], json!("127.0.0.1"));
    assert!(condition(&web, "Ready")["lastTransitionTime"].is_string() && condition(&web, "ContainersReady")["status"] == json!("True"), "{}", web["status"]);
    assert!(lo_addresses().contains(&format!("{ip}/32")), "{ip}/32 not on lo: {}", lo_addresses());
    let addresses: Vec<String> = ["crash", "quick", "later"].iter().filter_map(|n| c.pod(n).ok()?["status"]["podIP"].as_str().map(String::from)).collect();
    assert!(!addresses.contains(&ip.to_string()), "{ip} given twice: {addresses:?}");

    // Env and files as the container sees them (kubectl exec joins its mount namespace).
    let env = c.exec("web", "echo $POD_IP $NODE $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; echo $GREETING").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(env, format!("{ip} kubetape-sim 127.0.0.1:{}\nhello s3cr3t $(PASSWORD)", c.api_port));
    let script = format!("cat {mnt}/creds/password; echo; cat {mnt}/policy/policy.json; echo; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; stat -c %a {mnt}/creds/password; cat {mnt}/data/f");
    let files = c.exec("web", &script).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(files, "s3cr3t\n{\"v\": 1}\ndefault\n400\nkept", "secret, configMap, downward API and a claim another pod wrote");
    let write = c.kubectl(&["exec", "web", "--", "sh", "-c", &format!("touch {mnt}/creds/x")]);
    assert!(!write.status.success() && String::from_utf8_lossy(&write.stderr).contains("Read-only file system"), "a secret volume is read-only: {}", write.describe());
    assert!(!Path::new(&format!("{mnt}/creds/password")).exists(), "the mount is the container's alone");

    // The projected token authenticates as the pod's service account.
    let token = c.exec("web", "cat /var/run/secrets/kubernetes.io/serviceaccount/token").unwrap_or_else(|e| panic!("{e}"));
    let as_sa = Command::new(kubectl("1.32"))
        .args(["--server", &format!("https://127.0.0.1:{}", c.api_port), "--certificate-authority", &c.ca.display().to_string(), "--token", &token, "get", "pods"])
        .env("HOME", &c.home)
        .output()
        .expect("kubectl");
    assert!(String::from_utf8_lossy(&as_sa.stderr).contains("User \"system:serviceaccount:default:web\" cannot list resource \"pods\""), "{}", as_sa.describe());

    // The server answers at the pod's address.
    let mut sock = std::net::TcpStream::connect((ip, 8080)).expect("connecting to the pod");
    std::io::Write::write_all(&mut sock, b"GET / HTTP/1.0\r\n\r\n").expect("request");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut sock, &mut answer);
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");

    // A ConfigMap change reaches the running pod.
    c.ok(&["patch", "configmap", "policy", "-p", r#"{"data":{"policy.json":"{\"v\": 2}"}}"#]);
    wait_for("the new policy in the pod", || c.exec("web", &format!("cat {mnt}/policy/policy.json")).and_then(|p| if p == "{\"v\": 2}" { Ok(()) } else { Err(p) }));

    // The crash loop: restarted with back-off, last state kept, the pod Running.
    let crash = wait_for("crash restarted twice", || {
        c.pod("crash").and_then(|p| if p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(2) { Ok(p) } else { Err(format!("{}", p["status"])) })
    });
    let s = &crash["status"]["containerStatuses"][0];
    assert_eq!((s["lastState"]["terminated"]["exitCode"].clone(), crash["status"]["phase"].clone()), (json!(3), json!("Running")), "{s}");
    wait_for("crash's log", || c.kubectl(&["logs", "crash"]).stdout_str().eq("crashing").then_some(()).ok_or("not yet".to_string()));

    let later = wait_for("later running", || {
        c.pod("later").and_then(|p| if p["status"]["containerStatuses"][0]["state"]["running"].is_object() { Ok(p) } else { Err(format!("{}", p["status"])) })
    });
    assert_eq!(later["status"]["containerStatuses"][0]["restartCount"], json!(0));
    wait_for("later's log", || c.kubectl(&["logs", "later"]).stdout_str().eq("arrived").then_some(()).ok_or("not yet".to_string()));

    // A graceful deletion stops the server (it exits on SIGTERM) and frees the address.
    c.ok(&["delete", "pod", "web", "--wait=true", "--timeout=30s"]);
    assert!(!lo_addresses().contains(&format!("{ip}/32")), "{ip}/32 still on lo: {}", lo_addresses());

    // The Lease was renewed meanwhile (every 10 s).
    wait_for("the lease renewed", || match c.api.json("GET", lease_path, "", None) {
        Ok((200, l)) if l["spec"]["renewTime"].as_str() != Some(first_renewal.as_str()) => Ok(()),
        Ok((_, l)) => Err(format!("{l}")),
        Err(e) => Err(e.to_string()),
    });
    let node = c.api.json("GET", "/api/v1/nodes/kubetape-sim", "", None).expect("node").1;
    assert_eq!(condition(&node, "Ready")["status"], json!("True"), "{}", node["status"]);
    assert!(!procs.log("sim").contains("panicked"), "{}", procs.log("sim"));
}
