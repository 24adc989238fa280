//! The selector world: run the version selector (from a path, or the one
//! component of a verified selector bundle) on its own thread, and turn its
//! plan into host types with every text sanitized. The input and plan types
//! are the check logic's own (`molt_check_logic::select`), the very types the
//! selector guest computes with, so host and guest cannot drift apart.
use std::path::Path;
use std::sync::Arc;

use molt_bundle::Manifest;
use molt_bundle::text::{MAX_LABEL, MAX_MESSAGE, sanitize};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::bindings::selector as sb;
use crate::cache::sha256_hex;
use crate::engine::{Refusals, Sandbox, base_wasi};
use crate::error::SandboxError;
use crate::facts::HostFacts;
use crate::findings::{Severity, classify, finding, stderr_text};
use crate::net::NetGrant;
use crate::policy::{Capability, Grant};
use crate::precheck::inside;
use crate::world::{check_world, parse_world};

pub use molt_check_logic::select::{Action, Plan, RuntimeDecision, SelectorInput};

/// Why one selector run gave no plan (the reason of [`SandboxError::Selector`]).
#[derive(Debug, thiserror::Error)]
enum SelectFailure {
    /// Linking or the store failed (wasmtime's error, as text).
    #[error("{0}")]
    Host(String),
    /// The selector returned its own error for this input.
    #[error("refused the input: {0}")]
    Refused(String),
    /// The selector trapped, timed out or ran out of memory or fuel.
    #[error("{code}: {message}")]
    Guest { code: String, message: String },
    #[error("host thread panicked")]
    Panicked,
}

impl SelectFailure {
    fn host(e: wasmtime::Error) -> SelectFailure {
        SelectFailure::Host(e.to_string())
    }
}

impl Sandbox {
    /// Run the selector component at `component_path` (no manifest: default
    /// limits, `log` only, no preopens).
    pub fn select_version(
        &self,
        component_path: &Path,
        input: &SelectorInput,
    ) -> Result<Plan, SandboxError> {
        let grant = Grant {
            capabilities: [Capability::Log].into_iter().collect(),
            preopens: Default::default(),
            limits: self.policy.defaults,
        };
        self.select_with(component_path, &grant, input)
    }

    /// Run the selector of a verified, extracted selector bundle (the first
    /// `selector` component of its manifest, with its grant).
    pub fn select_version_in_bundle(
        &self,
        bundle_dir: &Path,
        manifest: &Manifest,
        input: &SelectorInput,
    ) -> Result<Plan, SandboxError> {
        let c = manifest
            .components
            .iter()
            .find(|c| parse_world(&c.world).is_ok_and(|w| w.world == "selector"))
            .ok_or_else(|| SandboxError::Component {
                component: manifest.buildstamp.clone(),
                reason: "bundle has no selector component".into(),
            })?;
        let refused = |reason: String| SandboxError::Component {
            component: c.path.clone(),
            reason,
        };
        check_world(&c.world, "selector").map_err(|e| refused(e.to_string()))?;
        let grant = self.policy.grant(c).map_err(|e| refused(e.to_string()))?;
        let path = inside(bundle_dir, &c.path).ok_or_else(|| SandboxError::Component {
            component: c.path.clone(),
            reason: "path leaves the bundle".into(),
        })?;
        self.select_with(&path, &grant, input)
    }

