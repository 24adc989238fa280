//! Reports to the control plane (stages, issues, attempt results) that survive an
//! unreachable control plane: they are queued in `<home>/work/report-queue.jsonl`
//! (one `{"method","path","body"}` per line, the same file and format the deploy
//! runner uses) and delivered in order once the control plane answers again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::client::{Client, ClientError};

/// One queued request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedReport {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// Errors of the report queue file.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What happened to one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Queued,
}

/// Sends reports in order, queueing them on disk while the control plane is down.
pub struct Reporter {
    client: Client,
    queue_file: PathBuf,
    /// Serialises senders so reports keep their order.
    lock: Mutex<()>,
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
        if self.flush_locked().await? > 0 {
            // Still unreachable: keep the order by queueing behind the others.
            append(&self.queue_file, &report)?;
            tracing::warn!(path = %report.path, "Control plane unreachable; queued report for later delivery");
            return Ok(Delivery::Queued);
        }
        match self
            .client
            .call(&report.method, &report.path, &report.body)
            .await
        {
            Ok(()) => Ok(Delivery::Delivered),
            Err(e) if e.is_unreachable() => {
                append(&self.queue_file, &report)?;
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

    /// Try to deliver the queue; returns how many reports remain queued.
    pub async fn flush(&self) -> Result<usize, QueueError> {
        let _g = self.lock.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> Result<usize, QueueError> {
        let queued = read_queue(&self.queue_file)?;
        if queued.is_empty() {
            return Ok(0);
        }
        let total = queued.len();
        let mut sent = 0usize;
        let mut result = Ok(());
        for r in &queued {
            match self.client.call(&r.method, &r.path, &r.body).await {
                Ok(()) => sent += 1,
                Err(ClientError::Unreachable { .. }) => break,
                Err(e) => {
                    tracing::warn!(path = %r.path, error = %e, "Control plane refused queued report; dropped");
                    sent += 1;
                }
            }
            // Persist progress after every report so a crash never re-sends many.
            if let Err(e) = rewrite(&self.queue_file, &queued[sent..]) {
                result = Err(e);
                break;
            }
        }
        result?;
        if sent > 0 {
            tracing::info!(
                delivered = sent,
                remaining = total - sent,
                "Delivered queued reports to the control plane"
            );
        }
        Ok(total - sent)
    }
}

/// Read the queue; a line that is not a valid report is skipped with a warning
/// (it cannot be delivered, and it must not block the ones after it).
pub fn read_queue(path: &Path) -> Result<Vec<QueuedReport>, QueueError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(QueueError::Io {
                path: path.into(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<QueuedReport>(line) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(file = %path.display(), line = i + 1, error = %e, "Skipping unreadable queued report")
            }
        }
    }
    Ok(out)
}

fn append(path: &Path, r: &QueuedReport) -> Result<(), QueueError> {
    use std::io::Write;
    let io = |source| QueueError::Io {
        path: path.into(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let mut line = serde_json::to_string(r).unwrap_or_default();
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    f.write_all(line.as_bytes()).map_err(io)?;
    f.sync_data().map_err(io)
}

fn rewrite(path: &Path, rest: &[QueuedReport]) -> Result<(), QueueError> {
    if rest.is_empty() {
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(QueueError::Io {
                path: path.into(),
                source,
            }),
        };
    }
    let mut text = String::new();
    for r in rest {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    molt_layout::write_atomic(path, text.as_bytes()).map_err(|e| QueueError::Io {
        path: path.into(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_file_round_trips_in_order_and_skips_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.jsonl");
        for i in 0..3 {
            append(
                &p,
                &QueuedReport {
                    method: "POST".into(),
                    path: format!("/p/{i}"),
                    body: serde_json::json!({"i": i}),
                },
            )
            .unwrap();
        }
        std::fs::write(
            &p,
            format!("{}not json\n", std::fs::read_to_string(&p).unwrap()),
        )
        .unwrap();
        let q = read_queue(&p).unwrap();
        assert_eq!(
            q.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["/p/0", "/p/1", "/p/2"]
        );
        rewrite(&p, &q[2..]).unwrap();
        assert_eq!(read_queue(&p).unwrap().len(), 1);
        rewrite(&p, &[]).unwrap();
        assert!(!p.exists());
    }
}
