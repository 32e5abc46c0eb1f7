//! The simulated container runtime: each container is a host process whose output is
//! kept as its log and fanned out to attached clients and `logs -f` readers.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::net::sync::lock;
use crate::sim::process::{self, Mounts, Spawned};
use crate::wire::channel::{self, TerminalSize};

/// Bytes of log kept per container; older output is dropped first.
const MAX_LOG: usize = 4 * 1024 * 1024;
/// Output chunks queued per attached reader before it is dropped as too slow.
const SUBSCRIBER_QUEUE: usize = 256;

#[derive(Clone, Debug)]
pub enum Output {
    Data(u8, Vec<u8>),
    Exited,
}

#[derive(Default)]
struct State {
    log: Vec<u8>,
    subscribers: HashMap<u64, Sender<Output>>,
    next_id: u64,
    exit: Option<i32>,
}

pub struct Container {
    pub stdin_once: bool,
    pid: u32,
    stdin: Mutex<Option<File>>,
    pty: Option<File>,
    state: Mutex<State>,
}

impl Container {
    /// Starts `argv` seeing `mounts`; `on_exit` runs once with the exit code after all
    /// output is read.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        argv: &[String],
        dir: &Path,
        env: &[(String, String)],
        mounts: &Mounts,
        tty: bool,
        stdin: bool,
        stdin_once: bool,
        on_exit: impl FnOnce(i32) + Send + 'static,
    ) -> std::io::Result<Arc<Container>> {
        let Spawned { mut child, stdin: input, stdout, stderr, pty } = process::spawn_in(argv, dir, env, tty.then_some(process::DEFAULT_SIZE), stdin, mounts)?;
        let c = Arc::new(Container { stdin_once, pid: child.id(), stdin: Mutex::new(input), pty, state: Mutex::new(State::default()) });
        let mut readers = Vec::new();
        for (ch, file) in [(channel::STDOUT, Some(stdout)), (channel::STDERR, stderr)] {
            let Some(mut file) = file else { continue };
            let c = c.clone();
            readers.push(thread::Builder::new().name(format!("ctr-{}-{ch}", c.pid)).spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                // A PTY master reports EIO once the terminal's last user is gone.
                while let Ok(n @ 1..) = file.read(&mut buf) {
                    c.publish(Output::Data(ch, buf[..n].to_vec()));
                }
            })?);
        }
        let waiter = c.clone();
        thread::Builder::new().name(format!("ctr-{}-wait", c.pid)).spawn(move || {
            let code = child.wait().map(process::exit_code).unwrap_or(-1);
            for r in readers {
                let _ = r.join();
            }
            lock(&waiter.state).exit = Some(code);
            waiter.publish(Output::Exited);
            on_exit(code);
        })?;
        Ok(c)
    }

    fn publish(&self, out: Output) {
        let mut s = lock(&self.state);
        if let Output::Data(_, data) = &out {
            s.log.extend_from_slice(data);
            if s.log.len() > MAX_LOG {
                let excess = s.log.len() - MAX_LOG;
                s.log.drain(..excess);
            }
        }
        s.subscribers.retain(|_, tx| tx.try_send(out.clone()).is_ok());
    }

    /// The log so far and a feed of what follows, taken atomically.
    pub fn subscribe(&self) -> (u64, Vec<u8>, Receiver<Output>) {
        let (tx, rx) = bounded(SUBSCRIBER_QUEUE);
        let mut s = lock(&self.state);
        if s.exit.is_some() {
            let _ = tx.try_send(Output::Exited);
        }
        s.next_id += 1;
        let id = s.next_id;
        s.subscribers.insert(id, tx);
        (id, s.log.clone(), rx)
    }

    pub fn unsubscribe(&self, id: u64) {
        lock(&self.state).subscribers.remove(&id);
    }

    pub fn exit_code(&self) -> Option<i32> {
        lock(&self.state).exit
    }

    pub fn write_stdin(&self, data: &[u8]) {
        if let Some(f) = lock(&self.stdin).as_mut() {
            let _ = f.write_all(data);
        }
    }

    pub fn close_stdin(&self) {
        lock(&self.stdin).take();
    }

    pub fn resize(&self, size: TerminalSize) {
        if let Some(pty) = &self.pty {
            let _ = process::resize(pty, size);
        }
    }

    pub fn kill(&self) {
        process::kill_group(self.pid);
    }

    /// Asks the container's processes to stop (SIGTERM to its process group).
    pub fn terminate(&self) {
        process::signal_group(self.pid, libc::SIGTERM);
    }

    /// The process id of the container's first process.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}
