//! The in-cluster install, proven on a real control plane: applies `vendor-manifests/`
//! as a user would, then checks what the operator and the in-cluster proxy do with
//! Recorder resources, through real kubectl and against what the recorders and the
//! S3 server actually hold. Prints a table (and `kubectl get recorders`, and what one
//! Recorder owns) and exits non-zero on any failure.
//!
//! Needs a cluster whose nodes run the `kubetape` image (kind with the image loaded,
//! or conformance/local-apiserver's simulated kubelet), an S3-compatible endpoint the
//! pods reach, and a client certificate the cluster CA signed for user `alice`:
//!
//! `cargo test --test install -- --kubeconfig ADMIN --manifests vendor-manifests
//!    --user-cert alice.crt --user-key alice.key --s3-endpoint http://HOST:PORT
//!    --alt-image kubetape:0.1.1 [--report FILE]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{kubectl, Kubectl, OutputExt, Proto, RawClient, TempDir};

const KUBECTL: &str = "1.32";
/// kubectl 1.27 speaks SPDY only for exec.
const KUBECTL_SPDY: &str = "1.27";
const NS: &str = "kubetape-system";
/// Where alice's test pod runs.
const APP_NS: &str = "kt-install";
/// Long enough for pods to start, roll and be collected on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(150);

