//! Sockets: TLS set-up, split connections, body readers, tunnels, the accept loop,
//! termination signals, certificate generation, and bounded configuration reads.

pub mod body;
pub mod conn;
pub mod file;
pub mod pki;
pub mod random;
pub mod server;
pub mod signal;
pub mod sync;
pub mod tls;
pub mod tunnel;
