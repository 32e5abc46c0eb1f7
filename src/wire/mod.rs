//! I/O-free parsers and encoders: HTTP/1.1 heads and bodies, SPDY/3.1 frames and
//! header blocks, WebSocket frames, the Kubernetes channel protocol and `Status`
//! bodies, asciicast lines, DER subjects.

pub mod asciicast;
pub mod base64;
pub mod channel;
pub mod der;
pub mod http;
pub mod spdy;
pub mod status;
pub mod time;
pub mod ws;

#[cfg(test)]
pub(crate) mod testutil;
