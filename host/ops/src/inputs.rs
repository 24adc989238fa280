//! Evidence for `molt diagnose` and `molt status`, read from the install's local
//! state only: logs (with the runner's upgrade-log sections told apart), the
//! deploy journal and last outcome, the report queue (stage history not yet
//! delivered) and the status file. A file that cannot be read is noted, never fatal.
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use molt_deploy::journal::{Journal, LastDeploy};
use molt_layout::{AgentStatus, Home};
use regex::Regex;
use serde::Serialize;

/// Upper bound of what is read from the end of one log file.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

pub const SECTION_BEGIN: &str = "<< UPGRADE LOG BEGIN >>";
pub const SECTION_END: &str = "<< UPGRADE LOG END >>";

/// One line of evidence, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub file: PathBuf,
    /// 1-based line number in `file` (0 for synthesized history lines).
    pub line: usize,
    pub text: String,
}

/// One deploy seen in the upgrade logs: "Upgrade runner started (pid N): A -> B".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub from: String,
    pub to: String,
    /// `Complete`, `Rolled Back`, `Failed`, or `None` if the section has no end line.
    pub result: Option<String>,
}

/// Everything diagnose and status look at.
#[derive(Debug, Default)]
pub struct Evidence {
    pub agent: Vec<Line>,
    pub upgrade: Vec<Line>,
    pub history: Vec<Line>,
    pub runs: Vec<Run>,
    pub journal: Option<Journal>,
    pub deploy_lock_held: bool,
    pub last_deploy: Option<LastDeploy>,
    pub status: Option<AgentStatus>,
    pub queued: Vec<molt_deploy::report::QueuedRequest>,
    /// Files that exist but could not be read, with the reason.
    pub unreadable: Vec<String>,
    pub files_read: Vec<PathBuf>,
    /// Texts of the lines of the files read so far: the same event in two
    /// files (agent.log and the supervisor's agent.console.log, an upgrade
    /// section and the runner's own log) is evidence once, not twice.
    pub(crate) seen: std::collections::HashSet<String>,
}

/// ANSI colour codes that tracing writes when its output is a terminal.
static ANSI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("\x1b\\[[0-9;]*[A-Za-z]").expect("static regex"));
static RUN_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Upgrade runner started \(pid \d+\): (\S+) -> (\S+)").expect("static regex")
});
static RUN_END: LazyLock<Regex> = LazyLock::new(|| {
    let results =
        crate::status::alternation(molt_protocol::AttemptResult::ALL.iter().map(|r| r.as_str()));
    Regex::new(&format!("Upgrade ({results}):")).expect("static regex")
});

/// Read at most [`MAX_LOG_BYTES`] from the end of a file, lossily as UTF-8.
/// Returns the text and the number of lines skipped before it.
fn read_tail(path: &Path) -> std::io::Result<(String, usize)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut skipped = 0;
    if len > MAX_LOG_BYTES {
        // Count the lines we skip so line numbers stay true (in chunks: the
        // head of a runaway log can be gigabytes).
        let mut head = (&mut f).take(len - MAX_LOG_BYTES);
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let n = head.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            skipped += chunk[..n].iter().filter(|b| **b == b'\n').count();
        }
        f.seek(SeekFrom::Start(len - MAX_LOG_BYTES))?;
    }
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf).into_owned(), skipped))
}

/// What names one event across files: the timestamp to the second plus the
/// rest of the line. The agent formats each event once per output (file and
/// stderr), each with its own clock reading, so the copies differ in their
/// microseconds. `None` for a line without a timestamp: the same text in two
/// files may be two events.
fn event_key(text: &str) -> Option<String> {
    let (ts, rest) = text.split_once(char::is_whitespace)?;
    let b = ts.as_bytes();
    let stamped = b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && b[13] == b':';
    stamped.then(|| {
        let words: Vec<&str> = rest.split_whitespace().collect();
        format!("{} {}", &ts[..19], words.join(" "))
    })
}

