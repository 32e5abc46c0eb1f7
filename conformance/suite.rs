//! The conformance suite: given an admin kubeconfig for any cluster, it deploys what
//! it needs (namespaces, RBAC, a proxy service account, a test pod), puts kubetape
//! proxy in front, runs the kubectl matrix through it for each exec protocol, then the
//! cases only a real API server can judge (RBAC, impersonation, `auth can-i`, chunked
//! lists, CRDs). Prints a table and exits non-zero on any failure. Cleans up after
//! itself, also when a case fails.
//!
//! Run: `cargo test --test conformance -- --kubeconfig ADMIN [--fill-aggregated-roles]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use kubetape::kube::client::{kubeconfig, Credential};
use kubetape::net::pki::Ca;
use serde_json::{json, Value};
use support::matrix::{self, Target};
use support::{free_port, kubectl, wait_for_port, Kubectl, OutputExt, Proto, Spawned, TempDir};

/// kubectl for setup and the matrix; newest with both protocols.
const KUBECTL: &str = "1.32";

struct Args {
    kubeconfig: PathBuf,
    /// The API server's audit log, to correlate audit IDs with kubetape's events.
    audit_log: Option<PathBuf>,
    fill_aggregated_roles: bool,
    report: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut kubeconfig, mut fill, mut report, mut audit_log) = (None, false, None, None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kubeconfig" => kubeconfig = it.next().map(PathBuf::from),
            "--fill-aggregated-roles" => fill = true,
            "--report" => report = it.next().map(PathBuf::from),
            "--audit-log" => audit_log = it.next().map(PathBuf::from),
            // cargo test passes harness flags through; none apply here.
            "--nocapture" | "--quiet" | "-q" => {}
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let kubeconfig = kubeconfig
        .or_else(|| std::env::var_os("KUBETAPE_CONFORMANCE_KUBECONFIG").map(PathBuf::from))
        .ok_or("--kubeconfig ADMIN_KUBECONFIG (or KUBETAPE_CONFORMANCE_KUBECONFIG) is required")?;
    Ok(Args { kubeconfig, audit_log, fill_aggregated_roles: fill, report })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("conformance: {e}");
            std::process::exit(2);
        }
    };
    support::init_crypto();
    let started = Instant::now();
    let (table, t) = run(&args);
    let failed = t.failed;
    let summary = format!(
        "{table}\n{} expected differences, {:.0}s\nconformance: {} passed, {} failed, {} skipped\n",
        t.expected,
        started.elapsed().as_secs_f64(),
        t.passed,
        t.failed,
        t.skipped
    );
    print!("{summary}");
    if let Some(p) = &args.report {
        let _ = std::fs::write(p, &summary);
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn admin(path: &Path) -> Kubectl {
    Kubectl { bin: kubectl(KUBECTL), kubeconfig: path.to_path_buf(), proto: Proto::WebSocket, version: KUBECTL.into() }
}

fn must(out: Output, what: &str) -> Result<String, String> {
    if out.status.success() {
        Ok(out.stdout_str())
    } else {
        Err(format!("{what}: {}", out.describe()))
    }
}

fn apply(k: &Kubectl, doc: &Value) -> Result<(), String> {
    let out = k.run_timeout(&["apply", "-f", "-"], Some(doc.to_string().as_bytes()), Duration::from_secs(60));
    must(out, &format!("apply {}", doc["metadata"]["name"])).map(|_| ())
}

/// Everything the suite created, removed on drop.
struct Fixture {
    admin: Kubectl,
    ns: String,
    other: String,
    cluster_objects: Vec<(String, String)>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for ns in [&self.ns, &self.other] {
            let _ = self.admin.run(&["delete", "namespace", ns, "--wait=false"]);
        }
        for (kind, name) in &self.cluster_objects {
            let _ = self.admin.run(&["delete", kind, name, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// Fills the aggregated ClusterRoles (admin, edit, view) from their labelled parts,
/// as kube-controller-manager would; for clusters that run without one.
fn fill_aggregated_roles(k: &Kubectl) -> Result<(), String> {
    for role in ["view", "edit", "admin"] {
        let out = must(k.run(&["get", "clusterrole", role, "-o", "json"]), "get clusterrole")?;
        let mut obj: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for selector in obj["aggregationRule"]["clusterRoleSelectors"].as_array().cloned().unwrap_or_default() {
            let labels: Vec<String> = selector["matchLabels"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
            let parts = must(k.run(&["get", "clusterroles", "-l", &labels.join(","), "-o", "json"]), "get aggregated parts")?;
            let parts: Value = serde_json::from_str(&parts).map_err(|e| e.to_string())?;
            for part in parts["items"].as_array().into_iter().flatten() {
                if part["metadata"]["name"] != obj["metadata"]["name"] {
                    rules.extend(part["rules"].as_array().cloned().unwrap_or_default());
                }
            }
        }
        obj["rules"] = Value::Array(rules);
        obj["metadata"] = json!({"name": role, "labels": obj["metadata"]["labels"].clone()});
        let out = k.run_timeout(&["replace", "-f", "-"], Some(obj.to_string().as_bytes()), Duration::from_secs(30));
        must(out, &format!("replace clusterrole {role}"))?;
    }
    Ok(())
}

fn server_minor(k: &Kubectl) -> Result<u32, String> {
    let out = must(k.run(&["version", "-o", "json"]), "kubectl version")?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let minor = v["serverVersion"]["minor"].as_str().unwrap_or("0").trim_end_matches('+');
    minor.parse().map_err(|_| format!("server minor version {minor:?}"))
}

/// Sets up namespaces, RBAC, the proxy's service account and a test pod.
fn setup(admin: Kubectl, fill: bool, id: &str) -> Result<(Fixture, Tokens), String> {
    if fill {
        fill_aggregated_roles(&admin)?;
    }
    let ns = format!("kt-conf-{id}");
    let other = format!("kt-conf-{id}-other");
    let mut fx = Fixture { admin: admin.clone(), ns: ns.clone(), other: other.clone(), cluster_objects: Vec::new() };
    for n in [&ns, &other] {
        apply(&admin, &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))?;
    }
    // The proxy's identity: a service account that may only impersonate.
    let role = format!("kubetape-proxy-{id}");
    fx.cluster_objects.push(("clusterrole".into(), role.clone()));
    fx.cluster_objects.push(("clusterrolebinding".into(), role.clone()));
    apply(&admin, &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kubetape-proxy", "namespace": ns}}))?;
    apply(
        &admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
        "rules": [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}]}),
    )?;
    apply(
        &admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "kubetape-proxy", "namespace": ns}]}),
    )?;
    // alice may edit in the suite's namespace only.
    apply(
        &admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-edit", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
    )?;
    // `edit` covers ephemeral containers only from Kubernetes 1.23; grant them explicitly.
    apply(
        &admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "debugger", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["get", "patch", "update"]}]}),
    )?;
    apply(
        &admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-debugger", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debugger"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
    )?;
    for (n, pod) in [(&ns, "web-0"), (&other, "elsewhere")] {
        apply(
            &admin,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": n},
            "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "while true; do sleep 3600; done"]}]}}),
        )?;
    }
    for (n, pod) in [(&ns, "web-0"), (&other, "elsewhere")] {
        let out = admin.run_timeout(&["wait", "--for=condition=Ready", &format!("pod/{pod}"), "-n", n, "--timeout=120s"], None, Duration::from_secs(130));
        must(out, &format!("waiting for pod {n}/{pod}"))?;
    }
    // The recorder's identity: it asks the cluster who a viewer's token belongs to
    // and what they may watch (TokenReview, SubjectAccessReview: auth-delegator).
    let delegator = format!("kubetape-recorder-{id}");
    fx.cluster_objects.push(("clusterrolebinding".into(), delegator.clone()));
    apply(&admin, &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kubetape-recorder", "namespace": ns}}))?;
    apply(
        &admin,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": delegator},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "kubetape-recorder", "namespace": ns}]}),
    )?;
    let token = must(admin.run(&["create", "token", "kubetape-proxy", "-n", &ns, "--duration=2h"]), "create token")?;
    let recorder_token = must(admin.run(&["create", "token", "kubetape-recorder", "-n", &ns, "--duration=2h"]), "create token")?;
    Ok((fx, Tokens { proxy: token, recorder: recorder_token }))
}

