//! The accept loop shared by every server: one named thread per connection, two
//! capped pools of connections, and a graceful stop (stop accepting, let open ones
//! finish).
//!
//! Every connection starts in the unauthenticated pool (bounded in all and per source
//! address) and moves to the authenticated pool once its handler has seen a valid
//! identity, so peers that never authenticate can never take the capacity of those
//! who did.

use std::collections::HashMap;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::Mutex;
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

/// How many connections a listener keeps open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections whose handler has seen a valid identity.
    pub authenticated: usize,
    /// Connections that have not (yet): TLS in progress, or no identity so far.
    pub unauthenticated: usize,
    /// Unauthenticated connections from one source address.
    pub per_source: usize,
}

impl Limits {
    /// The flags every server shares, read into limits; zero is refused.
    pub fn from_args(args: &crate::args::Args) -> crate::error::Result<Limits> {
        let positive = |name: &str| -> crate::error::Result<usize> {
            let n: usize = args.parsed(name)?;
            if n == 0 {
                crate::bail!("--{name}: expected at least 1, found 0");
            }
            Ok(n)
        };
        Ok(Limits { authenticated: positive("max-connections")?, unauthenticated: positive("max-unauthenticated")?, per_source: positive("max-unauthenticated-per-source")? })
    }

    /// One cap for everything (equipment that does not tell callers apart).
    pub fn flat(n: usize) -> Limits {
        Limits { authenticated: n, unauthenticated: n, per_source: n }
    }
}

/// The flags of [`Limits::from_args`], for a subcommand's flag list.
pub const LIMIT_FLAGS: [crate::args::Flag; 3] = [
    crate::args::Flag { name: "max-connections", default: Some("1024"), help: "open connections of authenticated callers at most" },
    crate::args::Flag { name: "max-unauthenticated", default: Some("256"), help: "open connections that have not shown a valid identity (yet) at most" },
    crate::args::Flag { name: "max-unauthenticated-per-source", default: Some("32"), help: "of those, from one source address at most" },
];

/// Shared between a server's accept loop, its connections and whoever stops it.
#[derive(Default)]
pub struct Lifecycle {
    stopping: AtomicBool,
    /// Every open connection, in either pool.
    active: AtomicUsize,
    authenticated: AtomicUsize,
    /// Unauthenticated connections by source address.
    unauthenticated: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
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

    /// Connections closed at accept because a pool was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes an unauthenticated slot for `source`, if the pool has one.
    fn admit(&self, source: IpAddr, limits: Limits) -> bool {
        let mut pool = crate::net::sync::lock(&self.unauthenticated);
        let total: usize = pool.values().sum();
        let here = pool.get(&source).copied().unwrap_or(0);
        if total >= limits.unauthenticated || here >= limits.per_source {
            return false;
        }
        *pool.entry(source).or_default() += 1;
        true
    }

    fn release_unauthenticated(&self, source: IpAddr) {
        let mut pool = crate::net::sync::lock(&self.unauthenticated);
        if let Some(n) = pool.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                pool.remove(&source);
            }
        }
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

/// One connection's place in the pools; gives it back when the connection ends.
pub struct Admission {
    life: Arc<Lifecycle>,
    source: IpAddr,
    max_authenticated: usize,
    authenticated: AtomicBool,
}

impl Admission {
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// Moves the connection to the authenticated pool (once; later calls are free).
    /// `false` when that pool is full: the handler refuses and closes.
    pub fn authenticated(&self) -> bool {
        if self.authenticated.load(Ordering::Relaxed) {
            return true;
        }
        let taken = self.life.authenticated.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max_authenticated).then_some(n + 1));
        if taken.is_err() {
            return false;
        }
        self.authenticated.store(true, Ordering::Relaxed);
        self.life.release_unauthenticated(self.source);
        true
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if *self.authenticated.get_mut() {
            self.life.authenticated.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.life.release_unauthenticated(self.source);
        }
        self.life.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts until [`Lifecycle::stop`], running `handle(stream, conn_id, admission)` on
/// a thread named `{name}-{conn_id}` per connection. When the unauthenticated pool
/// (or this source's share of it) is full, new connections are closed at once.
pub fn serve<F>(listener: TcpListener, name: &str, limits: Limits, life: Arc<Lifecycle>, handle: F)
where
    F: Fn(TcpStream, u64, &Admission) + Send + Sync + 'static,
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
        if !life.admit(peer.ip(), limits) {
            // Logged once per power of two, so a flood cannot flood the log too.
            let n = life.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("connection refused server={name} peer={peer} reason=unauthenticated-pool-full refused_total={n} limits={limits:?}");
            }
            continue;
        }
        let id = life.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        life.active.fetch_add(1, Ordering::SeqCst);
        let admission = Admission { life: life.clone(), source: peer.ip(), max_authenticated: limits.authenticated, authenticated: AtomicBool::new(false) };
        let handle = handle.clone();
        let spawned = thread::Builder::new().name(format!("{name}-{id}")).spawn(move || {
            handle(stream, id, &admission);
        });
        if let Err(e) = spawned {
            log::error!("cannot start connection thread server={name} error={e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(life: &Arc<Lifecycle>, source: [u8; 4], limits: Limits) -> Option<Admission> {
        let source = IpAddr::from(source);
        life.admit(source, limits).then(|| {
            life.active.fetch_add(1, Ordering::SeqCst);
            Admission { life: life.clone(), source, max_authenticated: limits.authenticated, authenticated: AtomicBool::new(false) }
        })
    }

    #[test]
    fn anonymous_connections_cannot_take_the_callers_pool() {
        let limits = Limits { authenticated: 2, unauthenticated: 3, per_source: 2 };
        let life = Arc::new(Lifecycle::default());
        let a1 = admission(&life, [10, 0, 0, 1], limits).expect("first from a");
        let _a2 = admission(&life, [10, 0, 0, 1], limits).expect("second from a");
        assert!(admission(&life, [10, 0, 0, 1], limits).is_none(), "a's share is full");
        let b1 = admission(&life, [10, 0, 0, 2], limits).expect("b has room");
        assert!(admission(&life, [10, 0, 0, 3], limits).is_none(), "the pool is full");
        // Authenticating frees the anonymous slot for someone else.
        assert!(a1.authenticated() && a1.authenticated(), "idempotent");
        assert!(b1.authenticated());
        let c = admission(&life, [10, 0, 0, 3], limits).expect("room again");
        assert!(!c.authenticated(), "the callers' pool is full");
        drop(a1);
        assert!(c.authenticated(), "a slot came back");
        drop((b1, c));
        assert_eq!(life.authenticated.load(Ordering::SeqCst), 0);
        assert_eq!(life.active(), 1, "only a2 is open");
    }
}
