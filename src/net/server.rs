//! The accept loop shared by every server: one named thread per connection, a cap on
//! open connections, and a graceful stop (stop accepting, let open ones finish).

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A loopback port that is free now, for a child process to listen on. It is taken
/// below the kernel's ephemeral range (`ip_local_port_range`), so no outgoing
/// connection can occupy it before the child binds, as one can a port from `bind(0)`.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low / 2, low);
    if from >= 1024 {
        for _ in 0..64 {
            let mut b = [0u8; 2];
            crate::net::random::fill(&mut b);
            let port = from + u16::from_le_bytes(b) % (to - from);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Shared between a server's accept loop, its connections and whoever stops it.
#[derive(Default)]
pub struct Lifecycle {
    stopping: AtomicBool,
    active: AtomicUsize,
    next_id: AtomicU64,
    listener_fd: AtomicU64,
}

impl Lifecycle {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting; connections already open carry on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let fd = self.listener_fd.load(Ordering::SeqCst);
        if fd != 0 {
            // Wakes the thread blocked in accept(2); the listener is not used again.
            unsafe { libc::shutdown(fd as i32, libc::SHUT_RDWR) };
        }
    }

    /// Waits until no connection is open or `grace` has passed; returns how many remain.
    pub fn drain(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        while self.active() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        self.active()
    }
}

/// Decrements the open-connection count when a connection thread ends.
struct Active(Arc<Lifecycle>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts until [`Lifecycle::stop`], running `handle(stream, conn_id)` on a thread
/// named `{name}-{conn_id}` per connection. Over `max_conns`, new connections are
/// closed at once and logged.
pub fn serve<F>(listener: TcpListener, name: &str, max_conns: usize, life: Arc<Lifecycle>, handle: F)
where
    F: Fn(TcpStream, u64) + Send + Sync + 'static,
{
    life.listener_fd.store(listener.as_raw_fd() as u64, Ordering::SeqCst);
    let handle = Arc::new(handle);
    loop {
        let accepted = listener.accept();
        if life.is_stopping() {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                log::warn!("accept failed server={name} error={e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if life.active() >= max_conns {
            log::warn!("connection refused server={name} peer={peer} reason=limit max_conns={max_conns}");
            continue;
        }
        let id = life.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        life.active.fetch_add(1, Ordering::SeqCst);
        let guard = Active(life.clone());
        let handle = handle.clone();
        let spawned = thread::Builder::new().name(format!("{name}-{id}")).spawn(move || {
            let _guard = guard;
            handle(stream, id);
        });
        if let Err(e) = spawned {
            log::error!("cannot start connection thread server={name} error={e}");
        }
    }
}
