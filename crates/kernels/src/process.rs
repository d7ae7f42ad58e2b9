//! Process-wide settings a command-line tool needs from the C library.

/// Lets a closed pipe on stdout end the process quietly, as it does for other Unix tools
/// (`transact inspect m.gguf | head`): Rust ignores SIGPIPE, so `print!` would panic instead.
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE installs no handler and touches no
    // memory; it runs at start-up, before any thread that could race on signal settings.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
