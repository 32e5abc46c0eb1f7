//! The crate's error type above the `wire` layer: a message with a context chain,
//! printed outermost first (`conn=17: reading upgrade response: expected ..., found ...`).

use std::fmt;
use std::io;

#[derive(Debug)]
pub struct Error {
    message: String,
    /// Kept so callers can tell a timeout or a reset from other failures.
    io_kind: Option<io::ErrorKind>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error { message: message.into(), io_kind: None }
    }

    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.io_kind
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self.io_kind, Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    fn wrap(self, context: impl fmt::Display) -> Self {
        Error { message: format!("{context}: {}", self.message), io_kind: self.io_kind }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        let kind = e.kind();
        let message = match kind {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
            _ => e.to_string(),
        };
        Error { message, io_kind: Some(kind) }
    }
}

macro_rules! from_display {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::new(e.to_string()) }
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
