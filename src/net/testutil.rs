//! Loopback connections for the unit tests of what reads from a socket.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::net::conn::{Conn, Input};

/// A loopback connection: the test's end, and the accepted end as a `Conn`.
pub fn conn_pair() -> (TcpStream, Conn) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let test_side = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (test_side, Conn::plain(listener.accept().unwrap().0).unwrap())
}

/// An `Input` reading `pieces`, then a close. Each piece is sent once the reader has
/// taken everything before it off the socket, so each arrives in a read of its own.
pub fn input_fed(pieces: Vec<Vec<u8>>) -> Input {
    let (mut client, conn) = conn_pair();
    let unread = conn.read.shutdown_handle().unwrap();
    std::thread::spawn(move || {
        for p in pieces.into_iter().filter(|p| !p.is_empty()) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while queued(&unread) > 0 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            client.write_all(&p).unwrap();
        }
    });
    Input::new(conn.read)
}

/// Bytes received on `sock` and not yet read.
fn queued(sock: &TcpStream) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer given.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        n
    } else {
        0
    }
}

/// `bytes` cut at `a` and `b` (clamped), in order.
pub fn cut(bytes: &[u8], a: usize, b: usize) -> Vec<Vec<u8>> {
    let (a, b) = (a.min(bytes.len()), b.min(bytes.len()).max(a.min(bytes.len())));
    vec![bytes[..a].to_vec(), bytes[a..b].to_vec(), bytes[b..].to_vec()]
}