/// The service-account tokens the proxy and the recorder reach the cluster with.
struct Tokens {
    proxy: String,
    recorder: String,
}

/// The admin kubeconfig's server and CA, for building other kubeconfigs.
fn server_and_ca(admin: &Kubectl) -> Result<(String, String), String> {
    let server = must(admin.run(&["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"]), "server")?;
    let ca_b64 = must(admin.run(&["config", "view", "--raw", "--minify", "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}"]), "ca")?;
    let ca = kubetape::wire::base64::decode(&ca_b64).ok_or("certificate-authority-data is not base64")?;
    Ok((server, String::from_utf8_lossy(&ca).into_owned()))
}

struct Proxy {
    _proxy: Spawned,
    /// Taken (and so killed) by the fail-closed events case, which runs last.
    recorder: std::sync::Mutex<Option<Spawned>>,
    recorder_addr: String,
    dir: TempDir,
}

fn start_proxy(admin: &Kubectl, tokens: &Tokens) -> Result<Proxy, String> {
    let dir = TempDir::new("conformance");
    let d = |f: &str| dir.0.join(f);
    let (server, cluster_ca) = server_and_ca(admin)?;
    let w = |p: PathBuf, text: &str| std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()));
    w(d("upstream.kubeconfig"), &kubeconfig(&server, &cluster_ca, "kubetape-proxy", Credential::Token(&tokens.proxy)))?;
    w(d("recorder.kubeconfig"), &kubeconfig(&server, &cluster_ca, "kubetape-recorder", Credential::Token(&tokens.recorder)))?;
    let ca = Ca::new("kubetape-conformance-proxy-ca").map_err(|e| e.to_string())?;
    let serving = ca.server("kubetape-proxy", &["127.0.0.1", "localhost"]).map_err(|e| e.to_string())?;
    w(d("proxy-ca.pem"), &ca.cert_pem)?;
    w(d("proxy.pem"), &serving.cert)?;
    w(d("proxy-key.pem"), &serving.key)?;
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    for (user, groups) in [("alice", vec!["team"]), ("carol", vec!["sre"]), ("dave", vec!["strict"])] {
        let pem = ca.client(user, &groups).map_err(|e| e.to_string())?;
        w(d(&format!("{user}.kubeconfig")), &kubeconfig(&url, &ca.cert_pem, user, Credential::Cert(&pem)))?;
    }
    // A recorder for every session through this proxy (fail-open).
    let rca = Ca::new("kubetape-conformance-recorder-ca").map_err(|e| e.to_string())?;
    let rserving = rca.server("kubetape-recorder", &["127.0.0.1"]).map_err(|e| e.to_string())?;
    let writer = rca.client("kubetape-proxy", &[]).map_err(|e| e.to_string())?;
    for (f, text) in
        [("recorder-ca.pem", &rca.cert_pem), ("recorder.pem", &rserving.cert), ("recorder-key.pem", &rserving.key), ("writer.pem", &writer.cert), ("writer-key.pem", &writer.key)]
    {
        w(d(f), text)?;
    }
    let rport = free_port();
    let policy = json!({
        "recorders": [{"name": "conformance", "url": format!("https://127.0.0.1:{rport}"), "tags": ["tag:recorder"], "caFile": "recorder-ca.pem"}],
        "grants": [
            {"src": ["group:team"], "recorder": ["tag:recorder"], "enableEvents": true},
            {"src": ["group:strict"], "recorder": ["tag:recorder"], "enableEvents": true, "enforceRecorder": true},
            {"src": ["group:sre"], "impersonate": {"groups": ["system:masters"]}, "recorder": ["tag:recorder"]}
        ]
    });
    w(d("policy.json"), &policy.to_string())?;
    let p = |f: &str| d(f).display().to_string();
    let rargs: Vec<String> = [
        "recorder",
        "--listen",
        &format!("127.0.0.1:{rport}"),
        "--tls-cert",
        &p("recorder.pem"),
        "--tls-key",
        &p("recorder-key.pem"),
        "--client-ca",
        &p("recorder-ca.pem"),
        "--storage-dir",
        &p("recordings"),
        "--viewers-from-cluster",
        "--kubeconfig",
        &p("recorder.kubeconfig"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let recorder = Spawned::start(&rargs, &d("recorder.log"));
    wait_for_port(rport);
    let args: Vec<String> = [
        "proxy",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &p("proxy.pem"),
        "--tls-key",
        &p("proxy-key.pem"),
        "--client-ca",
        &p("proxy-ca.pem"),
        "--kubeconfig",
        &p("upstream.kubeconfig"),
        "--policy",
        &p("policy.json"),
        "--recorder-cert",
        &p("writer.pem"),
        "--recorder-key",
        &p("writer-key.pem"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = Spawned::start(&args, &d("proxy.log"));
    wait_for_port(port);
    // Viewers reach the recorder with a token and no certificate; this trusts it.
    w(d("recorder-viewer.kubeconfig"), &format!("certificate-authority-data: {}\n", kubetape::wire::base64::encode(rca.cert_pem.as_bytes())))?;
    Ok(Proxy { _proxy: child, recorder: std::sync::Mutex::new(Some(recorder)), recorder_addr: format!("127.0.0.1:{rport}"), dir })
}

type CaseFn = fn(&Ctx<'_>) -> Result<(), String>;

struct Ctx<'a> {
    proxy: &'a Proxy,
    admin: Kubectl,
    audit_log: Option<PathBuf>,
    dave: Kubectl,
    recordings: PathBuf,
    alice: Kubectl,
    carol: Kubectl,
    ns: String,
    other: String,
    id: String,
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rbac_namespace_boundary(c: &Ctx<'_>) -> Result<(), String> {
    must(c.alice.run(&["get", "pods", "-n", &c.ns]), "alice lists pods where she may")?;
    let out = c.alice.run(&["get", "pods", "-n", &c.other]);
    if out.status.success() || !stderr(&out).contains("Forbidden") || !stderr(&out).contains("\"alice\"") {
        return Err(format!("alice listed pods in {}: {}", c.other, out.describe()));
    }
    let out = c.alice.run(&["exec", "-n", &c.other, "elsewhere", "--", "echo", "no"]);
    if out.status.success() || !stderr(&out).contains("Forbidden") {
        return Err(format!("alice exec'd outside her namespace: {}", out.describe()));
    }
    Ok(())
}

fn client_impersonation_ignored(c: &Ctx<'_>) -> Result<(), String> {
    // carol's grant makes her an admin through the proxy; alice asking to be carol changes nothing.
    let out = c.alice.run(&["--as=carol", "--as-group=system:masters", "get", "pods", "-n", &c.other]);
    if out.status.success() || !stderr(&out).contains("\"alice\"") {
        return Err(format!("alice's --as was honoured: {}", out.describe()));
    }
    must(c.carol.run(&["get", "pods", "-n", &c.other]), "carol, impersonated with system:masters by the proxy")?;
    Ok(())
}

fn can_i_answers_for_the_caller(c: &Ctx<'_>) -> Result<(), String> {
    let yes = c.alice.run(&["auth", "can-i", "create", "pods", "-n", &c.ns]);
    let no = c.alice.run(&["auth", "can-i", "create", "pods", "-n", &c.other]);
    let ok = yes.stdout_str() == "yes" && no.stdout_str() == "no";
    if !ok {
        return Err(format!("can-i: own ns {}; other ns {}", yes.describe(), no.describe()));
    }
    Ok(())
}

fn chunked_list(c: &Ctx<'_>) -> Result<(), String> {
    for i in 0..5 {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("chunk-{i}"), "namespace": c.ns}, "data": {"i": i.to_string()}});
        apply(&c.alice, &cm)?;
    }
    let out = must(c.alice.run(&["get", "configmaps", "-n", &c.ns, "--chunk-size=2", "-o", "name"]), "chunked list")?;
    let found = (0..5).filter(|i| out.contains(&format!("configmap/chunk-{i}"))).count();
    if found != 5 {
        return Err(format!("chunked list returned {found} of 5: {out}"));
    }
    Ok(())
}

fn crd_through_proxy(c: &Ctx<'_>) -> Result<(), String> {
    let group = format!("conf{}.kubetape.dev", c.id);
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("tapes.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "tapes", "singular": "tape", "kind": "Tape"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"length": {"type": "integer"}}}}}}}]}
    });
    apply(&c.carol, &crd)?;
    let result = (|| {
        let out = c.carol.run_timeout(&["wait", "--for=condition=Established", &format!("crd/tapes.{group}"), "--timeout=60s"], None, Duration::from_secs(70));
        must(out, "CRD established")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let cr = json!({"apiVersion": format!("{group}/v1"), "kind": "Tape", "metadata": {"name": "first", "namespace": c.ns}, "spec": {"length": 90}});
            match apply(&c.carol, &cr) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        let out = must(c.carol.run(&["get", &format!("tapes.{group}"), "-n", &c.ns, "-o", "jsonpath={.items[*].spec.length}"]), "list custom resources")?;
        if out != "90" {
            return Err(format!("custom resources listed as {out:?}"));
        }
        Ok(())
    })();
    let _ = c.carol.run(&["delete", "crd", &format!("tapes.{group}"), "--wait=false"]);
    result
}