    fn select_with(
        &self,
        path: &Path,
        grant: &Grant,
        input: &SelectorInput,
    ) -> Result<Plan, SandboxError> {
        let name = path.display().to_string();
        let err = |reason: String| SandboxError::Selector {
            component: name.clone(),
            reason,
        };
        let wasm = std::fs::read(path).map_err(|e| SandboxError::io("read", path, e))?;
        let comp = self
            .cache
            .load_or_compile(&self.engine, &wasm, &sha256_hex(&wasm))
            .map_err(|e| err(e.to_string()))?;
        // The platform the selector decides for is the host's, as the caller
        // probed it (or a simulation gave it): never made-up defaults.
        let mut facts = HostFacts::healthy();
        facts.facts.os = input.os.clone();
        facts.facts.arch = input.arch.clone();
        facts.facts.is_64bit = input.is_64bit;
        facts.facts.libc_version = input.libc_version.clone();
        let facts = Arc::new(facts);
        // Own thread: sync WASI must not run on a tokio worker (it would block_on).
        let res = std::thread::scope(|s| {
            s.spawn(|| -> Result<Plan, SelectFailure> {
                let linker = self.linker(grant, true).map_err(SelectFailure::host)?;
                let stderr = MemoryOutputPipe::new(16 * 1024);
                let mut b = base_wasi(&stderr);
                let refused = Arc::new(Refusals::default());
                let no_net = Arc::new(NetGrant { allow: Vec::new(), tls: None });
                let mut store = self
                    .store(grant, b.build(), facts, no_net, "version-select", refused.clone())
                    .map_err(SelectFailure::host)?;
                // The inner `Result<_, String>` is the WIT world's `result<plan, string>`.
                let mut run = || -> Result<Result<sb::molt::check::selection::Plan, String>, wasmtime::Error> {
                    let pre = sb::SelectorPre::new(linker.instantiate_pre(&comp)?)?;
                    let inst = pre.instantiate(&mut store)?;
                    inst.call_select(&mut store, &to_wit_input(input))
                };
                match run() {
                    Ok(Ok(p)) => Ok(from_wit_plan(p)),
                    Ok(Err(e)) => Err(SelectFailure::Refused(sanitize(&e, MAX_MESSAGE))),
                    Err(e) => {
                        let f = classify(&e, &stderr_text(&stderr), &refused, "version-select", &grant.limits, |m| finding(Severity::Blocking, "check.crashed", m, ""));
                        Err(SelectFailure::Guest {
                            code: f.code,
                            message: sanitize(&f.message, MAX_MESSAGE),
                        })
                    }
                }
            })
            .join()
            .unwrap_or(Err(SelectFailure::Panicked))
        });
        let plan = res.map_err(|f| err(f.to_string()))?;
        for l in plan.current_packages_lines() {
            tracing::info!("{l}");
        }
        Ok(plan)
    }
}

fn to_wit_input(i: &SelectorInput) -> sb::molt::check::selection::SelectorInput {
    sb::molt::check::selection::SelectorInput {
        installed: i.installed.clone(),
        assigned_version: i.assigned_version.clone(),
        assigned: i.assigned.clone(),
        downloaded: i.downloaded.clone(),
        pinned: i.pinned.clone(),
        os: i.os.clone(),
        arch: i.arch.clone(),
        is_64bit: i.is_64bit,
        libc_version: i.libc_version.clone(),
    }
}

/// The selector's plan as host types, every text sanitized: package names
/// are only ever compared with the assignment's, so escaping one cannot make
/// it match; reasons and notes are logged and reported.
fn from_wit_plan(p: sb::molt::check::selection::Plan) -> Plan {
    use sb::molt::check::selection as w;
    let names =
        |v: Vec<String>| -> Vec<String> { v.iter().map(|n| sanitize(n, MAX_LABEL)).collect() };
    Plan {
        action: match p.action {
            w::Action::Upgrade => Action::Upgrade,
            w::Action::Downgrade => Action::Downgrade,
            w::Action::None => Action::None,
        },
        target_version: sanitize(&p.target_version, MAX_LABEL),
        installed: names(p.installed),
        assigned: names(p.assigned),
        missing: names(p.missing),
        downloaded: names(p.downloaded),
        crosses_family: p.crosses_family,
        runtime: match p.runtime {
            w::RuntimeDecision::Upgrade => RuntimeDecision::Upgrade,
            w::RuntimeDecision::Skip => RuntimeDecision::Skip,
            w::RuntimeDecision::Current => RuntimeDecision::Current,
        },
        runtime_reason: sanitize(&p.runtime_reason, MAX_MESSAGE),
        notes: p.notes.iter().map(|n| sanitize(n, MAX_MESSAGE)).collect(),
    }
}
