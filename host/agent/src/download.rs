//! Resumable package downloads: HTTP Range, bounded retries with backoff, size
//! (and, with [`Check::Streaming`], SHA-256) checked before the file gets its
//! final name. A partial or corrupt file is never used: it is resumed, or deleted
//! and fetched again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::error_chain;

/// Errors of one download.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("The agent was unable to download {name} from {url}: {message}")]
    Failed {
        name: String,
        url: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to fetch and what it must be.
#[derive(Debug, Clone)]
pub struct DownloadSpec {
    pub name: String,
    pub url: reqwest::Url,
    pub bearer: Option<String>,
    pub dest: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub check: Check,
}

/// When the file's SHA-256 (`DownloadSpec::sha256`) is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// While receiving, on a thread of its own; a mismatch deletes the file and
    /// fetches it again.
    Streaming,
    /// Not here: the caller verifies the bundle's signature, which reads every
    /// byte anyway, and hashes the file ([`file_sha256`]) only when that fails,
    /// to tell a damaged transfer from a bad package. On a 2-core machine the
    /// second SHA-256 of every byte cost a third of the download's speed.
    Deferred,
}

/// How hard to try.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub attempts: u32,
    pub backoff: Duration,
    /// Draw an indicatif bar (only when stderr is a terminal).
    pub progress_bar: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_secs(1),
            progress_bar: true,
        }
    }
}

/// How the file came to be in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Already present with the right size and digest.
    AlreadyPresent,
    /// Fetched; `resumed` when at least one request continued a partial file.
    Downloaded { resumed: bool, attempts: u32 },
}

/// The partial file beside the destination.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// SHA-256 (hex) and length of a file.
pub fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        ctx.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(ctx.finish().as_ref()), n))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn remove_if_exists(p: &Path) -> Result<(), DownloadError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(p)(e)),
    }
}

enum Try {
    Done { resumed: bool },
    Retry(String),
    Fatal(String),
}

