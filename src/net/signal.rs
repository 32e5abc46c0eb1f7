//! SIGTERM and SIGINT as an ordinary blocking call, without async signal handlers:
//! the signals are blocked in every thread and one thread takes them with sigwait(2).

use std::io;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in this thread and every thread it starts later.
/// Call first thing in `main`.
pub fn block_termination() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: the set is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT (after [`block_termination`]) and returns its number.
pub fn wait_for_termination() -> io::Result<i32> {
    let set = termination_set();
    let mut sig = 0;
    // SAFETY: both pointers are valid for the call.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Undoes [`block_termination`] for a child process about to exec.
pub fn unblock_in_child() {
    let set = termination_set();
    // SAFETY: async-signal-safe; called between fork and exec.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}
