//! Sockets: TLS set-up, split connections, body readers, tunnels, the accept loop,
//! termination signals, certificate generation, bounded configuration reads, and the
//! one request-head loop (`head`) and WebSocket frame reader (`websocket`) every server
//! and client here uses.

pub mod body;
pub mod conn;
pub mod file;
pub mod hangup;
pub mod head;
pub mod pki;
pub mod random;
pub mod server;
pub mod signal;
pub mod sync;
#[cfg(test)]
pub mod testutil;
pub mod tls;
pub mod tunnel;
pub mod websocket;