/// Fetch `spec` into `spec.dest`, resuming a `.part` file left by an earlier try.
pub async fn download(
    http: &reqwest::Client,
    spec: &DownloadSpec,
    opts: &DownloadOptions,
) -> Result<Outcome, DownloadError> {
    let want = spec.sha256.to_ascii_lowercase();
    if spec.dest.exists() {
        // Present from an earlier attempt: worth one read to skip the fetch.
        let (sha, len) = file_sha256(&spec.dest).map_err(io_err(&spec.dest))?;
        if sha == want && len == spec.size {
            return Ok(Outcome::AlreadyPresent);
        }
        tracing::warn!(file = %spec.dest.display(), "Existing package file does not match its digest; deleting and fetching again");
        remove_if_exists(&spec.dest)?;
    }
    if let Some(d) = spec.dest.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let part = part_path(&spec.dest);
    let mut resumed_any = false;
    let mut last = String::new();
    for attempt in 1..=opts.attempts.max(1) {
        match one_try(http, spec, &part, &want, opts).await? {
            Try::Done { resumed } => {
                resumed_any |= resumed;
                std::fs::rename(&part, &spec.dest).map_err(io_err(&spec.dest))?;
                return Ok(Outcome::Downloaded {
                    resumed: resumed_any,
                    attempts: attempt,
                });
            }
            Try::Fatal(m) => {
                remove_if_exists(&part)?;
                return Err(DownloadError::Failed {
                    name: spec.name.clone(),
                    url: spec.url.to_string(),
                    message: m,
                });
            }
            Try::Retry(m) => {
                resumed_any |= part.exists();
                last = m;
                if attempt < opts.attempts {
                    let delay = opts
                        .backoff
                        .saturating_mul(1u32 << (attempt - 1).min(5))
                        .min(Duration::from_secs(30));
                    tracing::warn!(package = %spec.name, attempt, error = %last, retry_in_ms = delay.as_millis() as u64,
                        "Download interrupted; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    Err(DownloadError::Failed {
        name: spec.name.clone(),
        url: spec.url.to_string(),
        message: format!("gave up after {} attempts: {last}", opts.attempts),
    })
}

async fn one_try(
    http: &reqwest::Client,
    spec: &DownloadSpec,
    part: &Path,
    want: &str,
    opts: &DownloadOptions,
) -> Result<Try, DownloadError> {
    let mut offset = match std::fs::metadata(part) {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    if offset > spec.size {
        remove_if_exists(part)?;
        offset = 0;
    }
    let streaming = spec.check == Check::Streaming;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let resumed = offset > 0;
    if offset > 0 && streaming {
        // Hash what is already there, then continue from its end.
        let mut f = std::fs::File::open(part).map_err(io_err(part))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = offset;
        while left > 0 {
            let r = f
                .read(&mut buf[..(left.min(1 << 20) as usize)])
                .map_err(io_err(part))?;
            if r == 0 {
                break;
            }
            ctx.update(&buf[..r]);
            left -= r as u64;
        }
    }
    if offset > 0 {
        tracing::info!(package = %spec.name, offset, size = spec.size, "Resuming download");
    }
    if offset < spec.size || spec.size == 0 {
        let mut req = http.get(spec.url.clone());
        if let Some(t) = &spec.bearer {
            req = req.bearer_auth(t);
        }
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Try::Retry(error_chain(&e))),
        };
        let status = resp.status().as_u16();
        match status {
            206 if offset > 0 => {
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    remove_if_exists(part)?;
                    return Ok(Try::Retry(format!(
                        "server answered a different range ({start:?}); starting over"
                    )));
                }
            }
            200 => {
                if offset > 0 {
                    tracing::info!(package = %spec.name, "Server ignored the Range request; downloading from the start");
                    offset = 0;
                    ctx = ring::digest::Context::new(&ring::digest::SHA256);
                }
            }
            416 => {
                remove_if_exists(part)?;
                return Ok(Try::Retry("range not satisfiable; starting over".into()));
            }
            408 | 429 | 500..=599 => return Ok(Try::Retry(format!("HTTP {status}"))),
            _ => {
                let body = resp.text().await.unwrap_or_default();
                return Ok(Try::Fatal(format!("HTTP {status}: {}", body.trim())));
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .append(offset > 0)
            .open(part)
            .map_err(io_err(part))?;
        // Writing, hashing and flushing to disk run on their own threads, fed
        // through a bounded channel, so they overlap with receiving.
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let to_hash = streaming.then_some(ctx);
        let writer = std::thread::Builder::new()
            .name("molt-download-write".into())
            .spawn(move || write_and_hash(file, to_hash, rx))
            .map_err(io_err(part))?;
        let finish = |tx, writer: std::thread::JoinHandle<std::io::Result<_>>| {
            drop(tx);
            match writer.join() {
                Ok(r) => r.map_err(io_err(part)),
                Err(_) => Err(io_err(part)(std::io::Error::other(
                    "download writer thread panicked",
                ))),
            }
        };
        let mut progress = Progress::new(&spec.name, spec.size, offset, opts.progress_bar);
        let mut got = offset;
        // Chunks (a few KiB each) go to the writer in batches of about 1 MiB,
        // so thread hand-offs stay few.
        const BATCH: usize = 1 << 20;
        let mut batch: Vec<_> = Vec::new();
        let mut batched = 0usize;
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    got += bytes.len() as u64;
                    if got > spec.size {
                        let _ = finish(tx, writer);
                        remove_if_exists(part)?;
                        return Ok(Try::Retry(format!(
                            "server sent more than the expected {} bytes",
                            spec.size
                        )));
                    }
                    batched += bytes.len();
                    batch.push(bytes);
                    if batched >= BATCH {
                        batched = 0;
                        if tx.send(std::mem::take(&mut batch)).is_err() {
                            // The writer stopped: its error says why (e.g. disk full).
                            finish(tx, writer)?;
                            return Err(io_err(part)(std::io::Error::other(
                                "download writer stopped",
                            )));
                        }
                    }
                    progress.update(got);
                }
                Ok(None) => break,
                Err(e) => {
                    // What arrived is kept on disk for the resumed attempt.
                    let _ = tx.send(std::mem::take(&mut batch));
                    finish(tx, writer)?;
                    progress.abandon();
                    return Ok(Try::Retry(format!(
                        "connection lost at {got} of {} bytes: {}",
                        spec.size,
                        error_chain(&e)
                    )));
                }
            }
        }
        if !batch.is_empty() && tx.send(batch).is_err() {
            finish(tx, writer)?;
            return Err(io_err(part)(std::io::Error::other(
                "download writer stopped",
            )));
        }
        let hashed = finish(tx, writer)?;
        progress.finish();
        if got < spec.size {
            return Ok(Try::Retry(format!(
                "connection closed at {got} of {} bytes",
                spec.size
            )));
        }
        match hashed {
            Some(c) => ctx = c,
            None => return Ok(Try::Done { resumed }),
        }
    } else if !streaming {
        return Ok(Try::Done { resumed });
    }
    let sha = hex::encode(ctx.finish().as_ref());
    if sha != want {
        tracing::warn!(package = %spec.name, expected = %want, actual = %sha,
            "Downloaded file is corrupt (sha256 mismatch); deleting it and fetching again");
        remove_if_exists(part)?;
        return Ok(Try::Retry("sha256 mismatch".into()));
    }
    Ok(Try::Done { resumed })
}