/// Split a log into lines outside and inside upgrade-log sections.
pub fn split_sections(file: &Path, text: &str, first_line: usize) -> (Vec<Line>, Vec<Line>) {
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    let mut in_section = false;
    for (i, raw) in text.lines().enumerate() {
        let t = ANSI.replace_all(raw, "").into_owned();
        let l = Line {
            file: file.to_path_buf(),
            line: first_line + i + 1,
            text: t,
        };
        if l.text.contains(SECTION_BEGIN) {
            in_section = true;
            continue;
        }
        if l.text.contains(SECTION_END) {
            in_section = false;
            continue;
        }
        if in_section {
            inside.push(l)
        } else {
            outside.push(l)
        }
    }
    (outside, inside)
}

/// The deploys recorded in upgrade-log lines, in order.
pub fn runs_of(lines: &[Line]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for l in lines {
        if let Some(c) = RUN_START.captures(&l.text) {
            runs.push(Run {
                from: c[1].to_string(),
                to: c[2].to_string(),
                result: None,
            });
        } else if let Some(c) = RUN_END.captures(&l.text)
            && let Some(r) = runs.last_mut()
            && r.result.is_none()
        {
            r.result = Some(c[1].to_string());
        }
    }
    runs
}

impl Evidence {
    /// Gather from `home`, plus extra log files given by the operator (grabbed logs).
    pub fn gather(home: &Home, extra_logs: &[PathBuf]) -> Evidence {
        let mut ev = Evidence::default();
        let logs = home.logs_dir();
        let mut agent_files = vec![
            home.agent_log(),
            home.agent_console_log(),
            home.supervisor_log(),
            home.deploy_resume_log(),
        ];
        agent_files.extend(extra_logs.iter().cloned());
        for f in &agent_files {
            ev.read_log(f, false);
        }
        // Live runner logs of deploys not yet appended to the agent log.
        if let Ok(rd) = std::fs::read_dir(home.upgrade_temp_dir()) {
            let mut dirs: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            dirs.sort();
            for d in dirs {
                let d = molt_layout::UpgradeDir(&d);
                for f in [d.upgrade_log(), d.runner_log()] {
                    ev.read_log(&f, true);
                }
            }
        }
        // Output of runners that never signalled start, kept by the agent
        // when it removed their upgrade dir (`logs/runner-<dir>.log`).
        if let Ok(rd) = std::fs::read_dir(&logs) {
            let mut kept: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("runner-") && n.ends_with(".log"))
                })
                .collect();
            kept.sort();
            for f in kept {
                ev.read_log(&f, true);
            }
        }
        ev.runs = runs_of(&ev.upgrade);

        match Journal::load(home) {
            Ok(j) => ev.journal = j,
            Err(e) => ev.unreadable.push(e.to_string()),
        }
        ev.deploy_lock_held =
            molt_deploy::fsutil::FileLock::is_held(&Journal::lock_path(home)).unwrap_or(false);
        match molt_deploy::journal::read_last(home) {
            Ok(l) => ev.last_deploy = l,
            Err(e) => ev.unreadable.push(e.to_string()),
        }
        match home.read_status() {
            Ok(s) => ev.status = s,
            Err(e) => ev.unreadable.push(e.to_string()),
        }
        match molt_deploy::report::read_queue(home) {
            Ok(q) => ev.queued = q,
            Err(e) => ev
                .unreadable
                .push(format!("{}: {e}", home.report_queue_file().display())),
        }
        ev.history = history_lines(home, &ev.queued, ev.last_deploy.as_ref());
        ev
    }

    fn read_log(&mut self, f: &Path, upgrade: bool) {
        match read_tail(f) {
            Ok((text, skipped)) => {
                let (mut out, mut ins) = split_sections(f, &text, skipped);
                let earlier = &self.seen;
                out.retain(|l| event_key(&l.text).is_none_or(|k| !earlier.contains(&k)));
                ins.retain(|l| event_key(&l.text).is_none_or(|k| !earlier.contains(&k)));
                self.seen.extend(
                    out.iter()
                        .chain(ins.iter())
                        .filter_map(|l| event_key(&l.text)),
                );
                if upgrade {
                    self.upgrade.extend(out);
                } else {
                    self.agent.extend(out);
                }
                self.upgrade.extend(ins);
                self.files_read.push(f.to_path_buf());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.unreadable.push(format!("{}: {e}", f.display())),
        }
    }
}

