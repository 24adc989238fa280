//! Configuration of one control-plane process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::Clock;

/// A certificate chain and private key (PEM files) for HTTPS via rustls.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything `molt serve` needs; [`Config::new`] fills the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// SQLite database file (created, migrated on start), or a
    /// `postgres://user@host:port/dbname` URL several replicas share.
    pub db_path: PathBuf,
    /// PostgreSQL pool size and checkout timeout (`--db-pool-size`, `--db-timeout`).
    pub db_options: crate::store::DbOptions,
    /// Directory of signed bundles named `molt-<kind>.<version>.<os>.<arch>.zip`.
    pub packages_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (see `BoundServer::local_addr`).
    pub listen: SocketAddr,
    /// Admin token; when `None` it is read from `admin_token_file`, else (SQLite
    /// only) from, or generated into, `<db>.admin-token`.
    pub admin_token: Option<String>,
    /// A file holding the admin token (every replica reads the same one).
    pub admin_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// At most this many agents hold an upgrade slot at once (the seeds' semaphore).
    pub max_concurrent_upgrades: u32,
    /// A slot holder that has not reported for this long loses its slot.
    pub lease_timeout: Duration,
    /// An agent not seen for this long is shown Down.
    pub agent_down_after: Duration,
    /// Issues not detected for this long are purged, whatever their state (30 days).
    pub issue_retention: Duration,
    /// Package URLs point here (a CDN or mirror) instead of this server's `/packages/`.
    pub package_base_url: Option<String>,
    /// How agents reach this server (`https://cp.example:8443`); derived from the
    /// request's Host header when absent.
    pub public_base_url: Option<String>,
    /// Fleet buildstamp to set at start (as `PUT /api/v1/admin/fleet`).
    pub fleet_version: Option<String>,
    /// Agents created (or whose token is reset) at start: `(name, token)`.
    pub bootstrap_agents: Vec<(String, String)>,
    /// Where uploaded agent logs go; default `<db>.logs/` for SQLite. With a
    /// PostgreSQL URL it is required and must be shared by every replica.
    pub logs_dir: Option<PathBuf>,
    /// Require an agent token on `GET /packages/…` (default: bundles are signed, so public).
    pub packages_require_token: bool,
    /// Longest long-poll the server honours for `GET /api/v1/agent/commands?wait=`.
    pub max_poll_wait: Duration,
    /// Time source; tests advance it instead of sleeping.
    pub clock: Clock,
    /// How often the rollout scheduler looks at the open rollout.
    pub rollout_tick: Duration,
}

impl Config {
    /// A configuration with the documented defaults.
    pub fn new(
        db_path: impl Into<PathBuf>,
        packages_dir: impl Into<PathBuf>,
        listen: SocketAddr,
    ) -> Self {
        Self {
            db_path: db_path.into(),
            db_options: crate::store::DbOptions::default(),
            packages_dir: packages_dir.into(),
            listen,
            admin_token: None,
            admin_token_file: None,
            tls: None,
            max_concurrent_upgrades: 2,
            lease_timeout: Duration::from_secs(600),
            agent_down_after: Duration::from_secs(120),
            issue_retention: Duration::from_secs(30 * 24 * 3600),
            package_base_url: None,
            public_base_url: None,
            fleet_version: None,
            bootstrap_agents: Vec::new(),
            logs_dir: None,
            packages_require_token: false,
            max_poll_wait: Duration::from_secs(60),
            clock: Clock::system(),
            rollout_tick: Duration::from_secs(1),
        }
    }

    /// Whether the database is a PostgreSQL URL (replicas may share it) rather
    /// than a SQLite file this process owns.
    pub fn db_is_url(&self) -> bool {
        self.db_path
            .to_str()
            .is_some_and(crate::store::is_postgres_url)
    }

    /// The SQLite admin-token file used when no token is configured.
    pub fn sqlite_admin_token_file(&self) -> PathBuf {
        let mut p = self.db_path.clone().into_os_string();
        p.push(".admin-token");
        PathBuf::from(p)
    }

    /// The directory for uploaded logs.
    pub fn effective_logs_dir(&self) -> PathBuf {
        self.logs_dir.clone().unwrap_or_else(|| {
            let mut p = self.db_path.clone().into_os_string();
            p.push(".logs");
            PathBuf::from(p)
        })
    }
}