/// The download's disk side: write each batch and, given a digest context, hash
/// it on a second thread (on one thread the two took as long as the whole
/// transfer). Returns the digest context of everything written (every batch
/// received is written even when the sender quits early, so a resumed
/// download continues from what is on disk). Batches go to the file with
/// `writev` straight from the received buffers: staging them in a `BufWriter`
/// cost one more copy of every byte.
///
/// No fsync: nothing trusts a package file for being on disk. A file in
/// `package/incoming` is used only after its digest (a file already present)
/// and its signature are checked, and the deploy digest-checks every file it
/// builds from it and flushes the version directory; a file a crash left
/// damaged is fetched again. An fsync made the disk's write speed the
/// download's limit (about 0.65x of `curl -o` on loopback).
fn write_and_hash<B: AsRef<[u8]> + Clone + Send>(
    mut file: std::fs::File,
    ctx: Option<ring::digest::Context>,
    rx: std::sync::mpsc::Receiver<Vec<B>>,
) -> std::io::Result<Option<ring::digest::Context>> {
    let Some(mut ctx) = ctx else {
        return write_batches(&mut file, &rx, None).map(|()| None);
    };
    std::thread::scope(|s| {
        let (htx, hrx) = std::sync::mpsc::sync_channel::<Vec<B>>(8);
        let hasher = std::thread::Builder::new()
            .name("molt-download-hash".into())
            .spawn_scoped(s, move || {
                for b in hrx.iter().flatten() {
                    ctx.update(b.as_ref());
                }
                ctx
            })?;
        let written = write_batches(&mut file, &rx, Some(&htx));
        drop(htx);
        let ctx = hasher
            .join()
            .map_err(|_| std::io::Error::other("download hash thread panicked"))?;
        written.map(|()| Some(ctx))
    })
}

/// Write each received batch and pass it on to the hash thread.
fn write_batches<B: AsRef<[u8]> + Clone>(
    file: &mut std::fs::File,
    rx: &std::sync::mpsc::Receiver<Vec<B>>,
    to_hash: Option<&std::sync::mpsc::SyncSender<Vec<B>>>,
) -> std::io::Result<()> {
    for batch in rx.iter() {
        // A clone of a batch is a clone of its buffer handles, not of the bytes.
        if let Some(h) = to_hash
            && h.send(batch.clone()).is_err()
        {
            return Err(std::io::Error::other("download hash thread stopped"));
        }
        write_all_vectored(file, &batch)?;
    }
    Ok(())
}

