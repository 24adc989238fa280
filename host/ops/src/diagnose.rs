//! `molt diagnose`: match the install's logs, journal, history and state against
//! the table of known failure signatures and name a cause and a remediation.
//!
//! Exit status (documented in docs/operator-guide.md): 0 when no failure
//! signature matched (informational ones may be shown), 1 when at least one
//! `warning` or `error` signature matched.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use molt_layout::Home;
use molt_protocol::{AgentStatus, AttemptResult, FindingSeverity};
use serde::Serialize;

use crate::OpsError;
use crate::inputs::{Evidence, Line};
use crate::signatures::{Compiled, Condition, Input, Probe, Severity};

/// How many matching lines are kept per finding (the most recent ones).
const KEEP_EVIDENCE: usize = 3;

/// One matched signature.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    pub source: String,
    pub failure_modes: Vec<String>,
    pub cause: String,
    pub remediation: String,
    /// The most recent matching lines.
    pub evidence: Vec<Line>,
    /// How many lines matched in all.
    pub matches: usize,
    /// Facts found by a condition or probe (e.g. which process holds a file).
    pub details: Vec<String>,
}

/// The result of one diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub home: PathBuf,
    pub signatures_checked: usize,
    pub files_read: Vec<PathBuf>,
    pub unreadable: Vec<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Did a failure (warning or error) match?
    pub fn failed(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity >= Severity::Warning)
    }

    /// 0 when no failure matched, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.failed())
    }

    pub fn ids(&self) -> Vec<&str> {
        self.findings.iter().map(|f| f.id.as_str()).collect()
    }

    /// Human-readable text for the terminal.
    pub fn render_text(&self) -> String {
        let mut s = format!("molt diagnose: {}\n", self.home.display());
        let rel = |p: &Path| {
            p.strip_prefix(&self.home)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| p.display().to_string())
        };
        if self.files_read.is_empty() {
            s.push_str("No log files found.\n");
        } else {
            s.push_str(&format!(
                "Read: {}\n",
                self.files_read
                    .iter()
                    .map(|p| rel(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for u in &self.unreadable {
            s.push_str(&format!("Could not read: {u}\n"));
        }
        let failures = self
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Warning)
            .count();
        if self.findings.is_empty() {
            s.push_str(&format!(
                "\nNo known failure signature matched ({} signatures checked).\n",
                self.signatures_checked
            ));
            return s;
        }
        s.push_str(&format!(
            "\n{failures} known failure(s) matched{} ({} signatures checked):\n",
            if self.findings.len() > failures {
                format!(", {} note(s)", self.findings.len() - failures)
            } else {
                String::new()
            },
            self.signatures_checked
        ));
        for f in &self.findings {
            let sev = match f.severity {
                Severity::Info => "note",
                s => FindingSeverity::from(s).as_str(),
            };
            s.push_str(&format!("\n[{sev}] {}: {}\n", f.id, f.title));
            s.push_str(&format!("  Source:      {}\n", f.source));
            for (i, e) in f.evidence.iter().enumerate() {
                let at = if e.line == 0 {
                    rel(&e.file)
                } else {
                    format!("{}:{}", rel(&e.file), e.line)
                };
                s.push_str(&format!(
                    "  {} {at}: {}\n",
                    if i == 0 {
                        "Evidence:   "
                    } else {
                        "            "
                    },
                    e.text.trim()
                ));
            }
            if f.matches > f.evidence.len() {
                s.push_str(&format!(
                    "              ({} matching lines in all)\n",
                    f.matches
                ));
            }
            for d in &f.details {
                s.push_str(&format!("  Found:       {d}\n"));
            }
            s.push_str(&format!("  Cause:       {}\n", f.cause));
            s.push_str(&format!("  Remediation: {}\n", f.remediation));
        }
        s
    }
}

/// Diagnose `home` with the built-in table.
pub fn diagnose(home: &Home, extra_logs: &[PathBuf]) -> Result<Report, OpsError> {
    let table = crate::signatures::builtin()?;
    let ev = Evidence::gather(home, extra_logs);
    Ok(diagnose_with(&table, &ev, home))
}

/// Diagnose gathered evidence with a given table.
pub fn diagnose_with(table: &[Compiled], ev: &Evidence, home: &Home) -> Report {
    let mut findings = Vec::new();
    for c in table {
        if let Some(f) = evaluate(c, ev, home) {
            findings.push(f);
        }
    }
    let hidden: BTreeSet<String> = table
        .iter()
        .filter(|c| findings.iter().any(|f: &Finding| f.id == c.sig.id))
        .flat_map(|c| c.sig.supersedes.iter().cloned())
        .collect();
    findings.retain(|f| !hidden.contains(&f.id));
    // Errors first, then warnings, then notes; table order within a severity.
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Report {
        home: home.root().to_path_buf(),
        signatures_checked: table.len(),
        files_read: ev.files_read.clone(),
        unreadable: ev.unreadable.clone(),
        findings,
    }
}

fn lines_of(input: Input, ev: &Evidence) -> Vec<&Line> {
    match input {
        Input::AgentLog => ev.agent.iter().collect(),
        Input::UpgradeLog => ev.upgrade.iter().collect(),
        Input::AnyLog => ev
            .agent
            .iter()
            .chain(ev.upgrade.iter())
            .chain(ev.history.iter())
            .collect(),
        Input::History => ev.history.iter().collect(),
        Input::State => Vec::new(),
    }
}

fn evaluate(c: &Compiled, ev: &Evidence, home: &Home) -> Option<Finding> {
    let m = &c.sig.matcher;
    let mut details = Vec::new();
    if let Some(cond) = m.condition {
        details = check_condition(cond, ev, home)?;
    }
    let lines = lines_of(m.input, ev);
    let mut hits: Vec<&Line> = Vec::new();
    if !c.any.is_empty() {
        hits = lines
            .iter()
            .copied()
            .filter(|l| c.any.iter().any(|r| r.is_match(&l.text)))
            .collect();
        if hits.is_empty() {
            return None;
        }
    }
    for r in &c.all {
        match lines.iter().rev().find(|l| r.is_match(&l.text)) {
            Some(l) => {
                if !hits.contains(l) {
                    hits.push(l);
                }
            }
            None => return None,
        }
    }
    if let Some(p) = c.sig.probe {
        details.extend(run_probe(p, home));
    }
    let matches = hits.len();
    let evidence: Vec<Line> = hits
        .iter()
        .rev()
        .take(KEEP_EVIDENCE)
        .rev()
        .map(|l| (*l).clone())
        .collect();
    Some(Finding {
        id: c.sig.id.clone(),
        title: c.sig.title.clone(),
        severity: c.sig.severity,
        source: c.sig.source.clone(),
        failure_modes: c.sig.failure_modes.clone(),
        cause: c.sig.cause.clone(),
        remediation: c.sig.remediation.clone(),
        evidence,
        matches,
        details,
    })
}

/// `Some(details)` when the condition holds.
fn check_condition(cond: Condition, ev: &Evidence, home: &Home) -> Option<Vec<String>> {
    match cond {
        Condition::JournalUnfinishedNoRunner => {
            let j = ev.journal.as_ref()?;
            if ev.deploy_lock_held {
                return None;
            }
            Some(vec![format!(
                "work/deploy.journal: deploy {} -> {} stopped at step {:?} (runner pid {} is {})",
                j.from_version,
                j.to_version,
                j.step,
                j.runner_pid,
                if molt_deploy::proc::alive(j.runner_pid) {
                    "alive but does not hold the deploy lock"
                } else {
                    "gone"
                }
            )])
        }
        Condition::InstallIncomplete => {
            let problems = install_problems(home);
            if problems.is_empty() {
                None
            } else {
                Some(problems)
            }
        }
        Condition::TruststoreCertsLost => {
            let lost = lost_truststore_certs(home);
            if lost.is_empty() { None } else { Some(lost) }
        }
        Condition::StatusStuck => {
            let s = ev.status.as_ref()?;
            if s.status != AgentStatus::Upgrading
                || molt_deploy::proc::alive(s.pid)
                || ev.deploy_lock_held
                || ev.journal.is_some()
            {
                return None;
            }
            Some(vec![format!(
                "work/agent.status.json: status {} since {} written by pid {}, which is gone",
                s.status, s.since, s.pid
            )])
        }
        Condition::VersionFlapping => {
            let seq = visited_versions(&ev.runs);
            let returns = (2..seq.len())
                .filter(|&i| seq[i] == seq[i - 2] && seq[i] != seq[i - 1])
                .count();
            if returns >= 2 {
                Some(vec![format!(
                    "versions over the recorded deploys: {}",
                    seq.join(" -> ")
                )])
            } else {
                None
            }
        }
    }
}

/// The versions an install ran, from the completed deploys in order.
fn visited_versions(runs: &[crate::inputs::Run]) -> Vec<String> {
    let mut seq: Vec<String> = Vec::new();
    for r in runs
        .iter()
        .filter(|r| r.result.as_deref() == Some(AttemptResult::Complete.as_str()))
    {
        if seq.last() != Some(&r.from) {
            seq.push(r.from.clone());
        }
        seq.push(r.to.clone());
    }
    seq
}

/// Why the current version is not complete: missing `current`, missing files,
/// wrong digests or modes. The truststore is skipped (operators add certificates
/// to it in place, seeds 7.7).
pub fn install_problems(home: &Home) -> Vec<String> {
    let mut out = Vec::new();
    let v = match home.current_version() {
        Ok(Some(v)) => v,
        Ok(None) => {
            if home.versions_dir().is_dir() || home.config_file().is_file() {
                out.push(format!(
                    "{} does not exist: no version is current",
                    home.current_link().display()
                ));
            }
            return out;
        }
        Err(e) => return vec![e.to_string()],
    };
    let dir = home.version_dir(&v);
    if !dir.is_dir() {
        return vec![format!(
            "current points at versions/{v}, which does not exist"
        )];
    }
    let pkgs = match molt_layout::read_meta_dir(&home.meta_dir_of(&v)) {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return vec![format!("versions/{v}/meta has no installed package meta")],
        Err(e) => return vec![e.to_string()],
    };
    let mut missing = Vec::new();
    for p in &pkgs {
        for (rel, meta) in &p.files {
            if rel == molt_deploy::truststore::TRUSTSTORE {
                continue;
            }
            let f = dir.join(rel);
            if !f.is_file() {
                missing.push(rel.clone());
                continue;
            }
            match molt_deploy::fsutil::sha256_file(&f) {
                Ok(sha) if sha.eq_ignore_ascii_case(&meta.sha256) => {}
                Ok(_) => out.push(format!(
                    "versions/{v}/{rel}: content differs from the installed meta (package {})",
                    p.kind
                )),
                Err(e) => out.push(e.to_string()),
            }
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        out.insert(
            0,
            format!(
                "versions/{v}: {} file(s) of the installed packages are missing: {}{}",
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        );
    }
    out
}

/// Certificates in a truststore backup that the current truststore and the
/// current stock copy lack.
pub fn lost_truststore_certs(home: &Home) -> Vec<String> {
    use molt_deploy::truststore::{STOCK, TRUSTSTORE, pem_blocks};
    let Ok(Some(v)) = home.current_version() else {
        return Vec::new();
    };
    let cur = home.version_dir(&v);
    let Ok(store) = std::fs::read_to_string(cur.join(TRUSTSTORE)) else {
        return Vec::new();
    };
    let mut known = pem_blocks(&store);
    if let Ok(stock) = std::fs::read_to_string(cur.join(STOCK)) {
        known.extend(pem_blocks(&stock));
    }
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(home.truststore_backup_dir()) else {
        return out;
    };
    let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let lost = pem_blocks(&text)
            .into_iter()
            .filter(|b| !known.contains(b))
            .count();
        if lost > 0 {
            out.push(format!(
                "{} holds {lost} certificate(s) missing from versions/{v}/{TRUSTSTORE}",
                f.display()
            ));
        }
    }
    out
}

fn run_probe(p: Probe, home: &Home) -> Vec<String> {
    match p {
        Probe::VersionDirUsers => {
            let current = home.current_version().ok().flatten();
            let mut out = Vec::new();
            let Ok(rd) = std::fs::read_dir(home.versions_dir()) else {
                return out;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if Some(&name) == current.as_ref() || name.starts_with('.') {
                    continue;
                }
                for pid in molt_deploy::proc::users_of(&e.path()) {
                    out.push(format!(
                        "versions/{name} is in use by pid {pid} ({})",
                        process_name(pid)
                    ));
                }
            }
            out
        }
    }
}

/// `comm` and command line of a process, for naming it to the operator.
pub fn process_name(pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    match (comm.is_empty(), cmd.is_empty()) {
        (true, true) => "unknown".into(),
        (false, true) => comm,
        (_, false) => format!("{comm}: {cmd}"),
    }
}

#[cfg(test)]
#[path = "diagnose_tests.rs"]
mod tests;
