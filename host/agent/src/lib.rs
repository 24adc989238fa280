//! The agent (`molt agent`): the long-running service on each host. It decides when
//! and what to upgrade (version check, selector), proves the host is ready (Pre
//! Upgrade Check in the sandbox), and prepares everything (Download, Extract)
//! before the deploy runner touches a single installed file. See docs/agent.md.

pub mod backoff;
pub mod client;
pub mod config;
pub mod delta;
pub mod deps;
pub mod download;
pub mod ranges;
pub mod reporter;
pub mod service;
pub mod stages;

pub use config::{AgentConfig, ConfigError};
pub use service::{AgentError, Exit, request_upgrade_now, run};