/// Write every buffer of `bufs`, in order, with as few `writev` calls as the
/// kernel allows; returns the bytes written.
fn write_all_vectored<B: AsRef<[u8]>>(w: &mut impl Write, bufs: &[B]) -> std::io::Result<u64> {
    // IOV_MAX is 1024 on Linux; a batch is ~1 MiB of chunks of 8 KiB or more.
    const MAX_IOV: usize = 1024;
    let mut total = 0u64;
    for group in bufs.chunks(MAX_IOV) {
        // Empty buffers are left out: a writev of only those would return 0.
        let mut slices: Vec<std::io::IoSlice<'_>> = group
            .iter()
            .map(|b| b.as_ref())
            .filter(|b| !b.is_empty())
            .map(std::io::IoSlice::new)
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match w.write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n as u64;
                    std::io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

/// A progress bar on a terminal, structured progress events in the log otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    name: String,
    size: u64,
    next_log_pct: u64,
}

impl Progress {
    fn new(name: &str, size: u64, start: u64, want_bar: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (want_bar && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(size);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(name.to_string());
            b.set_position(start);
            b
        });
        let pct = start.saturating_mul(100).checked_div(size).unwrap_or(0);
        Self {
            bar,
            name: name.to_string(),
            size,
            next_log_pct: (pct / 10 + 1) * 10,
        }
    }
    fn update(&mut self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            return;
        }
        let pct = pos
            .saturating_mul(100)
            .checked_div(self.size)
            .unwrap_or(100);
        if pct >= self.next_log_pct {
            tracing::info!(package = %self.name, bytes = pos, total = self.size, percent = pct, "Download progress");
            self.next_log_pct = (pct / 10 + 1) * 10;
        }
    }
    fn abandon(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny real HTTP/1.1 server on 127.0.0.1 that serves `body` with Range
    /// support; the first `cut_first` responses are cut after half the bytes.
    async fn serve(body: Arc<Vec<u8>>, cut_first: usize) -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/pkg.zip", l.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let h2 = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let body = body.clone();
                let n = h2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        let k = s.read(&mut buf).await.unwrap();
                        if k == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..k]);
                    }
                    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    let start = text
                        .lines()
                        .find_map(|l| l.strip_prefix("range: bytes="))
                        .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok());
                    let (status, from) = match start {
                        Some(f) => (
                            format!(
                                "206 Partial Content\r\ncontent-range: bytes {f}-{}/{}",
                                body.len() - 1,
                                body.len()
                            ),
                            f,
                        ),
                        None => ("200 OK".to_string(), 0),
                    };
                    let part = &body[from..];
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        part.len()
                    );
                    s.write_all(head.as_bytes()).await.unwrap();
                    if n < cut_first {
                        let _ = s.write_all(&part[..part.len() / 2]).await;
                        return; // drop: the client sees a short body
                    }
                    let _ = s.write_all(part).await;
                });
            }
        });
        (url, hits)
    }

    fn spec(url: &str, dest: &Path, body: &[u8]) -> DownloadSpec {
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        DownloadSpec {
            name: "pkg.zip".into(),
            url: url.parse().unwrap(),
            bearer: None,
            dest: dest.into(),
            size: body.len() as u64,
            sha256: sha,
            check: Check::Streaming,
        }
    }

    fn opts() -> DownloadOptions {
        DownloadOptions {
            attempts: 4,
            backoff: Duration::from_millis(10),
            progress_bar: false,
        }
    }

    fn body() -> Arc<Vec<u8>> {
        Arc::new(
            (0..300_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        )
    }

    /// A served body, the server's hit counter and a destination in a temp dir.
    struct Fixture {
        body: Arc<Vec<u8>>,
        url: String,
        hits: Arc<AtomicUsize>,
        _dir: tempfile::TempDir,
        dest: PathBuf,
    }

    /// [`body`] served by [`serve`] (its first `cut_first` answers cut).
    async fn fixture(cut_first: usize) -> Fixture {
        let body = body();
        let (url, hits) = serve(body.clone(), cut_first).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("pkg.zip");
        Fixture {
            body,
            url,
            hits,
            _dir: dir,
            dest,
        }
    }

    impl Fixture {
        fn spec(&self) -> DownloadSpec {
            spec(&self.url, &self.dest, &self.body)
        }
    }

    /// Streaming: resumed with Range and hashed. Deferred: resumed without
    /// hashing; the digest is the caller's (a wrong one is not checked here).
    #[tokio::test]
    async fn a_cut_transfer_is_resumed_with_range_with_either_check() {
        for check in [Check::Streaming, Check::Deferred] {
            let f = fixture(1).await;
            let mut s = f.spec();
            s.check = check;
            if check == Check::Deferred {
                s.sha256 = "0".repeat(64);
            }
            let out = download(&reqwest::Client::new(), &s, &opts())
                .await
                .unwrap();
            let want = Outcome::Downloaded {
                resumed: true,
                attempts: 2,
            };
            assert_eq!(out, want, "{check:?}");
            assert_eq!(std::fs::read(&f.dest).unwrap(), *f.body, "{check:?}");
            assert!(!part_path(&f.dest).exists(), "{check:?}");
            assert_eq!(f.hits.load(Ordering::SeqCst), 2, "{check:?}");
            assert_eq!(file_sha256(&f.dest).unwrap().1, f.body.len() as u64);
        }
    }

    #[tokio::test]
    async fn a_corrupt_partial_file_is_deleted_and_fetched_again() {
        let f = fixture(0).await;
        // A partial file whose bytes are wrong: the digest fails, it is refetched whole.
        std::fs::write(part_path(&f.dest), vec![0u8; 1000]).unwrap();
        let out = download(&reqwest::Client::new(), &f.spec(), &opts())
            .await
            .unwrap();
        assert!(
            matches!(out, Outcome::Downloaded { attempts: 2, .. }),
            "{out:?}"
        );
        assert_eq!(std::fs::read(&f.dest).unwrap(), *f.body);
    }

    #[tokio::test]
    async fn retries_are_bounded_and_the_error_names_the_package() {
        let f = fixture(usize::MAX).await;
        let mut s = f.spec();
        s.sha256 = "0".repeat(64); // never matches
        let e = download(&reqwest::Client::new(), &s, &opts())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pkg.zip") && e.contains("gave up after 4 attempts"),
            "{e}"
        );
        assert!(f.hits.load(Ordering::SeqCst) <= 8);
        assert!(!f.dest.exists());
    }

    /// A writer that takes at most `max` bytes per call, as a pipe or a busy disk may.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[std::io::IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_vectored_writes_continue_where_they_stopped() {
        let b = body();
        // Uneven buffers, more of them than one writev may take (IOV_MAX).
        let mut bufs: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        for i in 0..1500 {
            let n = 1 + (i * 37) % 300;
            bufs.push(&b[at..at + n]);
            at += n;
        }
        // Empty buffers, among others and as a whole IOV_MAX group of their own.
        bufs.insert(3, &[]);
        bufs.extend(std::iter::repeat_n(&[][..], 1100));
        let mut w = Trickle {
            out: Vec::new(),
            max: 1000,
            calls: 0,
        };
        let n = write_all_vectored(&mut w, &bufs).unwrap();
        assert_eq!(n as usize, at);
        assert_eq!(w.out, b[..at]);
        assert!(w.calls >= at / 1000, "{} calls", w.calls);
        // A writer that takes nothing is an error, not a loop.
        let mut stuck = Trickle {
            out: Vec::new(),
            max: 0,
            calls: 0,
        };
        let e = write_all_vectored(&mut stuck, &bufs).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }

    #[tokio::test]
    async fn a_file_already_present_with_the_right_digest_is_not_fetched() {
        let b = body();
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("pkg.zip");
        std::fs::write(&dest, &*b).unwrap();
        let out = download(
            &reqwest::Client::new(),
            &spec("http://127.0.0.1:1/x", &dest, &b),
            &opts(),
        )
        .await
        .unwrap();
        assert_eq!(out, Outcome::AlreadyPresent);
    }
}
