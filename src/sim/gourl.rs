//! How Go reads a request target, so the simulator routes what kube-apiserver and the
//! kubelet would route. No I/O.
//!
//! - Path: `net/http` parses the target with `url.ParseRequestURI` (net/url `parse`
//!   with `viaRequest`): everything after the first `?` is the raw query, the rest is
//!   percent-decoded by `unescape(p, encodePath)`. A `%` not followed by two hex
//!   digits, or a raw control byte, fails the parse and the server answers
//!   `400 Bad Request`. `+` stays `+`, and `%2F` becomes `/` in `URL.Path`, which is
//!   what go-restful's `CurlyRouter` tokenizes (`tokenizePath(req.URL.Path)`) and what
//!   `RequestInfoFactory` splits: `pods/web-0%2Fexec` routes as `pods/web-0/exec`.
//! - Query: kube-apiserver reads `req.URL.Query()`, which is `url.ParseQuery` with its
//!   error ignored: pairs split on `&`; a pair containing `;` is dropped (Go 1.17+);
//!   a pair whose name or value has a bad `%` escape is dropped; `+` is a space.
//! - Node proxy: `nodes/NAME/proxy/{path:*}` joins its path onto the kubelet's URL with
//!   `JoinPreservingTrailingSlash`, i.e. `path.Join`, which drops empty and `.`
//!   segments and resolves `..` ([`clean_segments`]); the id splits as
//!   `net.SplitSchemeNamePort` does ([`split_scheme_name_port`]).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// A byte below 0x20 or 0x7f in the raw target (`stringContainsCTLByte`).
    Control { offset: usize, byte: u8 },
    /// A `%` without two hex digits after it (Go's `EscapeError`).
    BadEscape { offset: usize, found: String },
    /// Neither `/...` nor `*` (Go: "invalid URI for request").
    NotAbsolutePath,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Control { offset, byte } => write!(f, "invalid control character 0x{byte:02x} in URL at offset {offset}"),
            UrlError::BadEscape { offset, found } => write!(f, "invalid URL escape {found:?} at offset {offset}"),
            UrlError::NotAbsolutePath => f.write_str("invalid URI for request"),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Go's `unescape`: `query` selects `encodeQueryComponent` (`+` is a space) over
/// `encodePath`. Decoded bytes that are not UTF-8 become U+FFFD; no route matches them.
fn unescape(s: &str, query: bool) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    let found = String::from_utf8_lossy(&b[i..(i + 3).min(b.len())]).into_owned();
                    return Err(UrlError::BadEscape { offset: i, found });
                }
            },
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `url.ParseRequestURI(target).Path` for an origin-form target (the raw query, after
/// the first `?`, is not part of it).
pub fn request_path(target: &str) -> Result<String, UrlError> {
    if let Some(offset) = target.bytes().position(|c| c < 0x20 || c == 0x7f) {
        return Err(UrlError::Control { offset, byte: target.as_bytes()[offset] });
    }
    let raw = target.split_once('?').map_or(target, |(p, _)| p);
    if raw == "*" {
        return Ok(raw.to_string());
    }
    if !raw.starts_with('/') {
        return Err(UrlError::NotAbsolutePath);
    }
    unescape(raw, false)
}

/// `url.ParseQuery(raw)` with its error ignored, as `req.URL.Query()` is: the pairs it
/// keeps, decoded, in order.
pub fn query_values(raw: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for pair in raw.split('&') {
        if pair.contains(';') || pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if let (Ok(k), Ok(v)) = (unescape(k, true), unescape(v, true)) {
            out.push((k, v));
        }
    }
    out
}

/// The segments of `path.Join("/", segs...)`: empty and `.` segments dropped, `..`
/// removing the one before it (never climbing above the root).
pub fn clean_segments<'a>(segs: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in segs {
        match *s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

/// `net.SplitSchemeNamePort`: `name`, `name:port` or `scheme:name:port` (scheme `http`
/// or `https`, or empty); `None` when the id is not one of these.
pub fn split_scheme_name_port(id: &str) -> Option<&str> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name) = match parts.as_slice() {
        [name] | [name, _] => ("", *name),
        [scheme, name, _] => (*scheme, *name),
        _ => return None,
    };
    (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_as_go_parse_request_uri() {
        let ok: &[(&str, &str)] = &[
            ("/api/v1/namespaces/default/pods/web-0/exec?command=sh", "/api/v1/namespaces/default/pods/web-0/exec"),
            ("/api/v1/namespaces/default/pods/web-0/%65xec", "/api/v1/namespaces/default/pods/web-0/exec"),
            ("/api/v1/namespaces/default/pods/web-0%2Fexec", "/api/v1/namespaces/default/pods/web-0/exec"),
            ("/api/v1/namespaces/default/pods/web-0%2fexec", "/api/v1/namespaces/default/pods/web-0/exec"),
            ("/a/exec%2F", "/a/exec/"),
            ("/a/%252F", "/a/%2F"),
            ("/a+b", "/a+b"),
            ("/a%3Fb?c", "/a?b"),
            ("/a%00b", "/a\0b"),
            ("//x/./y/../z", "//x/./y/../z"),
            ("*", "*"),
        ];
        for (target, want) in ok {
            assert_eq!(request_path(target).as_deref(), Ok(*want), "{target}");
        }
        let bad: &[(&str, UrlError)] = &[
            ("/a/%zzexec", UrlError::BadEscape { offset: 3, found: "%zz".into() }),
            ("/a/exec%2", UrlError::BadEscape { offset: 7, found: "%2".into() }),
            ("/a/exec%", UrlError::BadEscape { offset: 7, found: "%".into() }),
            ("/a\x01", UrlError::Control { offset: 2, byte: 1 }),
            ("api/v1", UrlError::NotAbsolutePath),
        ];
        for (target, want) in bad {
            assert_eq!(request_path(target).as_ref(), Err(want), "{target:?}");
        }
        // A bad escape in the query does not fail the path.
        assert_eq!(request_path("/a?x=%zz").as_deref(), Ok("/a"));
    }

    #[test]
    fn queries_parse_as_go_parse_query_ignoring_its_error() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("command=sh&command=-c&command=echo%20hi", &[("command", "sh"), ("command", "-c"), ("command", "echo hi")]),
            ("command=rm&command=%zz&command=-rf", &[("command", "rm"), ("command", "-rf")]),
            ("command=a;b&command=c", &[("command", "c")]),
            ("command=echo+a%2Bb", &[("command", "echo a+b")]),
            ("%63ommand=x&&flag", &[("command", "x"), ("flag", "")]),
            ("k%zz=v&k=v%", &[]),
            ("a=b=c", &[("a", "b=c")]),
        ];
        for (raw, want) in cases {
            let got = query_values(raw);
            let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(got, *want, "{raw}");
        }
    }

    #[test]
    fn node_proxy_paths_clean_as_path_join() {
        assert_eq!(clean_segments(&["exec", ".", "", "default", "x", "..", "web-0"]), ["exec", "default", "web-0"]);
        assert_eq!(clean_segments(&["..", "..", "exec"]), ["exec"]);
        for (id, want) in [("n1", Some("n1")), ("n1:10250", Some("n1")), ("https:n1:10250", Some("n1")), ("ftp:n1:1", None), (":1", None), ("a:b:c:d", None)] {
            assert_eq!(split_scheme_name_port(id), want, "{id}");
        }
    }
}
