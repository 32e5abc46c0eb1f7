//! Copies an upgraded connection (SPDY, WebSocket, port-forward) in both directions,
//! passing each half-close on, until both directions have ended.

use std::io::{self, Read, Write};
use std::thread;
use std::time::Duration;

use crate::net::conn::{Input, WriteHalf};

/// After the server side has finished, how long the client may keep its side open.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(30);
const COPY_CHUNK: usize = 32 * 1024;

/// Bytes moved each way by [`tunnel`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

/// Where one direction of a tunnel writes: a connection's write half, or a wrapper
/// that also looks at the bytes (a recording tap).
pub trait Sink: Send {
    fn send(&mut self, data: &[u8]) -> io::Result<()>;
    /// The source ended: pass the half-close on.
    fn close(&mut self);
}

impl Sink for WriteHalf {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data)
    }
    fn close(&mut self) {
        let _ = self.shutdown_write();
    }
}

/// Copies `from` to `to` until end of stream, then half-closes `to`.
fn pump(from: &mut Input, to: &mut dyn Sink) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            to.close();
            return Ok(total);
        }
        to.send(&buf[..n])?;
        total += n as u64;
    }
}

/// Runs both directions; returns when both have ended. An error in one direction
/// shuts both connections down so the other direction ends too.
pub fn tunnel(name: &str, client: (Input, impl Sink + 'static), server: (Input, impl Sink)) -> io::Result<Totals> {
    let (mut client_in, mut client_out) = client;
    let (mut server_in, mut server_out) = server;
    let client_sock = client_in.half.shutdown_handle()?;
    let server_sock = server_in.half.shutdown_handle()?;
    let client_sock2 = client_in.half.shutdown_handle()?;
    let server_sock2 = server_in.half.shutdown_handle()?;
    client_in.half.set_timeout(None)?;
    server_in.half.set_timeout(None)?;
    let down = thread::Builder::new().name(format!("{name}-down")).spawn(move || {
        let result = pump(&mut server_in, &mut client_out);
        match &result {
            Ok(_) => {
                let _ = client_sock2.set_read_timeout(Some(HALF_CLOSE_GRACE));
            }
            Err(_) => {
                let _ = client_sock2.shutdown(std::net::Shutdown::Both);
                let _ = server_sock2.shutdown(std::net::Shutdown::Both);
            }
        }
        result
    })?;
    let up = pump(&mut client_in, &mut server_out);
    if up.is_err() {
        let _ = client_sock.shutdown(std::net::Shutdown::Both);
        let _ = server_sock.shutdown(std::net::Shutdown::Both);
    }
    let down = down.join().unwrap_or_else(|_| Err(io::Error::other("copy thread panicked")));
    Ok(Totals { client_to_server: up.unwrap_or(0), server_to_client: down? })
}
