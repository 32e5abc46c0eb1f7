//! Exec and attach sessions: a process (new, or a container's) wired to a client's
//! channels, ending with the exit Status on the error channel as a kubelet does.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::sim::process::{self, Mounts};
use crate::sim::runtime::{Container, Output};
use crate::sim::streams::{Inbound, Outbound, Wanted};
use crate::wire::channel;
use crate::wire::status;

/// How long a terminal session waits for kubectl's first resize before starting at
/// the default size (kubectl sends it right after the streams open).
const FIRST_RESIZE_WAIT: Duration = Duration::from_secs(1);

/// Runs `argv` for one `kubectl exec`.
pub fn run_exec(argv: Vec<String>, dir: &Path, env: &[(String, String)], mounts: &Mounts, wanted: Wanted, inbound: Receiver<Inbound>, out: Arc<dyn Outbound>) {
    // Start a terminal at the client's size, so the first thing a shell prints fits.
    let mut early = Vec::new();
    let mut size = process::DEFAULT_SIZE;
    if wanted.tty {
        let deadline = Instant::now() + FIRST_RESIZE_WAIT;
        while let Ok(event) = inbound.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            match event {
                Inbound::Resize(s) => {
                    size = s;
                    break;
                }
                other => early.push(other),
            }
        }
    }
    let spawned = match process::spawn_in(&argv, dir, env, wanted.tty.then_some(size), wanted.stdin, mounts) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("failed to exec in container: starting {argv:?}: {e}");
            out.finish(Some(&status::failure(500, &msg)));
            return;
        }
    };
    let process::Spawned { mut child, stdin, stdout, stderr, pty } = spawned;
    let pid = child.id();
    let mut copiers = Vec::new();
    for (ch, file) in [(channel::STDOUT, Some(stdout)), (channel::STDERR, stderr)] {
        let Some(mut file) = file else { continue };
        let out = out.clone();
        copiers.push(thread::spawn(move || {
            let mut buf = [0u8; 32 * 1024];
            while let Ok(n @ 1..) = file.read(&mut buf) {
                if out.output(ch, &buf[..n]).is_err() {
                    break;
                }
            }
        }));
    }
    // Ends when the client goes away; not joined, so a client that lingers after the
    // final status holds only this thread.
    thread::spawn(move || {
        let mut stdin = stdin;
        for event in early.into_iter().chain(inbound.iter()) {
            match event {
                Inbound::Stdin(data) => {
                    if let Some(f) = stdin.as_mut() {
                        if f.write_all(&data).is_err() {
                            stdin = None;
                        }
                    }
                }
                Inbound::StdinClosed => {
                    if pty.is_some() {
                        // A terminal has no end of file; ^D is what a closed stdin means.
                        if let Some(f) = stdin.as_mut() {
                            let _ = f.write_all(&[4]);
                        }
                    }
                    stdin = None;
                }
                Inbound::Resize(size) => {
                    if let Some(p) = &pty {
                        let _ = process::resize(p, size);
                    }
                }
                Inbound::Gone => {
                    process::kill_group(pid);
                    return;
                }
            }
        }
    });
    let code = child.wait().map(process::exit_code).unwrap_or(-1);
    for c in copiers {
        let _ = c.join();
    }
    out.finish(Some(&channel::exit_status(code, &argv)));
}

/// Connects one `kubectl attach` to a running container.
pub fn run_attach(container: Arc<Container>, wanted: Wanted, inbound: Receiver<Inbound>, out: Arc<dyn Outbound>) {
    if let Some(code) = container.exit_code() {
        let msg = format!("cannot attach to a container that has terminated (exit code {code})");
        out.finish(Some(&status::failure(400, &msg)));
        return;
    }
    let (id, _log, feed) = container.subscribe();
    let forward_out = out.clone();
    let forward = thread::spawn(move || {
        for item in feed.iter() {
            match item {
                Output::Data(ch, data) => {
                    let ch = if wanted.tty { channel::STDOUT } else { ch };
                    if (ch == channel::STDOUT && !wanted.stdout) || (ch == channel::STDERR && !wanted.stderr) {
                        continue;
                    }
                    if forward_out.output(ch, &data).is_err() {
                        return;
                    }
                }
                Output::Exited => {
                    // As a kubelet: attach ends with no status; the exit code is the pod's.
                    forward_out.finish(None);
                    return;
                }
            }
        }
    });
    for event in inbound.iter() {
        match event {
            Inbound::Stdin(data) if wanted.stdin => container.write_stdin(&data),
            Inbound::Stdin(_) => {}
            Inbound::StdinClosed if container.stdin_once => container.close_stdin(),
            Inbound::StdinClosed => {}
            Inbound::Resize(size) => container.resize(size),
            Inbound::Gone => break,
        }
    }
    if container.stdin_once && wanted.stdin {
        container.close_stdin();
    }
    container.unsubscribe(id);
    let _ = forward.join();
}
