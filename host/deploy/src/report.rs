//! Stage reports to the control plane (`POST /api/v1/agent/attempts/{id}/stages`).
//! Each report first delivers what is queued in `work/report-queue.jsonl` (shared
//! with the agent through `molt_layout::queue`), then is tried once with a short
//! timeout; when the control plane cannot be reached, or another process is
//! delivering the queue, it is appended behind the queue, so the order is kept.
use std::time::Duration;

use molt_layout::Home;
use molt_layout::queue::{self, Flushed, Outcome};
use molt_protocol::{AttemptResult, FindingSeverity, FinishReport, Stage, StageReport, StageState};

use crate::plan::ControlPlane;

/// One queued request (`{"method","path","body"}` per line).
pub type QueuedRequest = queue::QueuedReport;

/// Sends stage reports for one attempt.
#[derive(Debug, Clone)]
pub struct Reporter {
    home: Home,
    cp: Option<ControlPlane>,
    attempt: Option<String>,
    timeout: Duration,
}

impl Reporter {
    pub fn new(
        home: &Home,
        cp: Option<ControlPlane>,
        attempt: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            home: home.clone(),
            cp,
            attempt,
            timeout,
        }
    }

    /// Report a stage.
    pub fn stage(&self, stage: Stage, state: StageState, message: &str) {
        // The agent's stage line (molt_protocol::stage_line): one format in
        // both logs, read by `molt status` with one parser.
        let (stage_word, state_word) = (stage.as_str(), state.as_str());
        let line = molt_protocol::stage_line(stage, state, message);
        match state {
            StageState::Failed => tracing::warn!(stage = stage_word, state = state_word, "{line}"),
            _ => tracing::info!(stage = stage_word, state = state_word, "{line}"),
        }
        let Some(id) = &self.attempt else { return };
        let body = StageReport::now(stage, state, message).to_value();
        self.send("POST", &format!("/api/v1/agent/attempts/{id}/stages"), body);
    }

    /// Report the end of the attempt.
    pub fn finish(&self, result: AttemptResult, message: &str) {
        tracing::info!(
            result = result.as_str(),
            message,
            "upgrade attempt finished"
        );
        let Some(id) = &self.attempt else { return };
        let body = FinishReport {
            result,
            message: message.to_string(),
        }
        .to_value();
        self.send("POST", &format!("/api/v1/agent/attempts/{id}/finish"), body);
    }

    /// Report an issue (`POST /api/v1/agent/issues`), e.g. the Reinstall Service warning.
    pub fn issue(
        &self,
        source: &str,
        code: &str,
        severity: FindingSeverity,
        description: &str,
        remediation: &str,
    ) {
        tracing::warn!(source, code, description, "issue reported");
        let body = serde_json::json!({
            "source": source,
            "findings": [{"code": code, "severity": severity.as_str(), "description": description, "remediation": remediation}],
        });
        self.send("POST", "/api/v1/agent/issues", body);
    }

    fn send(&self, method: &str, path: &str, body: serde_json::Value) {
        let req = QueuedRequest {
            method: method.into(),
            path: path.into(),
            body,
        };
        let file = self.home.report_queue_file();
        if let Some(cp) = &self.cp {
            // Only after a flush of our own empties the queue may this one go
            // directly: otherwise it would overtake reports queued before it.
            let empty = match queue::flush(&file, |r| self.post(cp, r)) {
                Ok(Flushed::Remaining(n)) => n == 0,
                Ok(Flushed::Busy) => false,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the report queue");
                    false
                }
            };
            if empty && self.post(cp, &req) == Outcome::Done {
                return;
            }
        }
        if let Err(e) = queue::append(&file, &req) {
            tracing::error!(error = %e, "cannot queue report");
        }
    }

    /// One request; `Keep` when the control plane cannot be reached (a 502-504
    /// from a proxy counts as that), `Done` when it answered, even with a refusal.
    fn post(&self, cp: &ControlPlane, r: &QueuedRequest) -> Outcome {
        let url = format!("{}{}", cp.url.trim_end_matches('/'), r.path);
        let agent = match cp.http(self.timeout) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "report not delivered (the control plane's client cannot be set up); queued");
                return Outcome::Keep;
            }
        };
        match agent
            .request(&r.method, &url)
            .set("Authorization", &format!("Bearer {}", cp.token))
            .send_json(r.body.clone())
        {
            Ok(_) => Outcome::Done,
            Err(ureq::Error::Status(code, _)) if !(502..=504).contains(&code) => {
                tracing::warn!(url, status = code, "control plane refused report; dropped");
                Outcome::Done
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "report not delivered; queued");
                Outcome::Keep
            }
        }
    }
}

/// Append one request to the report queue (fsync'd, under the queue's file lock).
pub fn enqueue(home: &Home, req: &QueuedRequest) -> std::io::Result<()> {
    queue::append(&home.report_queue_file(), req).map_err(std::io::Error::other)
}

/// Read the queue without changing it (for status tools and tests).
pub fn read_queue(home: &Home) -> std::io::Result<Vec<QueuedRequest>> {
    queue::read(&home.report_queue_file()).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_cannot_be_sent_is_queued_in_order() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::new(t.path());
        // Nothing listens on this port: bind then drop to get a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cp = ControlPlane {
            url: format!("http://127.0.0.1:{port}"),
            token: "t".into(),
            ca_bundle: None,
            proxy: None,
        };
        let r = Reporter::new(
            &home,
            Some(cp),
            Some("42".into()),
            Duration::from_millis(500),
        );
        r.stage(Stage::DeployBinaryFiles, StageState::InProgress, "");
        r.stage(Stage::DeployBinaryFiles, StageState::Complete, "done");
        let q = read_queue(&home).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].path, "/api/v1/agent/attempts/42/stages");
        assert_eq!(q[0].body["state"], StageState::InProgress.as_str());
        assert_eq!(q[1].body["state"], StageState::Complete.as_str());
    }

    #[test]
    fn a_report_is_posted_over_real_http_with_the_token() {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = Vec::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push(line);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
                .unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        let t = tempfile::tempdir().unwrap();
        let home = Home::new(t.path());
        let cp = ControlPlane {
            url: format!("http://127.0.0.1:{port}"),
            token: "tok".into(),
            ca_bundle: None,
            proxy: None,
        };
        Reporter::new(&home, Some(cp), Some("9".into()), Duration::from_secs(5)).stage(
            Stage::Restart,
            StageState::Complete,
            "ok",
        );
        let (head, body) = srv.join().unwrap();
        assert!(head[0].starts_with("POST /api/v1/agent/attempts/9/stages"));
        assert!(
            head.iter().any(|h| h.trim() == "Authorization: Bearer tok"),
            "{head:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["stage"], Stage::Restart.as_str());
        assert!(read_queue(&home).unwrap().is_empty());
    }
}