/// The matrix's `exec (no stdin)` sessions (one per protocol) were recorded in full.
fn sessions_recorded(c: &Ctx<'_>) -> Result<(), String> {
    let mut found = Vec::new();
    for day in std::fs::read_dir(&c.recordings).map_err(|e| e.to_string())?.flatten() {
        for f in std::fs::read_dir(day.path()).map_err(|e| e.to_string())?.flatten() {
            let p = f.path();
            if p.extension().and_then(|e| e.to_str()) != Some("cast") {
                continue;
            }
            let cast = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
            if cast.contains("\"o\", \"to-out\\n\"") {
                let meta: Value = serde_json::from_slice(&std::fs::read(p.with_extension("json")).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
                found.push((meta["status"].clone(), meta["session"]["protocol"].clone(), cast.contains("\"e\", \"to-err\\n\"") && cast.contains("\"m\", \"exit:0\"")));
            }
        }
    }
    let complete = |proto: &str| found.iter().any(|(s, p, full)| s == "complete" && p == proto && *full);
    if complete("websocket") && complete("SPDY/3.1") {
        Ok(())
    } else {
        Err(format!("expected complete recordings of the plain exec over both protocols, found {found:?}"))
    }
}

/// The API server's audit log, or why this case cannot be judged.
fn audit_log(c: &Ctx<'_>) -> Result<String, String> {
    let p = c.audit_log.as_ref().ok_or("not judged: no --audit-log given for this cluster")?;
    std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))
}