/// Upgrade history known locally, as lines: stage reports and results still in
/// the report queue, and the last deploy's outcome.
fn history_lines(
    home: &Home,
    queued: &[molt_deploy::report::QueuedRequest],
    last: Option<&LastDeploy>,
) -> Vec<Line> {
    let file = home.report_queue_file();
    let mut out = Vec::new();
    for (i, q) in queued.iter().enumerate() {
        let b = &q.body;
        let text = if q.path.ends_with("/stages") {
            format!(
                "{} {}: {}",
                b["stage"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?"),
                b["message"].as_str().unwrap_or("")
            )
        } else if q.path.ends_with("/finish") {
            format!(
                "Upgrade {}: {}",
                b["result"].as_str().unwrap_or("?"),
                b["message"].as_str().unwrap_or("")
            )
        } else if q.path.ends_with("/issues") {
            let codes: Vec<&str> = b["findings"]
                .as_array()
                .map(|a| a.iter().filter_map(|f| f["code"].as_str()).collect())
                .unwrap_or_default();
            format!(
                "issues from {}: {}",
                b["source"].as_str().unwrap_or("?"),
                codes.join(", ")
            )
        } else {
            continue;
        };
        out.push(Line {
            file: file.clone(),
            line: i + 1,
            text,
        });
    }
    if let Some(l) = last {
        out.push(Line {
            file: molt_deploy::journal::last_deploy_file(home),
            line: 0,
            text: format!(
                "Upgrade {}: {} -> {}: {}",
                l.result, l.from_version, l.to_version, l.message
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_sections_are_told_apart_and_line_numbers_kept() {
        let t = "a\n<< UPGRADE LOG BEGIN >>\nb\nc\n<< UPGRADE LOG END >>\n\x1b[32mINFO\x1b[0m d\n";
        let (out, ins) = split_sections(Path::new("x"), t, 10);
        assert_eq!(
            out.iter()
                .map(|l| (l.line, l.text.as_str()))
                .collect::<Vec<_>>(),
            [(11, "a"), (16, "INFO d")]
        );
        assert_eq!(
            ins.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
    }

    #[test]
    fn an_event_in_agent_log_and_console_log_is_evidence_once() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        std::fs::create_dir_all(home.logs_dir()).unwrap();
        let ev1 = "2026-11-23T07:00:00.123456Z ERROR unable to download x: refused";
        let ev2 = "2026-11-23T07:00:20.654321Z ERROR unable to download x: refused";
        std::fs::write(home.agent_log(), format!("{ev1}\n{ev2}\n")).unwrap();
        std::fs::write(
            home.agent_console_log(),
            // The console copy: its own clock reading, ANSI colours.
            "2026-11-23T07:00:00.123471Z \x1b[31mERROR\x1b[0m unable to download x: refused\n\
             2026-11-23T07:00:20.654339Z \x1b[31mERROR\x1b[0m unable to download x: refused\n\
             starting supervisor child\n",
        )
        .unwrap();
        let ev = Evidence::gather(&home, &[]);
        let texts: Vec<&str> = ev.agent.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, [ev1, ev2, "starting supervisor child"]);
        assert!(ev.agent[0].file.ends_with("agent.log"));
    }

    #[test]
    fn a_log_larger_than_the_window_keeps_true_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.log");
        let line = "x".repeat(1023) + "\n";
        let n = (MAX_LOG_BYTES / 1024) as usize + 3;
        std::fs::write(&p, line.repeat(n)).unwrap();
        let (text, skipped) = read_tail(&p).unwrap();
        assert_eq!(skipped, 3);
        assert_eq!(text.lines().count(), n - 3);
    }

    #[test]
    fn runs_are_read_from_runner_start_and_result_lines() {
        let l = |t: &str| Line {
            file: "f".into(),
            line: 1,
            text: t.into(),
        };
        let lines = [
            l("2026 Upgrade runner started (pid 7): v1 -> v2"),
            l("2026 Upgrade Rolled Back: Health Check of version v2 failed"),
            l("2026 Upgrade runner started (pid 9): v1 -> v3"),
        ];
        let r = runs_of(&lines);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].result.as_deref(), Some("Rolled Back"));
        assert_eq!(
            (r[1].from.as_str(), r[1].to.as_str(), r[1].result.as_deref()),
            ("v1", "v3", None)
        );
    }
}
