//! API request events end to end: real kubectl through the proxy, events queried from
//! the recorder's API, fail-closed refusals, and survival of a recorder kill -9.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Demo, Kubectl, OutputExt, Proto, RawClient};

fn events(demo: &Demo, query: &str) -> Vec<Value> {
    let (code, body) = demo.recorder_get(Some("recorder-reader"), &format!("/v1/events?{query}"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

/// (verb, resource[/subresource]) of alice's events received since `since` (a watch
/// completes only when it ends, so both stages count).
fn verbs(demo: &Demo, since: &str) -> Vec<(String, String)> {
    events(demo, &format!("user=alice&limit=10000&since={since}"))
        .iter()
        .map(|e| {
            let r = e["resource"].as_str().unwrap_or("");
            let sub = e["subresource"].as_str().unwrap_or("");
            (e["verb"].as_str().unwrap_or("").to_string(), if sub.is_empty() { r.to_string() } else { format!("{r}/{sub}") })
        })
        .collect()
}

#[test]
fn kubectl_commands_yield_the_right_verbs_and_resources() {
    let demo = Demo::start();
    for proto in [Proto::WebSocket, Proto::Spdy] {
        // Each pass is judged on its own events, not on those of the pass before.
        let since = kubetape::wire::time::now_rfc3339_millis();
        let k = Kubectl::new(&demo, "kubeconfig", "1.32", proto);
        let pod = format!("ev-{}", kubetape::net::random::hex(4));
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  containers:\n  - name: main\n    image: busybox\n    command: [\"sh\", \"-c\", \"echo hi; sleep 30\"]\n"
        );
        let ok = |out: std::process::Output| assert!(out.status.success(), "{}", out.describe());
        ok(k.run(&["get", "pods"]));
        ok(k.run(&["get", "pod", "web-0"]));
        ok(k.run_timeout(&["apply", "-f", "-"], Some(yaml.as_bytes()), Duration::from_secs(30)));
        ok(k.run(&["patch", "pod", &pod, "--type=merge", "-p", r#"{"metadata":{"labels":{"x":"y"}}}"#]));
        ok(k.run(&["wait", "--for=condition=Ready", &format!("pod/{pod}"), "--timeout=30s"]));
        ok(k.run(&["logs", &pod]));
        ok(k.run(&["exec", "web-0", "--", "true"]));
        ok(k.run(&["auth", "can-i", "get", "pods"]));
        let _ = k.run_timeout(&["get", "pods", "-w"], None, Duration::from_secs(2));
        let _ = k.run_timeout(&["port-forward", "pod/web-0", ":8080"], None, Duration::from_secs(2));
        ok(k.run(&["delete", "pod", &pod]));
        // WebSocket upgrades are GETs (port-forward too: the sim serves SPDY tunnelled
        // in WebSocket, as kube-apiserver 1.30+ does), SPDY ones POSTs.
        let exec_verb = if proto == Proto::WebSocket { "get" } else { "create" };
        let want = [
            ("list", "pods"),
            ("get", "pods"),
            ("create", "pods"),
            ("patch", "pods"),
            ("watch", "pods"),
            ("get", "pods/log"),
            (exec_verb, "pods/exec"),
            ("create", "selfsubjectaccessreviews"),
            ("delete", "pods"),
            (exec_verb, "pods/portforward"),
        ];
        support::eventually(Duration::from_secs(10), || {
            let got = verbs(&demo, &since);
            let missing: Vec<_> = want.iter().filter(|(v, r)| !got.iter().any(|(gv, gr)| gv == v && gr == r)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("{proto}: missing {missing:?} in {got:?}"))
            }
        });
    }
    // Every event carries who and how; the export is audit.k8s.io/v1.
    let all = events(&demo, "user=alice&verb=list&resource=pods");
    let e = all.first().expect("a list event");
    assert_eq!(e["user"]["authenticatedBy"], "x509");
    assert_eq!(e["impersonated"]["groups"], serde_json::json!(["sre", "system:masters"]));
    assert!(e["userAgent"].as_str().unwrap_or("").starts_with("kubectl"), "{e}");
    let (code, body) = demo.recorder_get(Some("recorder-reader"), "/v1/events?user=alice&format=audit&limit=5");
    assert_eq!(code, 200);
    let line: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(line["apiVersion"], "audit.k8s.io/v1");
    assert!(line["auditID"].is_string());
    // The recorder counts the fsyncs that made them durable; one may serve many.
    let (code, metrics) = demo.recorder_get(Some("recorder-reader"), "/metrics");
    assert_eq!(code, 200);
    let value = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok());
    let (events, fsyncs) = (value("kubetape_recorder_events_total"), value("kubetape_recorder_event_fsyncs_total"));
    assert!(matches!((events, fsyncs), (Some(e), Some(f)) if f >= 1 && f <= e), "events {events:?}, fsyncs {fsyncs:?}");
}

/// Runs `args` until its stdout shows `seen`, then kills it as a user's Ctrl-C would
/// not even get to: the proxy must notice the client gone on its own.
fn kill_once_it_printed(k: &Kubectl, args: &[&str], seen: &str, then: impl FnOnce()) {
    use std::io::Read;
    let mut child = k.command(args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().expect("kubectl");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut all, mut buf) = (String::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = tx.send(all.clone());
        }
    });
    let mut printed = String::new();
    while !printed.contains(seen) {
        printed = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{args:?} never printed {seen:?}: {printed:?}"));
    }
    then();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn streamed_responses_count_their_bytes_and_complete_when_the_client_goes() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let since = kubetape::wire::time::now_rfc3339_millis();
    let marker = format!("w{}", kubetape::net::random::hex(4));
    // A quiet watch (config maps change only when told to): its own response carries
    // the one change, made once the watch was up, and nothing after it.
    let configmap = |name: &str| {
        let yaml = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n");
        let out = k.run_timeout(&["apply", "-f", "-"], Some(yaml.as_bytes()), Duration::from_secs(30));
        assert!(out.status.success(), "{}", out.describe());
    };
    let ready = format!("cm-{marker}-ready");
    configmap(&ready);
    let change = format!("cm-{marker}");
    kill_once_it_printed(&k, &["get", "configmaps", "-w", "-o", "name"], &format!("configmap/{ready}"), || configmap(&change));
    let pod = format!("logs-{}", kubetape::net::random::hex(4));
    let out = k.run(&["run", &pod, "--image=busybox", "--restart=Never", "--", "sh", "-c", &format!("echo {marker}; sleep 60")]);
    assert!(out.status.success(), "{}", out.describe());
    support::eventually(Duration::from_secs(30), || {
        let out = k.run(&["logs", &pod]);
        if out.stdout_str().contains(&marker) {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    kill_once_it_printed(&k, &["logs", "-f", &pod], &marker, || {});
    // Completed at once, not when the proxy next writes to the dead client (never, for a
    // quiet stream), and with the bytes that reached kubectl.
    for (verb, resource, stream, at_least) in [("watch", "configmaps", "watch=true", change.len()), ("get", "pods/log", "follow=true", marker.len() + 1)] {
        let e = support::eventually(Duration::from_secs(5), || {
            let found = events(&demo, &format!("user=alice&verb={verb}&resource={resource}&since={since}&limit=1000"));
            let streams: Vec<&Value> = found.iter().filter(|e| e["query"].as_str().unwrap_or("").contains(stream)).collect();
            let done = streams.iter().find(|e| e["stage"] == "ResponseComplete");
            done.map(|e| (*e).clone()).ok_or_else(|| format!("no completed {verb} {resource}?{stream} in {streams:?}"))
        });
        assert_eq!(e["status"], 200, "{e}");
        let bytes = e["responseBytes"].as_u64().unwrap_or(0);
        assert!(bytes >= at_least as u64, "{verb} {resource}?{stream}: {bytes} bytes: {e}");
    }
}

#[test]
fn fail_closed_requests_are_refused_when_events_cannot_be_recorded() {
    let demo = Demo::start();
    let bob = Kubectl::new(&demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    assert!(bob.run(&["get", "pods"]).status.success());
    demo.kill("recorder");
    let out = bob.run(&["get", "pods"]);
    assert!(!out.status.success(), "{}", out.describe());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be recorded"), "{err}");
    // With no discovery cache kubectl's first requests are discovery, whose errors it
    // shows only as text: the reason must reach the user there too.
    let fresh = support::TempDir::new("fresh-cache");
    let mut cmd = bob.command(&["get", "pods"]);
    cmd.env("HOME", &fresh.0).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let out = support::wait_with_timeout(cmd.spawn().expect("kubectl"), Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("must be recorded"), "fresh discovery cache: {}", out.describe());
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let start = Instant::now();
    assert!(alice.run(&["get", "pods"]).status.success(), "fail-open goes on");
    assert!(start.elapsed() < Duration::from_secs(10), "fail-open is not held up: {:?}", start.elapsed());
}

#[test]
fn acknowledged_events_survive_a_recorder_kill() {
    let demo = Demo::start();
    let bob = Kubectl::new(&demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    // bob is fail-closed: each of his requests returns only after its event is durable.
    let marker = format!("survivor-{}", kubetape::net::random::hex(4));
    assert!(bob.run(&["get", "pods", "-l", &format!("app={marker}")]).status.success());
    demo.kill("recorder");
    let _recorder = demo.restart("recorder");
    let found = events(&demo, "user=bob&limit=1000");
    assert!(found.iter().any(|e| e["query"].as_str().unwrap_or("").contains(&marker)), "{found:?}");
}

#[test]
fn request_bodies_are_kept_only_where_the_policy_says_and_never_for_secrets() {
    let demo = Demo::start();
    let policy = std::fs::read_to_string(demo.path("policy.json")).unwrap();
    let mut v: Value = serde_json::from_str(&policy).unwrap();
    v["events"] = serde_json::json!({"maxBodyBytes": 4096, "rules": [{"level": "Request", "resources": ["configmaps", "secrets"], "verbs": ["create"]}]});
    std::fs::write(demo.path("policy.json"), v.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let k = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kept"},"data":{"greeting":"body-is-kept"}}"#;
    let out = k.run_timeout(&["create", "-f", "-"], Some(cm.as_bytes()), Duration::from_secs(30));
    assert!(out.status.success(), "{}", out.describe());
    // The simulated cluster serves no secrets, so kubectl would refuse before sending:
    // send the request as a client would, the policy applies all the same.
    let secret = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"hidden"},"stringData":{"password":"never-kept"}}"#;
    let mut c = RawClient::connect(&demo.proxy_addr(), &demo.path("kubeconfig"), true);
    c.send(format!("POST /api/v1/namespaces/default/secrets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{secret}", secret.len()).as_bytes())
        .unwrap();
    let _ = c.response();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let evs = events(&demo, "user=alice&verb=create&limit=100");
        let cm_ev = evs.iter().find(|e| e["resource"] == "configmaps" && e["stage"] == "ResponseComplete");
        let secret_ev = evs.iter().find(|e| e["resource"] == "secrets" && e["stage"] == "ResponseComplete");
        if let (Some(c), Some(s)) = (cm_ev, secret_ev) {
            assert!(c["requestBody"].as_str().unwrap_or("").contains("body-is-kept"), "{c}");
            assert!(s.get("requestBody").is_none(), "{s}");
            let all = serde_json::to_string(&evs).unwrap();
            assert!(!all.contains("never-kept"));
            break;
        }
        assert!(Instant::now() < deadline, "{evs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pods = events(&demo, "user=alice&verb=list&resource=pods");
    assert!(pods.iter().all(|e| e.get("requestBody").is_none()), "Metadata level by default");
}
