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
//!
//! Split by concern, as wasmtime's WASI is: [`engine`] (engine, store, limits,
//! linker) and [`cache`] (compiled components on disk); one module per host
//! interface of the `molt:check` world ([`facts`], [`net`], [`services`],
//! [`log`]); the two worlds ([`precheck`], [`selector`]); [`findings`] (reports
//! and guest misbehaviour as findings); [`policy`] (what a component may be
//! granted) and [`world`] (which contract versions this host runs).
pub mod bindings;
pub mod cache;
pub mod engine;
pub mod error;
pub mod facts;
pub mod findings;
pub mod log;
pub mod net;
pub mod policy;
pub mod precheck;
pub mod selector;
pub mod services;
pub mod testing;
pub mod world;

pub use cache::CacheStats;
pub use engine::{Sandbox, SandboxConfig};
pub use error::SandboxError;
pub use facts::{HostFacts, ProbeOutcome};
pub use findings::{CheckReport, Finding, Severity};
pub use policy::{Capability, Grant, Limits, Policy, PolicyError, Preopen};
pub use precheck::{CheckContext, FactsSource};
pub use selector::{Action, Plan, RuntimeDecision, SelectorInput};
pub use services::{FileHolder, ServiceState};
pub use world::{CONTRACT, KNOWN_MAJORS, WorldError, WorldRef, check_world, parse_world};
