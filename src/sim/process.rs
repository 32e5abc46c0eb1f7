//! Host processes standing in for container processes: with a real PTY when a
//! terminal is asked for, with pipes otherwise; each in its own session and process
//! group so a whole tree can be killed. A container with volume mounts runs in its
//! own mount namespace (mount_namespaces(7)): between fork and exec the child
//! unshares `CLONE_NEWNS`, makes `/` recursively private so nothing propagates back
//! to the host, and bind-mounts each volume at its mount path (remounted read-only
//! where asked). An exec into such a container joins that namespace with setns(2).
//! Both need root (CAP_SYS_ADMIN).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
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

/// A directory (or file) of the host shown at `target` inside a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Which files a process sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mounts {
    /// The simulator's own view.
    Host,
    /// A mount namespace of its own holding these bind mounts, parents first.
    New(Vec<BindMount>),
    /// The mount namespace of the running process with this pid (a container's).
    Join(u32),
}

/// True when this process may create and join mount namespaces.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: NUL in path", p.display())))
}

/// Where `target` is on the host once the mounts before it are in place: under the
/// source of the deepest earlier mount that holds it.
fn host_path(target: &Path, earlier: &[BindMount]) -> PathBuf {
    earlier
        .iter()
        .filter(|m| target.starts_with(&m.target))
        .max_by_key(|m| m.target.components().count())
        .map(|m| m.source.join(target.strip_prefix(&m.target).unwrap_or(Path::new(""))))
        .unwrap_or_else(|| target.to_path_buf())
}

/// Creates each mount point that is missing (a directory, or an empty file when the
/// source is a file), as a container runtime does. This happens in the simulator's
/// own view, so a mount point outside every volume is left on the host afterwards.
pub fn make_mount_points(mounts: &[BindMount]) -> io::Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        let place = host_path(&m.target, &mounts[..i]);
        let describe = |e: io::Error| io::Error::new(e.kind(), format!("creating mount point {}: {e}", place.display()));
        if std::fs::metadata(&m.source).map(|md| md.is_file()).unwrap_or(false) {
            if let Some(parent) = place.parent() {
                std::fs::create_dir_all(parent).map_err(describe)?;
            }
            if !place.exists() {
                std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&place).map_err(describe)?;
            }
        } else {
            std::fs::create_dir_all(&m.source).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", m.source.display())))?;
            std::fs::create_dir_all(&place).map_err(describe)?;
        }
    }
    Ok(())
}

/// What the child does about mounts between fork and exec, prepared beforehand so the
/// child only makes system calls (no allocation after fork).
struct NamespaceSetup {
    /// (source, target, read-only)
    binds: Vec<(CString, CString, bool)>,
    unshare: bool,
    /// An open `/proc/PID/ns/mnt` to join; kept open until the child has forked.
    join: Option<OwnedFd>,
    dir: CString,
}

impl NamespaceSetup {
    fn new(mounts: &Mounts, dir: &Path) -> io::Result<Option<NamespaceSetup>> {
        let (binds, unshare, join) = match mounts {
            Mounts::Host => return Ok(None),
            Mounts::New(list) => {
                make_mount_points(list)?;
                // The working directory as a runtime makes it: created if missing.
                let wd = host_path(dir, list);
                std::fs::create_dir_all(&wd).map_err(|e| io::Error::new(e.kind(), format!("creating working directory {}: {e}", wd.display())))?;
                let binds = list.iter().map(|m| Ok((cstring(&m.source)?, cstring(&m.target)?, m.read_only))).collect::<io::Result<Vec<_>>>()?;
                (binds, true, None)
            }
            Mounts::Join(pid) => {
                let path = format!("/proc/{pid}/ns/mnt");
                let f = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
                (Vec::new(), false, Some(OwnedFd::from(f)))
            }
        };
        if !is_root() {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "volume mounts need root: each container gets its own mount namespace"));
        }
        Ok(Some(NamespaceSetup { binds, unshare, join, dir: cstring(dir)? }))
    }

    /// In the child, before exec: async-signal-safe system calls only.
    fn apply(&self) -> io::Result<()> {
        let fail = || Err(io::Error::last_os_error());
        // SAFETY: every pointer is a NUL-terminated string or null, as mount(2),
        // unshare(2), setns(2) and chdir(2) take them; no memory is allocated.
        unsafe {
            if let Some(fd) = &self.join {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
            }
            if self.unshare {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                    return fail();
                }
            }
            for (source, target, read_only) in &self.binds {
                if libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
                    return fail();
                }
                let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                if *read_only && libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
                    return fail();
                }
            }
            // Joining a namespace moves the working directory to its root.
            if libc::chdir(self.dir.as_ptr()) != 0 {
                return fail();
            }
        }
        Ok(())
    }
}

