//! Host processes standing in for container processes: with a real PTY when a
//! terminal is asked for, with pipes otherwise; each in its own session and process
//! group so a whole tree can be killed.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::wire::channel::TerminalSize;

/// Terminal size until the client sends one.
pub const DEFAULT_SIZE: TerminalSize = TerminalSize { width: 80, height: 24 };

/// A started process and the ends of its standard streams we hold.
pub struct Spawned {
    pub child: Child,
    /// Input to the process (`None` when stdin was not requested).
    pub stdin: Option<File>,
    pub stdout: File,
    /// `None` with a terminal: stderr goes to the terminal too.
    pub stderr: Option<File>,
    /// The PTY master, for resizes.
    pub pty: Option<File>,
}

fn winsize(size: TerminalSize) -> libc::winsize {
    libc::winsize { ws_row: size.height, ws_col: size.width, ws_xpixel: 0, ws_ypixel: 0 }
}

/// Applies a terminal size to a PTY master.
pub fn resize(pty: &File, size: TerminalSize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `argv` in `dir` with a scrubbed environment.
/// `tty` gives the process a terminal of that size.
pub fn spawn(argv: &[String], dir: &Path, env: &[(String, String)], tty: Option<TerminalSize>, stdin: bool) -> io::Result<Spawned> {
    let (program, args) = argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env_clear();
    cmd.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    cmd.env("HOME", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(size) = tty {
        cmd.env("TERM", "xterm");
        let (mut master, mut slave) = (0, 0);
        let ws = winsize(size);
        // SAFETY: openpty writes two descriptors; the name buffer and termios may be null.
        if unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openpty returned two fresh descriptors that we now own.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(Stdio::from(slave.try_clone()?)).stdout(Stdio::from(slave.try_clone()?)).stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; this runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                crate::net::signal::unblock_in_child();
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(cmd); // closes our copies of the slave, so reads see EOF when the child exits
        let master = File::from(master);
        return Ok(Spawned { child, stdin: if stdin { Some(master.try_clone()?) } else { None }, stdout: master.try_clone()?, stderr: None, pty: Some(master) });
    }
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; this runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            crate::net::signal::unblock_in_child();
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let take = |fd: Option<OwnedFd>| fd.map(File::from);
    let stdin = take(child.stdin.take().map(OwnedFd::from));
    let stdout = take(child.stdout.take().map(OwnedFd::from)).ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let stderr = take(child.stderr.take().map(OwnedFd::from));
    Ok(Spawned { child, stdin, stdout, stderr, pty: None })
}

/// Kills the process group led by `pid` (the process and everything it started).
pub fn kill_group(pid: u32) {
    // SAFETY: kill with a negative pid signals a process group; harmless if it is gone.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}

/// The exit code as a shell reports it (128 + signal when killed).
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pipes_and_pty() {
        let dir = std::env::temp_dir();
        let mut p = spawn(&["sh".into(), "-c".into(), "echo out; echo err >&2; exit 3".into()], &dir, &[], None, false).unwrap();
        let mut out = String::new();
        p.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(exit_code(p.child.wait().unwrap()), 3);

        let mut p = spawn(&["sh".into(), "-c".into(), "stty size; tty >/dev/null && echo tty".into()], &dir, &[], Some(DEFAULT_SIZE), false).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match p.stdout.read(&mut buf) {
                Ok(0) | Err(_) => break, // EIO once the child side closes
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(String::from_utf8_lossy(&out), "24 80\r\ntty\r\n");
        assert_eq!(exit_code(p.child.wait().unwrap()), 0);
    }
}
