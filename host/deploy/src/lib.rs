//! Deploy: hand-over, the runner (`molt deploy`), its journal, the atomic switch,
//! health check, rollback, recovery at start and service control (`molt run`).
//!
//! The promise (docs/deploy.md): after any failure at any point the install is
//! either the complete old version or the complete new version, and the agent
//! comes back Up. Three things make that hold:
//! - the new version is built *beside* the old one in `versions/<v>/` (unchanged
//!   files hard-linked, changed files copied, every digest checked, fsync);
//! - `current` is switched by one atomic `rename(2)` of a symlink;
//! - every other step is recorded in `work/deploy.journal` so a crash at any
//!   point is finished or undone by [`recover`] / [`runner::resume`].

pub mod build;
pub mod crash;
pub mod error;
pub mod fsutil;
pub mod handover;
pub mod health;
pub mod install;
pub mod journal;
pub mod launch;
pub mod plan;
pub mod privilege;
pub mod proc;
pub mod prune;
pub mod recover;
pub mod report;
pub mod runner;
pub mod service;
pub mod supervisor;
pub mod truststore;

pub use error::DeployError;
pub use plan::{ControlPlane, DeployOptions, DeployPlan};
pub use recover::{RecoveryOutcome, recover};
