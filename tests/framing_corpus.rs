//! A corpus of HTTP/1.1 framing shapes, each sent raw over TLS on its own connection
//! to a `kubetape proxy` whose upstream is a capture server that parses requests the
//! way Go's net/http does (kube-apiserver is Go; see `support::capture`). For every
//! shape the proxy must either refuse it (a 4xx of its own, and nothing of it reaches
//! the upstream) or deliver exactly the requests the client meant: as many as it
//! sent, each parsed cleanly by Go's rules, each impersonating only the caller
//! (`Impersonate-User: alice`, `Impersonate-Group` exactly `sre` and
//! `system:masters`, no `Impersonate-Uid`/`-Extra-*`, no `X-Remote-*`, the proxy's own
//! `Authorization`), with the body the client meant. Shapes that pipeline several
//! requests may also be cut short: the first k delivered exactly and the next one
//! refused. Shapes whose framing has no single meaning (RFC 9112 sections 6 and 7)
//! must be refused, and where the proposed limits name a status (bare LF, lengths of
//! 2^63 and more, `GET *`: 400; a head over 64 KiB: 431) that status.
//!
//! Assertions are on what the upstream saw, never on kubetape's logs. The smuggling
//! shapes run again as bob (fail-closed). One summary line, then every failure with
//! what the upstream saw.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kubetape::wire::http::{self, BodyLength};
use support::capture::{escape, go, Capture, FrontProxy, Seen};
use support::{Demo, RawClient};

/// Long enough for the proxy's 15 s head timeout (a 408) to count as its answer.
const RESPONSE_WAIT: Duration = Duration::from_secs(20);
/// After the client is gone the proxy must close its upstream connection within this.
const QUIESCE_WAIT: Duration = Duration::from_secs(10);
/// The proxy's documented head limit (README "Limits", `proxy::MAX_HEAD`).
const PROXY_MAX_HEAD: usize = 64 * 1024;
/// The proxy's documented header-line limit (`wire::http::MAX_HEADERS`).
const PROXY_MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

const CM: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";
const SSR: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
const SSR_BODY: &[u8] = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
const HELLO: &[u8] = b"hello";

/// Who sends the corpus, and what the upstream must see them impersonated as.
struct Who {
    name: &'static str,
    kubeconfig: &'static str,
    user: &'static str,
    groups: [&'static str; 2],
}

const ALICE: Who = Who { name: "alice", kubeconfig: "kubeconfig", user: "alice", groups: ["sre", "system:masters"] };
const BOB: Who = Who { name: "bob", kubeconfig: "bob.kubeconfig", user: "bob", groups: ["dev", "system:masters"] };

/// One request the client means: method, decoded path, body.
#[derive(Clone, Debug)]
struct Meant {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn meant(method: &str, path: &str, body: &[u8]) -> Meant {
    Meant { method: method.into(), path: path.into(), body: body.to_vec() }
}

/// What follows the meant requests in a shape's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    Nothing,
    /// Not a valid request (or a framing with no single meaning): the proxy must
    /// answer it with a refusal, of this status when one is given, and send none of
    /// it upstream.
    Invalid(Option<u16>),
    /// Bytes after a request that ends the connection: they must never reach upstream.
    Ignored,
}

struct Shape {
    name: String,
    bytes: Vec<u8>,
    meant: Vec<Meant>,
    tail: Tail,
    /// Also sent as bob.
    smuggle: bool,
}

#[derive(Default)]
struct Corpus(Vec<Shape>);

impl Corpus {
    fn push(&mut self, name: &str, bytes: Vec<u8>, meant: Vec<Meant>, tail: Tail) -> &mut Shape {
        assert!(self.0.iter().all(|s| s.name != name), "two shapes named {name:?}");
        self.0.push(Shape { name: name.into(), bytes, meant, tail, smuggle: false });
        self.0.last_mut().expect("just pushed")
    }

    /// The client means exactly `meant`.
    fn ok(&mut self, name: &str, bytes: Vec<u8>, meant: Vec<Meant>) -> &mut Shape {
        self.push(name, bytes, meant, Tail::Nothing)
    }

    /// No single meaning: must be refused (any 4xx, or 501/505).
    fn bad(&mut self, name: &str, bytes: Vec<u8>) -> &mut Shape {
        self.push(name, bytes, vec![], Tail::Invalid(None))
    }

