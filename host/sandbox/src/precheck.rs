//! The precheck world: prepare every component of a verified bundle (grant,
//! world, digest, compile, imports) and run them in parallel, each in its own
//! store with a fresh scratch dir; a guest that misbehaves gets a blocking
//! finding, never an error.
use std::collections::BTreeMap;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use molt_bundle::text::{MAX_CODE, sanitize};
use molt_bundle::{Component as ManifestComponent, Manifest};
use molt_layout::Home;
use wasmtime::component::Component;
use wasmtime_wasi::FsPerms;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::bindings::precheck as pb;
use crate::cache::sha256_hex;
use crate::engine::{Refusals, Sandbox, base_wasi};
use crate::error::SandboxError;
use crate::facts::HostFacts;
use crate::findings::{
    CheckReport, Finding, Severity, classify, finding, nonsense, sanitize_report, stderr_text,
};
use crate::net::NetGrant;
use crate::policy::{Capability, Grant, PolicyError, Preopen};
use crate::world::{CONTRACT, KNOWN_MAJORS, check_world};

/// Findings one check may return.
const MAX_FINDINGS: usize = 256;

/// Where the facts come from.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per run; boxing would only obscure the API
pub enum FactsSource {
    /// Probe this host (`HostFacts::probe(install_dir, scratch_parent)`).
    Probe,
    /// Given (simulated, or probed and overridden from a facts.toml).
    Given(HostFacts),
}

/// What one `run_precheck` runs against.
#[derive(Debug, Clone)]
pub struct CheckContext {
    pub install_dir: PathBuf,
    /// Parent of the fresh per-check scratch dirs (e.g. `<home>/work`).
    pub scratch_parent: PathBuf,
    pub facts: FactsSource,
    /// URLs allowed for this run in addition to the policy's (the download URL).
    pub net_allow: Vec<String>,
    /// The operator's private CA bundle (`ca_bundle`), trusted by `net.probe`
    /// besides the web PKI, as the agent's own downloads trust it.
    pub ca_bundle: Option<PathBuf>,
    /// Parameters added to (and overriding) every check's manifest params.
    pub params: BTreeMap<String, String>,
}

/// A path inside the bundle: relative, no `..`.
pub(crate) fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .all(|c| matches!(c, PathComponent::Normal(_)))
    {
        Some(dir.join(p))
    } else {
        None
    }
}

fn code_ok(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.chars()
            .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '.' || x == '-')
        && !c.starts_with(['.', '-'])
}

/// A component ready to run, or the report saying why it will not.
struct Prepared {
    component: Component,
    grant: Grant,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a check's dirs could not be set up (a blocking `check.setup` finding).
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot create scratch dir {}: {source}", dir.display())]
    Scratch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open install dir {}: {reason}", dir.display())]
    Install { dir: PathBuf, reason: String },
    /// WASI refused a preopen (its error, as text: wasmtime's error type is
    /// not a `std::error::Error`).
    #[error("{0}")]
    Preopen(String),
}

impl SetupError {
    fn preopen(e: wasmtime::Error) -> SetupError {
        SetupError::Preopen(e.to_string())
    }
}

/// Removes a scratch dir when the run ends, however it ends.
struct ScratchGuard(Option<PathBuf>);
impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0
            && let Err(e) = std::fs::remove_dir_all(p)
        {
            tracing::warn!(dir = %p.display(), error = %e, "Pre Upgrade Check: could not remove scratch dir");
        }
    }
}

/// An empty report for component `c`, named after its file until `describe`
/// names it.
fn unnamed_report(c: &ManifestComponent) -> CheckReport {
    CheckReport {
        check: stem(&c.path),
        version: String::new(),
        description: String::new(),
        component: c.path.clone(),
        findings: Vec::new(),
        elapsed: Duration::ZERO,
    }
}

fn stem(path: &str) -> String {
    Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().replace('_', "-"))
        .unwrap_or_else(|| path.to_string())
}

