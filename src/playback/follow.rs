//! `kubetape play --recorder https://HOST:PORT --id ID --ca CA --cert CERT --key KEY`:
//! a recording fetched from a recorder's API over mutual TLS (a `--readers`
//! certificate) and printed as `play --file` prints it. With `--follow` it asks for
//! `?follow=true` and prints a running session's output as it becomes durable,
//! returning when the session ends.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use super::render_line;
use crate::args::Args;
use crate::error::{Context, Error, Result};
use crate::kube::client::ApiServer;
use crate::net::body::{self, BodyReader};
use crate::net::conn::Input;
use crate::net::tls;
use crate::record::protocol::valid_id;
use crate::wire::http::{self, RequestHead};

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

pub fn run(args: &Args, out: &mut impl Write) -> Result<()> {
    if args.opt("file").is_some() || args.opt("raw").is_some() {
        crate::bail!("--recorder: --file and --raw go without it");
    }
    let url = args.required("recorder")?;
    let id = args.required("id")?;
    if !valid_id(&id) {
        crate::bail!("--id {id:?}: expected a session id ([A-Za-z0-9-], at most 64 characters)");
    }
    let ca = tls::read_file(&args.required_path("ca")?).context("--ca")?;
    let chain = tls::certs_from_pem(&tls::read_file(&args.required_path("cert")?)?, "--cert")?;
    let key = tls::key_from_pem(&tls::read_file(&args.required_path("key")?)?, "--key")?;
    let recorder = ApiServer::with_certificate(&url, &ca, (chain, key)).context("--recorder")?;
    let path = format!("/v1/recordings/{id}/cast{}", if args.bool("follow")? { "?follow=true" } else { "" });

    let conn = recorder.connect(RESPONSE_TIMEOUT).context("--recorder")?;
    let mut head = RequestHead::new("GET", &path);
    head.headers.push("Host", recorder.host_header());
    head.headers.push("User-Agent", concat!("kubetape/", env!("CARGO_PKG_VERSION")));
    head.headers.push("Connection", "close");
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
        let why = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["message"].as_str().map(String::from)).unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        crate::bail!("GET {path}: {} {why}", resp.status);
    }
    input.half.set_timeout(None)?;
    render_stream(&mut BodyReader::new(&mut input, framing), out).with_context(|| format!("GET {path}"))
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
