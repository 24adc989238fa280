//! The report queue: control-plane requests that could not be sent
//! (`<home>/work/report-queue.jsonl`, one `{"method","path","body"}` per line),
//! delivered in order once the control plane answers again.
//!
//! Both the agent (async) and the deploy runner (blocking, possibly while the agent
//! is gone) write it, so this module is the only code touching the file, and it
//! uses two `flock(2)` locks on sidecar files (a lock on the queue itself would be
//! lost when a rewrite renames a new file over it):
//!
//! - the *queue lock* (`report-queue.lock`) is held only for local file work: an
//!   append, a read, a rewrite. No line appended while a flusher works is lost,
//!   because the flusher re-reads the file under this lock before it rewrites it.
//! - the *flusher lock* (`report-queue.flush.lock`) is held by the one process
//!   delivering the queue, across its network calls. It is only ever *tried*:
//!   a writer that finds it taken appends behind the queue instead of waiting, so
//!   a slow control plane never stalls the runner's rollback behind the agent.
//!
//! Delivery is therefore collect, send, commit: [`Flusher::pending`] reads the
//! queue (under the queue lock), the caller sends the reports in order with
//! whatever client it has (reqwest from async code, ureq from the runner), and
//! [`Flusher::commit`] removes the ones it consumed from the head of the file
//! (under the queue lock again), keeping whatever was appended meanwhile. A
//! report is committed right after it is sent, so a crash re-sends at most one.
//!
//! Order: a writer sends a report directly only after a flush it ran itself left
//! the queue empty; otherwise it appends it. Its earlier reports are then either
//! delivered or ahead of it in the file, so each writer's order is kept.
//!
//! A line that is not a valid report can never be delivered: a flusher moves it
//! to `report-queue.bad.jsonl` with a warning, so it neither blocks the reports
//! behind it nor disappears.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One queued request (one line of the queue file): plain data, in molt-protocol.
pub use molt_protocol::QueuedReport;

/// Errors of the report queue files.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the caller's sender did with one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered, or refused by a control plane that answered (retrying would not
    /// help): remove it from the queue.
    Done,
    /// Not delivered (unreachable): keep it and everything after it.
    Keep,
}

/// The result of [`flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// This process delivered what it could; `remaining` reports are still queued.
    Remaining(usize),
    /// Another process is delivering the queue right now.
    Busy,
}

/// `report-queue.lock` beside the queue: the queue lock.
pub fn lock_path(queue: &Path) -> PathBuf {
    sidecar(queue, "lock")
}

/// `report-queue.flush.lock` beside the queue: the flusher lock.
pub fn flush_lock_path(queue: &Path) -> PathBuf {
    sidecar(queue, "flush.lock")
}

/// `report-queue.bad.jsonl` beside the queue: lines that are not reports.
pub fn bad_path(queue: &Path) -> PathBuf {
    sidecar(queue, "bad.jsonl")
}

fn sidecar(queue: &Path, ext: &str) -> PathBuf {
    let stem = queue
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report-queue".into());
    queue.with_file_name(format!("{stem}.{ext}"))
}

/// An exclusive `flock` on a sidecar file; released when dropped (or when the
/// process dies, even by SIGKILL).
struct Lock {
    _file: File,
}

impl Lock {
    /// `Ok(None)` when `wait` is false and another holder has it.
    fn acquire(path: &Path, wait: bool) -> Result<Option<Lock>, QueueError> {
        match crate::lock_file(path, wait) {
            Ok(f) => Ok(f.map(|file| Lock { _file: file })),
            Err(crate::LayoutError::Io { path, source }) => Err(QueueError::Io { path, source }),
            Err(other) => Err(QueueError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(other.to_string()),
            }),
        }
    }
}

/// Append one report (fsync'd: it must survive a crash), under the queue lock.
pub fn append(queue: &Path, report: &QueuedReport) -> Result<(), QueueError> {
    let mut line = serde_json::to_vec(report).map_err(|e| QueueError::Io {
        path: queue.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    line.push(b'\n');
    let _l = Lock::acquire(&lock_path(queue), true)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(queue)
        .map_err(io_err(queue))?;
    // A writer that died mid-line left no newline: end that line first, so the
    // torn one is set aside alone instead of swallowing this report.
    let len = f.metadata().map_err(io_err(queue))?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).map_err(io_err(queue))?;
        f.read_exact(&mut last).map_err(io_err(queue))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    f.write_all(&line).map_err(io_err(queue))?;
    f.sync_data().map_err(io_err(queue))
}

/// The queued reports, in order, without changing anything (for status tools and
/// tests). Unreadable lines are skipped here with a warning; a flusher sets them aside.
pub fn read(queue: &Path) -> Result<Vec<QueuedReport>, QueueError> {
    let (good, bad) = parse(&read_text(queue)?);
    for (n, e, _) in &bad {
        tracing::warn!(file = %queue.display(), line = n, error = %e, "Unreadable queued report (not a report; a flush sets it aside)");
    }
    Ok(good.into_iter().map(|(_, r)| r).collect())
}

fn read_text(queue: &Path) -> Result<String, QueueError> {
    match std::fs::read(queue) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_err(queue)(e)),
    }
}