impl Sandbox {
    /// Everything before running: grant, world, digest, compile, imports.
    fn prepare(
        &self,
        bundle_dir: &Path,
        manifest: &Manifest,
        c: &ManifestComponent,
        world: &str,
    ) -> Result<Prepared, Finding> {
        let denied = |why: String| {
            finding(
                Severity::Blocking,
                "check.denied",
                format!("Check {} was refused: {why}", c.path),
                "Ship the check with a manifest that requests only what the host policy allows.",
            )
        };
        let grant = self.policy.grant(c).map_err(|e| denied(e.to_string()))?;
        check_world(&c.world, world).map_err(|why| {
            finding(
                Severity::Blocking,
                "check.incompatible",
                format!("Check {} cannot run: {why}", c.path),
                "Upgrade the agent, or ship a check built for this host's contract.",
            )
        })?;
        let invalid = |why: String| {
            finding(
                Severity::Blocking,
                "check.invalid",
                format!("Check {} is invalid: {why}", c.path),
                "Rebuild and re-sign the check bundle.",
            )
        };
        let path =
            inside(bundle_dir, &c.path).ok_or_else(|| invalid("path leaves the bundle".into()))?;
        let wasm = std::fs::read(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let sha = sha256_hex(&wasm);
        if let Some(entry) = manifest.entry(&c.path)
            && entry.sha256 != sha
        {
            return Err(invalid(format!(
                "SHA-256 {sha} differs from the signed manifest's {}",
                entry.sha256
            )));
        }
        let component = self
            .cache
            .load_or_compile(&self.engine, &wasm, &sha)
            .map_err(|e| invalid(e.to_string()))?;
        // The component's real imports must be within what its manifest requested.
        for (name, _) in component.component_type().imports(&self.engine) {
            if let Some(rest) = name.strip_prefix("molt:check/") {
                let (iface, ver) = rest.split_once('@').unwrap_or((rest, ""));
                let major = ver.split('.').next().and_then(|m| m.parse::<u64>().ok());
                if !major.is_some_and(|m| KNOWN_MAJORS.contains(&m)) {
                    return Err(finding(
                        Severity::Blocking,
                        "check.incompatible",
                        format!(
                            "Check {} imports {name}, but this host implements {CONTRACT}",
                            c.path
                        ),
                        "Upgrade the agent, or ship a check built for this host's contract.",
                    ));
                }
                if matches!(iface, "types" | "selection") {
                    continue;
                }
                let cap: Capability = iface
                    .parse()
                    .map_err(|e: PolicyError| denied(e.to_string()))?;
                if !grant.capabilities.contains(&cap) {
                    return Err(denied(format!(
                        "it imports `{cap}` but its manifest does not request that capability"
                    )));
                }
            } else if !name.starts_with("wasi:") {
                return Err(denied(format!(
                    "it imports `{name}`, which this host does not provide"
                )));
            }
        }
        Ok(Prepared { component, grant })
    }

    /// Run every precheck component of a verified, extracted bundle, in
    /// parallel. Guest misbehaviour becomes a blocking finding in that check's
    /// report; `Err` only for host-side problems (facts cannot be probed).
    pub fn run_precheck(
        &self,
        bundle_dir: &Path,
        manifest: &Manifest,
        ctx: &CheckContext,
    ) -> Result<Vec<CheckReport>, SandboxError> {
        let facts = Arc::new(match &ctx.facts {
            FactsSource::Probe => HostFacts::probe(&ctx.install_dir, &ctx.scratch_parent)?,
            FactsSource::Given(f) => f.clone(),
        });
        let mut allow = self.policy.net_allow.clone();
        allow.extend(ctx.net_allow.iter().cloned());
        let allow = Arc::new(NetGrant {
            allow,
            tls: Some(molt_layout::tls::client_config(ctx.ca_bundle.as_deref())?),
        });
        let comps = &manifest.components;
        tracing::info!(bundle = %manifest.buildstamp, checks = comps.len(), "Performing pre-upgrade validation tests");
        // Compile (or load) in parallel, then run in parallel.
        let prepared: Vec<Result<Prepared, Finding>> = std::thread::scope(|s| {
            let hs: Vec<_> = comps
                .iter()
                .map(|c| s.spawn(move || self.prepare(bundle_dir, manifest, c, "precheck")))
                .collect();
            hs.into_iter()
                .zip(comps)
                .map(|(h, c)| {
                    h.join().unwrap_or_else(|_| {
                        Err(finding(
                            Severity::Blocking,
                            "check.crashed",
                            format!("Check {}: the host panicked while preparing it", c.path),
                            "Report this as a Molt bug.",
                        ))
                    })
                })
                .collect()
        });
        let slots: Vec<Mutex<Option<CheckReport>>> =
            comps.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = self.policy.concurrency.clamp(1, comps.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= comps.len() {
                            break;
                        }
                        let c = &comps[i];
                        let started = Instant::now();
                        let mut report = match &prepared[i] {
                            Err(f) => CheckReport {
                                findings: vec![f.clone()],
                                elapsed: started.elapsed(),
                                ..unnamed_report(c)
                            },
                            Ok(p) => self.run_one(p, c, ctx, facts.clone(), allow.clone()),
                        };
                        sanitize_report(&mut report);
                        for f in &report.findings {
                            tracing::info!(check = %report.check, severity = f.severity.as_str(), code = %f.code, "Pre Upgrade Check finding: {}", f.message);
                        }
                        if let Ok(mut slot) = slots[i].lock() {
                            *slot = Some(report);
                        }
                    }
                });
            }
        });
        let reports: Vec<CheckReport> = slots
            .into_iter()
            .zip(comps)
            .map(|(m, c)| {
                m.into_inner()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| CheckReport {
                        findings: vec![finding(
                            Severity::Blocking,
                            "check.crashed",
                            format!("Check {}: the host panicked while running it", c.path),
                            "Report this as a Molt bug.",
                        )],
                        ..unnamed_report(c)
                    })
            })
            .collect();
        let blocking = reports.iter().filter(|r| r.blocking()).count();
        // The caller (the agent's stage, `molt check run`) says what happens next.
        tracing::info!(checks = reports.len(), blocking, "Checks finished");
        Ok(reports)
    }

    fn run_one(
        &self,
        p: &Prepared,
        c: &ManifestComponent,
        ctx: &CheckContext,
        facts: Arc<HostFacts>,
        allow: Arc<NetGrant>,
    ) -> CheckReport {
        let started = Instant::now();
        let mut report = unnamed_report(c);
        let crashed = |why: String| {
            finding(
                Severity::Blocking,
                "check.crashed",
                why,
                "Report this to the check's author; the upgrade waits until it passes.",
            )
        };
        let stderr = MemoryOutputPipe::new(16 * 1024);
        let mut b = base_wasi(&stderr);
        let mut scratch = ScratchGuard(None);
        let mut staging_created = None;
        let mut setup = || -> Result<(), SetupError> {
            if p.grant.preopens.contains(&Preopen::Scratch) {
                let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
                let dir = ctx
                    .scratch_parent
                    .join(format!("molt-check-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&dir).map_err(|source| SetupError::Scratch {
                    dir: dir.clone(),
                    source,
                })?;
                scratch.0 = Some(dir.clone());
                b.preopened_dir(&dir, "/scratch", FsPerms::ReadWrite)
                    .map_err(SetupError::preopen)?;
            }
            if p.grant.preopens.contains(&Preopen::Install) {
                b.preopened_dir(&ctx.install_dir, "/install", FsPerms::ReadOnly)
                    .map_err(|e| SetupError::Install {
                        dir: ctx.install_dir.clone(),
                        reason: e.to_string(),
                    })?;
            }
            if p.grant.preopens.contains(&Preopen::Staging) {
                let dir = Home::new(&ctx.install_dir).precheck_staging_dir();
                match std::fs::create_dir_all(&dir) {
                    Ok(()) => {
                        b.preopened_dir(&dir, "/staging", FsPerms::ReadWrite)
                            .map_err(SetupError::preopen)?;
                        staging_created = Some(dir);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "Pre Upgrade Check: Unable to create folder for upgrade check files")
                    }
                }
            }
            Ok(())
        };
        if let Err(why) = setup() {
            report.findings.push(finding(
                Severity::Blocking,
                "check.setup",
                format!("Check {}: {why}", report.check),
                "Fix the agent's work dir permissions.",
            ));
            report.elapsed = started.elapsed();
            return report;
        }
        let wasi = b.build();
        let mut params: BTreeMap<String, String> = c.params.clone();
        params.extend(ctx.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let params: Vec<(String, String)> = params.into_iter().collect();
        let refused = Arc::new(Refusals::default());
        let outcome = (|| -> Result<(pb::CheckInfo, Vec<pb::Finding>), wasmtime::Error> {
            let linker = self.linker(&p.grant, false)?;
            let mut store =
                self.store(&p.grant, wasi, facts, allow, &report.check, refused.clone())?;
            let pre = pb::PrecheckPre::new(linker.instantiate_pre(&p.component)?)?;
            let inst = pre.instantiate(&mut store)?;
            let info = inst.call_describe(&mut store)?;
            let findings = inst.call_run(&mut store, &params)?;
            Ok((info, findings))
        })();
        if let Some(dir) = staging_created {
            // Only an empty dir is removed: leftovers stay for the next run to report.
            let _ = std::fs::remove_dir(dir);
        }
        match outcome {
            Ok((info, fs)) => {
                if info.name.is_empty() || info.name.len() > 64 || info.version.len() > 64 {
                    report.findings.push(nonsense(
                        &report.check,
                        "describe() returned an empty or over-long name or version",
                    ));
                } else {
                    report.check = info.name;
                    report.version = info.version;
                    report.description = info.description;
                }
                if fs.len() > MAX_FINDINGS {
                    report.findings.push(nonsense(
                        &report.check,
                        &format!("returned {} findings (at most {MAX_FINDINGS})", fs.len()),
                    ));
                } else if let Some(bad) = fs.iter().find(|f| !code_ok(&f.code)) {
                    // Over-long texts are cut (visibly) when the report leaves the
                    // sandbox; a code is an identifier, so a bad one is refused.
                    report.findings.push(nonsense(
                        &report.check,
                        &format!(
                            "returned a finding with code `{}`: codes are 1-{MAX_CODE} chars of a-z 0-9 . -",
                            sanitize(&bad.code, MAX_CODE)
                        ),
                    ));
                } else {
                    report.findings = fs
                        .into_iter()
                        .map(|f| Finding {
                            severity: match f.severity {
                                pb::molt::check::types::Severity::Blocking => Severity::Blocking,
                                pb::molt::check::types::Severity::Warning => Severity::Warning,
                                pb::molt::check::types::Severity::Info => Severity::Info,
                            },
                            code: f.code,
                            message: f.message,
                            remediation: f.remediation,
                        })
                        .collect();
                }
            }
            Err(e) => {
                let err_text = stderr_text(&stderr);
                report.findings.push(classify(
                    &e,
                    &err_text,
                    &refused,
                    &report.check,
                    &p.grant.limits,
                    crashed,
                ));
            }
        }
        report.elapsed = started.elapsed();
        report
    }
}