/// Starts `argv` in `dir` with a scrubbed environment.
/// `tty` gives the process a terminal of that size.
pub fn spawn(argv: &[String], dir: &Path, env: &[(String, String)], tty: Option<TerminalSize>, stdin: bool) -> io::Result<Spawned> {
    spawn_in(argv, dir, env, tty, stdin, &Mounts::Host)
}

/// [`spawn`] with the files `mounts` describes.
pub fn spawn_in(argv: &[String], dir: &Path, env: &[(String, String)], tty: Option<TerminalSize>, stdin: bool, mounts: &Mounts) -> io::Result<Spawned> {
    let (program, args) = argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let setup = NamespaceSetup::new(mounts, dir)?;
    let mut cmd = Command::new(program);
    // In a namespace of its own the child changes directory once its mounts are in place.
    cmd.args(args).current_dir(if setup.is_some() { Path::new("/") } else { dir }).env_clear();
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
            cmd.pre_exec(move || {
                crate::net::signal::unblock_in_child();
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                match &setup {
                    Some(s) => s.apply(),
                    None => Ok(()),
                }
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
        cmd.pre_exec(move || {
            crate::net::signal::unblock_in_child();
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            match &setup {
                Some(s) => s.apply(),
                None => Ok(()),
            }
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
    signal_group(pid, libc::SIGKILL);
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill with a negative pid signals a process group; harmless if it is gone.
    unsafe { libc::kill(-(pid as i32), signal) };
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

    fn output(argv: &[&str], mounts: &Mounts) -> io::Result<(String, i32)> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut p = spawn_in(&argv, Path::new("/"), &[], None, false, mounts)?;
        let mut out = String::new();
        p.stdout.read_to_string(&mut out).unwrap();
        Ok((out, exit_code(p.child.wait().unwrap())))
    }

    #[test]
    fn mount_namespaces() {
        let base = std::env::temp_dir().join(format!("kubetape-mnt-{}", crate::net::random::hex(6)));
        let (src, target) = (base.join("src"), base.join("deep/target"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), "hi").unwrap();
        let t = target.display().to_string();
        let mounts = Mounts::New(vec![BindMount { source: src.clone(), target: target.clone(), read_only: true }]);
        if !is_root() {
            let e = output(&["true"], &mounts).unwrap_err().to_string();
            assert!(e.contains("need root"), "{e}");
            std::fs::remove_dir_all(&base).unwrap();
            return;
        }
        let script = format!("cat {t}/f; touch {t}/g 2>/dev/null && echo writable; pwd");
        assert_eq!(output(&["sh", "-c", &script], &mounts).unwrap(), ("hi/\n".to_string(), 0), "the volume read-only at its path");
        assert!(target.is_dir() && !target.join("f").exists(), "the host sees the mount point, not the mount");
        // A process that stays in its namespace, and an exec that joins it.
        let argv: Vec<String> = ["sh", "-c", "exec sleep 30"].iter().map(|s| s.to_string()).collect();
        let mut holder = spawn_in(&argv, Path::new("/"), &[], None, false, &mounts).unwrap();
        let joined = output(&["cat", &format!("{t}/f")], &Mounts::Join(holder.child.id()));
        kill_group(holder.child.id());
        let _ = holder.child.wait();
        assert_eq!(joined.unwrap(), ("hi".to_string(), 0));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
