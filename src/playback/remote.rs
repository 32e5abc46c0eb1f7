//! A recorder's API as `kubetape play` and `kubetape ls` read it: `--recorder
//! https://HOST:PORT --ca CA`, and either a reader's certificate (`--cert`, `--key`) or
//! a viewer's Kubernetes token (`--token-file`; the recorder's `--viewers-from-cluster`
//! then decides by RBAC what it may read). `play --follow` asks for `?follow=true` and
//! prints a running session's output as it becomes durable, returning when it ends.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use super::render_line;
use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::kube::client::ApiServer;
use crate::net::body::{self, BodyReader};
use crate::net::conn::Input;
use crate::net::tls;
use crate::record::protocol::SessionMeta;
use crate::wire::http::{self, BodyLength, RequestHead};

/// Connecting and the response head; the body of a followed session may then be
/// quiet for as long as the session is.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A refusal is a Status of a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// One event line is at most a frame's worth of output; a longer one is refused
/// rather than buffered without bound.
const MAX_LINE: usize = 64 * 1024 * 1024;
/// Bytes read from the connection at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The largest cast or list fetched whole (a longer session is played with --follow).
const MAX_FETCHED: usize = 1024 * 1024 * 1024;

/// The flags that name a recorder and how to sign in to it.
pub const FLAGS: [Flag; 5] = [
    Flag { name: "recorder", default: None, help: "a recorder's URL (https://HOST:PORT): read its API instead of local files" },
    Flag { name: "ca", default: None, help: "with --recorder: the CA that signed its serving certificate (PEM)" },
    Flag { name: "cert", default: None, help: "with --recorder: a reader's client certificate (PEM)" },
    Flag { name: "key", default: None, help: "with --recorder: that certificate's key (PEM)" },
    Flag { name: "token-file", default: None, help: "with --recorder, instead of --cert: a file holding a viewer's Kubernetes token (kubectl create token)" },
];

pub struct Recorder {
    api: ApiServer,
}

impl Recorder {
    /// The recorder `--recorder` names, if it does.
    pub fn from_args(args: &Args) -> Result<Option<Recorder>> {
        let Some(url) = args.opt("recorder") else {
            for f in ["ca", "cert", "key", "token-file"] {
                if args.opt(f).is_some() {
                    crate::bail!("--{f}: only used with --recorder");
                }
            }
            return Ok(None);
        };
        let ca = tls::read_file(&args.required_path("ca")?).context("--ca")?;
        let api = match (args.path("cert"), args.path("key"), args.path("token-file")) {
            (Some(cert), Some(key), None) => {
                let chain = tls::certs_from_pem(&tls::read_file(&cert)?, "--cert")?;
                let key = tls::key_from_pem(&tls::read_file(&key)?, "--key")?;
                ApiServer::with_certificate(&url, &ca, (chain, key))
            }
            (None, None, Some(token)) => {
                std::fs::metadata(&token).with_context(|| format!("--token-file {}", token.display()))?;
                ApiServer::with_token_file(&url, &ca, token)
            }
            (_, _, Some(_)) => crate::bail!("--token-file: give it or --cert and --key, not both"),
            _ => crate::bail!("--recorder: sign in with --cert and --key (a reader certificate) or --token-file (a viewer's token)"),
        };
        Ok(Some(Recorder { api: api.context("--recorder")? }))
    }