    /// Must be refused with `status`.
    fn bad_with(&mut self, name: &str, bytes: Vec<u8>, status: u16) -> &mut Shape {
        self.push(name, bytes, vec![], Tail::Invalid(Some(status)))
    }
}

impl Shape {
    fn smuggle(&mut self) {
        self.smuggle = true;
    }
}

// ---- message builders ----

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A start line, header lines and a body, with CRLF line endings.
fn msg(start: &str, lines: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{start}\r\n").into_bytes();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn lines<'a>(first: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    first.iter().chain(extra).copied().collect()
}

fn get(extra: &[&str]) -> Vec<u8> {
    msg(&format!("GET {PODS} HTTP/1.1"), &lines(&["Host: kubernetes", "Accept: application/json"], extra), b"")
}

/// A POST with exactly the given header lines (plus Host and Content-Type) and body.
fn post_raw(extra: &[&str], body: &[u8]) -> Vec<u8> {
    msg(&format!("POST {CM} HTTP/1.1"), &lines(&["Host: kubernetes", "Content-Type: application/json"], extra), body)
}

/// A POST framed by a correct Content-Length.
fn post_cl(extra: &[&str], body: &[u8]) -> Vec<u8> {
    let cl = format!("Content-Length: {}", body.len());
    post_raw(&lines(extra, &[&cl]), body)
}

/// A POST framed by `Transfer-Encoding: chunked` with a raw chunked body.
fn post_te(extra: &[&str], chunked_body: &[u8]) -> Vec<u8> {
    post_raw(&lines(extra, &["Transfer-Encoding: chunked"]), chunked_body)
}

/// `data` as one chunk plus the last chunk.
fn chunked(data: &[u8]) -> Vec<u8> {
    cat(&[format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n0\r\n\r\n"])
}

/// The request hidden in bodies: a SelfSubjectReview as mallory in system:masters.
fn smuggled() -> Vec<u8> {
    let cl = format!("Content-Length: {}", SSR_BODY.len());
    msg(&format!("POST {SSR} HTTP/1.1"), &["Host: kubernetes", "Impersonate-User: mallory", "Impersonate-Group: system:masters", "Content-Type: application/json", &cl], SSR_BODY)
}

/// A GET whose head is exactly `total` bytes, padded over `pad_lines` header lines.
fn padded_head(total: usize, pad_lines: usize) -> Vec<u8> {
    let start = format!("GET {PODS} HTTP/1.1\r\nHost: kubernetes\r\n");
    let fixed = start.len() + 2 + (0..pad_lines).map(|i| format!("X-Pad-{i:03}: \r\n").len()).sum::<usize>();
    let pad = total.checked_sub(fixed).expect("head size too small for its lines");
    let mut out = start.into_bytes();
    for i in 0..pad_lines {
        let n = pad / pad_lines + usize::from(i < pad % pad_lines);
        out.extend_from_slice(format!("X-Pad-{i:03}: {}\r\n", "a".repeat(n)).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    assert_eq!(out.len(), total);
    out
}

fn title_case(h: &str) -> String {
    h.split('-').map(|p| p[..1].to_ascii_uppercase() + &p[1..]).collect::<Vec<_>>().join("-")
}

// ---- the corpus ----

fn corpus() -> Vec<Shape> {
    let mut c = Corpus::default();
    let s = smuggled();
    c.ok("baseline GET", get(&[]), vec![meant("GET", PODS, b"")]);
    c.ok("baseline POST", post_cl(&[], HELLO), vec![meant("POST", CM, HELLO)]);

    // Connection naming a framing, routing or identity header, in several forms.
    // The named field carries a body that is itself a request as mallory.
    let named: &[(&str, &[&str])] = &[
        ("content-length", &[]),
        ("transfer-encoding", &[]),
        ("host", &[]),
        ("upgrade", &["Upgrade: websocket"]),
        ("authorization", &["Authorization: Bearer mallory-token"]),
        ("impersonate-user", &["Impersonate-User: mallory"]),
        ("impersonate-group", &["Impersonate-Group: system:masters"]),
        ("impersonate-uid", &["Impersonate-Uid: 0"]),
        ("x-remote-user", &["X-Remote-User: mallory"]),
        ("x-remote-group", &["X-Remote-Group: system:masters"]),
    ];
    for (h, carried) in named {
        let title = title_case(h);
        let forms: [(&str, Vec<String>); 5] = [
            ("alone", vec![format!("Connection: {h}")]),
            ("after keep-alive", vec![format!("Connection: keep-alive, {h}")]),
            ("before keep-alive", vec![format!("Connection: {h}, keep-alive")]),
            ("title case", vec![format!("Connection: {title}")]),
            ("second Connection line", vec!["Connection: keep-alive".to_string(), format!("Connection: {h}")]),
        ];
        for (form, conn) in forms {
            let extra: Vec<&str> = conn.iter().map(String::as_str).chain(carried.iter().copied()).collect();
            let bytes = if *h == "transfer-encoding" { post_te(&extra, &chunked(&s)) } else { post_cl(&extra, &s) };
            c.ok(&format!("Connection names {h} ({form})"), bytes, vec![meant("POST", CM, &s)]).smuggle();
        }
    }
    let cl_forms: &[(&str, &[&str])] = &[
        ("close, content-length", &["Connection: close, content-length"]),
        ("no space after the colon", &["Connection:content-length"]),
        ("trailing comma", &["Connection: content-length,"]),
        ("empty first element", &["Connection: , content-length"]),
        ("tabs around it", &["Connection:\tcontent-length\t"]),
        ("upper case", &["Connection: CONTENT-LENGTH"]),
        ("with upgrade", &["Connection: upgrade, content-length", "Upgrade: websocket"]),
        ("with te", &["Connection: te, content-length", "TE: trailers"]),
        ("with Keep-Alive", &["Connection: Keep-Alive, Content-Length", "Keep-Alive: timeout=5"]),
        ("and transfer-encoding", &["Connection: content-length, transfer-encoding"]),
    ];
    for (form, extra) in cl_forms {
        c.ok(&format!("Connection names content-length ({form})"), post_cl(extra, &s), vec![meant("POST", CM, &s)]).smuggle();
    }
    c.ok(
        "Connection names content-length and transfer-encoding (chunked body)",
        post_te(&["Connection: content-length, transfer-encoding"], &chunked(&s)),
        vec![meant("POST", CM, &s)],
    )
    .smuggle();
    c.ok("Connection names transfer-encoding (Content-Length body)", post_cl(&["Connection: transfer-encoding"], &s), vec![meant("POST", CM, &s)]).smuggle();
    let cl = format!("Content-Length: {}", s.len());
    c.ok(
        "Connection names content-length (on GET)",
        msg(&format!("GET {PODS} HTTP/1.1"), &["Host: kubernetes", "Connection: content-length", &cl], &s),
        vec![meant("GET", PODS, &s)],
    )
    .smuggle();
    c.ok(
        "Connection names content-length (on DELETE)",
        msg(&format!("DELETE {CM}/x HTTP/1.1"), &["Host: kubernetes", "Connection: content-length", &cl], &s),
        vec![meant("DELETE", &format!("{CM}/x"), &s)],
    )
    .smuggle();
    let inner_get = msg(&format!("GET {PODS} HTTP/1.1"), &["Host: kubernetes", "Impersonate-User: mallory", "Impersonate-Group: system:masters"], b"");
    c.ok("Connection names content-length (body is a GET as mallory)", post_cl(&["Connection: content-length"], &inner_get), vec![meant("POST", CM, &inner_get)]).smuggle();

    // Content-Length and Transfer-Encoding together (RFC 9112 6.3: chunked wins, or refuse).
    let ch = chunked(&s);
    let ch_len = format!("Content-Length: {}", ch.len());
    c.ok("Content-Length then chunked", post_raw(&[&ch_len, "Transfer-Encoding: chunked"], &ch), vec![meant("POST", CM, &s)]).smuggle();
    c.ok("chunked then Content-Length", post_raw(&["Transfer-Encoding: chunked", &ch_len], &ch), vec![meant("POST", CM, &s)]).smuggle();
    c.ok("Content-Length shorter than the chunked body", post_raw(&["Content-Length: 4", "Transfer-Encoding: chunked"], &ch), vec![meant("POST", CM, &s)]).smuggle();
    c.ok("Content-Length 0 and chunked", post_raw(&["Content-Length: 0", "Transfer-Encoding: chunked"], &ch), vec![meant("POST", CM, &s)]).smuggle();
    c.ok("chunked and Content-Length abc", post_raw(&["Transfer-Encoding: chunked", "Content-Length: abc"], &ch), vec![meant("POST", CM, &s)]).smuggle();
    c.bad("Content-Length and Transfer-Encoding identity", post_raw(&[&ch_len, "Transfer-Encoding: identity"], &ch)).smuggle();
    c.bad("Content-Length and Transfer-Encoding gzip, chunked", post_raw(&[&ch_len, "Transfer-Encoding: gzip, chunked"], &ch)).smuggle();
    c.bad(
        "Content-Length and chunked on HTTP/1.0",
        msg(&format!("POST {CM} HTTP/1.0"), &["Host: kubernetes", "Connection: keep-alive", "Transfer-Encoding: chunked", &ch_len], &ch),
    )
    .smuggle();

    // Content-Length values.
    let cl_ok: &[(&str, &[&str])] = &[
        ("Content-Length twice, same value", &["Content-Length: 5", "Content-Length: 5"]),
        ("Content-Length list of equal values", &["Content-Length: 5, 5"]),
        ("Content-Length twice, one padded", &["Content-Length: 5", "Content-Length:  5 "]),
        ("Content-Length with leading spaces", &["Content-Length:    5"]),
        ("Content-Length with trailing spaces", &["Content-Length: 5   "]),
        ("Content-Length with tabs", &["Content-Length:\t5\t"]),
        ("Content-Length with leading zeros", &["Content-Length: 0005"]),
        ("Content-Length of 20 digits, value 5", &["Content-Length: 00000000000000000005"]),
    ];
    for (name, l) in cl_ok {
        c.ok(name, post_raw(l, HELLO), vec![meant("POST", CM, HELLO)]);
    }
    let cl_bad: &[(&str, &str, &[u8])] = &[
        ("Content-Length twice, different values", "Content-Length: 5\r\nContent-Length: 6", b"hello!"),
        ("Content-Length list of different values", "Content-Length: 5, 6", b"hello!"),
        ("Content-Length with a plus sign", "Content-Length: +5", HELLO),
        ("Content-Length negative", "Content-Length: -5", HELLO),
        ("Content-Length in hex", "Content-Length: 0x5", HELLO),
        ("Content-Length with a decimal point", "Content-Length: 5.0", HELLO),
        ("Content-Length with an exponent", "Content-Length: 5e0", HELLO),
        ("Content-Length in words", "Content-Length: five", HELLO),
        ("Content-Length with an inner space", "Content-Length: 5 5", HELLO),
        ("Content-Length with an underscore", "Content-Length: 0_5", HELLO),
        ("Content-Length empty", "Content-Length:", HELLO),
        ("Content-Length fullwidth digit", "Content-Length: \u{ff15}", HELLO),
        ("Content-Length with a NUL", "Content-Length: 5\0", HELLO),
    ];
    for (name, l, body) in cl_bad {
        c.bad(name, post_raw(&[*l], body));
    }
    let cl_huge: &[(&str, &str)] = &[
        ("Content-Length 2^63", "9223372036854775808"),
        ("Content-Length 2^64", "18446744073709551616"),
        ("Content-Length 2^64+5 (wraps to 5)", "18446744073709551621"),
        ("Content-Length of 20 digits", "10000000000000000000"),
    ];
    for (name, v) in cl_huge {
        c.bad_with(name, post_raw(&[&format!("Content-Length: {v}")], HELLO), 400);
    }
    c.ok("Content-Length 0", post_raw(&["Content-Length: 0"], b""), vec![meant("POST", CM, b"")]);
    c.push("Content_Length (underscore) is not a length", post_raw(&["Content_Length: 5"], HELLO), vec![meant("POST", CM, b"")], Tail::Invalid(None));

    // Transfer-Encoding values (the body is "hello", chunked).
    let te_ok: &[(&str, &[&str])] = &[
        ("Transfer-Encoding with leading spaces", &["Transfer-Encoding:    chunked"]),
        ("Transfer-Encoding with a trailing space", &["Transfer-Encoding: chunked "]),
        ("Transfer-Encoding after a tab", &["Transfer-Encoding:\tchunked"]),
        ("Transfer-Encoding CHUNKED", &["Transfer-Encoding: CHUNKED"]),
        ("Transfer-Encoding Chunked", &["Transfer-Encoding: Chunked"]),
        ("Transfer-Encoding with an empty first element", &["Transfer-Encoding: , chunked"]),
        ("Transfer-Encoding with an empty last element", &["Transfer-Encoding: chunked,"]),
    ];
    for (name, l) in te_ok {
        c.ok(name, post_raw(l, &chunked(HELLO)), vec![meant("POST", CM, HELLO)]);
    }
    let te_bad: &[(&str, &[&str])] = &[
        ("Transfer-Encoding chunked, chunked", &["Transfer-Encoding: chunked, chunked"]),
        ("Transfer-Encoding identity", &["Transfer-Encoding: identity"]),
        ("Transfer-Encoding gzip, chunked", &["Transfer-Encoding: gzip, chunked"]),
        ("Transfer-Encoding chunked, gzip", &["Transfer-Encoding: chunked, gzip"]),
        ("Transfer-Encoding xchunked", &["Transfer-Encoding: xchunked"]),
        ("Transfer-Encoding chunked with a parameter", &["Transfer-Encoding: chunked; q=1"]),
        ("Transfer-Encoding empty", &["Transfer-Encoding:"]),
        ("Transfer-Encoding chunked and a vertical tab", &["Transfer-Encoding: chunked\x0b"]),
        ("two Transfer-Encoding lines, chunked twice", &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]),
        ("two Transfer-Encoding lines, chunked then identity", &["Transfer-Encoding: chunked", "Transfer-Encoding: identity"]),
        ("two Transfer-Encoding lines, identity then chunked", &["Transfer-Encoding: identity", "Transfer-Encoding: chunked"]),
    ];
    for (name, l) in te_bad {
        c.bad(name, post_raw(l, &chunked(HELLO)));
    }
    c.bad_with("Transfer-Encoding with a space before the colon", post_raw(&["Transfer-Encoding : chunked"], &chunked(HELLO)), 400);
    let raw_chunked = chunked(HELLO);
    c.ok("Transfer_Encoding (underscore) beside Content-Length", post_cl(&["Transfer_Encoding: chunked"], &raw_chunked), vec![meant("POST", CM, &raw_chunked)]);
    c.ok("Transfer-Encoding on GET", msg(&format!("GET {PODS} HTTP/1.1"), &["Host: kubernetes", "Transfer-Encoding: chunked"], &chunked(HELLO)), vec![meant("GET", PODS, HELLO)]);

    // Chunk sizes, extensions, line endings and trailers.
    let chunk_ok: &[(&str, &[u8], &[u8])] = &[
        ("chunk size in upper-case hex", b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        ("chunk size in lower-case hex", b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        ("chunk size with leading zeros", b"0005\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk size of 16 hex digits", b"0000000000000005\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk size of 17 hex digits, value 5", b"00000000000000005\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk size with a trailing space", b"5 \r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk size with a trailing tab", b"5\t\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk extension, name only", b"5;ext\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk extension, name=value", b"5;a=b\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk extension, quoted value with ; and an escaped quote", b"5;a=\"q;u\\\"o\"\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk extension after whitespace", b"5 ;a=b\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk extension with spaces around =", b"5; a = b\r\nhello\r\n0\r\n\r\n", HELLO),
        ("chunk extension that looks like a request line", b"5;GET / HTTP/1.1\r\nhello\r\n0\r\n\r\n", HELLO),
        ("last chunk with an extension", b"5\r\nhello\r\n0;done\r\n\r\n", HELLO),
        ("empty chunked body", b"0\r\n\r\n", b""),
        ("chunk data holding CRLF 0 CRLF CRLF", b"7\r\n\r\n0\r\n\r\n\r\n0\r\n\r\n", b"\r\n0\r\n\r\n"),
        ("trailer Content-Length", b"5\r\nhello\r\n0\r\nContent-Length: 100\r\n\r\n", HELLO),
        ("trailer Transfer-Encoding", b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n", HELLO),
        ("trailer with obs-fold", b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n", HELLO),
        // Malformed, but the trailer section still ends at the CRLF CRLF: dropping it is as good as refusing.
        ("trailer line without a colon", b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n", HELLO),
    ];
    for (name, body, want) in chunk_ok {
        c.ok(name, post_te(&[], body), vec![meant("POST", CM, want)]);
    }
    let ones: Vec<u8> = (0..40).flat_map(|i| format!("1\r\n{}\r\n", (b'a' + i % 26) as char).into_bytes()).chain(*b"0\r\n\r\n").collect();
    let ones_data: Vec<u8> = (0..40).map(|i| b'a' + i % 26).collect();
    c.ok("forty one-byte chunks", post_te(&[], &ones), vec![meant("POST", CM, &ones_data)]);
    let long_ext = cat(&[b"5;x=", "y".repeat(5000).as_bytes(), b"\r\nhello\r\n0\r\n\r\n"]);
    c.ok("chunk extension of 5000 bytes", post_te(&[], &long_ext), vec![meant("POST", CM, HELLO)]);
    let many_ext: Vec<u8> = (0..40).flat_map(|_| cat(&[b"1;x=", "y".repeat(500).as_bytes(), b"\r\na\r\n"])).chain(*b"0\r\n\r\n").collect();
    c.ok("chunk extensions totalling 20 KiB", post_te(&[], &many_ext), vec![meant("POST", CM, &[b'a'; 40])]);
    let trailers: &[(&str, &[&str], &[u8])] = &[
        ("trailer Impersonate-User", &[], b"Impersonate-User: mallory"),
        ("trailer Impersonate-Group declared in Trailer", &["Trailer: Impersonate-Group"], b"Impersonate-Group: system:masters"),
        ("trailer Authorization", &[], b"Authorization: Bearer mallory-token"),
        ("trailer X-Remote-User", &[], b"X-Remote-User: mallory"),
    ];
    for (name, extra, field) in trailers {
        let body = cat(&[b"5\r\nhello\r\n0\r\n", field, b"\r\n\r\n"]);
        c.ok(name, post_te(extra, &body), vec![meant("POST", CM, HELLO)]).smuggle();
    }
    c.ok("chunked body that holds a full request", post_te(&[], &chunked(&s)), vec![meant("POST", CM, &s)]).smuggle();
    let chunk_bad: &[(&str, &[u8])] = &[
        ("chunk size 0x5", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size -5", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size +5", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size with a leading space", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size with an underscore", b"0_5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size empty", b"\r\nhello\r\n0\r\n\r\n"),
        ("chunk size of 17 f digits", b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension with CRLF inside quotes", b"5;a=\"x\r\ny\"\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension with a bare CR", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
        ("CR CR LF after the chunk size", b"5\r\r\nhello\r\n0\r\n\r\n"),
        ("missing CRLF after the chunk data", b"5\r\nhello0\r\n\r\n"),
        ("chunk data longer than its size", b"5\r\nhelloXX\r\n0\r\n\r\n"),
        ("chunk data shorter than its size", b"5\r\nhel\r\n0\r\n\r\n"),
    ];
    for (name, body) in chunk_bad {
        c.bad(name, post_te(&[], body));
    }
    let chunk_lf: &[(&str, &[u8])] = &[
        ("bare LF after the chunk size", b"5\nhello\r\n0\r\n\r\n"),
        ("bare LF ending a chunk extension", b"5;a=b\nhello\r\n0\r\n\r\n"),
        ("bare LF after the chunk data", b"5\r\nhello\n0\r\n\r\n"),
        ("bare LF after the last chunk", b"5\r\nhello\r\n0\n\r\n"),
        ("bare LF ending the chunked body", b"5\r\nhello\r\n0\r\n\n"),
        ("bare LF in a trailer", b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n"),
    ];
    for (name, body) in chunk_lf {
        c.bad_with(name, post_te(&[], body), 400);
    }

    // Line endings and bytes inside the head.
    let g = format!("GET {PODS} HTTP/1.1");
    let lf_heads: Vec<(&str, Vec<u8>)> = vec![
        ("bare LF line endings throughout", format!("{g}\nHost: kubernetes\nAccept: */*\n\n").into_bytes()),
        ("bare LF after the request line", format!("{g}\nHost: kubernetes\r\n\r\n").into_bytes()),
        ("bare LF after one header", format!("{g}\r\nHost: kubernetes\nAccept: */*\r\n\r\n").into_bytes()),
        ("bare LF ending the head", format!("{g}\r\nHost: kubernetes\r\n\n").into_bytes()),
    ];
    for (name, bytes) in lf_heads {
        c.bad_with(name, bytes, 400);
    }
    c.bad_with("bare LF hiding Impersonate-User", format!("{g}\r\nHost: kubernetes\r\nX-A: b\nImpersonate-User: mallory\r\n\r\n").into_bytes(), 400).smuggle();
    c.bad_with(
        "bare LF blank line before identity headers",
        format!("{g}\r\nHost: kubernetes\r\n\nImpersonate-User: mallory\r\nImpersonate-Group: system:masters\r\n\r\n").into_bytes(),
        400,
    )
    .smuggle();
    c.bad("bare CR ending the request line", format!("{g}\rHost: kubernetes\r\n\r\n").into_bytes());
    c.bad("bare CR line endings throughout", format!("{g}\rHost: kubernetes\rAccept: */*\r\r").into_bytes());
    let odd_values: &[(&str, &str)] = &[
        ("bare CR inside a value", "X-A: b\rc"),
        ("CR CR LF ending a header", "X-A: b\r"),
        ("NUL inside a value", "X-A: b\0c"),
        ("DEL inside a value", "X-A: b\x7fc"),
        ("control byte 0x01 inside a value", "X-A: b\x01c"),
        ("vertical tab inside a value", "X-A: b\x0bc"),
        ("tab inside a value", "X-A: b\tc"),
    ];
    for (name, line) in odd_values {
        c.ok(name, get(&[*line]), vec![meant("GET", PODS, b"")]);
    }
    c.ok("bare CR hiding Impersonate-User", get(&["X-A: b\rImpersonate-User: mallory"]), vec![meant("GET", PODS, b"")]).smuggle();
    c.ok("obs-text (0xff) inside a value", cat(&[format!("{g}\r\nHost: kubernetes\r\nX-A: b").as_bytes(), b"\xff", b"c\r\n\r\n"]), vec![meant("GET", PODS, b"")]);
    c.bad("NUL inside a name", get(&["X-\0A: b"]));

    // Folding and whitespace around names.
    let folded: &[(&str, &[&str], bool)] = &[
        ("obs-fold continuing a header", &["X-A: b", " c"], false),
        ("obs-fold with a tab", &["X-A: b", "\tc"], false),
        ("obs-fold continuing Impersonate-User", &["Impersonate-User: alice", " mallory"], true),
        ("obs-fold hiding Impersonate-User", &["X-A: b", " Impersonate-User: mallory"], true),
        ("obs-fold hiding Impersonate-Group", &["X-A: b", "\tImpersonate-Group: system:masters"], true),
    ];
    for (name, l, smuggle) in folded {
        let shape = c.ok(name, get(l), vec![meant("GET", PODS, b"")]);
        if *smuggle {
            shape.smuggle();
        }
    }
    c.bad("obs-fold continuing Content-Length", post_raw(&["Content-Length: 1", " 0"], b"0123456789"));
    c.bad("obs-fold continuing Transfer-Encoding", post_raw(&["Transfer-Encoding: chunked", " , identity"], &chunked(HELLO)));
    c.ok("obs-fold continuing Connection with content-length", post_cl(&["Connection: keep-alive", " content-length"], &s), vec![meant("POST", CM, &s)]).smuggle();
    c.ok("whitespace before the first header", format!("{g}\r\n Impersonate-User: mallory\r\nHost: kubernetes\r\n\r\n").into_bytes(), vec![meant("GET", PODS, b"")]).smuggle();
    c.bad_with("space before a colon", get(&["X-A : b"]), 400);
    c.bad_with("space before the colon of Impersonate-User", get(&["Impersonate-User : mallory"]), 400).smuggle();
    c.bad_with("space before the colon of Content-Length", post_raw(&["Content-Length : 5"], HELLO), 400);
    c.bad_with("tab before the colon of Transfer-Encoding", post_raw(&["Transfer-Encoding\t: chunked"], &chunked(HELLO)), 400);

    // Header names.
    let names_ok: &[(&str, &[&str])] = &[
        ("Impersonate_User with an underscore", &["Impersonate_User: mallory"]),
        ("Impersonate_Group with an underscore", &["Impersonate_Group: system:masters"]),
        ("X_Remote_User with underscores", &["X_Remote_User: mallory"]),
        ("Impersonate-User followed by two colons", &["Impersonate-User:: mallory"]),
        ("IMPERSONATE-USER in upper case", &["IMPERSONATE-USER: mallory"]),
        ("impersonate-user in lower case", &["impersonate-user: mallory"]),
        ("iMpErSoNaTe-UsEr in mixed case", &["iMpErSoNaTe-UsEr: mallory"]),
        ("impersonate-group in lower case", &["impersonate-group: system:masters"]),
        ("IMPERSONATE-GROUP twice", &["IMPERSONATE-GROUP: system:masters", "IMPERSONATE-GROUP: admins"]),
        ("AUTHORIZATION in upper case", &["AUTHORIZATION: Bearer mallory-token"]),
        ("Authorization with Basic credentials", &["Authorization: Basic bWFsbG9yeTpwdw=="]),
        ("x-remote-user in lower case", &["x-remote-user: mallory"]),
        ("X-REMOTE-GROUP in upper case", &["X-REMOTE-GROUP: system:masters"]),
        ("X-Remote-Extra-Scopes", &["X-Remote-Extra-Scopes: all"]),
        ("Impersonate-Uid", &["Impersonate-Uid: 0"]),
        ("Impersonate-Extra-Scopes", &["Impersonate-Extra-Scopes: all"]),
        ("Impersonate-Extra- with a percent-encoded key", &["Impersonate-Extra-%41: x"]),
        ("Impersonate-User twice, alice then mallory", &["Impersonate-User: alice", "Impersonate-User: mallory"]),
        ("Impersonate-User alice and Impersonate-Group system:masters", &["Impersonate-User: alice", "Impersonate-Group: system:masters"]),
        ("Proxy-Authorization", &["Proxy-Authorization: Basic bWFsbG9yeTpwdw=="]),
    ];
    for (name, l) in names_ok {
        c.ok(name, get(l), vec![meant("GET", PODS, b"")]).smuggle();
    }
    let names_bad: &[(&str, &[u8])] = &[
        ("space inside a name", b"Impersonate User: mallory"),
        ("non-ASCII name", "\u{cf}mpersonate-User: mallory".as_bytes()),
        ("empty name", b": mallory"),
        ("slash inside a name", b"X/Y: z"),
        ("at sign inside a name", b"X@Y: z"),
    ];
    for (name, line) in names_bad {
        c.bad(name, cat(&[format!("{g}\r\nHost: kubernetes\r\n").as_bytes(), line, b"\r\n\r\n"])).smuggle();
    }

    // Request lines and targets.
    let get_line = |start: &str| msg(start, &["Host: kubernetes"], b"");
    c.ok("absolute-form target", get_line(&format!("GET https://kubernetes{PODS} HTTP/1.1")), vec![meant("GET", PODS, b"")]);
    c.ok("absolute-form target naming another host", get_line(&format!("GET https://evil.example:6443{PODS} HTTP/1.1")), vec![meant("GET", PODS, b"")]);
    c.ok("absolute-form http target", get_line(&format!("GET http://kubernetes{PODS} HTTP/1.1")), vec![meant("GET", PODS, b"")]);
    c.bad_with("GET *", get_line("GET * HTTP/1.1"), 400);
    c.ok("OPTIONS *", get_line("OPTIONS * HTTP/1.1"), vec![meant("OPTIONS", "*", b"")]);
    c.bad("POST *", msg("POST * HTTP/1.1", &["Host: kubernetes", "Content-Length: 0"], b""));
    c.bad("CONNECT authority-form", get_line("CONNECT kubernetes:443 HTTP/1.1"));
    c.bad("double space after the method", get_line(&format!("GET  {PODS} HTTP/1.1")));
    c.bad("trailing space after the version", get_line(&format!("GET {PODS} HTTP/1.1 ")));
    c.bad("tab between method and target", get_line(&format!("GET\t{PODS} HTTP/1.1")));
    c.ok("lower-case method", get_line(&format!("get {PODS} HTTP/1.1")), vec![meant("get", PODS, b"")]);
    c.bad("method with a parenthesis", get_line(&format!("G(T {PODS} HTTP/1.1")));
    c.bad("control byte in the target", get_line(&format!("GET {PODS}\x01 HTTP/1.1")));
    c.bad("invalid percent escape in the target", get_line(&format!("GET {PODS}%zz HTTP/1.1")));
    c.ok("encoded slash in the target", get_line("GET /api%2Fv1 HTTP/1.1"), vec![meant("GET", "/api/v1", b"")]);
    c.ok("raw UTF-8 in the target", get_line(&format!("GET {PODS}/\u{e9} HTTP/1.1")), vec![meant("GET", &format!("{PODS}/\u{e9}"), b"")]);
    c.ok("HTTP/1.0", format!("GET {PODS} HTTP/1.0\r\n\r\n").into_bytes(), vec![meant("GET", PODS, b"")]);
    c.ok("HTTP/1.0 with Host and keep-alive", msg(&format!("GET {PODS} HTTP/1.0"), &["Host: kubernetes", "Connection: keep-alive"], b""), vec![meant("GET", PODS, b"")]);
    c.ok("HTTP/1.2", get_line(&format!("GET {PODS} HTTP/1.2")), vec![meant("GET", PODS, b"")]);
    for (name, version) in
        [("HTTP/1.10", "HTTP/1.10"), ("lower-case http/1.1", "http/1.1"), ("HTTP/1", "HTTP/1"), ("HTTP/0.9 version", "HTTP/0.9"), ("HTTP/2.0 request line", "HTTP/2.0")]
    {
        c.bad(name, get_line(&format!("GET {PODS} {version}")));
    }
    c.bad("HTTP/0.9 request without a version", format!("GET {PODS}\r\n\r\n").into_bytes());
    c.bad("HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec());
    c.ok("empty line before the request", cat(&[b"\r\n", &get(&[])]), vec![meant("GET", PODS, b"")]);
    c.ok("missing Host", msg(&format!("GET {PODS} HTTP/1.1"), &["Accept: */*"], b""), vec![meant("GET", PODS, b"")]);
    c.ok("two Host headers", get(&["Host: evil.example"]), vec![meant("GET", PODS, b"")]);
    c.ok("Host with a space", msg(&format!("GET {PODS} HTTP/1.1"), &["Host: kube rnetes"], b""), vec![meant("GET", PODS, b"")]);
    c.ok("empty Host", msg(&format!("GET {PODS} HTTP/1.1"), &["Host:"], b""), vec![meant("GET", PODS, b"")]);

    // Expect and Upgrade.
    c.ok("Expect: 100-continue with a Content-Length body", post_cl(&["Expect: 100-continue"], HELLO), vec![meant("POST", CM, HELLO)]);
    c.ok("Expect: 100-continue with a chunked body", post_te(&["Expect: 100-continue"], &chunked(HELLO)), vec![meant("POST", CM, HELLO)]);
    c.ok("Expect: 100-continue on GET", get(&["Expect: 100-continue"]), vec![meant("GET", PODS, b"")]);
    c.ok("Expect with another value", post_cl(&["Expect: something-else"], HELLO), vec![meant("POST", CM, HELLO)]);
    c.ok("Upgrade without Connection", get(&["Upgrade: websocket"]), vec![meant("GET", PODS, b"")]);
    c.ok("h2c upgrade", get(&["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"]), vec![meant("GET", PODS, b"")]);
    c.ok("Upgrade websocket on POST with a body", post_cl(&["Connection: Upgrade", "Upgrade: websocket"], HELLO), vec![meant("POST", CM, HELLO)]);

    // Several requests on one connection.
    let with_id = get(&["Impersonate-User: mallory"]);
    let with_groups = get(&["Impersonate-Group: system:masters", "X-Remote-User: mallory"]);
    c.ok("two pipelined GETs", cat(&[&get(&[]), &get(&[])]), vec![meant("GET", PODS, b""); 2]);
    c.ok("pipelined GET carrying Impersonate-User", cat(&[&get(&[]), &with_id]), vec![meant("GET", PODS, b""); 2]).smuggle();
    c.ok("pipelined GET carrying Impersonate-Group and X-Remote-User", cat(&[&get(&[]), &with_groups]), vec![meant("GET", PODS, b""); 2]).smuggle();
    c.ok("POST, then a GET carrying identity headers", cat(&[&post_cl(&[], HELLO), &with_id]), vec![meant("POST", CM, HELLO), meant("GET", PODS, b"")]).smuggle();
    c.ok("chunked POST, then a GET carrying identity headers", cat(&[&post_te(&[], &chunked(HELLO)), &with_groups]), vec![meant("POST", CM, HELLO), meant("GET", PODS, b"")])
        .smuggle();
    c.ok("Content-Length 0, then the smuggled request", cat(&[&post_raw(&["Content-Length: 0"], b""), &s]), vec![meant("POST", CM, b""), meant("POST", SSR, SSR_BODY)]).smuggle();
    c.ok("GET, then a Connection: content-length smuggle", cat(&[&get(&[]), &post_cl(&["Connection: content-length"], &s)]), vec![meant("GET", PODS, b""), meant("POST", CM, &s)])
        .smuggle();
    c.push("Connection: close, then a second request", cat(&[&get(&["Connection: close"]), &with_id]), vec![meant("GET", PODS, b"")], Tail::Ignored).smuggle();
    c.push(
        "HTTP/1.0 without keep-alive, then a second request",
        cat(&[format!("GET {PODS} HTTP/1.0\r\nHost: kubernetes\r\n\r\n").as_bytes(), &with_id]),
        vec![meant("GET", PODS, b"")],
        Tail::Ignored,
    )
    .smuggle();
    c.ok("POST, an empty line, then a GET", cat(&[&post_cl(&[], HELLO), b"\r\n", &get(&[])]), vec![meant("POST", CM, HELLO), meant("GET", PODS, b"")]);
    c.ok(
        "three pipelined requests with three framings",
        cat(&[&post_cl(&[], HELLO), &post_te(&[], &chunked(b"world")), &get(&[])]),
        vec![meant("POST", CM, HELLO), meant("POST", CM, b"world"), meant("GET", PODS, b"")],
    );
    c.push("body, then bytes that are not a request", cat(&[&post_cl(&[], HELLO), b"XYZ\r\n\r\n"]), vec![meant("POST", CM, HELLO)], Tail::Invalid(None));
    c.push(
        "GET, then a request with bare LF endings",
        cat(&[&get(&[]), format!("{g}\nHost: kubernetes\nImpersonate-User: mallory\n\n").as_bytes()]),
        vec![meant("GET", PODS, b"")],
        Tail::Invalid(Some(400)),
    )
    .smuggle();
    c.push("GET, then a request with a space before a colon", cat(&[&get(&[]), &get(&["Impersonate-User : mallory"])]), vec![meant("GET", PODS, b"")], Tail::Invalid(Some(400)))
        .smuggle();

    // Bodies that hold requests, and bodies on methods that rarely have them.
    c.ok("body holds a full request as mallory", post_cl(&[], &s), vec![meant("POST", CM, &s)]).smuggle();
    c.ok("GET whose body holds a full request", msg(&format!("GET {PODS} HTTP/1.1"), &["Host: kubernetes", &cl], &s), vec![meant("GET", PODS, &s)]).smuggle();
    c.ok("GET with a Content-Length body", msg(&format!("GET {PODS} HTTP/1.1"), &["Host: kubernetes", "Content-Length: 5"], HELLO), vec![meant("GET", PODS, HELLO)]);
    c.ok("HEAD with a Content-Length body", msg(&format!("HEAD {PODS} HTTP/1.1"), &["Host: kubernetes", "Content-Length: 5"], HELLO), vec![meant("HEAD", PODS, HELLO)]);
    c.ok(
        "DELETE with a Content-Length body",
        msg(&format!("DELETE {CM}/x HTTP/1.1"), &["Host: kubernetes", "Content-Length: 5"], HELLO),
        vec![meant("DELETE", &format!("{CM}/x"), HELLO)],
    );
    c.ok(
        "OPTIONS with a chunked body",
        msg(&format!("OPTIONS {PODS} HTTP/1.1"), &["Host: kubernetes", "Transfer-Encoding: chunked"], &chunked(HELLO)),
        vec![meant("OPTIONS", PODS, HELLO)],
    );

    // Limits (each head sent in one write).
    c.ok("head of 64 KiB minus one byte", padded_head(PROXY_MAX_HEAD - 1, 1), vec![meant("GET", PODS, b"")]);
    c.ok("head of exactly 64 KiB", padded_head(PROXY_MAX_HEAD, 1), vec![meant("GET", PODS, b"")]);
    c.bad_with("head of 64 KiB plus one byte", padded_head(PROXY_MAX_HEAD + 1, 1), 431);
    c.bad_with("head of 64 KiB plus one byte over 100 lines", padded_head(PROXY_MAX_HEAD + 1, 100), 431);
    c.bad_with("head of 100 KiB", padded_head(100 * 1024, 1), 431);
    // get() writes Host and Accept; the rest are padding lines.
    let many = |n: usize| -> Vec<u8> {
        let ls: Vec<String> = (0..n - 2).map(|i| format!("X-H-{i:03}: v")).collect();
        get(&ls.iter().map(String::as_str).collect::<Vec<_>>())
    };
    c.ok(&format!("{PROXY_MAX_HEADERS} header lines"), many(PROXY_MAX_HEADERS), vec![meant("GET", PODS, b"")]);
    c.bad(&format!("{} header lines", PROXY_MAX_HEADERS + 1), many(PROXY_MAX_HEADERS + 1));
    c.0
}

// ---- running a shape ----

struct Answer {
    status: u16,
    body: String,
}

struct Run {
    answers: Vec<Answer>,
    seen: Vec<Seen>,
    /// The proxy closed its upstream connections once the client had gone.
    quiet: bool,
}

/// Reads answers (skipping interim 1xx) until `want` arrived, the connection
/// closed, or `deadline`. `methods` are the requests' methods (HEAD has no body).
fn read_answers(c: &mut RawClient, methods: &[&str], want: usize, deadline: Instant) -> (Vec<Answer>, bool) {
    let mut buf: Vec<u8> = Vec::new();
    let mut answers = Vec::new();
    let mut closed = false;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        while let Ok(Some((head, n))) = http::parse_response(&buf) {
            if head.status < 200 && head.status != 101 {
                buf.drain(..n);
                continue;
            }
            let method = methods.get(answers.len()).copied().unwrap_or("GET");
            let body = match http::response_body(method, &head) {
                Ok(BodyLength::Empty) => Some((Vec::new(), n)),
                Ok(BodyLength::Length(len)) => usize::try_from(len).ok().filter(|l| buf.len() - n >= *l).map(|l| (buf[n..n + l].to_vec(), n + l)),
                Ok(BodyLength::Chunked) => {
                    let mut dec = http::ChunkedDecoder::default();
                    let mut out = Vec::new();
                    match dec.decode(&buf[n..], &mut out) {
                        Ok(used) if dec.is_done() => Some((out, n + used)),
                        _ => None,
                    }
                }
                Ok(BodyLength::UntilClose) | Err(_) => closed.then(|| (buf[n..].to_vec(), buf.len())),
            };
            let Some((body, used)) = body else { break };
            answers.push(Answer { status: head.status, body: String::from_utf8_lossy(&body).into_owned() });
            buf.drain(..used);
        }
        if answers.len() >= want || closed {
            return (answers, closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (answers, closed);
        }
        let _ = c.stream.sock.set_read_timeout(Some(left));
        match c.stream.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return (answers, closed),
            Err(_) => closed = true,
        }
    }
}

/// Ends the client's side and waits (bounded) for the proxy to end its own.
fn close_client(c: &mut RawClient) {
    c.stream.conn.send_close_notify();
    let _ = c.stream.flush();
    let deadline = Instant::now() + QUIESCE_WAIT;
    let mut sink = vec![0u8; READ_CHUNK];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = c.stream.sock.set_read_timeout(Some(left));
        match c.stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn run(front: &FrontProxy, demo: &Demo, capture: &Capture, who: &Who, shape: &Shape) -> Run {
    let before = capture.count();
    let mut c = RawClient::connect(&front.addr, &demo.path(who.kubeconfig), true);
    let _ = c.send(&shape.bytes); // a refusal may close the connection mid-write
    let methods: Vec<&str> = shape.meant.iter().map(|m| m.method.as_str()).collect();
    let want = (shape.meant.len() + usize::from(matches!(shape.tail, Tail::Invalid(_)))).max(1);
    let (answers, closed) = read_answers(&mut c, &methods, want, Instant::now() + RESPONSE_WAIT);
    if !closed {
        close_client(&mut c);
    }
    drop(c);
    let quiet = capture.wait_idle(QUIESCE_WAIT);
    let mut seen = capture.requests();
    Run { answers, seen: seen.split_off(before.min(seen.len())), quiet }
}

// ---- judging a shape ----

enum Verdict {
    /// Refused with `status` after `after` requests were delivered exactly.
    Refused {
        after: usize,
        status: u16,
    },
    Exact,
    Failed(String),
}

/// A refusal: the proxy's own 4xx, or 501/505 for a coding or version it does not serve.
fn is_refusal(status: u16) -> bool {
    (400..500).contains(&status) || status == 501 || status == 505
}

/// A name that reads as an identity field once `_` is taken for `-` (as CGI-style
/// and some proxies do), though Go keeps it apart.
fn identity_lookalike(key: &str) -> bool {
    let n = key.trim().to_ascii_lowercase().replace('_', "-");
    key.contains('_') && (n.starts_with("impersonate-") || n.starts_with("x-remote-") || n == "authorization")
}

/// What is wrong with the identity a request carries upstream.
fn identity_problems(s: &Seen, who: &Who, own_authorization: &str) -> Vec<String> {
    let mut out = Vec::new();
    let text = |v: &[&[u8]]| v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>();
    let users = text(&s.values("Impersonate-User"));
    if users != [who.user] {
        out.push(format!("Impersonate-User {users:?}, expected [{:?}]", who.user));
    }
    let mut groups = text(&s.values("Impersonate-Group"));
    groups.sort();
    let mut want: Vec<String> = who.groups.iter().map(|g| g.to_string()).collect();
    want.sort();
    if groups != want {
        out.push(format!("Impersonate-Group {groups:?}, expected {want:?}"));
    }
    let auth = text(&s.values("Authorization"));
    if !(auth.is_empty() || auth == [own_authorization]) {
        out.push(format!("Authorization {auth:?} is not the proxy's own"));
    }
    for (k, v) in &s.headers {
        let v = String::from_utf8_lossy(v);
        if k.starts_with("Impersonate-") && k != "Impersonate-User" && k != "Impersonate-Group" {
            out.push(format!("{k}: {v} reached upstream"));
        }
        if k.starts_with("X-Remote-") {
            out.push(format!("{k}: {v} reached upstream"));
        }
        if identity_lookalike(k) {
            out.push(format!("{k}: {v} reached upstream (an identity field with '_' for '-'; Go keeps it apart, CGI-style layers do not)"));
        }
    }
    for (k, v) in &s.trailers {
        let n = k.to_ascii_lowercase().replace('_', "-");
        if n.starts_with("impersonate-") || n.starts_with("x-remote-") || n == "authorization" {
            out.push(format!("trailer {k}: {} reached upstream", String::from_utf8_lossy(v)));
        }
    }
    out
}

fn judge(shape: &Shape, run: &Run, who: &Who, own_authorization: &str) -> Verdict {
    // A request whose body the upstream saw cut short by the proxy closing the
    // connection (the client's body turned out malformed midway) never reaches a
    // handler whole; what counts is that the proxy refused the client.
    let seen: Vec<Seen> = run.seen.iter().filter(|s| !s.cut_short).cloned().collect();
    let seen = &seen;
    if let Some(bad) = seen.iter().find(|s| s.error.is_some()) {
        return Verdict::Failed(format!("the upstream could not parse what the proxy sent: {}", bad.error.as_deref().unwrap_or("")));
    }
    if seen.len() > shape.meant.len() {
        return Verdict::Failed(format!("the upstream saw {} requests, the client meant {}", seen.len(), shape.meant.len()));
    }
    for (i, (s, m)) in seen.iter().zip(&shape.meant).enumerate() {
        let mut problems = Vec::new();
        if s.method != m.method {
            problems.push(format!("method {:?}, meant {:?}", s.method, m.method));
        }
        if s.path != m.path {
            problems.push(format!("path {:?}, meant {:?}", s.path, m.path));
        }
        if s.body != m.body {
            problems.push(format!("body {}, meant {}", escape(&s.body, 120), escape(&m.body, 120)));
        }
        problems.extend(identity_problems(s, who, own_authorization));
        if !problems.is_empty() {
            return Verdict::Failed(format!("request {}: {}", i + 1, problems.join("; ")));
        }
    }
    if !run.quiet {
        return Verdict::Failed(format!("the proxy kept an upstream connection open {QUIESCE_WAIT:?} after its client had gone"));
    }
    let k = seen.len();
    if k == shape.meant.len() && !matches!(shape.tail, Tail::Invalid(_)) {
        return Verdict::Exact;
    }
    match run.answers.get(k) {
        Some(a) if is_refusal(a.status) => match shape.tail {
            Tail::Invalid(Some(want)) if k == shape.meant.len() && a.status != want => {
                Verdict::Failed(format!("refused with {} where {want} is required: {}", a.status, a.body.chars().take(200).collect::<String>()))
            }
            _ => Verdict::Refused { after: k, status: a.status },
        },
        Some(a) => Verdict::Failed(format!(
            "answer {} was {} (not a refusal) while the upstream saw {k} of {} meant requests{}",
            k + 1,
            a.status,
            shape.meant.len(),
            if matches!(shape.tail, Tail::Invalid(_)) { " and an invalid rest" } else { "" }
        )),
        None => Verdict::Failed(format!(
            "no answer {} within {RESPONSE_WAIT:?} (answers: {:?}) while the upstream saw {k} of {} meant requests",
            k + 1,
            run.answers.iter().map(|a| a.status).collect::<Vec<_>>(),
            shape.meant.len()
        )),
    }
}

#[test]
fn every_framing_shape_is_refused_or_forwarded_exactly() {
    let demo = Demo::start();
    let capture = Capture::start();
    let front = FrontProxy::start(&demo, &capture);
    let shapes = corpus();
    assert!(shapes.len() >= 150, "the corpus has only {} shapes", shapes.len());

    // The set-up itself must work before any verdict means anything.
    let baseline = run(&front, &demo, &capture, &ALICE, &shapes[0]);
    assert!(
        matches!(judge(&shapes[0], &baseline, &ALICE, &front.authorization), Verdict::Exact),
        "a plain GET does not reach the capture upstream as alice: answers {:?}, upstream saw {:#?}\n--- front-proxy.log\n{}",
        baseline.answers.iter().map(|a| (a.status, a.body.clone())).collect::<Vec<_>>(),
        baseline.seen,
        std::fs::read_to_string(demo.path("front-proxy.log")).unwrap_or_default()
    );

    let runs: Vec<(&Who, &Shape)> = shapes.iter().map(|s| (&ALICE, s)).chain(shapes.iter().filter(|s| s.smuggle).map(|s| (&BOB, s))).collect();
    let (mut refused, mut exact, mut failed) = (0, 0, Vec::new());
    for (who, shape) in &runs {
        let r = run(&front, &demo, &capture, who, shape);
        let verdict = judge(shape, &r, who, &front.authorization);
        let label = match &verdict {
            Verdict::Refused { after: 0, status } => {
                refused += 1;
                format!("refused {status}")
            }
            Verdict::Refused { after, status } => {
                refused += 1;
                format!("{after} forwarded, then refused {status}")
            }
            Verdict::Exact => {
                exact += 1;
                "forwarded exactly".to_string()
            }
            Verdict::Failed(why) => {
                failed.push((who.name, shape.name.clone(), why.clone(), r.answers.iter().map(|a| a.status).collect::<Vec<_>>(), r.seen.clone()));
                "FAILED".to_string()
            }
        };
        println!("{:<5} {:<26} {}", who.name, label, shape.name);
    }
    println!("({} shapes as alice, {} smuggling shapes again as bob)", shapes.len(), runs.len() - shapes.len());
    println!("framing corpus: {} shapes, {refused} refused, {exact} forwarded exactly, {} failed", runs.len(), failed.len());
    for (who, name, why, answers, seen) in &failed {
        println!("FAILED [{who}] {name}: {why}\n    client got {answers:?}; upstream saw {} request(s):", seen.len());
        for s in seen {
            println!("      {}", s.describe());
        }
    }
    assert!(failed.is_empty(), "{} of {} framing shapes failed (listed above)", failed.len(), runs.len());
}

// ---- the capture parser follows Go's rules ----

/// Parses one complete request with the Go rules: (method, path, headers, body) or
/// the status Go answers.
fn go_parse(raw: &[u8]) -> Result<(go::Head, Vec<u8>, go::Fields), u16> {
    let (head, n) = go::parse_head(raw).map_err(|e| e.status)?.expect("a complete head");
    let (body, trailers, _) = go::parse_body(&raw[n..], head.framing).map_err(|e| e.status)?.expect("a complete body");
    Ok((head, body, trailers))
}

#[test]
fn capture_parser_follows_go_rules() {
    let ok: &[(&str, &[u8], &str, &[u8])] = &[
        ("bare LF line endings are accepted (textproto ReadLine)", b"GET /a HTTP/1.1\nHost: x\n\n", "/a", b""),
        ("duplicate equal Content-Lengths collapse (fixLength)", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length:  5\r\n\r\nhello", "/", b"hello"),
        ("leading zeros in Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0005\r\n\r\nhello", "/", b"hello"),
        ("chunked wins over Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "/", b"hello"),
        ("Transfer-Encoding ignored on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\n", "/", b"5\r\n"),
        ("padded CHUNKED", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  CHUNKED \r\n\r\n5;a=\"b;c\"\r\nhello\r\n0\r\n\r\n", "/", b"hello"),
        ("chunk size of 16 digits", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000005\r\nhello\r\n0\r\n\r\n", "/", b"hello"),
        ("GET with a body", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", "/", b"hi"),
        ("encoded slash decoded in the path", b"GET /a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n", "/a/b", b""),
        ("absolute form", b"GET http://h:1/x?y HTTP/1.1\r\nHost: z\r\n\r\n", "/x", b""),
        ("asterisk", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", "*", b""),
        ("HTTP/1.0 needs no Host", b"GET /a HTTP/1.0\r\n\r\n", "/a", b""),
        ("HTTP/1.2 is HTTP/1", b"GET /a HTTP/1.2\r\nHost: x\r\n\r\n", "/a", b""),
        ("HTTP/2 preface as a request", b"PRI * HTTP/2.0\r\n\r\n", "*", b""),
    ];
    for (name, raw, path, body) in ok {
        match go_parse(raw) {
            Ok((head, b, _)) => {
                assert_eq!(head.path, *path, "{name}");
                assert_eq!(b, *body, "{name}");
            }
            Err(status) => panic!("{name}: Go would answer {status}"),
        }
    }
    let bad: &[(&str, &[u8], u16)] = &[
        ("first header line indented", b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400),
        ("space before the colon (server.go invalid header name)", b"GET / HTTP/1.1\r\nHost: x\r\nA : b\r\n\r\n", 400),
        ("different Content-Lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        ("signed Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
        ("Content-Length 2^63", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n", 400),
        ("empty Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400),
        ("chunked with an invalid Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n", 400),
        ("chunked, chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501),
        ("two Transfer-Encoding lines", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
        ("17 hex digits", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n", 400),
        ("whitespace before a chunk extension", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a\r\nhello\r\n0\r\n\r\n", 400),
        ("bare LF after a chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
        ("CR inside a chunk line", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
        ("missing CRLF after chunk data", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n", 400),
        ("bad trailer key declared", b"POST / HTTP/1.1\r\nHost: x\r\nTrailer: Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nA: b\0c\r\n\r\n", 400),
        ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", 400),
        ("non-ASCII name", b"GET / HTTP/1.1\r\nHost: x\r\n\xc3\x8f: b\r\n\r\n", 400),
        ("no colon", b"GET / HTTP/1.1\r\nHost: x\r\nfoo\r\n\r\n", 400),
        ("non-token method", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("double space", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n", 505),
        ("HTTP/2.0 GET", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("missing Host on HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n", 400),
        ("invalid Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("invalid escape", b"GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("control byte in the target", b"GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("relative target", b"GET a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ];
    for (name, raw, status) in bad {
        match go_parse(raw) {
            Ok((head, body, _)) => panic!("{name}: Go would refuse with {status}, parsed {} {} body {:?}", head.method, head.path, body),
            Err(got) => assert_eq!(got, *status, "{name}"),
        }
    }

    // Obs-fold is joined with one space; names are canonicalised; underscores stay.
    let (head, _, _) = go_parse(b"GET / HTTP/1.1\r\nHost: x\r\nx-a: b\r\n  c\r\n\td\r\nimpersonate_user: m\r\n\r\n").unwrap();
    assert_eq!(head.headers[1], ("X-A".to_string(), b"b c d".to_vec()));
    assert_eq!(head.headers[2].0, "Impersonate_user");
    // Trailers are kept apart from the header.
    let (head, body, trailers) = go_parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nImpersonate-User: mallory\r\n\r\n").unwrap();
    assert_eq!((body.as_slice(), trailers[0].0.as_str()), (&b"hello"[..], "Impersonate-User"));
    assert!(head.headers.iter().all(|(k, _)| k != "Impersonate-User"));
    // Connection semantics (shouldClose) and Expect.
    let close = |raw: &[u8]| go_parse(raw).unwrap().0.close;
    assert!(close(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n"));
    assert!(!close(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n"));
    assert!(close(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(!close(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    let (head, _, _) = go_parse(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(head.expect_continue && !head.expect_other);
    let (head, _, _) = go_parse(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: later\r\n\r\n").unwrap();
    assert!(head.expect_other);
    // After a POST, up to four leading CR/LF bytes are skipped (numLeadingCRorLF).
    assert_eq!(go::leading_crlf(b"\r\n\r\nGET", true, false), Some(4));
    assert_eq!(go::leading_crlf(b"\r\nGET", false, false), Some(0));
    assert_eq!(go::leading_crlf(b"\r\n", true, false), None);

    // Every strict prefix of a valid pipelined stream is "need more", never an error,
    // and the whole stream parses to the same requests however it is split.
    let stream = cat(&[b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n", b"GET /b HTTP/1.1\nHost: x\nX: y\n z\n\n"]);
    let first_len = stream.len() - b"GET /b HTTP/1.1\nHost: x\nX: y\n z\n\n".len();
    for cut in 0..first_len {
        let prefix = &stream[..cut];
        match go::parse_head(prefix) {
            Ok(None) => {}
            Ok(Some((head, n))) => assert_eq!(go::parse_body(&prefix[n..], head.framing), Ok(None), "cut at {cut}"),
            Err(e) => panic!("cut at {cut}: {e:?}"),
        }
    }
    let (head, n) = go::parse_head(&stream).unwrap().unwrap();
    let (body, _, m) = go::parse_body(&stream[n..], head.framing).unwrap().unwrap();
    assert_eq!((body.as_slice(), n + m), (&b"hello"[..], first_len));
    let (second, _) = go::parse_head(&stream[first_len..]).unwrap().unwrap();
    assert_eq!((second.path.as_str(), second.headers[1].1.as_slice()), ("/b", &b"y z"[..]));
}
