//! Reports to the control plane (stages, issues, attempt results) that survive an
//! unreachable control plane: they are queued in `<home>/work/report-queue.jsonl`
//! (one `{"method","path","body"}` per line, the same file and format the deploy
//! runner uses) and delivered in order once the control plane answers again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use molt_layout::queue::{self, Flusher};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::client::{Client, ClientError};

pub use molt_layout::queue::{QueueError, QueuedReport};

/// What happened to one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Queued,
}

/// Sends reports in order, queueing them on disk while the control plane is down.
///
/// The queue file is shared with the deploy runner through `molt_layout::queue`
/// (file locks across the two processes). Its file work is blocking, so it runs on
/// the blocking pool; the sending stays async: collect the queue, send each report
/// with reqwest, commit it (see `molt_layout::queue` for why this is split).
pub struct Reporter {
    client: Client,
    queue_file: PathBuf,
    /// Serialises senders in this process so reports keep their order.
    lock: Mutex<()>,
}

/// Run blocking queue file work off the async threads.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

impl Reporter {
    pub fn new(client: Client, queue_file: PathBuf) -> Self {
        Self {
            client,
            queue_file,
            lock: Mutex::new(()),
        }
    }

    pub fn queue_file(&self) -> &Path {
        &self.queue_file
    }

    /// Deliver one report, after everything queued before it.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Value,
    ) -> Result<Delivery, QueueError> {
        let _g = self.lock.lock().await;
        let report = QueuedReport {
            method: method.into(),
            path: path.into(),
            body,
        };
        match self.flush_locked().await? {
            None => {
                // Another process is delivering the queue: go behind it.
                self.append(&report).await?;
                tracing::info!(path = %report.path, "Report queue busy; queued report behind it");
                return Ok(Delivery::Queued);
            }
            Some(n) if n > 0 => {
                // Still unreachable: keep the order by queueing behind the others.
                self.append(&report).await?;
                tracing::warn!(path = %report.path, "Control plane unreachable; queued report for later delivery");
                return Ok(Delivery::Queued);
            }
            Some(_) => {}
        }
        match self
            .client
            .call(&report.method, &report.path, &report.body)
            .await
        {
            Ok(()) => Ok(Delivery::Delivered),
            Err(e) if e.is_unreachable() => {
                self.append(&report).await?;
                tracing::warn!(path = %report.path, error = %e, "Control plane unreachable; queued report for later delivery");
                Ok(Delivery::Queued)
            }
            Err(e) => {
                // The control plane answered and refused it: retrying will not help.
                tracing::warn!(path = %report.path, error = %e, "Control plane refused report; dropped");
                Ok(Delivery::Delivered)
            }
        }
    }

    async fn append(&self, report: &QueuedReport) -> Result<(), QueueError> {
        let q = self.queue_file.clone();
        let r = report.clone();
        blocking(&self.queue_file, move || queue::append(&q, &r)).await
    }

    /// Try to deliver the queue; returns how many reports remain queued.
    pub async fn flush(&self) -> Result<usize, QueueError> {
        let _g = self.lock.lock().await;
        match self.flush_locked().await? {
            Some(n) => Ok(n),
            // Another process is delivering it.
            None => Ok(read_queue(&self.queue_file)?.len()),
        }
    }

    /// `None` when another process is delivering the queue.
    async fn flush_locked(&self) -> Result<Option<usize>, QueueError> {
        let q = self.queue_file.clone();
        let Some(f) = blocking(&self.queue_file, move || Flusher::try_new(&q)).await? else {
            return Ok(None);
        };
        let f = Arc::new(f);
        let mut sent = 0usize;
        let remaining = 'deliver: loop {
            let batch = {
                let f = f.clone();
                blocking(&self.queue_file, move || f.pending()).await?
            };
            if batch.is_empty() {
                break 0;
            }
            let mut remaining = batch.len();
            for r in &batch {
                match self.client.call(&r.method, &r.path, &r.body).await {
                    Ok(()) => {}
                    Err(ClientError::Unreachable { .. }) => break 'deliver remaining,
                    Err(e) => {
                        tracing::warn!(path = %r.path, error = %e, "Control plane refused queued report; dropped");
                    }
                }
                sent += 1;
                // Commit after every report so a crash never re-sends many.
                let f = f.clone();
                remaining = blocking(&self.queue_file, move || f.commit(1)).await?;
            }
            if remaining == 0 {
                break 0;
            }
        };
        if sent > 0 {
            tracing::info!(
                delivered = sent,
                remaining,
                "Delivered queued reports to the control plane"
            );
        }
        Ok(Some(remaining))
    }
}

/// Read the queue without changing it; a line that is not a valid report is
/// skipped with a warning (a flush sets it aside in `report-queue.bad.jsonl`).
pub fn read_queue(path: &Path) -> Result<Vec<QueuedReport>, QueueError> {
    queue::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_file_is_the_shared_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.jsonl");
        for i in 0..3 {
            queue::append(
                &p,
                &QueuedReport {
                    method: "POST".into(),
                    path: format!("/p/{i}"),
                    body: serde_json::json!({"i": i}),
                },
            )
            .unwrap();
        }
        let q = read_queue(&p).unwrap();
        assert_eq!(
            q.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["/p/0", "/p/1", "/p/2"]
        );
    }
}

/// The agent's and the deploy runner's writers in two processes (this test
/// binary re-run with `MOLT_QUEUE_WRITER`), 1,000 reports each, over a control
/// plane that goes up and down every 50 ms, and a third process flushing like the
/// agent's heartbeat: every report arrives, each writer's in its order, and the
/// queue ends empty.
#[cfg(test)]
mod concurrent {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    const N: usize = 1000;
    const AGENT_PATH: &str = "/api/v1/agent/test-reports";
    const RUNNER_PATH: &str = "/api/v1/agent/attempts/runner/stages";

