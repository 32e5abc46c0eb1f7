//! Sockets: TLS set-up, split connections, body readers, tunnels, the accept loop,
//! termination signals, certificate generation, bounded configuration reads, values
//! rebuilt when their files are replaced (`reload`), and the one request-head loop
//! (`head`) and WebSocket frame reader (`websocket`) every server and client here uses.

pub mod body;
pub mod conn;
pub mod file;
pub mod hangup;
pub mod head;
pub mod pki;
pub mod random;
pub mod reload;
pub mod server;
pub mod signal;
pub mod sync;
#[cfg(test)]
pub mod testutil;
pub mod tls;
pub mod tunnel;
pub mod websocket;

/// This machine's host name (a pod's name in Kubernetes), or `localhost`.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        "localhost".to_string()
    } else {
        name.to_string()
    }
}
