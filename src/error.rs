//! The crate's error type above the `wire` layer: a message with a context chain,
//! printed outermost first (`conn=17: reading upgrade response: expected ..., found ...`).
//!
//! The message already says everything, so context adds text, not links: `source()`
//! is the error the chain started from (an `io::Error`, a `wire` error), for callers
//! that ask what it was rather than read what it says.

use std::fmt;
use std::io;

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub struct Error {
    message: String,
    /// Kept so callers can tell a timeout or a reset from other failures.
    io_kind: Option<io::ErrorKind>,
    source: Option<Source>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error { message: message.into(), io_kind: None, source: None }
    }

    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.io_kind
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self.io_kind, Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    /// This error with `context` in front, as [`Context::context`] adds it.
    pub fn wrap(self, context: impl fmt::Display) -> Self {
        Error { message: format!("{context}: {}", self.message), ..self }
    }

    fn caused_by(message: String, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error { message, io_kind: None, source: Some(Box::new(source)) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        let kind = e.kind();
        // A read timeout prints as EAGAIN ("Resource temporarily unavailable"); the
        // context says what was waited for.
        let message = match kind {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
            _ => e.to_string(),
        };
        Error { io_kind: Some(kind), ..Error::caused_by(message, e) }
    }
}

macro_rules! from_display {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::caused_by(e.to_string(), e) }
        }
    )*};
}
from_display!(
    serde_json::Error,
    std::env::VarError,
    rustls::Error,
    crate::wire::http::HeadError,
    crate::wire::http::FramingError,
    crate::wire::http::ChunkError,
    crate::wire::spdy::SpdyError,
    crate::wire::ws::WsError
);

/// Adds context to any error that converts into [`Error`].
pub trait Context<T> {
    fn context(self, context: impl fmt::Display) -> Result<T>;
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().wrap(context))
    }
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().wrap(context()))
    }
}

/// Returns early with an [`Error`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::new(format!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn context_adds_text_and_keeps_the_source() {
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "client did not open the expected streams");
        let e = Err::<(), _>(timeout).context("opening streams").context("conn=1").unwrap_err();
        assert_eq!(e.to_string(), "conn=1: opening streams: timed out", "the message is as it was");
        assert!(e.is_timeout());
        let source = e.source().and_then(|s| s.downcast_ref::<io::Error>()).unwrap();
        assert_eq!(source.to_string(), "client did not open the expected streams");

        let spdy = Err::<(), _>(crate::wire::spdy::SpdyError::HeaderBlockTooLarge).context("reading frames").unwrap_err();
        assert!(spdy.source().unwrap().is::<crate::wire::spdy::SpdyError>());
        assert!(Error::new("x").source().is_none());
    }
}
