//! `--mode noauth`: the caller's own credentials and impersonation headers reach the
//! API server, and the proxy never lends its own.

mod support;

use support::{free_port, wait_for_port, Demo, RawClient, Spawned};

#[test]
fn noauth_passes_caller_credentials_and_lends_none() {
    let demo = Demo::start();
    // Restart the demo's simulated cluster from its recorded command line, adding a
    // token that only the cluster knows.
    let cmdline = std::fs::read_to_string(demo.path("sim.cmdline")).unwrap();
    let mut args: Vec<String> = cmdline.split_whitespace().skip(1).map(String::from).collect();
    let tokens = demo.path("sim-tokens.csv");
    std::fs::write(&tokens, "dave-secret-token,dave,dave-uid,\"devs\"\n").unwrap();
    args.extend(["--token-file".to_string(), tokens.display().to_string()]);
    // SAFETY: stopping the demo's own sim child before replacing it.
    unsafe { libc::kill(demo.pid("sim"), libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _sim = Spawned::start(&args, &demo.path("sim2.log"));
    let sim_port: u16 = args[args.iter().position(|a| a == "--listen").unwrap() + 1].rsplit(':').next().unwrap().parse().unwrap();
    wait_for_port(sim_port);

    let port = free_port();
    let pki = demo.path("pki");
    let p = |f: &str| pki.join(f).display().to_string();
    let proxy_args: Vec<String> = [
        "proxy",
        "--mode",
        "noauth",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &p("proxy.pem"),
        "--tls-key",
        &p("proxy-key.pem"),
        "--kubeconfig",
        &demo.path("proxy-upstream.kubeconfig").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _proxy = Spawned::start(&proxy_args, &demo.path("noauth-proxy.log"));
    wait_for_port(port);
    let addr = format!("127.0.0.1:{port}");
    let review = |auth: &str| {
        let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
        format!(
            "POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
            body.len()
        )
    };

    let mut c = RawClient::connect(&addr, &demo.path("kubeconfig"), false);
    c.send(review("Authorization: Bearer dave-secret-token\r\n").as_bytes()).unwrap();
    let (status, body) = c.response().expect("response");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"username\":\"dave\""), "the caller's own token reached the cluster: {body}");

    let mut c = RawClient::connect(&addr, &demo.path("kubeconfig"), false);
    c.send(review("").as_bytes()).unwrap();
    let (status, body) = c.response().expect("response");
    assert_eq!(status, 401, "no credentials must not borrow the proxy's: {body}");

    let mut c = RawClient::connect(&addr, &demo.path("kubeconfig"), false);
    c.send(review("Authorization: Bearer dave-secret-token\r\nImpersonate-User: admin\r\n").as_bytes()).unwrap();
    let (status, body) = c.response().expect("response");
    assert_eq!(status, 403, "impersonation headers pass through and the cluster judges them: {body}");
}
