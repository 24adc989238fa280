//! Crash injection for tests only: compiled into debug builds (what the tests
//! run: `target/debug/molt`) and into a release build with the `test-hooks`
//! cargo feature (benchmarks); the shipped `cargo build --release -p molt`
//! has none, and `checkpoint` does nothing there.
//!
//! When `MOLT_DEPLOY_CRASH_AT=<n>` is set, the runner calls `abort()`
//! at its n-th checkpoint (every journal step is one, and so is every 100th file
//! of the version build). The crash-injection test uses it to kill the runner at
//! every step; `MOLT_DEPLOY_CHECKPOINTS=<file>` makes the runner append each
//! checkpoint's number and name to that file so the test learns how many there are.
//! `MOLT_DEPLOY_KILL_AT=<name>` (e.g. `journal Switched`) with
//! `MOLT_DEPLOY_KILL_ONCE=<file>`: the runner SIGKILLs itself at the checkpoint of
//! that name, once (the file records it), so a runner restarted by its service
//! manager resumes instead of dying again (the systemd tests).
#[cfg(any(debug_assertions, feature = "test-hooks"))]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(any(debug_assertions, feature = "test-hooks"))]
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Mark a point where a crash may be injected (a no-op without `test-hooks`).
#[cfg(not(any(debug_assertions, feature = "test-hooks")))]
#[inline(always)]
pub fn checkpoint(_name: &str) {}

/// Mark a point where a crash may be injected.
#[cfg(any(debug_assertions, feature = "test-hooks"))]
pub fn checkpoint(name: &str) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(file) = std::env::var_os("MOLT_DEPLOY_CHECKPOINTS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            let _ = writeln!(f, "{n} {name}");
        }
    }
    if std::env::var("MOLT_DEPLOY_KILL_AT").is_ok_and(|at| at == name)
        && let Some(once) = std::env::var_os("MOLT_DEPLOY_KILL_ONCE")
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&once)
            .is_ok()
    {
        tracing::warn!(
            name,
            "deploy SIGKILL injected (test hook MOLT_DEPLOY_KILL_AT)"
        );
        // SAFETY: signalling ourselves; nothing runs after it.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    if let Some(at) = std::env::var("MOLT_DEPLOY_CRASH_AT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        && at == n
    {
        tracing::warn!(
            checkpoint = n,
            name,
            "deploy crash injected (test hook MOLT_DEPLOY_CRASH_AT)"
        );
        std::process::abort();
    }
}
