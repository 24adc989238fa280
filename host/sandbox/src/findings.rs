//! What a check run produces: findings and reports, the host's own findings
//! for guest misbehaviour (timeouts, fuel, memory, crashes), and the one
//! sanitizing pass every report takes as it leaves the sandbox.
use std::sync::atomic::Ordering;
use std::time::Duration;

use molt_bundle::text::{MAX_CODE, MAX_LABEL, MAX_MESSAGE, MAX_REMEDIATION, sanitize};
use molt_protocol::FindingSeverity;
use serde::{Deserialize, Serialize};
use wasmtime::Trap;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::engine::{Refusals, TABLE_ELEMENTS};
use crate::policy::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Blocking,
    Warning,
    Info,
}

impl Severity {
    /// The wire word (`molt-protocol`'s finding severity).
    pub fn as_str(self) -> &'static str {
        FindingSeverity::from(self).as_str()
    }
}

/// A check's severities are the protocol's finding severities but `error`
/// (which only the agent and the runner report).
impl From<Severity> for FindingSeverity {
    fn from(s: Severity) -> FindingSeverity {
        match s {
            Severity::Blocking => FindingSeverity::Blocking,
            Severity::Warning => FindingSeverity::Warning,
            Severity::Info => FindingSeverity::Info,
        }
    }
}

/// One finding, as the agent reports it to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub remediation: String,
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The check's name (from `describe`, else the component's file name).
    pub check: String,
    pub version: String,
    pub description: String,
    /// Path of the component inside the bundle.
    pub component: String,
    pub findings: Vec<Finding>,
    pub elapsed: Duration,
}

impl CheckReport {
    pub fn blocking(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Blocking)
    }
}

/// Make every text of a report safe for a log line, a terminal or a page (see
/// [`molt_bundle::sanitize`]). Applied once, to each report as it leaves the
/// sandbox, whether the text came from the guest or from the host's own findings
/// (which quote guest output such as a panic message).
pub(crate) fn sanitize_report(r: &mut CheckReport) {
    r.check = sanitize(&r.check, MAX_LABEL);
    r.version = sanitize(&r.version, MAX_LABEL);
    r.description = sanitize(&r.description, MAX_MESSAGE);
    for f in &mut r.findings {
        f.code = sanitize(&f.code, MAX_CODE);
        f.message = sanitize(&f.message, MAX_MESSAGE);
        f.remediation = sanitize(&f.remediation, MAX_REMEDIATION);
    }
}

pub(crate) fn finding(
    severity: Severity,
    code: &str,
    message: String,
    remediation: &str,
) -> Finding {
    Finding {
        severity,
        code: code.into(),
        message,
        remediation: remediation.into(),
    }
}

/// The guest's stderr (bounded by its pipe), for quoting a panic message.
pub(crate) fn stderr_text(p: &MemoryOutputPipe) -> String {
    String::from_utf8_lossy(&p.contents()).into_owned()
}

pub(crate) fn nonsense(check: &str, why: &str) -> Finding {
    finding(
        Severity::Blocking,
        "check.nonsense",
        format!("Check {check} {why}"),
        "Report this to the check's author; the upgrade waits until it passes.",
    )
}

/// Turn a guest failure into a finding naming the check. Out of memory is
/// recognised from what the store's limiter refused, never from the guest's
/// output; `stderr` is only quoted (for a panic message).
pub(crate) fn classify(
    e: &wasmtime::Error,
    stderr: &str,
    refused: &Refusals,
    check: &str,
    limits: &Limits,
    crashed: impl Fn(String) -> Finding,
) -> Finding {
    let text = format!("{e:#}");
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            return finding(
                Severity::Blocking,
                "check.timeout",
                format!(
                    "Check {check} did not finish within its deadline of {} ms and was stopped",
                    limits.deadline.as_millis()
                ),
                "Report this to the check's author; the upgrade waits until it passes.",
            );
        }
        Some(Trap::OutOfFuel) => {
            return finding(
                Severity::Blocking,
                "check.fuel-exhausted",
                format!(
                    "Check {check} used up its budget of {} fuel and was stopped",
                    limits.fuel
                ),
                "Report this to the check's author; the upgrade waits until it passes.",
            );
        }
        _ => {}
    }
    let memory = refused.memory.load(Ordering::Relaxed);
    if memory > 0 {
        let asked = if memory > 1 {
            format!(" (it asked for {memory} bytes)")
        } else {
            String::new()
        };
        return finding(
            Severity::Blocking,
            "check.out-of-memory",
            format!(
                "Check {check} needed more than its memory cap of {} bytes{asked} and was stopped",
                limits.memory_bytes
            ),
            "Report this to the check's author; the upgrade waits until it passes.",
        );
    }
    let table = refused.table.load(Ordering::Relaxed);
    if table > 0 {
        return finding(
            Severity::Blocking,
            "check.out-of-memory",
            format!(
                "Check {check} needed a table larger than its cap of {TABLE_ELEMENTS} elements and was stopped"
            ),
            "Report this to the check's author; the upgrade waits until it passes.",
        );
    }
    if text.contains("import")
        && (text.contains("not defined") || text.contains("has the wrong type"))
    {
        return finding(
            Severity::Blocking,
            "check.denied",
            format!("Check {check} could not be linked: {text}"),
            "Ship the check with a manifest that requests only what the host policy allows.",
        );
    }
    // Rust prints "thread '..' panicked at <file>:" and the message on the next line.
    let lines: Vec<&str> = stderr.lines().collect();
    let panic_line = lines
        .iter()
        .position(|l| l.contains("panicked"))
        .map(|i| lines[i..(i + 2).min(lines.len())].join(" "));
    match panic_line {
        Some(l) => crashed(format!("Check {check} crashed: {l}")),
        None => crashed(format!("Check {check} crashed: {text}")),
    }
}