struct Args {
    kubeconfig: PathBuf,
    manifests: PathBuf,
    user_cert: PathBuf,
    user_key: PathBuf,
    s3_endpoint: String,
    alt_image: String,
    report: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut v: std::collections::HashMap<String, String> = Default::default();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nocapture" | "--quiet" | "-q" => {}
            flag if flag.starts_with("--") => {
                v.insert(flag[2..].to_string(), it.next().ok_or(format!("{flag} needs a value"))?);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let mut take = |k: &str| v.remove(k).ok_or(format!("--{k} is required"));
    Ok(Args {
        kubeconfig: take("kubeconfig")?.into(),
        manifests: take("manifests")?.into(),
        user_cert: take("user-cert")?.into(),
        user_key: take("user-key")?.into(),
        s3_endpoint: take("s3-endpoint")?,
        alt_image: take("alt-image")?,
        report: take("report").ok().map(PathBuf::from),
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("install: {e}");
            std::process::exit(2);
        }
    };
    support::init_crypto();
    let started = Instant::now();
    let mut suite = Suite::new(&args);
    suite.run_all();
    let failed = suite.rows.iter().filter(|r| r.1.is_err()).count();
    let mut out = String::from("| case | result | detail |\n|---|---|---|\n");
    for (case, result) in &suite.rows {
        let (mark, detail) = match result {
            Ok(d) => ("pass", d.as_str()),
            Err(e) => ("FAIL", e.as_str()),
        };
        out.push_str(&format!("| {case} | {mark} | {} |\n", detail.replace('\n', " ").replace('|', "/")));
    }
    out.push_str(&suite.exhibits);
    out.push_str(&format!("\ninstall: {} passed, {failed} failed, {:.0}s\n", suite.rows.len() - failed, started.elapsed().as_secs_f64()));
    print!("{out}");
    if let Some(p) = &args.report {
        let _ = std::fs::write(p, &out);
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

type Step = Result<String, String>;

struct Suite<'a> {
    args: &'a Args,
    admin: Kubectl,
    tmp: TempDir,
    rows: Vec<(String, Step)>,
    /// `kubectl get recorders` and the objects one Recorder owns, for the note.
    exhibits: String,
    /// Cases after a failed one that they need are not run, and say so.
    broken: Option<String>,
}

fn must(out: Output, what: &str) -> Result<String, String> {
    if out.status.success() {
        Ok(out.stdout_str())
    } else {
        Err(format!("{what}: {}", out.describe()))
    }
}

/// Polls `check` every 200 ms until it gives `Ok` or `timeout` passes (then its last error).
fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(format!("{what}: not within {}s: {e}", timeout.as_secs())),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

impl<'a> Suite<'a> {
    fn new(args: &'a Args) -> Suite<'a> {
        let admin = Kubectl { bin: kubectl(KUBECTL), kubeconfig: args.kubeconfig.clone(), proto: Proto::WebSocket, version: KUBECTL.into() };
        Suite { args, admin, tmp: TempDir::new("install"), rows: Vec::new(), exhibits: String::new(), broken: None }
    }

    /// Runs one case, unless one it depends on (`needs` true) failed.
    fn case(&mut self, name: &str, needs_previous: bool, f: impl FnOnce(&mut Self) -> Step) {
        let result = match (&self.broken, needs_previous) {
            (Some(b), true) => Err(format!("not run: {b} failed")),
            _ => f(self),
        };
        eprintln!(
            "install: {name}: {}",
            match &result {
                Ok(d) => format!("pass ({d})"),
                Err(e) => format!("FAIL: {e}"),
            }
        );
        if result.is_err() && self.broken.is_none() {
            self.broken = Some(name.to_string());
        }
        self.rows.push((name.to_string(), result));
    }

    fn k(&self, args: &[&str]) -> Result<String, String> {
        must(self.admin.run_timeout(args, None, Duration::from_secs(60)), &format!("kubectl {}", args.join(" ")))
    }

    fn apply(&self, doc: &Value) -> Result<String, String> {
        must(self.admin.run_timeout(&["apply", "-f", "-"], Some(doc.to_string().as_bytes()), Duration::from_secs(60)), "kubectl apply")
    }

    fn get_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.k(&a)?).map_err(|e| format!("kubectl get {}: {e}", args.join(" ")))
    }

    fn recorder_in(&self, ns: &str, name: &str) -> Result<Value, String> {
        self.get_json(&["recorder", name, "-n", ns])
    }

    /// Waits for the Recorder's Ready condition (`want`) with `endpoints` endpoints.
    fn wait_recorder(&self, name: &str, want: &str, endpoints: usize) -> Result<Value, String> {
        self.wait_recorder_in(NS, name, want, endpoints)
    }

    fn wait_recorder_in(&self, ns: &str, name: &str, want: &str, endpoints: usize) -> Result<Value, String> {
        wait_for(WAIT, &format!("recorder {ns}/{name} {want} with {endpoints} endpoints"), || {
            let r = self.recorder_in(ns, name)?;
            let ready = r["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned().unwrap_or(Value::Null);
            let eps = r["status"]["endpoints"].as_array().map_or(0, Vec::len);
            let current = r["status"]["observedGeneration"] == r["metadata"]["generation"];
            if ready["reason"] == want && eps == endpoints && current {
                Ok(r)
            } else {
                Err(format!("condition {ready}, {eps} endpoints, status {}", r["status"]))
            }
        })
    }

    fn run_all(&mut self) {
        self.case("kubectl apply -k vendor-manifests", false, |s| {
            let dir = s.args.manifests.display().to_string();
            let out = s.k(&["apply", "-k", &dir])?;
            s.k(&["wait", "--for=condition=Established", "crd/recorders.kubetape.dev", "--timeout=60s"])?;
            Ok(format!("{} objects", out.lines().count()))
        });
        self.case("operator runs and issues the CA and the proxy's certificates", true, |s| {
            s.k(&["-n", NS, "rollout", "status", "deployment/kubetape-operator", "--timeout=150s"])?;
            wait_for(WAIT, "secrets", || s.k(&["-n", NS, "get", "secret", "kubetape-ca", "kubetape-proxy-tls", "-o", "name"]))?;
            let ca = s.k(&["-n", NS, "get", "configmap", "kubetape-ca", "-o", "jsonpath={.data.ca\\.crt}"])?;
            std::fs::write(s.tmp.0.join("kubetape-ca.crt"), &ca).map_err(|e| e.to_string())?;
            Ok("kubetape-ca, kubetape-proxy-tls".into())
        });
        self.case("proxy ready behind its Service (Endpoints filled)", true, |s| {
            s.k(&["-n", NS, "rollout", "status", "deployment/kubetape-proxy", "--timeout=150s"])?;
            let addr = wait_for(WAIT, "proxy endpoints", || s.proxy_address())?;
            Ok(addr)
        });
        self.case("Recorder (filesystem) Ready with its endpoint", true, |s| {
            let file = s.args.manifests.join("examples/recorder.yaml").display().to_string();
            s.k(&["apply", "-f", &file])?;
            let r = s.wait_recorder("main", "Ready", 1)?;
            let owned = s.k(&["-n", NS, "get", "statefulset,service,serviceaccount,configmap,secret,pod", "-l", "app.kubernetes.io/instance=main", "-o", "wide"])?;
            s.exhibits
                .push_str(&format!("\n`kubectl -n {NS} get statefulset,service,serviceaccount,configmap,secret,pod -l app.kubernetes.io/instance=main`:\n\n```\n{owned}\n```\n"));
            let owners = s.k(&[
                "-n",
                NS,
                "get",
                "statefulset,service,serviceaccount,configmap,secret",
                "-l",
                "app.kubernetes.io/instance=main",
                "-o",
                "jsonpath={range .items[*]}{.kind}/{.metadata.name} owner={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}{\"\\n\"}{end}",
            ])?;
            if owners.lines().any(|l| !l.ends_with("owner=Recorder/main")) {
                return Err(format!("objects without the Recorder as owner:\n{owners}"));
            }
            Ok(format!("{}", r["status"]["endpoints"][0]))
        });
        self.case("test pod and alice's rights", true, |s| s.setup_app());
        for (kubectl_version, proto) in [(KUBECTL, Proto::WebSocket), (KUBECTL_SPDY, Proto::Spdy)] {
            self.case(&format!("kubectl {kubectl_version} exec over {proto}: recorded by Recorder main"), true, |s| {
                let marker = s.exec_marker(kubectl_version, proto)?;
                let cast = wait_for(WAIT, "the recording", || s.recording_in("main", &marker))?;
                Ok(format!("{} bytes of cast with {marker}", cast.len()))
            });
        }
        self.case("a Recorder in another namespace with the same tag gets nothing", true, |s| {
            // Whoever may create Recorders in their own namespace must not receive
            // everyone's sessions by copying the tag the grants route to.
            s.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROGUE_NS}}))?;
            s.apply(&json!({"apiVersion": "kubetape.dev/v1alpha1", "kind": "Recorder", "metadata": {"name": "rogue", "namespace": ROGUE_NS}, "spec": {"tags": ["tag:k8s"]}}))?;
            // Ready before the S3 Recorder is made: a proxy that has seen that one
            // (its sessions land in the bucket, below) has seen this one too.
            s.wait_recorder_in(ROGUE_NS, "rogue", "Ready", 1)?;
            Ok("Ready in kt-install-rogue".into())
        });
        self.case("Recorder (S3, 2 replicas) Ready", true, |s| {
            s.create_bucket()?;
            s.apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "recorder-s3", "namespace": NS},
                            "stringData": {"AWS_ACCESS_KEY_ID": "kubetape", "AWS_SECRET_ACCESS_KEY": "kubetape-secret"}}))?;
            s.apply(&json!({"apiVersion": "kubetape.dev/v1alpha1", "kind": "Recorder", "metadata": {"name": "durable", "namespace": NS},
                            "spec": {"replicas": 2, "storage": {"s3": {"bucket": BUCKET, "endpoint": s.args.s3_endpoint, "region": "kubetape-1",
                                     "pathStyle": true, "credentialsSecret": "recorder-s3"}}}}))?;
            let r = s.wait_recorder("durable", "Ready", 2)?;
            let rows = s.k(&["get", "recorders", "-A"])?;
            s.exhibits.push_str(&format!("\n`kubectl get recorders -A`:\n\n```\n{rows}\n```\n"));
            Ok(format!("endpoints {}", r["status"]["endpoints"].as_array().map_or(0, Vec::len)))
        });
        self.case("deleting Recorder main (foreground) garbage-collects what it owned", true, |s| {
            // Foreground: the Recorder stays, being deleted, until what it owns is
            // gone; an operator that re-made those objects would keep it forever.
            s.k(&["-n", NS, "delete", "recorder", "main", "--cascade=foreground", "--wait=true", "--timeout=90s"])?;
            wait_for(WAIT, "garbage collection", || {
                let left = s.k(&["-n", NS, "get", "statefulset,service,serviceaccount,configmap,secret,pod", "-l", "app.kubernetes.io/instance=main", "-o", "name"])?;
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still there: {}", left.replace('\n', ", ")))
                }
            })?;
            Ok("statefulset, services, service account, config, secrets, pod gone".into())
        });
        self.case("the proxy follows: exec recorded in the S3 bucket, not by the rogue Recorder", true, |s| {
            let marker = s.exec_marker(KUBECTL, Proto::WebSocket)?;
            let key = wait_for(WAIT, "the cast in the bucket", || s.bucket_cast_with(&marker))?;
            let rogue = s.recordings_of(ROGUE_NS, "rogue")?;
            if rogue != 0 {
                return Err(format!("the rogue Recorder holds {rogue} recordings"));
            }
            // The same CA signed every Recorder's reader certificate: the rogue's
            // must not read the bucket's recordings through the durable replicas.
            match s.read_as((NS, "durable"), (ROGUE_NS, "rogue"), "/v1/recordings")? {
                Some((403, _)) => {}
                other => return Err(format!("the rogue's reader certificate read Recorder durable: {other:?}")),
            }
            let own = s.recordings_of(NS, "durable")?;
            if own == 0 {
                return Err("Recorder durable's own reader certificate lists no recordings".into());
            }
            s.k(&["delete", "namespace", ROGUE_NS, "--wait=false"])?;
            Ok(format!("{key}; rogue holds none, and its reader certificate gets 403 from durable"))
        });
        self.case("enableUI: the recorder serves its web UI to viewers the cluster's RBAC allows", true, |s| s.web_ui());
        self.case("scaling: 3 replicas, then 1", true, |s| {
            s.k(&["-n", NS, "patch", "recorder", "durable", "--type=merge", "-p", r#"{"spec":{"replicas":3}}"#])?;
            s.wait_recorder("durable", "Ready", 3)?;
            s.k(&["-n", NS, "patch", "recorder", "durable", "--type=merge", "-p", r#"{"spec":{"replicas":1}}"#])?;
            let r = s.wait_recorder("durable", "Ready", 1)?;
            wait_for(WAIT, "scaled-down pods gone", || {
                let pods = s.k(&["-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=durable", "-o", "name"])?;
                if pods.lines().count() == 1 {
                    Ok(())
                } else {
                    Err(pods)
                }
            })?;
            Ok(format!("endpoint {}", r["status"]["endpoints"][0]["name"]))
        });
        self.case("an image change rolls the replicas", true, |s| {
            let patch = json!({"spec": {"image": s.args.alt_image, "replicas": 2}}).to_string();
            s.k(&["-n", NS, "patch", "recorder", "durable", "--type=merge", "-p", &patch])?;
            s.wait_recorder("durable", "Ready", 2)?;
            let images = wait_for(WAIT, "pods on the new image", || {
                let images = s.k(&[
                    "-n",
                    NS,
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/instance=durable",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}",
                ])?;
                if images.split_whitespace().count() == 2 && images.split_whitespace().all(|p| p.ends_with(&format!("={}", s.args.alt_image))) {
                    Ok(images)
                } else {
                    Err(images)
                }
            })?;
            let marker = s.exec_marker(KUBECTL, Proto::WebSocket)?;
            wait_for(WAIT, "a recording after the roll", || s.bucket_cast_with(&marker))?;
            Ok(format!("{images}; recorded after the roll"))
        });
        self.case("a claim of 1024Mi stays put; a new claim size replaces the StatefulSet", false, |s| s.claim_template_changes());
        self.case("the operator's and the proxy's accounts hold only what they need", false, |s| s.least_privilege());
        self.case("a bad spec gets its condition and a Warning event", false, |s| {
            s.apply(&json!({"apiVersion": "kubetape.dev/v1alpha1", "kind": "Recorder", "metadata": {"name": "bad", "namespace": NS}, "spec": {"replicas": 2}}))?;
            let r = s.wait_recorder("bad", "Invalid", 0)?;
            let message = r["status"]["conditions"][0]["message"].as_str().unwrap_or_default().to_string();
            if !message.contains("spec.storage.s3") {
                return Err(format!("message does not say what to fix: {message:?}"));
            }
            let events = s.k(&["-n", NS, "get", "events", "--field-selector", "involvedObject.name=bad,type=Warning", "-o", "jsonpath={.items[*].reason}"])?;
            if !events.contains("Invalid") {
                return Err(format!("no Warning event Invalid, found {events:?}"));
            }
            if !s.k(&["-n", NS, "get", "statefulset", "bad", "--ignore-not-found", "-o", "name"])?.is_empty() {
                return Err("a StatefulSet was made for an invalid Recorder".into());
            }
            s.k(&["-n", NS, "delete", "recorder", "bad"])?;
            Ok(message)
        });
        self.case("deleting the S3 Recorder keeps the bucket's recordings", true, |s| {
            let before = s.bucket_keys("sessions/")?;
            s.k(&["-n", NS, "delete", "recorder", "durable", "--wait=true", "--timeout=60s"])?;
            wait_for(WAIT, "garbage collection", || {
                let left = s.k(&["-n", NS, "get", "statefulset,pod", "-l", "app.kubernetes.io/instance=durable", "-o", "name"])?;
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(left)
                }
            })?;
            let after = s.bucket_keys("sessions/")?;
            let casts = before.iter().filter(|k| k.ends_with(".cast")).count();
            if casts == 0 || before.iter().filter(|k| k.ends_with(".cast")).any(|k| !after.contains(k)) {
                return Err(format!("casts before {before:?}, after {after:?}"));
            }
            Ok(format!("{casts} casts kept"))
        });
        for ns in [APP_NS, ROGUE_NS] {
            let _ = self.k(&["delete", "namespace", ns, "--wait=false", "--ignore-not-found"]);
        }
    }

    /// Quantities the API server stores in its own spelling (`1024Mi` as `1Gi`) are
    /// no change: the StatefulSet keeps its uid and generation over passes that
    /// reconciled it; a new claim size replaces it, and its pod is adopted.
    fn claim_template_changes(&mut self) -> Step {
        let spec = json!({"storage": {"filesystem": {"persistentVolumeClaim": {"size": "1024Mi"}}}, "resources": {"requests": {"cpu": "0.05", "memory": "65536Ki"}}});
        self.apply(&json!({"apiVersion": "kubetape.dev/v1alpha1", "kind": "Recorder", "metadata": {"name": "claims", "namespace": NS}, "spec": spec}))?;
        self.wait_recorder("claims", "Ready", 1)?;
        let sts = |s: &Self| s.get_json(&["statefulset", "claims", "-n", NS]);
        let first = sts(self)?;
        // Each new generation of the Recorder is observed only by a pass that
        // applied its StatefulSet first: two of them, then the StatefulSet is looked at.
        for tag in ["tag:claims-a", "tag:claims-b"] {
            self.k(&["-n", NS, "patch", "recorder", "claims", "--type=merge", "-p", &json!({"spec": {"tags": [tag]}}).to_string()])?;
            self.wait_recorder("claims", "Ready", 1)?;
        }
        let later = sts(self)?;
        let id = |v: &Value| (v["metadata"]["uid"].clone(), v["metadata"]["generation"].clone());
        if id(&first) != id(&later) {
            return Err(format!("the StatefulSet changed with no change to the spec: {:?} then {:?}", id(&first), id(&later)));
        }
        self.k(&["-n", NS, "patch", "recorder", "claims", "--type=merge", "-p", r#"{"spec":{"storage":{"filesystem":{"persistentVolumeClaim":{"size":"2Gi"}}}}}"#])?;
        let replaced = wait_for(WAIT, "a new StatefulSet with the new claim size", || {
            let now = sts(self)?;
            let size = now["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"].clone();
            if now["metadata"]["uid"] != first["metadata"]["uid"] && size == "2Gi" {
                Ok(now)
            } else {
                Err(format!("uid {} size {size}", now["metadata"]["uid"]))
            }
        })?;
        self.wait_recorder("claims", "Ready", 1)?;
        let failures = self.k(&["-n", NS, "get", "events", "--field-selector", "involvedObject.name=claims,type=Warning", "-o", "jsonpath={.items[*].message}"])?;
        if !failures.is_empty() {
            return Err(format!("Warning events for Recorder claims: {failures}"));
        }
        self.k(&["-n", NS, "delete", "recorder", "claims", "--wait=true", "--timeout=90s"])?;
        Ok(format!("uid {} kept over 2 passes, then {}", first["metadata"]["uid"], replaced["metadata"]["uid"]))
    }

    /// `enableUI` on Recorder durable: its pods get a token and its account the
    /// auth-delegator binding; a viewer whose token the API server's TokenReview
    /// accepts and whose RoleBinding allows `get recordings.kubetape.dev` in the app's
    /// namespace signs in (cookie) and reads there, one without it reads nothing, and
    /// the read is recorded as a view. Turned off, the binding goes and the UI with it.
    fn web_ui(&mut self) -> Step {
        let binding = "kubetape-recorder-viewers:kubetape-system:durable";
        for sa in ["ui-alice", "ui-bob"] {
            self.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": APP_NS}}))?;
        }
        self.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "recording-viewer", "namespace": APP_NS},
                           "rules": [{"apiGroups": ["kubetape.dev"], "resources": ["recordings"], "verbs": ["get"]}]}))?;
        self.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "ui-alice-views", "namespace": APP_NS},
                           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "recording-viewer"},
                           "subjects": [{"kind": "ServiceAccount", "name": "ui-alice", "namespace": APP_NS}]}))?;
        let token = |sa: &str| must(self.admin.run(&["create", "token", sa, "-n", APP_NS, "--duration=1h"]), "create token");
        let (alice, bob) = (token("ui-alice")?, token("ui-bob")?);
        self.k(&["-n", NS, "patch", "recorder", "durable", "--type=merge", "-p", r#"{"spec":{"enableUI":true}}"#])?;
        let bound = wait_for(WAIT, "the viewers binding", || self.get_json(&["clusterrolebinding", binding]))?;
        if bound["roleRef"]["name"] != "system:auth-delegator" || bound["subjects"] != json!([{"kind": "ServiceAccount", "name": "durable", "namespace": NS}]) {
            return Err(format!("binding {bound}"));
        }
        // Served once the replicas have rolled to the new config.
        let page = wait_for(WAIT, "the web UI", || match self.viewer_call("GET", "/", "")? {
            (200, headers, body) if body.contains("kubetape") && headers.contains("default-src 'none'") => Ok(body),
            other => Err(format!("GET /: {other:?}")),
        })
        .map_err(|e| {
            let pods = self.k(&["-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=durable", "-o", "wide"]).unwrap_or_else(|e| e);
            let log = self.k(&["-n", NS, "logs", "durable-0", "--tail=20"]).unwrap_or_else(|e| e);
            format!("{e}\npods:\n{pods}\ndurable-0's log:\n{log}")
        })?;
        let (code, headers, body) = self.viewer_call("POST", "/ui/login", &format!("Authorization: Bearer {alice}\r\n"))?;
        let cookie = headers.lines().find_map(|l| l.strip_prefix("Set-Cookie: ")).and_then(|c| c.split(';').next()).map(String::from);
        let Some(cookie) = cookie.filter(|_| code == 200) else { return Err(format!("alice's sign-in: {code} {body}")) };
        let (code, _, list) = self.viewer_call("GET", &format!("/v1/recordings?namespace={APP_NS}"), &format!("Cookie: {cookie}\r\n"))?;
        let list: Value = serde_json::from_str(&list).map_err(|e| format!("{code} {list}: {e}"))?;
        let id = list["items"][0]["id"].as_str().map(String::from).ok_or(format!("alice lists nothing: {list}"))?;
        match self.viewer_call("GET", &format!("/v1/recordings/{id}/cast"), &format!("Cookie: {cookie}\r\n"))? {
            (200, _, cast) if cast.contains("kt-install-") => {}
            other => return Err(format!("alice's read of {id}: {other:?}")),
        }
        let bob_auth = format!("Authorization: Bearer {bob}\r\n");
        match (self.viewer_call("GET", "/v1/recordings", &bob_auth)?, self.viewer_call("GET", &format!("/v1/recordings/{id}/cast"), &bob_auth)?) {
            ((200, _, none), (403, _, refused)) if none.contains(r#""items":[]"#) && !refused.contains("kt-install-") => {}
            other => return Err(format!("bob, without a binding: {other:?}")),
        }
        let views = self.reader_get(NS, "durable", &format!("/v1/recordings/{id}/views"))?;
        if !views.contains(&format!("system:serviceaccount:{APP_NS}:ui-alice")) || views.contains("ui-bob") {
            return Err(format!("views of {id}: {views}"));
        }
        self.k(&["-n", NS, "patch", "recorder", "durable", "--type=merge", "-p", r#"{"spec":{"enableUI":false}}"#])?;
        wait_for(WAIT, "the viewers binding removed", || match self.k(&["get", "clusterrolebinding", binding, "--ignore-not-found", "-o", "name"])? {
            gone if gone.is_empty() => Ok(()),
            left => Err(left),
        })?;
        wait_for(WAIT, "the web UI off", || match self.viewer_call("GET", "/", "")? {
            (404, _, _) => Ok(()),
            other => Err(format!("GET /: {other:?}")),
        })?;
        Ok(format!("{} bytes of page; ui-alice read {id} with a cookie, ui-bob got none and 403; the view recorded; binding and UI gone when turned off", page.len()))
    }

    /// A request to Recorder durable's first endpoint without a client certificate, as
    /// a browser makes it: the status, the head's fields as text, and the body.
    fn viewer_call(&self, method: &str, path: &str, headers: &str) -> Result<(u16, String, String), String> {
        let r = self.recorder_in(NS, "durable")?;
        let ep = &r["status"]["endpoints"][0];
        let (addr, server_name) = (ep["address"].as_str().ok_or("no endpoint")?, ep["serverName"].as_str().ok_or("no serverName")?);
        let secret = self.get_json(&["secret", "durable-tls", "-n", NS])?;
        let ca = secret["data"]["ca.crt"].as_str().ok_or("durable-tls has no ca.crt")?;
        let kc = self.tmp.0.join("durable-viewer.kubeconfig");
        std::fs::write(&kc, format!("certificate-authority-data: {ca}\n")).map_err(|e| e.to_string())?;
        // While the replicas roll, the endpoint may be a pod that is going away.
        std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
        let mut c = std::panic::catch_unwind(|| RawClient::connect_named(addr, server_name, &kc, false)).map_err(|_| format!("{addr}: TLS connection failed"))?;
        let origin = format!("https://{server_name}");
        c.send(format!("{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nOrigin: {origin}\r\n{headers}Connection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
        let (head, rest) = c.head().ok_or(format!("{method} {path}: no answer"))?;
        let mut body = Vec::new();
        c.body(&head, rest, |piece| body.extend_from_slice(piece));
        let fields: String = head.headers.0.iter().map(|h| format!("{}: {}\n", h.name, String::from_utf8_lossy(&h.value))).collect();
        Ok((head.status, fields, String::from_utf8_lossy(&body).into_owned()))
    }

    /// What the API server's RBAC lets each account do, asked by SubjectAccessReview
    /// (exact group and resource, unlike `kubectl auth can-i`'s parsing of a resource
    /// the server does not serve). The cases above prove the granted rights suffice;
    /// these, that no more is granted.
    fn least_privilege(&mut self) -> Step {
        // account, verb, group, resource, subresource, namespace, name, allowed
        let cases: &[(&str, &str, &str, &str, &str, &str, &str, bool)] = &[
            ("kubetape-operator", "update", "kubetape.dev", "recorders", "finalizers", APP_NS, "", true),
            ("kubetape-operator", "delete", "apps", "statefulsets", "", APP_NS, "", true),
            ("kubetape-operator", "list", "", "secrets", "", APP_NS, "", false),
            ("kubetape-operator", "delete", "", "secrets", "", APP_NS, "", false),
            ("kubetape-operator", "create", "", "pods", "", APP_NS, "", false),
            ("kubetape-operator", "create", "", "pods", "exec", APP_NS, "", false),
            ("kubetape-operator", "update", "kubetape.dev", "recorders", "", APP_NS, "", false),
            ("kubetape-proxy", "impersonate", "authentication.k8s.io", "uids", "", "", "", true),
            ("kubetape-proxy", "impersonate", "", "users", "", "", "", true),
            ("kubetape-proxy", "list", "kubetape.dev", "recorders", "", NS, "", true),
            ("kubetape-proxy", "get", "", "secrets", "", NS, "", false),
            ("kubetape-proxy", "create", "", "pods", "exec", APP_NS, "", false),
            ("kubetape-proxy", "impersonate", "authentication.k8s.io", "userextras", "scopes", "", "", false),
            ("kubetape-operator", "bind", "rbac.authorization.k8s.io", "clusterroles", "", "", "system:auth-delegator", true),
            ("kubetape-operator", "bind", "rbac.authorization.k8s.io", "clusterroles", "", "", "cluster-admin", false),
            ("kubetape-operator", "escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", "", false),
            ("kubetape-operator", "create", "rbac.authorization.k8s.io", "rolebindings", "", APP_NS, "", false),
        ];
        let mut wrong = Vec::new();
        for (account, verb, group, resource, subresource, namespace, name, want) in cases {
            let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
                "user": format!("system:serviceaccount:{NS}:{account}"),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NS}"), "system:authenticated"],
                "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": subresource, "namespace": namespace, "name": name}}});
            let out = must(self.admin.run_timeout(&["create", "-o", "json", "-f", "-"], Some(review.to_string().as_bytes()), Duration::from_secs(60)), "SubjectAccessReview")?;
            let allowed = serde_json::from_str::<Value>(&out).map_err(|e| e.to_string())?["status"]["allowed"] == json!(true);
            if allowed != *want {
                wrong.push(format!("{account} {verb} {resource}{}{subresource} {name} in {group:?}: allowed={allowed}", if subresource.is_empty() { "" } else { "/" }));
            }
        }
        if wrong.is_empty() {
            Ok(format!("{} SubjectAccessReviews, each as expected", cases.len()))
        } else {
            Err(wrong.join("; "))
        }
    }

    /// The proxy's address from its Service's Endpoints.
    fn proxy_address(&self) -> Result<String, String> {
        let ep = self.get_json(&["endpoints", "kubetape-proxy", "-n", NS])?;
        let subset = &ep["subsets"][0];
        match (subset["addresses"][0]["ip"].as_str(), subset["ports"][0]["port"].as_i64()) {
            (Some(ip), Some(port)) => Ok(format!("{ip}:{port}")),
            _ => Err(format!("no ready address in {ep}")),
        }
    }

    fn setup_app(&mut self) -> Step {
        self.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP_NS}}))?;
        self.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-edit", "namespace": APP_NS},
                           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                           "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}))?;
        self.apply(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": APP_NS},
                           "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "while true; do sleep 3600; done"]}]}}))?;
        self.k(&["wait", "--for=condition=Ready", "pod/web-0", "-n", APP_NS, "--timeout=120s"])?;
        // alice's kubeconfig names the proxy's address and the name its certificate
        // carries (the Service's), trusting the operator's CA.
        let b64 = |p: &std::path::Path| std::fs::read(p).map(|b| kubetape::wire::base64::encode(&b)).map_err(|e| format!("{}: {e}", p.display()));
        let addr = self.proxy_address()?;
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubetape\n  cluster:\n    server: https://{addr}\n    tls-server-name: kubetape-proxy.{NS}.svc\n    certificate-authority-data: {}\nusers:\n- name: alice\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: alice\n  context: {{cluster: kubetape, user: alice, namespace: {APP_NS}}}\ncurrent-context: alice\n",
            b64(&self.tmp.0.join("kubetape-ca.crt"))?,
            b64(&self.args.user_cert)?,
            b64(&self.args.user_key)?,
        );
        std::fs::write(self.tmp.0.join("alice.kubeconfig"), kc).map_err(|e| e.to_string())?;
        let alice = self.alice(KUBECTL, Proto::WebSocket);
        let who = must(alice.run(&["auth", "can-i", "create", "pods/exec"]), "alice: auth can-i through the proxy")?;
        let other = alice.run(&["get", "pods", "-n", NS]);
        if other.status.success() {
            return Err("alice listed pods in kubetape-system: the proxy did not act as her".into());
        }
        Ok(format!("alice via {addr}: can-i exec {who}, kubetape-system forbidden"))
    }

    fn alice(&self, version: &str, proto: Proto) -> Kubectl {
        Kubectl { bin: kubectl(version), kubeconfig: self.tmp.0.join("alice.kubeconfig"), proto, version: version.into() }
    }

    /// Runs `echo MARKER` in web-0 as alice through the proxy; gives back the marker.
    fn exec_marker(&self, version: &str, proto: Proto) -> Result<String, String> {
        let marker = format!("kt-install-{}-{}", proto, kubetape::net::random::hex(6));
        let out = must(self.alice(version, proto).run(&["exec", "web-0", "--", "echo", &marker]), "exec through the proxy")?;
        if !out.contains(&marker) {
            return Err(format!("exec printed {out:?}"));
        }
        Ok(marker)
    }

    /// A GET on Recorder `ns/name`'s API (its first ready replica) with the reader
    /// certificate the operator issued it (Secret `<name>-reader`).
    fn reader_get(&self, ns: &str, name: &str, path: &str) -> Result<String, String> {
        match self.read_as((ns, name), (ns, name), path)? {
            Some((200, body)) => Ok(body),
            other => Err(format!("GET {path}: {other:?}")),
        }
    }

    /// A GET on Recorder `at`'s API with the reader certificate of Recorder `cert_of`
    /// (each is `(namespace, name)`): the status and body it answered.
    fn read_as(&self, at: (&str, &str), cert_of: (&str, &str), path: &str) -> Result<Option<(u16, String)>, String> {
        let r = self.recorder_in(at.0, at.1)?;
        let ep = &r["status"]["endpoints"][0];
        let (addr, server_name) = (ep["address"].as_str().ok_or("no endpoint")?, ep["serverName"].as_str().ok_or("no serverName")?);
        let (ns, name) = cert_of;
        let secret = self.get_json(&["secret", &format!("{name}-reader"), "-n", ns])?;
        let field = |k: &str| secret["data"][k].as_str().map(String::from).ok_or(format!("{name}-reader has no {k}"));
        let kc = self.tmp.0.join(format!("{ns}-{name}-reader.kubeconfig"));
        let text = format!("certificate-authority-data: {}\nclient-certificate-data: {}\nclient-key-data: {}\n", field("ca.crt")?, field("tls.crt")?, field("tls.key")?);
        std::fs::write(&kc, text).map_err(|e| e.to_string())?;
        let mut c = RawClient::connect_named(addr, server_name, &kc, true);
        c.send(format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
        Ok(c.response())
    }

    /// The recordings Recorder `ns/name` holds.
    fn recordings_of(&self, ns: &str, name: &str) -> Result<usize, String> {
        let list: Value = serde_json::from_str(&self.reader_get(ns, name, "/v1/recordings")?).map_err(|e| e.to_string())?;
        list["items"].as_array().map(Vec::len).ok_or(format!("no items in {list}"))
    }

    /// The cast of a recording of web-0 holding `marker`, read from Recorder `name`'s API.
    fn recording_in(&self, name: &str, marker: &str) -> Result<String, String> {
        let list: Value = serde_json::from_str(&self.reader_get(NS, name, &format!("/v1/recordings?namespace={APP_NS}&pod=web-0"))?).map_err(|e| e.to_string())?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for rec in &items {
            let Some(id) = rec["id"].as_str() else { continue };
            let cast = self.reader_get(NS, name, &format!("/v1/recordings/{id}/cast"))?;
            if cast.contains(marker) {
                return Ok(cast);
            }
        }
        Err(format!("no recording of web-0 holds {marker} among {} recordings", items.len()))
    }

    /// The endpoint's region and the credentials the Recorder's Secret carries.
    fn s3_access(&self) -> Result<(s3::Region, s3::creds::Credentials), String> {
        let region = s3::Region::Custom { region: "kubetape-1".into(), endpoint: self.args.s3_endpoint.clone() };
        let creds = s3::creds::Credentials::new(Some("kubetape"), Some("kubetape-secret"), None, None, None).map_err(|e| e.to_string())?;
        Ok((region, creds))
    }

    fn bucket(&self) -> Result<Box<s3::Bucket>, String> {
        let (region, creds) = self.s3_access()?;
        Ok(s3::Bucket::new(BUCKET, region, creds).map_err(|e| e.to_string())?.with_path_style())
    }

    fn create_bucket(&self) -> Result<(), String> {
        let (region, creds) = self.s3_access()?;
        match s3::Bucket::create_with_path_style(BUCKET, region, creds, s3::BucketConfiguration::default()) {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("BucketAlready") => Ok(()),
            Err(e) => Err(format!("creating bucket {BUCKET}: {e}")),
        }
    }

    fn bucket_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let pages = self.bucket()?.list(prefix.to_string(), None).map_err(|e| e.to_string())?;
        Ok(pages.into_iter().flat_map(|p| p.contents.into_iter().map(|o| o.key)).collect())
    }

    /// The key of a finished cast in the bucket that holds `marker`.
    fn bucket_cast_with(&self, marker: &str) -> Result<String, String> {
        let bucket = self.bucket()?;
        for key in self.bucket_keys("sessions/")?.into_iter().filter(|k| k.ends_with(".cast")) {
            let body = bucket.get_object(&key).map_err(|e| e.to_string())?;
            if String::from_utf8_lossy(body.as_slice()).contains(marker) {
                return Ok(key);
            }
        }
        Err(format!("no cast holds {marker}"))
    }
}

const BUCKET: &str = "kubetape-install";
/// A namespace whose admin makes a Recorder of their own.
const ROGUE_NS: &str = "kt-install-rogue";
