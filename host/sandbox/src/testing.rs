//! Test helpers for check authors and Molt's own tests: run one component
//! against given facts and assert its findings.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use molt_bundle::{BundleKind, Component, ComponentLimits, Manifest, Target};

use crate::engine::{Sandbox, SandboxConfig};
use crate::error::SandboxError;
use crate::facts::HostFacts;
use crate::findings::{CheckReport, Severity};
use crate::policy::{Capability, Policy, Preopen};
use crate::precheck::{CheckContext, FactsSource};

static N: AtomicU64 = AtomicU64::new(0);

/// A manifest entry for one precheck component with every capability and preopen.
pub fn component(path: &str, params: &[(&str, &str)]) -> Component {
    Component {
        path: path.to_string(),
        world: crate::world::CONTRACT.replace("@", "/precheck@"),
        capabilities: Capability::ALL.iter().map(|c| c.to_string()).collect(),
        preopens: Preopen::ALL.iter().map(|p| p.to_string()).collect(),
        limits: ComponentLimits::default(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// One check of the standard suite: (crate, capabilities, preopens, params).
pub type CheckSpec = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// The standard precheck suite as the signed bundles ship it (guest-checks/checks).
pub const STANDARD_CHECKS: &[CheckSpec] = &[
    ("disk_space", &["facts"], &[], &[("min_free", "1GiB")]),
    ("download_access", &["net"], &[], &[]),
    ("file_ops", &[], &["scratch", "staging"], &[]),
    ("service_account", &["facts"], &[], &[]),
    ("runtime_compat", &["facts"], &[], &[]),
    ("duplicate_install", &["services"], &[], &[]),
    ("file_locks", &["facts", "services"], &[], &[]),
];

/// A manifest entry as the shipped bundles write it: `world` (`precheck` or
/// `selector`) of this host's contract, the given requests, a 5 s deadline and
/// a 32 MiB memory cap.
pub fn shipped_component(
    path: &str,
    world: &str,
    caps: &[&str],
    preopens: &[&str],
    params: &[(&str, &str)],
) -> Component {
    Component {
        path: path.into(),
        world: crate::world::CONTRACT.replace('@', &format!("/{world}@")),
        capabilities: caps.iter().map(|s| s.to_string()).collect(),
        preopens: preopens.iter().map(|s| s.to_string()).collect(),
        limits: ComponentLimits {
            deadline_ms: Some(5_000),
            fuel: None,
            memory_bytes: Some(32 << 20),
        },
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// An in-memory manifest listing `components` (no entries: digests are not checked).
pub fn manifest(components: Vec<Component>) -> Manifest {
    let now = chrono::Utc::now();
    Manifest {
        format: 1,
        kind: BundleKind::Precheck,
        name: "molt-precheck".into(),
        buildstamp: "test".into(),
        target: Target::universal(),
        created: now,
        expires: now,
        sequence: 0,
        entries: Vec::new(),
        components,
    }
}

/// A fresh temp dir under the system temp dir (removed by the caller or left for inspection).
pub fn fresh_dir(label: &str) -> Result<PathBuf, SandboxError> {
    let d = std::env::temp_dir().join(format!(
        "molt-check-test-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).map_err(|e| SandboxError::io("create", &d, e))?;
    Ok(d)
}

/// A sandbox with the default policy and a compile cache shared by all tests
/// of this user (so only the first test compiles).
pub fn sandbox(policy: Policy) -> Result<Sandbox, SandboxError> {
    Sandbox::new(SandboxConfig {
        cache_dir: std::env::temp_dir().join("molt-sandbox-test-cache"),
        policy,
    })
}

/// Run the component at `wasm` with `facts` and `params` (all capabilities,
/// fresh install and scratch dirs) and return its report.
pub fn run_check(
    sandbox: &Sandbox,
    wasm: &Path,
    facts: HostFacts,
    params: &[(&str, &str)],
) -> Result<CheckReport, SandboxError> {
    let dir = wasm.parent().unwrap_or(Path::new("."));
    let name = wasm
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let m = manifest(vec![component(&name, params)]);
    let home = fresh_dir("home")?;
    let ctx = CheckContext {
        install_dir: home.clone(),
        scratch_parent: home.clone(),
        facts: FactsSource::Given(facts),
        net_allow: Vec::new(),
        ca_bundle: None,
        params: BTreeMap::new(),
    };
    let mut r = sandbox.run_precheck(dir, &m, &ctx)?;
    let _ = std::fs::remove_dir_all(&home);
    r.pop().ok_or_else(|| SandboxError::Component {
        component: name,
        reason: "no report".into(),
    })
}

/// Panic (with the whole report) unless the findings are exactly `expected`
/// (severity and code, in order).
pub fn assert_findings(report: &CheckReport, expected: &[(Severity, &str)]) {
    let got: Vec<(Severity, &str)> = report
        .findings
        .iter()
        .map(|f| (f.severity, f.code.as_str()))
        .collect();
    assert_eq!(
        got, expected,
        "check {} returned {:#?}",
        report.check, report.findings
    );
}