    /// Sends `GET path`; the connection positioned at a 200 response's body.
    fn get(&self, path: &str) -> Result<(Input, BodyLength)> {
        let conn = self.api.connect(RESPONSE_TIMEOUT).context("--recorder")?;
        let mut head = RequestHead::new("GET", path);
        head.headers.push("Host", self.api.host_header());
        head.headers.push("User-Agent", concat!("kubetape/", env!("CARGO_PKG_VERSION")));
        head.headers.push("Connection", "close");
        if let Some(auth) = self.api.authorization().context("--token-file")? {
            head.headers.push("Authorization", auth);
        }
        let mut w = conn.write;
        w.write_all(&head.encode()).with_context(|| format!("GET {path}"))?;
        let mut input = Input::new(conn.read);
        let resp = input
            .read_head(http::parse_response, MAX_RESPONSE_HEAD, RESPONSE_TIMEOUT, RESPONSE_TIMEOUT)
            .with_context(|| format!("GET {path}"))?
            .ok_or_else(|| Error::new(format!("GET {path}: the recorder closed the connection before answering")))?;
        let framing = http::response_body("GET", &resp)?;
        if resp.status != 200 {
            let body = body::read_to_vec(&mut input, framing, MAX_ERROR_BODY).unwrap_or_default();
            let why =
                serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["message"].as_str().map(String::from)).unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            crate::bail!("GET {path}: {} {why}", resp.status);
        }
        Ok((input, framing))
    }

    /// The whole body of `GET path`.
    pub fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let (mut input, framing) = self.get(path)?;
        body::read_to_vec(&mut input, framing, MAX_FETCHED).with_context(|| format!("GET {path}"))
    }

    pub fn json(&self, path: &str) -> Result<Value> {
        serde_json::from_slice(&self.bytes(path)?).with_context(|| format!("GET {path}: not JSON"))
    }

    /// A recording's sidecar and its cast as it is now.
    pub fn recording(&self, id: &str) -> Result<(SessionMeta, Vec<u8>)> {
        let meta = serde_json::from_value(self.json(&format!("/v1/recordings/{id}"))?).with_context(|| format!("recording {id}: not a recording's metadata"))?;
        Ok((meta, self.bytes(&format!("/v1/recordings/{id}/cast"))?))
    }

    /// Prints a running session's output as it is recorded, until it ends.
    pub fn follow(&self, id: &str, out: &mut impl Write) -> Result<()> {
        let path = format!("/v1/recordings/{id}/cast?follow=true");
        let (mut input, framing) = self.get(&path)?;
        input.half.set_timeout(None)?;
        render_stream(&mut BodyReader::new(&mut input, framing), out).with_context(|| format!("GET {path}"))
    }

    /// Every recording the list query `query` keeps, newest first, page by page.
    pub fn list(&self, query: &str) -> Result<Vec<SessionMeta>> {
        let mut all: Vec<SessionMeta> = Vec::new();
        loop {
            let offset = format!("offset={}", all.len());
            let page = self.json(&format!("/v1/recordings?{}", if query.is_empty() { offset } else { format!("{query}&{offset}") }))?;
            let items: Vec<SessionMeta> = serde_json::from_value(page["items"].clone()).context("GET /v1/recordings: not a list of recordings")?;
            let total = page["total"].as_u64().unwrap_or(0) as usize;
            let last = items.is_empty();
            all.extend(items);
            if last || all.len() >= total {
                return Ok(all);
            }
        }
    }
}

/// A query string of the pairs given a value, each value percent-encoded whole.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let encode = |v: &str| -> String { v.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect() };
    pairs.iter().filter_map(|(k, v)| Some(format!("{k}={}", encode((*v)?)))).collect::<Vec<_>>().join("&")
}

/// Prints the event lines of a cast as they arrive (the first line is its header),
/// flushing after every read, so a prompt without a newline shows too.
fn render_stream(cast: &mut impl Read, out: &mut impl Write) -> Result<()> {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut line_no = 0usize;
    loop {
        let n = cast.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let scanned = pending.len();
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        let mut from = scanned;
        while let Some(i) = pending[from..].iter().position(|b| *b == b'\n') {
            let end = from + i;
            line_no += 1;
            render_numbered(line_no, &pending[start..end], out)?;
            start = end + 1;
            from = start;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE {
            crate::bail!("line {} is longer than {MAX_LINE} bytes", line_no + 1);
        }
        out.flush()?;
    }
    // A finished recording's last line may lack its newline, as `play --file` allows.
    if !pending.is_empty() {
        render_numbered(line_no + 1, &pending, out)?;
        out.flush()?;
    }
    Ok(())
}

/// Line `line_no` (from 1) of a cast: the header is not printed.
fn render_numbered(line_no: usize, line: &[u8], out: &mut impl Write) -> Result<()> {
    if line_no == 1 {
        return Ok(());
    }
    let text = std::str::from_utf8(line).map_err(|e| Error::new(format!("line {line_no}: {e}")))?;
    render_line(out, text).with_context(|| format!("line {line_no}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields its bytes a few at a time, as a slow connection does.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn query_values_are_encoded_whole() {
        assert_eq!(query(&[("user", Some("a&b=c d")), ("pod", None), ("namespace", Some("ns-1"))]), "user=a%26b%3Dc%20d&namespace=ns-1");
        assert_eq!(query(&[("user", None)]), "");
    }

    #[test]
    fn a_streamed_cast_prints_as_a_whole_file_does_however_it_is_cut() {
        let cast = "{\"version\":2}\n[0.1,\"o\",\"$ \"]\n[0.2,\"e\",\"oops\\n\"]\n[0.3,\"i\",\"x\"]\n[0.4,\"m\",\"exit:3\"]\n[0.5,\"o\",\"héllo\"]";
        let mut whole = Vec::new();
        for line in cast.lines().skip(1) {
            render_line(&mut whole, line).unwrap();
        }
        assert_eq!(String::from_utf8(whole.clone()).unwrap(), "$ oops\n\r\n[kubetape: exit:3]\nhéllo");
        for step in [1, 2, 7, 1000] {
            let mut got = Vec::new();
            render_stream(&mut Trickle(cast.as_bytes(), step), &mut got).unwrap();
            assert_eq!(got, whole, "read {step} bytes at a time");
        }
        let err = render_stream(&mut Trickle(b"{}\n[0.1,\"o\",\"ok\"]\nnot json\n", 5), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().starts_with("line 3: "), "{err}");
    }
}
