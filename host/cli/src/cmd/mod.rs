//! One module per area; each owns its clap types and its `run` functions.
pub mod agent;
pub mod bundle;
pub mod check;
pub mod demo;
pub mod deploy;
pub mod fleet;
pub mod install;
pub mod ops;
pub mod serve;
