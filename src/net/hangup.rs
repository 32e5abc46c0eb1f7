//! Noticing a client that hangs up while it is only being written to. A streamed
//! response (a watch, `logs -f`) blocks its thread on the upstream read, so a client
//! that went away would be noticed only at the next write, seconds or hours later.
//! [`HangupWatch`] waits on the client socket for the peer's FIN (`POLLRDHUP`, which
//! data arriving does not trigger) and then runs its action, which ends the stream.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread::{self, JoinHandle};

/// Runs an action when the watched socket's peer hangs up; stops when dropped.
pub struct HangupWatch {
    /// Closing it (on drop) wakes the watcher so it ends.
    stop: Option<OwnedFd>,
    /// Whether the action ran.
    thread: Option<JoinHandle<bool>>,
}

impl HangupWatch {
    /// Watches `client` (a clone of the connection's socket) on a thread of its own.
    pub fn start(client: TcpStream, on_hangup: impl FnOnce() + Send + 'static) -> io::Result<HangupWatch> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (wake, stop) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let thread = thread::Builder::new().name("hangup-watch".into()).spawn(move || {
            let hung_up = wait_for_hangup(&client, &wake);
            if hung_up {
                on_hangup();
            }
            hung_up
        })?;
        Ok(HangupWatch { stop: Some(stop), thread: Some(thread) })
    }

    /// Stops watching; whether the peer had hung up (and the action ran) by then.
    pub fn stop(mut self) -> bool {
        self.finish()
    }

    fn finish(&mut self) -> bool {
        drop(self.stop.take()); // the pipe's read end sees end of file
        self.thread.take().is_some_and(|t| t.join().unwrap_or(false))
    }
}

impl Drop for HangupWatch {
    fn drop(&mut self) {
        self.finish();
    }
}

/// True when the peer hung up; false when `wake` was closed first.
fn wait_for_hangup(client: &TcpStream, wake: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd { fd: client.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 }, libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    loop {
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::conn_pair;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_hangup_after_data_runs_the_action_and_a_stop_does_not() {
        let (mut client, conn) = conn_pair();
        let (tx, rx) = mpsc::channel();
        let watch = HangupWatch::start(conn.read.shutdown_handle().unwrap(), move || tx.send(()).unwrap()).unwrap();
        client.write_all(b"a pipelined request is not a hangup").unwrap();
        drop(client);
        rx.recv_timeout(Duration::from_secs(5)).expect("the hangup is noticed");
        assert!(watch.stop(), "it says the peer hung up");

        let (_client, conn) = conn_pair();
        let (tx, rx) = mpsc::channel::<()>();
        let watch = HangupWatch::start(conn.read.shutdown_handle().unwrap(), move || tx.send(()).unwrap()).unwrap();
        assert!(!watch.stop(), "stopped without the action");
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected), "the action was dropped unrun");
    }
}
