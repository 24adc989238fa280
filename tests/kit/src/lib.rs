//! `molt-testkit`: the one test kit of the workspace. Dev-only: no product
//! crate depends on it outside `[dev-dependencies]`, and it is never shipped.
//!
//! # Why a crate of its own (and not the `molt-e2e` lib)
//!
//! The fixtures are wanted at three levels: the unit tests of `molt-ops`, the
//! integration tests of the crates (`host/deploy/tests`, `host/sandbox/tests`)
//! and the end-to-end tests (`tests/`). `molt-e2e` is the e2e crate: it drags
//! in tokio and reqwest and the e2e scenario fixtures (agents, supervisors,
//! systemd namespaces), and a crate's unit tests should not depend on the
//! end-to-end crate. So the kit is a small crate below all three, made of
//! blocking std code only, and `molt-e2e` re-exports it (`molt_e2e::kit`), so an
//! e2e test reaches every fixture through one path.
//!
//! It depends on the real product crates it drives (`molt-bundle` to pack and
//! sign, `molt-deploy` for `fresh_install`, `molt-ops` for the manifest →
//! installed-package conversion `molt install` uses), so a fixture lays out an
//! install exactly as the product does. `molt-deploy` and `molt-ops` take the
//! kit as a dev-dependency: a dev-only cycle cargo allows, whose only shared
//! types are the layout and bundle types.
//!
//! # What is in it
//! - [`bin`]: the `molt` binary under test ([`bin::molt_bin`], `$MOLT_BIN`
//!   honoured) and the repo root.
//! - [`pki`]: a TEST signing key and its single-key root ([`pki::Pki`]),
//!   packing a tree of files and signing it ([`pki::PackOpts`]).
//! - [`install`]: installs through the real
//!   `molt_deploy::install::fresh_install` ([`install::install`]).
//! - [`config`]: the agent's `config.toml` writer.
//! - [`pg`]: a real PostgreSQL server in a temporary directory ([`pg::PgServer`]).
//! - [`serve`]: a real `molt serve` child process.
//! - [`proc`]: children killed on drop, every process of a test home, signals.
//! - [`wait`]: bounded polls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bin;
pub mod config;
pub mod install;
pub mod pg;
pub mod pki;
pub mod proc;
pub mod serve;
pub mod wait;