    type Log = Arc<std::sync::Mutex<Vec<(String, usize)>>>;

    fn client(url: &str) -> Client {
        let text = format!("control_plane_url = \"{url}\"\nagent_name = \"a1\"\ntoken = \"t\"\n");
        let cfg =
            crate::config::AgentConfig::parse(&text, Path::new("/h"), Path::new("/h/config.toml"))
                .unwrap();
        Client::new(&cfg).unwrap()
    }

    /// One HTTP request: record which writer and which sequence number it carries.
    fn handle(s: TcpStream, log: Log) {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut first = String::new();
        if r.read_line(&mut first).is_err() {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let v: Value = serde_json::from_slice(&body).unwrap();
        let path = first.split(' ').nth(1).unwrap_or("").to_string();
        let seq = if path == AGENT_PATH {
            v["seq"].as_u64().unwrap() as usize
        } else {
            v["message"].as_str().unwrap().parse().unwrap()
        };
        log.lock().unwrap().push((path, seq));
        let mut s = s;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
    }

    /// Serve on `port` until `until` says stop.
    fn serve(port: u16, log: &Log, until: impl Fn() -> bool) {
        let l = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        l.set_nonblocking(true).unwrap();
        while !until() {
            match l.accept() {
                Ok((s, _)) => {
                    let log = log.clone();
                    std::thread::spawn(move || handle(s, log));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    #[test]
    fn queue_writer_process() {
        let Ok(who) = std::env::var("MOLT_QUEUE_WRITER") else {
            return; // only meaningful when the test below runs this binary as a writer
        };
        let url = std::env::var("MOLT_QUEUE_URL").unwrap();
        let home = molt_layout::Home::new(std::env::var("MOLT_QUEUE_HOME").unwrap());
        if who == "agent" {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let r = Reporter::new(client(&url), home.report_queue_file());
            rt.block_on(async {
                for i in 0..N {
                    r.send("POST", AGENT_PATH, serde_json::json!({ "seq": i }))
                        .await
                        .unwrap();
                }
            });
        } else {
            let cp = molt_deploy::plan::ControlPlane {
                url,
                token: "t".into(),
                ca_bundle: None,
                proxy: None,
            };
            let r = molt_deploy::report::Reporter::new(
                &home,
                Some(cp),
                Some("runner".into()),
                Duration::from_secs(5),
            );
            for i in 0..N {
                r.stage(
                    molt_protocol::Stage::Restart,
                    molt_protocol::StageState::InProgress,
                    &i.to_string(),
                );
            }
        }
    }

    #[test]
    fn two_writers_in_two_processes_over_a_flapping_control_plane_lose_nothing() {
        let t = tempfile::tempdir().unwrap();
        let home = molt_layout::Home::new(t.path());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let log: Log = Arc::default();
        let writers_done = Arc::new(AtomicBool::new(false));
        let all_done = Arc::new(AtomicBool::new(false));
        let server = {
            let (log, writers_done, all_done) =
                (log.clone(), writers_done.clone(), all_done.clone());
            std::thread::spawn(move || {
                let mut toggles = 0;
                while !writers_done.load(Ordering::SeqCst) {
                    let up = Instant::now();
                    serve(port, &log, || up.elapsed() >= Duration::from_millis(50));
                    std::thread::sleep(Duration::from_millis(50));
                    toggles += 1;
                }
                serve(port, &log, || all_done.load(Ordering::SeqCst));
                toggles
            })
        };
        let started = Instant::now();
        let spawn = |who: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "reporter::concurrent::queue_writer_process",
                    "--test-threads=1",
                ])
                .env("MOLT_QUEUE_WRITER", who)
                .env("MOLT_QUEUE_URL", &url)
                .env("MOLT_QUEUE_HOME", t.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut agent = spawn("agent");
        let mut runner = spawn("runner");
        // The agent's heartbeat flush, in this third process.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let flusher = Reporter::new(client(&url), home.report_queue_file());
        let mut flushes = 0;
        while agent.try_wait().unwrap().is_none() || runner.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(45),
                "writers too slow"
            );
            rt.block_on(flusher.flush()).unwrap();
            flushes += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(agent.wait().unwrap().success());
        assert!(runner.wait().unwrap().success());
        writers_done.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while rt.block_on(flusher.flush()).unwrap() > 0 {
            assert!(Instant::now() < deadline, "queue not drained");
            std::thread::sleep(Duration::from_millis(20));
        }
        all_done.store(true, Ordering::SeqCst);
        let toggles = server.join().unwrap();

        let log = log.lock().unwrap().clone();
        let mut firsts: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (path, seq) in &log {
            if seen.insert((path.clone(), *seq)) {
                firsts.entry(path.as_str()).or_default().push(*seq);
            }
        }
        let expect: Vec<usize> = (0..N).collect();
        assert_eq!(seen.len(), 2 * N, "distinct reports received");
        assert_eq!(firsts[AGENT_PATH], expect, "the agent's order");
        assert_eq!(firsts[RUNNER_PATH], expect, "the runner's order");
        assert!(read_queue(&home.report_queue_file()).unwrap().is_empty());
        assert!(!queue::bad_path(&home.report_queue_file()).exists());
        assert!(
            toggles >= 4,
            "the control plane went down only {toggles} times"
        );
        eprintln!(
            "{} requests ({} duplicates), {toggles} toggles, {flushes} flushes, {:?}",
            log.len(),
            log.len() - 2 * N,
            started.elapsed()
        );
    }
}
