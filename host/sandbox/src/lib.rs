//! The wasm sandbox for signed checks and the version selector
//! (docs/wit-contract.md, docs/authoring-checks.md).
//!
//! API:
//! - [`Sandbox::new`]`(SandboxConfig { cache_dir, policy })`
//! - [`Sandbox::run_precheck`]`(bundle_dir, &Manifest, &CheckContext) -> Vec<CheckReport>`
//! - [`Sandbox::select_version`]`(component_path, &SelectorInput) -> Plan`,
//!   [`Sandbox::select_version_in_bundle`]`(bundle_dir, &Manifest, &SelectorInput)`
//! - [`HostFacts::probe`]`(install_dir, temp_dir)`, [`HostFacts::with_overrides`]`(facts.toml)`
//! - [`Plan::current_packages_lines`]
//!
//! All calls are blocking; guests run on threads the sandbox owns, so calling
//! from `tokio::task::spawn_blocking` is safe.
pub mod bindings;
pub mod error;
pub mod facts;
pub mod net;
pub mod plan;
pub mod policy;
pub mod sandbox;
pub mod testing;

pub use error::SandboxError;
pub use facts::{FileHolder, HostFacts, ProbeOutcome, ServiceState};
pub use plan::{Action, Plan, RuntimeDecision, SelectorInput};
pub use policy::{Capability, Grant, Limits, Policy, Preopen};
pub use sandbox::{
    CONTRACT, CacheStats, CheckContext, CheckReport, FactsSource, Finding, KNOWN_MAJORS, Sandbox,
    SandboxConfig, Severity, check_world, parse_world,
};
