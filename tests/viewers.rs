//! The recorder's token viewers when the cluster cannot answer: a recorder whose
//! `--viewers-from-cluster` API server is not there answers a bearer token 503, never
//! a recording, while a reader certificate reads as before; a request with two
//! `Authorization` headers is refused. (What the cluster's RBAC allows is judged on a
//! real kube-apiserver by the conformance suite's "viewers" case.)

mod support;

use std::path::Path;
use std::process::Command;

use kubetape::kube::client::{kubeconfig, Credential};
use kubetape::net::pki::Ca;
use support::{free_port, wait_for_port, RawClient, Spawned, TempDir};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("writing a test file");
}

/// GET `path` on the recorder at `port` with `extra` header lines, as the kubeconfig-
/// shaped file `client` says (with its certificate when `with_cert`).
fn get(port: u16, client: &Path, with_cert: bool, extra: &str, path: &str) -> (u16, String) {
    let mut c = RawClient::connect_named(&format!("127.0.0.1:{port}"), "127.0.0.1", client, with_cert);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: r\r\n{extra}Connection: close\r\n\r\n").as_bytes()).expect("request");
    c.response().expect("a response")
}

#[test]
fn a_cluster_that_cannot_be_asked_never_lets_a_token_read() {
    support::init_crypto();
    let dir = TempDir::new("viewers");
    let d = |f: &str| dir.0.join(f);
    let ca = Ca::new("viewers-test-ca").expect("a CA");
    let serving = ca.server("recorder", &["127.0.0.1"]).expect("a serving certificate");
    let reader = ca.client("auditor", &[]).expect("a reader certificate");
    write(&d("ca.pem"), &ca.cert_pem);
    write(&d("tls.pem"), &serving.cert);
    write(&d("tls-key.pem"), &serving.key);
    // The API server is a port nothing listens on.
    let gone = free_port();
    write(&d("cluster.kubeconfig"), &kubeconfig(&format!("https://127.0.0.1:{gone}"), &ca.cert_pem, "recorder", Credential::Token("recorder-token")));
    let b64 = |t: &str| kubetape::wire::base64::encode(t.as_bytes());
    write(&d("reader"), &format!("certificate-authority-data: {}\nclient-certificate-data: {}\nclient-key-data: {}\n", b64(&ca.cert_pem), b64(&reader.cert), b64(&reader.key)));
    let port = free_port();
    let p = |f: &str| d(f).display().to_string();
    let args: Vec<String> = [
        "recorder",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &p("tls.pem"),
        "--tls-key",
        &p("tls-key.pem"),
        "--client-ca",
        &p("ca.pem"),
        "--readers",
        "auditor",
        "--storage-dir",
        &p("recordings"),
        "--viewers-from-cluster",
        "--kubeconfig",
        &p("cluster.kubeconfig"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _recorder = Spawned::start(&args, &d("recorder.log"));
    wait_for_port(port);

    let (code, body) = get(port, &d("reader"), false, "Authorization: Bearer some-token\r\n", "/v1/recordings");
    assert_eq!(code, 503, "{body}");
    assert!(!body.contains("items") && !body.contains("some-token"), "{body}");
    assert_eq!(get(port, &d("reader"), false, "Authorization: Bearer some-token\r\n", "/v1/search?q=x").0, 503);
    assert_eq!(get(port, &d("reader"), false, "", "/v1/recordings").0, 401);
    assert_eq!(get(port, &d("reader"), false, "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", "/v1/recordings").0, 400);
    let (code, body) = get(port, &d("reader"), true, "", "/v1/recordings");
    assert_eq!((code, body.as_str()), (200, r#"{"items":[],"offset":0,"total":0}"#), "the reader certificate reads as before");
    let log = std::fs::read_to_string(d("recorder.log")).unwrap_or_default();
    assert!(!log.contains("some-token") && !log.contains("recorder-token"), "a token reached the log:\n{log}");

    // --kubeconfig alone is a mistake, said as one.
    let out = Command::new(support::BIN)
        .args(["recorder", "--tls-cert", &p("tls.pem"), "--tls-key", &p("tls-key.pem"), "--client-ca", &p("ca.pem")])
        .args(["--storage-dir", &p("r2"), "--kubeconfig", &p("cluster.kubeconfig")])
        .output()
        .expect("running kubetape");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kubeconfig: only used with --viewers-from-cluster"));
}