type Parsed = (
    Vec<(String, QueuedReport)>,
    Vec<(usize, serde_json::Error, String)>,
);

/// Good lines (raw text and report) and bad ones (line number, error, raw text).
fn parse(text: &str) -> Parsed {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<QueuedReport>(line) {
            Ok(r) => good.push((line.to_string(), r)),
            Err(e) => bad.push((i + 1, e, line.to_string())),
        }
    }
    (good, bad)
}

/// Replace the queue with `lines` (temp file, fsync, rename), or remove it when
/// there are none. Called with the queue lock held.
fn rewrite(queue: &Path, lines: &[&str]) -> Result<(), QueueError> {
    if lines.is_empty() {
        return match std::fs::remove_file(queue) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(queue)(e)),
        };
    }
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    crate::write_atomic(queue, text.as_bytes()).map_err(|e| match e {
        crate::LayoutError::Io { path, source } => QueueError::Io { path, source },
        other => QueueError::Io {
            path: queue.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// The one process delivering the queue (holds the flusher lock while it lives).
pub struct Flusher {
    _lock: Lock,
    queue: PathBuf,
    /// Raw lines handed out by the last [`Flusher::pending`] and not yet committed.
    handed_out: Mutex<VecDeque<String>>,
}

impl Flusher {
    /// `Ok(None)` when another process (or another flusher here) is delivering.
    pub fn try_new(queue: &Path) -> Result<Option<Flusher>, QueueError> {
        Ok(
            Lock::acquire(&flush_lock_path(queue), false)?.map(|l| Flusher {
                _lock: l,
                queue: queue.to_path_buf(),
                handed_out: Mutex::new(VecDeque::new()),
            }),
        )
    }

    /// The queued reports in order, after moving unreadable lines to
    /// `report-queue.bad.jsonl`. Send them in order, committing each one consumed.
    pub fn pending(&self) -> Result<Vec<QueuedReport>, QueueError> {
        let q = &self.queue;
        let _l = Lock::acquire(&lock_path(q), true)?;
        let (good, bad) = parse(&read_text(q)?);
        if !bad.is_empty() {
            let bad_file = bad_path(q);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&bad_file)
                .map_err(io_err(&bad_file))?;
            for (n, e, raw) in &bad {
                tracing::warn!(file = %q.display(), line = n, error = %e, kept_in = %bad_file.display(), "Unreadable queued report set aside");
                f.write_all(raw.as_bytes())
                    .and_then(|()| f.write_all(b"\n"))
                    .map_err(io_err(&bad_file))?;
            }
            f.sync_data().map_err(io_err(&bad_file))?;
            let keep: Vec<&str> = good.iter().map(|(raw, _)| raw.as_str()).collect();
            rewrite(q, &keep)?;
        }
        let mut handed = self.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        *handed = good.iter().map(|(raw, _)| raw.clone()).collect();
        Ok(good.into_iter().map(|(_, r)| r).collect())
    }

    /// Remove the next `n` reports handed out by [`Flusher::pending`] (sent, or
    /// refused for good) from the head of the queue, keeping whatever was appended
    /// since. Returns how many reports remain queued.
    pub fn commit(&self, n: usize) -> Result<usize, QueueError> {
        let q = &self.queue;
        let _l = Lock::acquire(&lock_path(q), true)?;
        let mut handed = self.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        let text = read_text(q)?;
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        // Only this flusher removes lines and writers only append, so the head of
        // the file is what was handed out; check it anyway rather than drop a stranger.
        let mut drop = 0;
        for _ in 0..n {
            match handed.pop_front() {
                Some(raw) if lines.get(drop) == Some(&raw.as_str()) => drop += 1,
                Some(_) => {
                    tracing::warn!(file = %q.display(), "Report queue changed under its flusher; keeping its head");
                    handed.clear();
                    break;
                }
                None => break,
            }
        }
        if drop > 0 {
            lines.drain(..drop);
            rewrite(q, &lines)?;
        }
        Ok(lines.len())
    }
}

/// Deliver the queue in order through `send` (blocking), unless another process
/// is already doing it. Stops at the first [`Outcome::Keep`]; reports appended
/// while it runs are delivered too.
pub fn flush(
    queue: &Path,
    mut send: impl FnMut(&QueuedReport) -> Outcome,
) -> Result<Flushed, QueueError> {
    let Some(f) = Flusher::try_new(queue)? else {
        return Ok(Flushed::Busy);
    };
    loop {
        let batch = f.pending()?;
        if batch.is_empty() {
            return Ok(Flushed::Remaining(0));
        }
        let mut remaining = batch.len();
        for r in &batch {
            match send(r) {
                Outcome::Done => remaining = f.commit(1)?,
                Outcome::Keep => return Ok(Flushed::Remaining(remaining)),
            }
        }
        if remaining == 0 {
            return Ok(Flushed::Remaining(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(i: usize) -> QueuedReport {
        QueuedReport {
            method: "POST".into(),
            path: format!("/p/{i}"),
            body: serde_json::json!({ "i": i }),
        }
    }

    fn paths(q: &[QueuedReport]) -> Vec<String> {
        q.iter().map(|r| r.path.clone()).collect()
    }

    #[test]
    fn the_line_format_is_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("work/report-queue.jsonl");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            "{\"method\":\"POST\",\"path\":\"/a\",\"body\":{\"x\":1}}\n",
        )
        .unwrap();
        append(&p, &rep(1)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.lines().nth(1).unwrap(),
            r#"{"method":"POST","path":"/p/1","body":{"i":1}}"#
        );
        assert_eq!(paths(&read(&p).unwrap()), ["/a", "/p/1"]);
    }

    #[test]
    fn flush_delivers_in_order_stops_at_keep_and_keeps_the_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report-queue.jsonl");
        for i in 0..5 {
            append(&p, &rep(i)).unwrap();
        }
        let mut seen = Vec::new();
        let r = flush(&p, |r| {
            if r.path == "/p/3" {
                return Outcome::Keep;
            }
            seen.push(r.path.clone());
            Outcome::Done
        })
        .unwrap();
        assert_eq!(r, Flushed::Remaining(2));
        assert_eq!(seen, ["/p/0", "/p/1", "/p/2"]);
        assert_eq!(paths(&read(&p).unwrap()), ["/p/3", "/p/4"]);
        assert_eq!(flush(&p, |_| Outcome::Done).unwrap(), Flushed::Remaining(0));
        assert!(!p.exists());
    }

    #[test]
    fn a_report_appended_during_a_flush_is_not_lost() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report-queue.jsonl");
        append(&p, &rep(0)).unwrap();
        append(&p, &rep(1)).unwrap();
        let mut seen = Vec::new();
        let mut n = 10;
        flush(&p, |r| {
            seen.push(r.path.clone());
            if n < 12 {
                append(&p, &rep(n)).unwrap();
                n += 1;
            }
            Outcome::Done
        })
        .unwrap();
        assert_eq!(seen, ["/p/0", "/p/1", "/p/10", "/p/11"]);
        assert!(read(&p).unwrap().is_empty());
    }

    #[test]
    fn unreadable_lines_are_set_aside_not_dropped_and_block_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report-queue.jsonl");
        append(&p, &rep(0)).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"not json\n{\"method\":\"POST\",\"pa").unwrap();
        drop(f);
        // The torn last line (a writer died mid-line) stays a line of its own.
        append(&p, &rep(1)).unwrap();
        assert_eq!(paths(&read(&p).unwrap()), ["/p/0", "/p/1"]);
        let mut seen = Vec::new();
        flush(&p, |r| {
            seen.push(r.path.clone());
            Outcome::Done
        })
        .unwrap();
        assert_eq!(seen, ["/p/0", "/p/1"]);
        assert_eq!(
            std::fs::read_to_string(bad_path(&p)).unwrap(),
            "not json\n{\"method\":\"POST\",\"pa\n"
        );
        assert!(!p.exists());
    }

    #[test]
    fn only_one_flusher_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("report-queue.jsonl");
        append(&p, &rep(0)).unwrap();
        let f = Flusher::try_new(&p).unwrap().unwrap();
        assert!(Flusher::try_new(&p).unwrap().is_none());
        assert_eq!(flush(&p, |_| Outcome::Done).unwrap(), Flushed::Busy);
        // Appends do not wait for the flusher.
        append(&p, &rep(1)).unwrap();
        assert_eq!(f.pending().unwrap().len(), 2);
        assert_eq!(f.commit(1).unwrap(), 1);
        drop(f);
        assert_eq!(paths(&read(&p).unwrap()), ["/p/1"]);
    }
}
