//! Which work may wait: the frame path (decode, encode, the viewer fan-out) must not, while
//! face detection and the HLS mirror's second encoder can fall behind a little without anyone
//! noticing. On a machine with few cores (and in the tests, a browser on the same cores) the
//! kernel's scheduler otherwise shares the CPU evenly, and the frames the viewers wait for
//! queue behind a detector that runs back to back.
//!
//! By hand rather than with a crate: it is one Linux call (`setpriority` on the thread's id,
//! which Linux applies to that thread alone), and crates for thread priorities aim at
//! real-time policies, which we do not want.

/// Lowers the calling thread's CPU priority by `nice` steps (1..=19), best effort: a failure is
/// logged once and the thread runs at normal priority.
pub fn lower_this_thread(nice: i32, what: &str) {
    // SAFETY: gettid and setpriority take no pointers and only affect this thread.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, thread = what, "cannot lower the thread's priority");
    } else {
        tracing::debug!(thread = what, nice, "thread priority lowered");
    }
}
