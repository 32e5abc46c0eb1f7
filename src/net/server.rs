//! The accept loop shared by every server: one named thread per connection, two
//! capped pools of connections, and a graceful stop (stop accepting, let open ones
//! finish).
//!
//! Every connection starts in the unauthenticated pool (bounded in all and per source
//! address; when full, the oldest there makes room) and moves to the authenticated
//! pool once its handler has seen a valid identity, so peers that never authenticate
//! can never take the capacity of those who did, nor keep a newcomer out.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// A loopback port that is free now, for a child process to listen on. It is taken
/// below the kernel's ephemeral range (`ip_local_port_range`), so no outgoing
/// connection can occupy it before the child binds, as one can a port from `bind(0)`.
/// Each process takes its ports in turn from a block of its own (chosen by its pid),
/// so two processes picking at the same moment (two demos starting side by side) do
/// not hand out the same port before either child has bound it.
pub fn free_loopback_port() -> std::io::Result<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok()).unwrap_or(32768);
    let (from, to) = (u64::from(low / 2), u64::from(low));
    if from >= 1024 {
        let blocks = (to - from) / PORTS_PER_PROCESS;
        let block = from + u64::from(std::process::id()) % blocks * PORTS_PER_PROCESS;
        for _ in 0..PORTS_PER_PROCESS {
            let port = (block + NEXT.fetch_add(1, Ordering::Relaxed) % PORTS_PER_PROCESS) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The ports one process hands out in turn before it reuses its block.
const PORTS_PER_PROCESS: u64 = 64;

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
    unauthenticated: Mutex<Pending>,
    evicted: AtomicU64,
    next_id: AtomicU64,
    listener_fd: AtomicU64,
}

/// The unauthenticated pool. Ids rise with time, so the smallest is the oldest.
#[derive(Default)]
struct Pending {
    by_id: BTreeMap<u64, (IpAddr, TcpStream)>,
    per_source: HashMap<IpAddr, usize>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<TcpStream> {
        let (source, sock) = self.by_id.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
        Some(sock)
    }
}

impl Lifecycle {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Unauthenticated connections closed to make room for newer ones.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Puts connection `id` in the unauthenticated pool. When the pool, or `source`'s
    /// share of it, is full, the oldest connection there is shut down to make room:
    /// a newcomer always gets its few milliseconds to authenticate, and a flood can
    /// only churn through the pool, never keep a caller out of it. Returns whether
    /// one was evicted.
    fn admit(&self, id: u64, source: IpAddr, sock: TcpStream, limits: Limits) -> bool {
        let mut pool = crate::net::sync::lock(&self.unauthenticated);
        let victim = if pool.per_source.get(&source).copied().unwrap_or(0) >= limits.per_source {
            pool.by_id.iter().find(|(_, (s, _))| *s == source).map(|(id, _)| *id)
        } else if pool.by_id.len() >= limits.unauthenticated {
            pool.by_id.keys().next().copied()
        } else {
            None
        };
        let evicted = victim.and_then(|v| pool.remove(v));
        pool.by_id.insert(id, (source, sock));
        *pool.per_source.entry(source).or_default() += 1;
        drop(pool);
        if let Some(old) = &evicted {
            // Wakes the evicted connection's thread, which then ends and releases.
            let _ = old.shutdown(std::net::Shutdown::Both);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        evicted.is_some()
    }

    fn release_unauthenticated(&self, id: u64) {
        crate::net::sync::lock(&self.unauthenticated).remove(id);
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
    id: u64,
    max_authenticated: usize,
    authenticated: AtomicBool,
}

impl Admission {
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// Moves the connection to the authenticated pool (once; later calls are free),
    /// out of reach of eviction. `false` when that pool is full: the handler refuses
    /// and closes.
    pub fn authenticated(&self) -> bool {
        if self.authenticated.load(Ordering::Relaxed) {
            return true;
        }
        let taken = self.life.authenticated.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max_authenticated).then_some(n + 1));
        if taken.is_err() {
            return false;
        }
        self.authenticated.store(true, Ordering::Relaxed);
        self.life.release_unauthenticated(self.id);
        true
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if *self.authenticated.get_mut() {
            self.life.authenticated.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.life.release_unauthenticated(self.id);
        }
        self.life.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts until [`Lifecycle::stop`], running `handle(stream, conn_id, admission)` on
/// a thread named `{name}-{conn_id}` per connection.
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
        let Ok(handle_sock) = stream.try_clone() else { continue };
        let id = life.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        life.active.fetch_add(1, Ordering::SeqCst);
        if life.admit(id, peer.ip(), handle_sock, limits) {
            // Logged once per power of two, so a flood cannot flood the log too.
            let n = life.evicted();
            if n.is_power_of_two() {
                log::warn!("unauthenticated connection evicted server={name} peer={peer} reason=pool-full evicted_total={n} limits={limits:?}");
            }
        }
        let admission = Admission { life: life.clone(), id, max_authenticated: limits.authenticated, authenticated: AtomicBool::new(false) };
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

    struct Pair {
        admission: Admission,
        /// The server side of the connection, to see whether it was shut down.
        server: TcpStream,
        _client: TcpStream,
    }

    fn connect(life: &Arc<Lifecycle>, listener: &TcpListener, source: [u8; 4], limits: Limits) -> Pair {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let id = life.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        life.active.fetch_add(1, Ordering::SeqCst);
        life.admit(id, IpAddr::from(source), server.try_clone().unwrap(), limits);
        Pair { admission: Admission { life: life.clone(), id, max_authenticated: limits.authenticated, authenticated: AtomicBool::new(false) }, server, _client: client }
    }

    fn shut(p: &Pair) -> bool {
        use std::io::Read;
        p.server.set_nonblocking(true).unwrap();
        matches!((&p.server).read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn anonymous_connections_churn_and_never_take_the_callers_pool() {
        let limits = Limits { authenticated: 2, unauthenticated: 3, per_source: 2 };
        let life = Arc::new(Lifecycle::default());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a1 = connect(&life, &l, [10, 0, 0, 1], limits);
        let a2 = connect(&life, &l, [10, 0, 0, 1], limits);
        let a3 = connect(&life, &l, [10, 0, 0, 1], limits);
        assert!(shut(&a1) && !shut(&a2) && !shut(&a3), "a's share is full: its oldest makes room");
        let b1 = connect(&life, &l, [10, 0, 0, 2], limits);
        let c1 = connect(&life, &l, [10, 0, 0, 3], limits);
        assert!(shut(&a2) && !shut(&b1) && !shut(&c1), "the pool is full: the oldest makes room");
        // Authenticated connections leave the pool and cannot be evicted.
        assert!(b1.admission.authenticated() && b1.admission.authenticated(), "idempotent");
        assert!(c1.admission.authenticated());
        let d1 = connect(&life, &l, [10, 0, 0, 4], limits);
        let _d2 = connect(&life, &l, [10, 0, 0, 5], limits);
        assert!(!shut(&b1) && !shut(&c1) && !shut(&d1) && !shut(&a3));
        assert!(!d1.admission.authenticated(), "the callers' pool is full");
        drop(b1);
        assert!(d1.admission.authenticated(), "a slot came back");
        drop((a1, a2, c1, d1));
        assert_eq!(life.authenticated.load(Ordering::SeqCst), 0);
        assert_eq!(life.active(), 2, "a3 and d2 are open");
        assert_eq!(life.evicted(), 2);
    }
}
