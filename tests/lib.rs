//! Helpers for the end-to-end tests: start real `molt serve` and agents.

/// Agent and demo fixtures: keys, signed packages, installs, `molt serve`, agents.
#[path = "src/agent_fx.rs"]
pub mod agent_fx;

/// A real nginx: static files, a round-robin upstream of replicas.
#[path = "src/nginx.rs"]
pub mod nginx;

/// A real systemd as PID 1 of a throwaway namespace.
#[path = "src/systemd.rs"]
pub mod systemd;

/// A private CA and a server certificate, made by openssl.
#[path = "src/tls.rs"]
pub mod tls;

/// The workspace's one test kit (`molt-testkit`): the molt binary, keys and
/// packages, installs through the real `fresh_install`, config, `molt serve`,
/// processes and waits. The e2e fixtures above are built on it.
pub use molt_testkit as kit;
