//! Sockets: TLS set-up, split connections, body readers, tunnels, the accept loop,
//! termination signals, and certificate generation.

pub mod body;
pub mod conn;
pub mod pki;
pub mod random;
pub mod server;
pub mod signal;
pub mod sync;
pub mod tls;
pub mod tunnel;
