//! Who the API server sees: the proxy's authentication, and that nothing a client
//! sends (`--as`, raw `Impersonate-*` headers, its own `Authorization`) changes it.

mod support;

use std::time::{Duration, Instant};

use support::{whoami_field, Demo, Kubectl, OutputExt, Proto, RawClient};

const REVIEW: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

fn review_request(extra_headers: &str) -> Vec<u8> {
    let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    format!("POST {REVIEW} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}", body.len()).into_bytes()
}

fn username_and_groups(body: &str) -> (String, Vec<String>) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let info = &v["status"]["userInfo"];
    let groups = info["groups"].as_array().map(|a| a.iter().filter_map(|g| g.as_str().map(String::from)).collect()).unwrap_or_default();
    (info["username"].as_str().unwrap_or_default().to_string(), groups)
}

#[test]
fn kubectl_as_flags_do_not_change_the_caller() {
    let demo = Demo::start();
    for proto in [Proto::WebSocket, Proto::Spdy] {
        let k = Kubectl::new(&demo, "kubeconfig", "1.32", proto);
        let out = k.run(&["--as=bob", "--as-group=system:masters", "--as-group=evil", "auth", "whoami"]);
        let text = out.stdout_str();
        assert!(out.status.success(), "{}", out.describe());
        assert_eq!(whoami_field(&text, "Username"), "alice", "{text}");
        let groups = whoami_field(&text, "Groups");
        assert!(!groups.contains("evil"), "{groups}");
        // kubectl tells the user their --as was not honoured (a Warning header).
        let get = k.run(&["--as=bob", "get", "pods"]);
        let err = String::from_utf8_lossy(&get.stderr);
        assert!(err.contains("Warning: kubetape: --as and --as-group are not honoured through this proxy"), "{}", get.describe());
        // An exec with --as still runs as alice; the sim would refuse bob's impersonation.
        let exec = k.run(&["--as=bob", "exec", "web-0", "--", "echo", "ran"]);
        assert_eq!(exec.stdout_str(), "ran", "{}", exec.describe());
    }
}

#[test]
fn raw_identity_headers_are_replaced_by_the_proxy() {
    let demo = Demo::start();
    let carol_token = std::fs::read_to_string(demo.path("tokens.csv")).unwrap().split(',').next().unwrap().to_string();
    let mut c = RawClient::connect(&demo.proxy_addr(), &demo.path("kubeconfig"), true);
    let spoof = format!(
        "Impersonate-User: admin\r\nimpersonate-group: evil\r\nImpersonate-Uid: 0\r\nImpersonate-Extra-Scopes: all\r\nX-Remote-User: admin\r\nAuthorization: Bearer {carol_token}\r\n"
    );
    c.send(&review_request(&spoof)).unwrap();
    let (status, body) = c.response().expect("response");
    assert_eq!(status, 201, "{body}");
    let (user, groups) = username_and_groups(&body);
    assert_eq!(user, "alice", "a client certificate wins over a bearer token, and headers change nothing");
    assert!(groups.contains(&"sre".to_string()) && groups.contains(&"system:masters".to_string()), "{groups:?}");
    assert!(!groups.contains(&"evil".to_string()), "{groups:?}");
}

#[test]
fn bearer_tokens_authenticate_and_bad_ones_get_401() {
    let demo = Demo::start();
    let k = Kubectl::new(&demo, "carol.kubeconfig", "1.32", Proto::WebSocket);
    let out = k.run(&["auth", "whoami"]);
    assert_eq!(whoami_field(&out.stdout_str(), "Username"), "carol", "{}", out.describe());
    // Her uid reaches the API server as Impersonate-Uid, so it judges the same identity.
    assert_eq!(whoami_field(&out.stdout_str(), "UID"), "carol-uid", "{}", out.describe());

    let addr = demo.proxy_addr();
    for (name, auth) in [("no credentials", ""), ("unknown token", "Authorization: Bearer not-a-token\r\n"), ("basic auth", "Authorization: Basic YTpi\r\n")] {
        let mut c = RawClient::connect(&addr, &demo.path("kubeconfig"), false);
        c.send(&review_request(auth)).unwrap();
        let (status, body) = c.response().expect("response");
        assert_eq!(status, 401, "{name}: {body}");
        assert!(body.contains("\"kind\":\"Status\""), "{name}: {body}");
    }
}

#[test]
fn callers_without_a_grant_get_403_and_the_policy_reloads_live() {
    let demo = Demo::start();
    let bob = Kubectl::new(&demo, "bob.kubeconfig", "1.32", Proto::WebSocket);
    let alice = Kubectl::new(&demo, "kubeconfig", "1.32", Proto::WebSocket);
    assert!(bob.run(&["get", "pods"]).status.success());

    // Drop bob's grant: within a few seconds he is refused, without a restart.
    let policy = std::fs::read_to_string(demo.path("policy.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&policy).unwrap();
    v["grants"].as_array_mut().unwrap().retain(|g| g["src"][0] != "group:dev");
    std::fs::write(demo.path("policy.json"), v.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let out = bob.run(&["get", "pods"]);
        if !out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "bob still allowed after the policy change");
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("Forbidden") && err.contains("matches no grant"), "{err}");

    // A broken policy is refused and the previous one stays in force.
    std::fs::write(demo.path("policy.json"), "{\"grants\": [").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(demo.path("proxy.log")).unwrap().contains("policy not reloaded") {
        assert!(Instant::now() < deadline, "no log line for the broken policy: {}", demo.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(alice.run(&["get", "pods"]).status.success(), "alice keeps access");
    assert!(!bob.run(&["get", "pods"]).status.success(), "bob stays refused");
}
