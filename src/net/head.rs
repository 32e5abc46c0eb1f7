//! Request heads off a server connection: the one loop every server (proxy, recorder,
//! simulator, metrics) reads requests with, with one set of limits and one answer to a
//! head that cannot be read. A connection that goes quiet or closes between requests
//! is not an error; anything else is a [`BadHead`], which the server answers and then
//! closes, because the stream is out of step.

use std::fmt;
use std::time::Duration;

use crate::net::conn::Input;
use crate::wire::http::{self, RequestHead};

/// How much of a head a server reads, and how long it waits for it.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Larger heads are refused.
    pub max_len: usize,
    /// Wait for a head's first byte (an idle keep-alive connection).
    pub idle: Duration,
    /// Once a head has started it must be complete within this (slow-loris bound).
    pub whole: Duration,
}

/// Why a head could not be read; the server answers `status()` and closes.
#[derive(Debug, PartialEq, Eq)]
pub enum BadHead {
    TooLarge,
    /// The head started but was not complete within [`HeadLimits::whole`].
    Timeout,
    Malformed(String),
}

impl BadHead {
    pub fn status(&self) -> u16 {
        match self {
            BadHead::TooLarge => 431,
            BadHead::Timeout => 408,
            BadHead::Malformed(_) => 400,
        }
    }
}

impl fmt::Display for BadHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadHead::TooLarge => write!(f, "request head too large"),
            BadHead::Timeout => write!(f, "timed out waiting for the request head"),
            BadHead::Malformed(why) => write!(f, "{why}"),
        }
    }
}

impl Input {
    /// The next request head. `Ok(None)` when the client closed the connection or
    /// went quiet between requests, with nothing unread.
    pub fn next_request(&mut self, limits: &HeadLimits) -> Result<Option<RequestHead>, BadHead> {
        match self.read_head(http::parse_request, limits.max_len, limits.idle, limits.whole) {
            Ok(head) => Ok(head),
            Err(e) if self.buffered().is_empty() && (e.is_timeout() || e.io_kind().is_some()) => Ok(None),
            Err(_) if self.buffered().len() > limits.max_len => Err(BadHead::TooLarge),
            Err(e) if e.is_timeout() => Err(BadHead::Timeout),
            Err(e) => Err(BadHead::Malformed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::{conn_pair, cut, input_fed};
    use std::io::Write;

    const LIMITS: HeadLimits = HeadLimits { max_len: 256, idle: Duration::from_secs(5), whole: Duration::from_secs(5) };

    const TWO: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Long: abc\r\n\r\nPOST /b?q=1 HTTP/1.1\r\nHost: y\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn heads_split_at_every_byte_boundary_parse_the_same() {
        for at in 0..=TWO.len() {
            for second in [at, at + 7] {
                let mut input = input_fed(cut(TWO, at, second));
                let a = input.next_request(&LIMITS).unwrap().unwrap();
                let b = input.next_request(&LIMITS).unwrap().unwrap();
                assert_eq!((a.method.as_str(), a.target.as_str(), a.headers.get_str("x-long")), ("GET", "/a", Some("abc")), "cut at {at}");
                assert_eq!((b.method.as_str(), b.target.as_str(), b.headers.get_str("host")), ("POST", "/b?q=1", Some("y")), "cut at {at}");
                assert_eq!(input.next_request(&LIMITS), Ok(None), "clean close after two heads, cut at {at}");
            }
        }
    }

    /// Bytes a client sends, and what the server makes of them (`Some(())`: a head).
    type Case<'a> = (&'a [u8], Result<Option<()>, BadHead>);

    #[test]
    fn bad_heads_get_one_answer_each() {
        let too_large = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 300], b"\r\n\r\n"].concat();
        let cases: [Case; 4] = [
            (b"", Ok(None)),
            (b"GET / HTTP/1.1\r\nHost: x\r\n", Err(BadHead::Malformed("connection closed in the middle of a head".into()))),
            (b"GET / HTTP/1.1\nHost: x\n\n", Err(BadHead::Malformed("expected CRLF at byte 14, found a bare line end".into()))),
            (&too_large, Err(BadHead::TooLarge)),
        ];
        for (bytes, want) in cases {
            let got = input_fed(vec![bytes.to_vec()]).next_request(&LIMITS).map(|h| h.map(|_| ()));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!([BadHead::TooLarge.status(), BadHead::Timeout.status(), BadHead::Malformed(String::new()).status()], [431, 408, 400]);
    }

    #[test]
    fn a_started_head_times_out_and_a_quiet_connection_does_not() {
        let quick = HeadLimits { idle: Duration::from_millis(50), whole: Duration::from_millis(50), ..LIMITS };
        let (mut client, conn) = conn_pair();
        let mut input = Input::new(conn.read);
        assert_eq!(input.next_request(&quick), Ok(None), "quiet between requests");
        client.write_all(b"GET / HT").unwrap();
        assert_eq!(input.next_request(&quick), Err(BadHead::Timeout));
    }
}