/// Every event kubetape recorded, from the recorder's segments.
fn recorded_events(c: &Ctx<'_>) -> Vec<Value> {
    let dir = c.recordings.join("events");
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        for line in std::fs::read_to_string(f.path()).unwrap_or_default().lines() {
            out.extend(serde_json::from_str::<Value>(line).ok());
        }
    }
    out
}

fn audit_ids_match(c: &Ctx<'_>) -> Result<(), String> {
    let marker = format!("audit{}", kubetape::net::random::hex(6));
    must(c.alice.run(&["get", "configmaps", "-n", &c.ns, "-l", &format!("marker={marker}")]), "list with a marker")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let id = recorded_events(c).into_iter().find(|e| e["query"].as_str().unwrap_or("").contains(&marker)).and_then(|e| e["id"].as_str().map(String::from));
        let log = audit_log(c)?;
        if let Some(id) = &id {
            // The API server logs each stage; impersonation shows from ResponseStarted on.
            let entries: Vec<Value> = log.lines().filter(|l| l.contains(&format!("\"auditID\":\"{id}\""))).filter_map(|l| serde_json::from_str(l).ok()).collect();
            if let Some(done) = entries.iter().find(|v| v["stage"] == "ResponseComplete") {
                let by_proxy = done["user"]["username"].as_str().unwrap_or("").ends_with(":kubetape-proxy");
                let as_alice = done["impersonatedUser"]["username"] == "alice";
                let same_request = done["requestURI"].as_str().unwrap_or("").contains(&marker);
                if by_proxy && as_alice && same_request {
                    return Ok(());
                }
                return Err(format!("audit entry {id} is not alice's request through the proxy: {done}"));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("event id {id:?} for {marker} not found as an auditID in the API server's audit log"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Last: stops the recorder; dave is fail-closed for events.
fn events_fail_closed(c: &Ctx<'_>) -> Result<(), String> {
    audit_log(c)?;
    drop(c.proxy.recorder.lock().unwrap_or_else(|e| e.into_inner()).take());
    std::thread::sleep(Duration::from_millis(500));
    let marker = format!("refused{}", kubetape::net::random::hex(6));
    let out = c.dave.run(&["get", "configmaps", "-n", &c.ns, "-l", &format!("marker={marker}")]);
    if out.status.success() || !stderr(&out).contains("must be recorded") {
        return Err(format!("dave's request was not refused: {}", out.describe()));
    }
    std::thread::sleep(Duration::from_secs(2));
    if audit_log(c)?.contains(&marker) {
        return Err("the refused request reached the API server (it is in the audit log)".into());
    }
    Ok(())
}

/// A raw TLS connection to the proxy as the kubeconfig's user.
fn raw_client(k: &Kubectl) -> Result<support::RawClient, String> {
    let text = std::fs::read_to_string(&k.kubeconfig).map_err(|e| e.to_string())?;
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: https://")).ok_or("no server in kubeconfig")?;
    Ok(support::RawClient::connect(server, &k.kubeconfig, true))
}

/// Whether some recording's command holds `marker`, waiting a little for it.
fn recorded_command(c: &Ctx<'_>, marker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for day in std::fs::read_dir(&c.recordings).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            for f in std::fs::read_dir(day.path()).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
                if f.path().extension().and_then(|e| e.to_str()) == Some("json") && std::fs::read_to_string(f.path()).unwrap_or_default().contains(marker) {
                    return true;
                }
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// kube-apiserver routes on the path as Go decodes it: every spelling of
/// `pods/exec` that gets a 101 must have been recorded, and the kubelet's own exec
/// behind `nodes/proxy` is refused.
fn encoded_exec_paths(c: &Ctx<'_>) -> Result<(), String> {
    let base = format!("/api/v1/namespaces/{}/pods", c.ns);
    let variants = [
        format!("{base}/web-0/exec"),
        format!("{base}/web-0/%65xec"),
        format!("{base}/web-0%2Fexec"),
        format!("{base}/web-0/exec%2F"),
        format!("{base}/web-0/exec/"),
        format!("{base}/web%2D0/exec"),
        format!("{base}/web-0/ex%65c"),
        format!("/api/v1/namespaces/{}/pods/web-0/exec", c.ns.replace('-', "%2d")),
        format!("{base}/web-0/EXEC"),
        format!("{base}/web-0/exec;x=y"),
        format!("{base}//web-0/exec"),
        format!("{base}/web-0/./exec"),
    ];
    let mut report = Vec::new();
    let mut switched = 0;
    for (i, path) in variants.iter().enumerate() {
        let marker = format!("enc{i}x{}", kubetape::net::random::hex(4));
        let mut k = raw_client(&c.alice)?;
        let req = format!("POST {path}?command=echo&command={marker}&stdout=true HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n");
        k.send(req.as_bytes()).map_err(|e| e.to_string())?;
        let status = k.response().map(|r| r.0).unwrap_or(0);
        drop(k);
        if status == 101 {
            switched += 1;
            if !recorded_command(c, &marker) {
                return Err(format!("{path} reached exec (101) with no recording"));
            }
        }
        report.push(format!("{path} -> {status}"));
    }
    eprintln!("conformance: exec spellings and what this API server answered: {}", report.join(", "));
    if switched < 2 {
        return Err(format!("expected the plain and at least one encoded spelling to reach exec, recorded: {report:?}"));
    }
    let node = must(c.carol.run(&["get", "pod", "web-0", "-n", &c.ns, "-o", "jsonpath={.spec.nodeName}"]), "node name")?;
    for kubelet in ["exec", "run", "attach", "portForward"] {
        let mut k = raw_client(&c.carol)?;
        let req = format!("POST /api/v1/nodes/{node}/proxy/{kubelet}/{}/web-0/main?command=id HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n", c.ns);
        k.send(req.as_bytes()).map_err(|e| e.to_string())?;
        match k.response() {
            Some((403, body)) if body.contains("nodes/proxy") => {}
            other => return Err(format!("nodes/{node}/proxy/{kubelet} was not refused by kubetape: {other:?}")),
        }
    }
    Ok(())
}

/// `Connection: content-length` once made the proxy drop its framing header, so the
/// API server read the body as a second request on the proxy's connection.
fn smuggling_never_reaches_the_api_server(c: &Ctx<'_>) -> Result<(), String> {
    let marker = format!("smuggled{}", kubetape::net::random::hex(6));
    let inner = format!("GET /api/v1/namespaces/{}/configmaps/{marker} HTTP/1.1\r\nHost: x\r\nImpersonate-User: carol\r\nImpersonate-Group: system:masters\r\n\r\n", c.other);
    for conn in ["content-length", "keep-alive, Content-Length", "transfer-encoding", "impersonate-user"] {
        let mut k = raw_client(&c.alice)?;
        let req = format!(
            "POST /api/v1/namespaces/{}/configmaps HTTP/1.1\r\nHost: x\r\nConnection: {conn}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{inner}",
            c.ns,
            inner.len()
        );
        k.send(req.as_bytes()).map_err(|e| e.to_string())?;
        match k.response() {
            Some((400, _)) => {}
            other => return Err(format!("Connection: {conn} was not refused: {other:?}")),
        }
    }
    // A request sent after them that the audit log must show first, so the check
    // below waits on the log's state rather than on time.
    let after = format!("later{}", kubetape::net::random::hex(6));
    let _ = c.alice.run(&["get", "configmap", &after, "-n", &c.ns]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !audit_log(c)?.contains(&after) {
        if Instant::now() > deadline {
            return Err(format!("the audit log never showed {after}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if audit_log(c)?.contains(&marker) {
        return Err("the smuggled request reached the API server (it is in the audit log)".into());
    }
    Ok(())
}

/// `check` again every 200 ms until it gives something or `timeout` passes.
fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A GET on the recorder's API with `token` as a bearer token (no certificate).
fn viewer_get(c: &Ctx<'_>, token: Option<&str>, path: &str) -> Result<(u16, String), String> {
    let mut k = support::RawClient::connect_named(&c.proxy.recorder_addr, "127.0.0.1", &c.proxy.dir.0.join("recorder-viewer.kubeconfig"), false);
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    k.send(format!("GET {path} HTTP/1.1\r\nHost: recorder\r\n{auth}Connection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    k.response().ok_or_else(|| format!("GET {path}: no response"))
}

fn items(body: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    v["items"].as_array().cloned().ok_or_else(|| format!("no items in {body}"))
}

/// Viewers authenticated by the cluster (TokenReview of a service-account token) and
/// authorised by its RBAC (SubjectAccessReview for get on recordings.kubetape.dev in
/// the recording's namespace), judged by what the recorder's API answers them.
fn viewers_by_token_and_rbac(c: &Ctx<'_>) -> Result<(), String> {
    // A recording in the other namespace (carol is an admin through the proxy).
    let marker = format!("elsewhere-{}", kubetape::net::random::hex(4));
    must(c.carol.run(&["exec", "-n", &c.other, "elsewhere", "--", "echo", &marker]), "carol exec in the other namespace")?;
    let role = format!("kubetape-recording-viewer-{}", c.id);
    let result = (|| {
        for sa in ["viewer-alice", "viewer-bob"] {
            apply(&c.admin, &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": c.ns}}))?;
        }
        apply(
            &c.admin,
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
            "rules": [{"apiGroups": ["kubetape.dev"], "resources": ["recordings"], "verbs": ["get"]}]}),
        )?;
        apply(
            &c.admin,
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "viewer-alice", "namespace": c.ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer-alice", "namespace": c.ns}]}),
        )?;
        let token = |sa: &str| must(c.admin.run(&["create", "token", sa, "-n", &c.ns, "--duration=1h"]), "create token");
        let (alice, bob) = (token("viewer-alice")?, token("viewer-bob")?);
        // The other namespace's recording, found with its marker among the files.
        let other_id = poll(Duration::from_secs(20), || {
            std::fs::read_dir(&c.recordings).ok()?.flatten().flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten()).find_map(|f| {
                let p = f.path();
                std::fs::read_to_string(&p).ok().filter(|t| p.extension().is_some_and(|e| e == "cast") && t.contains(&marker))?;
                p.file_stem().map(|s| s.to_string_lossy().into_owned())
            })
        })
        .ok_or("carol's session in the other namespace was not recorded")?;
        // alice sees her namespace's recordings and none of the other's, and reads them.
        let (code, body) = poll(Duration::from_secs(20), || viewer_get(c, Some(&alice), "/v1/recordings").ok().filter(|(code, _)| *code == 200)).ok_or("alice's list")?;
        let listed = items(&body)?;
        let own: Vec<&Value> = listed.iter().filter(|m| m["session"]["namespace"] == json!(c.ns)).collect();
        if code != 200 || own.is_empty() || own.len() != listed.len() {
            return Err(format!("alice listed {} recordings, {} of them in {}", listed.len(), own.len(), c.ns));
        }
        let id = own[0]["id"].as_str().ok_or("no id")?;
        match viewer_get(c, Some(&alice), &format!("/v1/recordings/{id}/cast"))? {
            (200, cast) if serde_json::from_str::<Value>(cast.lines().next().unwrap_or_default()).is_ok_and(|h| h["version"] == 2) => {}
            other => return Err(format!("alice's cast of {id}: {other:?}")),
        }
        for path in [format!("/v1/recordings/{other_id}"), format!("/v1/recordings/{other_id}/cast")] {
            match viewer_get(c, Some(&alice), &path)? {
                (403, body) if !body.contains(&marker) => {}
                other => return Err(format!("alice got {path} of namespace {}: {other:?}", c.other)),
            }
        }
        let events = items(&viewer_get(c, Some(&alice), "/v1/events")?.1)?;
        if events.is_empty() || events.iter().any(|e| e["namespace"] != json!(c.ns)) {
            return Err(format!("alice's events: {} of them, namespaces {:?}", events.len(), events.iter().map(|e| e["namespace"].clone()).collect::<Vec<_>>()));
        }
        // bob has no binding: nothing; a made-up token and none at all: 401.
        let bob_list = items(&viewer_get(c, Some(&bob), "/v1/recordings")?.1)?;
        if !bob_list.is_empty() {
            return Err(format!("bob listed {} recordings", bob_list.len()));
        }
        match viewer_get(c, Some(&bob), &format!("/v1/recordings/{id}/cast"))? {
            (403, _) => {}
            other => return Err(format!("bob's cast of {id}: {other:?}")),
        }
        for token in [Some("not-a-token"), None] {
            match viewer_get(c, token, "/v1/recordings")? {
                (401, _) => {}
                other => return Err(format!("token {token:?}: {other:?}")),
            }
        }
        // A session alice follows as it runs: it prints, then waits a minute.
        let running = format!("running-{}", kubetape::net::random::hex(4));
        let mut session = c
            .alice
            .command(&["exec", "-n", &c.ns, "web-0", "--", "sh", "-c", &format!("echo {running}; sleep 60")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let followed = (|| {
            let running_id = poll(Duration::from_secs(30), || {
                let list = items(&viewer_get(c, Some(&alice), "/v1/recordings").ok()?.1).ok()?;
                list.iter().find(|m| m["status"] == "recording" && m["session"]["command"].to_string().contains(&running)).and_then(|m| m["id"].as_str().map(String::from))
            })
            .ok_or("alice's running session is not listed as recording")?;
            let mut k = support::RawClient::connect_named(&c.proxy.recorder_addr, "127.0.0.1", &c.proxy.dir.0.join("recorder-viewer.kubeconfig"), false);
            k.stream.sock.set_read_timeout(Some(Duration::from_secs(45))).map_err(|e| e.to_string())?;
            k.send(format!("GET /v1/recordings/{running_id}/cast?follow=true HTTP/1.1\r\nHost: recorder\r\nAuthorization: Bearer {alice}\r\n\r\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let (head, rest) = k.head().ok_or("no answer to alice's follow")?;
            if head.status != 200 {
                return Err(format!("alice's follow: {}", head.status));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let whole = k.body(&head, rest, |piece| got.extend_from_slice(piece));
                let _ = tx.send((whole, got));
            });
            // The binding goes while the session runs: the stream must stop, unfinished.
            must(c.admin.run(&["delete", "rolebinding", "viewer-alice", "-n", &c.ns]), "delete alice's binding")?;
            let (whole, got) = rx.recv_timeout(Duration::from_secs(40)).map_err(|_| "alice's follow went on after her binding went".to_string())?;
            let text = String::from_utf8_lossy(&got);
            if whole == Some(true) || !text.contains(&running) {
                return Err(format!("alice's follow ended whole={whole:?} with {} bytes", got.len()));
            }
            Ok(())
        })();
        let _ = session.kill();
        let _ = session.wait();
        followed?;
        // And the binding gone stops the rest within the recorder's cache time.
        poll(Duration::from_secs(30), || viewer_get(c, Some(&alice), "/v1/recordings").ok().and_then(|(_, b)| items(&b).ok()).filter(|l| l.is_empty()))
            .ok_or("alice still lists recordings after her binding went")?;
        Ok(())
    })();
    let _ = c.admin.run(&["delete", "clusterrole", &role, "--ignore-not-found"]);
    result
}

const REAL_CASES: &[(&str, CaseFn)] = &[
    ("encoded exec paths, nodes/proxy", encoded_exec_paths),
    ("smuggling via Connection", smuggling_never_reaches_the_api_server),
    ("sessions recorded (both)", sessions_recorded),
    ("audit IDs match events", audit_ids_match),
    ("rbac: namespace boundary", rbac_namespace_boundary),
    ("client --as not honoured", client_impersonation_ignored),
    ("auth can-i for the caller", can_i_answers_for_the_caller),
    ("chunked list (--chunk-size)", chunked_list),
    ("CRD and custom resources", crd_through_proxy),
    ("viewers: tokens and RBAC", viewers_by_token_and_rbac),
    ("events fail-closed, unaudited", events_fail_closed),
];

/// Cases an old API server cannot pass: why, and the words kubectl must fail with
/// for the failure to count as that difference. Reported, never silently skipped.
fn expected_difference(case: &str, minor: u32) -> Option<(&'static str, &'static str)> {
    match case {
        "auth whoami" if minor < 26 => Some(("SelfSubjectReview needs Kubernetes 1.26+", "selfsubjectreviews API is not enabled")),
        "debug (ephemeral)" if minor < 23 => Some(("ephemeral containers are an alpha feature, off by default, before 1.23", "ephemeral containers are disabled")),
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    expected: usize,
    /// Cases this cluster gave no way to judge (shown with the reason).
    skipped: usize,
}

fn run(args: &Args) -> (String, Tally) {
    let admin = admin(&args.kubeconfig);
    let id = kubetape::net::random::hex(5);
    let mut table = String::new();
    let mut tally = Tally::default();
    let mut row = |table: &mut String, name: &str, proto: &str, result: Result<(), String>, expected: Option<(&str, &str)>| {
        let verdict = match (&result, expected) {
            (Ok(()), _) => {
                tally.passed += 1;
                "pass".to_string()
            }
            (Err(e), Some((why, marker))) if e.contains(marker) => {
                tally.expected += 1;
                let tail: String = e.chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
                format!("expected difference: {why} (got: ...{})", tail.replace("\\n", " ").replace("\\r", " "))
            }
            (Err(e), _) if e.starts_with("not judged:") => {
                tally.skipped += 1;
                e.clone()
            }
            (Err(e), _) => {
                tally.failed += 1;
                format!("FAIL: {}", e.chars().take(400).collect::<String>())
            }
        };
        table.push_str(&format!("| {name:<28} | {proto:<9} | {verdict} |\n"));
    };
    table.push_str("| case                         | protocol  | result |\n|---|---|---|\n");
    let minor = match server_minor(&admin) {
        Ok(m) => m,
        Err(e) => {
            row(&mut table, "cluster reachable", "-", Err(e), None);
            return (table, tally);
        }
    };
    let (fixture, tokens) = match setup(admin.clone(), args.fill_aggregated_roles, &id) {
        Ok(s) => s,
        Err(e) => {
            row(&mut table, "setup", "-", Err(e), None);
            return (table, tally);
        }
    };
    let proxy = match start_proxy(&admin, &tokens) {
        Ok(p) => p,
        Err(e) => {
            row(&mut table, "start proxy", "-", Err(e), None);
            return (table, tally);
        }
    };
    let kc = |user: &str, proto: Proto| Kubectl { bin: kubectl(KUBECTL), kubeconfig: proxy.dir.0.join(format!("{user}.kubeconfig")), proto, version: KUBECTL.into() };
    // Matrix cases run in the suite's namespace, as alice.
    for proto in [Proto::WebSocket, Proto::Spdy] {
        let alice = kc("alice", proto);
        let ns_kubeconfig = proxy.dir.0.join(format!("alice-{proto}.kubeconfig"));
        let text = std::fs::read_to_string(&alice.kubeconfig).unwrap_or_default().replace("namespace: default", &format!("namespace: {}", fixture.ns));
        let _ = std::fs::write(&ns_kubeconfig, text);
        let target = Target { kubectl: Kubectl { kubeconfig: ns_kubeconfig, ..alice }, pod: "web-0".into(), user: "alice".into(), groups: vec!["team".into()] };
        for case in matrix::CASES {
            let result = (case.run)(&target);
            row(&mut table, case.name, &proto.to_string(), result, expected_difference(case.name, minor));
        }
    }
    let ctx = Ctx {
        proxy: &proxy,
        admin: admin.clone(),
        audit_log: args.audit_log.clone(),
        dave: kc("dave", Proto::WebSocket),
        recordings: proxy.dir.0.join("recordings"),
        alice: kc("alice", Proto::WebSocket),
        carol: kc("carol", Proto::WebSocket),
        ns: fixture.ns.clone(),
        other: fixture.other.clone(),
        id,
    };
    for (name, case) in REAL_CASES {
        row(&mut table, name, "-", case(&ctx), None);
    }
    if tally.failed > 0 {
        let log = std::fs::read_to_string(proxy.dir.0.join("proxy.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        table.push_str(&format!("\nproxy log (last lines):\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    drop(fixture);
    (format!("kubetape conformance against Kubernetes 1.{minor}\n\n{table}"), tally)
}
