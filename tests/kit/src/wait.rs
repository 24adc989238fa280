//! Bounded polls.
use std::path::Path;
use std::time::{Duration, Instant};

/// Poll `f` every 50 ms until it holds (true) or `limit` passes (false).
pub fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until `f` holds, or panic naming `what` after `limit`.
pub fn until(what: &str, limit: Duration, f: impl FnMut() -> bool) {
    assert!(
        poll(limit, f),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Poll `f` until it returns `Some`, or panic with `fail()` after `limit`.
pub fn until_some<T>(
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    fail: impl FnOnce() -> String,
) -> T {
    let mut out = None;
    if poll(limit, || {
        out = f();
        out.is_some()
    }) {
        return out.unwrap();
    }
    panic!("timed out after {limit:?}: {}", fail())
}

/// Wait until the file at `path` contains `needle`; returns its text, or
/// panics with its text and `context()` after `limit`.
pub fn file_contains(
    path: &Path,
    needle: &str,
    limit: Duration,
    context: impl FnOnce() -> String,
) -> String {
    until_some(
        limit,
        || {
            let t = std::fs::read_to_string(path).unwrap_or_default();
            t.contains(needle).then_some(t)
        },
        || {
            format!(
                "`{needle}` not in {}:\n{}\n{}",
                path.display(),
                std::fs::read_to_string(path).unwrap_or_default(),
                context()
            )
        },
    )
}

/// Whether the file at `p` contains `s` now.
pub fn contains(p: &Path, s: &str) -> bool {
    std::fs::read_to_string(p).is_ok_and(|t| t.contains(s))
}
