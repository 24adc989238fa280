//! The control plane (`molt serve`): the seeds' "instance" for Molt agents.
//!
//! It tells each agent which version to run (fleet buildstamp, fleet override,
//! the agent's own pin), serves the packages, limits how many agents upgrade
//! at once, and records agents, issues, upgrade history and commands in an
//! embedded SQLite database. Operators use the dashboard at `/dashboard`.
//!
//! ```no_run
//! # async fn f() -> Result<(), molt_server::ServerError> {
//! let cfg = molt_server::Config::new("cp.db", "packages", "127.0.0.1:0".parse().unwrap());
//! let server = molt_server::bind(cfg).await?;
//! println!("control plane listening on {}", server.url());
//! server.run().await
//! # }
//! ```

pub mod api_admin;
pub mod api_agent;
pub mod api_rollout;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod files;
pub mod metrics;
pub mod model;
pub mod packages;
pub mod rollout;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;

pub use clock::Clock;
pub use config::{Config, TlsFiles};
pub use error::{ApiError, ServerError};
pub use server::{BoundServer, bind, router, serve, shutdown_signal};
