//! The proxy's HTTP/1.1 parser under hostile input: request smuggling shapes are
//! refused, slow clients are cut off, and ordinary keep-alive keeps working.

mod support;

use std::time::{Duration, Instant};

use support::{Demo, RawClient};

fn client(demo: &Demo) -> RawClient {
    RawClient::connect(&demo.proxy_addr(), &demo.path("kubeconfig"), true)
}

#[test]
fn smuggling_shapes_are_refused_with_400() {
    let demo = Demo::start();
    let cases: &[(&str, &str)] = &[
        ("content-length and chunked", "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("two content-lengths", "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ("signed content-length", "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd"),
        ("non-chunked transfer-encoding", "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("obsolete line folding", "GET /api HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n"),
        ("bad chunk size", "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
        ("absolute-form target", "GET https://evil/api HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("HTTP/1.0", "GET /api HTTP/1.0\r\n\r\n"),
    ];
    for (name, raw) in cases {
        let mut c = client(&demo);
        c.send(raw.as_bytes()).unwrap();
        let (status, body) = c.response().unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body.contains("\"kind\":\"Status\""), "{name}: {body}");
        assert!(c.is_closed(), "{name}: connection left open after a framing error");
    }
}

#[test]
fn oversized_heads_get_431() {
    let demo = Demo::start();
    let mut c = client(&demo);
    let big = format!("GET /api HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let _ = c.send(big.as_bytes());
    let (status, _) = c.response().expect("response");
    assert_eq!(status, 431);
}

#[test]
fn a_head_sent_byte_by_byte_is_cut_off() {
    let demo = Demo::start();
    let mut c = client(&demo);
    let started = Instant::now();
    let head = b"GET /api HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    c.send(head).unwrap();
    // Keep trickling; the proxy must end the connection on its own.
    let mut closed = false;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(500));
        if c.send(b"a").is_err() {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let answered = c.response();
    assert!(closed || answered.as_ref().is_some_and(|(s, _)| *s == 408), "slow head still accepted after {:?}: {answered:?}", started.elapsed());
}

#[test]
fn keep_alive_and_health_endpoints() {
    let demo = Demo::start();
    let mut c = client(&demo);
    for _ in 0..3 {
        c.send(b"GET /api/v1/namespaces/default/pods/web-0 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, body) = c.response().expect("response");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"name\":\"web-0\""), "{body}");
    }
    let mut anon = RawClient::connect(&demo.proxy_addr(), &demo.path("kubeconfig"), false);
    for path in ["/healthz", "/readyz"] {
        anon.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(anon.response().expect("response").0, 200, "{path}");
    }
}

#[test]
fn chunked_request_bodies_are_streamed_upstream() {
    let demo = Demo::start();
    let mut c = client(&demo);
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"chunked"},"spec":{"containers":[{"name":"main","image":"busybox","command":["sleep","30"]}]}}"#;
    let (a, b) = pod.split_at(40);
    let raw = format!(
        "POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    c.send(raw.as_bytes()).unwrap();
    let (status, body) = c.response().expect("response");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"name\":\"chunked\""), "{body}");
}
