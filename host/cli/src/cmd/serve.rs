//! `molt serve`: the control plane (HTTP API, dashboard, metrics) over SQLite,
//! or one of several replicas over a shared PostgreSQL.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// SQLite database file (created and migrated on start), or a
    /// postgres://user@host:port/dbname URL that several replicas share.
    #[arg(long, value_name = "FILE|URL")]
    db: PathBuf,
    /// PostgreSQL: connections in this replica's pool (a SQLite file ignores it).
    #[arg(long, value_name = "N", default_value_t = molt_server::store::DbOptions::default().pool_size)]
    db_pool_size: u32,
    /// PostgreSQL: seconds a call waits for a pooled connection (or a new
    /// connection's handshake) before it answers 503 (a SQLite file ignores it).
    #[arg(long, value_name = "SECS", default_value_t = molt_server::store::DbOptions::default().timeout.as_secs())]
    db_timeout: u64,
    /// Directory of signed bundles (`molt-<kind>.<version>.<os>.<arch>.zip`).
    #[arg(long, value_name = "DIR")]
    packages: PathBuf,
    /// Address to listen on (port 0 picks a free port; the line
    /// `control plane listening on <url>` on stdout tells which).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin token; when absent it is read from --admin-token-file, else (SQLite
    /// only) from, or generated into, `<db>.admin-token`.
    #[arg(long, env = "MOLT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token (with PostgreSQL: the same for every replica).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// At most this many agents upgrade at once.
    #[arg(long, default_value_t = 2)]
    max_concurrent_upgrades: u32,
    /// Seconds after which a slot holder that stopped reporting loses its slot.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    lease_timeout: u64,
    /// Seconds without a heartbeat after which an agent is shown Down.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    agent_down_after: u64,
    /// Package URLs point here (a CDN or mirror) instead of this server's /packages/.
    #[arg(long, value_name = "URL")]
    package_base_url: Option<String>,
    /// How agents reach this server, e.g. https://cp.example:8443 (default: the request's Host).
    #[arg(long, value_name = "URL")]
    public_base_url: Option<String>,
    /// Set the fleet buildstamp at start (as PUT /api/v1/admin/fleet).
    #[arg(long, value_name = "VERSION")]
    fleet_version: Option<String>,
    /// Create an agent with a known token (repeatable), NAME:TOKEN.
    #[arg(long, value_name = "NAME:TOKEN")]
    bootstrap_agent: Vec<String>,
    /// File of NAME:TOKEN lines, each as --bootstrap-agent.
    #[arg(long, value_name = "FILE")]
    bootstrap_agents_file: Option<PathBuf>,
    /// Where uploaded agent logs are kept (default `<db>.logs/`; with a
    /// PostgreSQL URL required: a directory every replica shares).
    #[arg(long, visible_alias = "log-dir", value_name = "DIR")]
    logs_dir: Option<PathBuf>,
    /// Require an agent token to download packages.
    #[arg(long)]
    packages_require_token: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_agent(s: &str) -> anyhow::Result<(String, String)> {
    match s.trim().split_once(':') {
        Some((n, t)) if !n.is_empty() && !t.is_empty() => Ok((n.to_string(), t.to_string())),
        _ => bail!("bootstrap agent {s:?} must be NAME:TOKEN"),
    }
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = molt_server::Config::new(&a.db, &a.packages, a.listen);
    if a.db_pool_size == 0 || a.db_timeout == 0 {
        bail!("--db-pool-size and --db-timeout must be at least 1");
    }
    cfg.db_options = molt_server::store::DbOptions {
        pool_size: a.db_pool_size,
        timeout: Duration::from_secs(a.db_timeout),
    };
    cfg.admin_token = a.admin_token;
    cfg.admin_token_file = a.admin_token_file;
    cfg.tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(molt_server::TlsFiles { cert, key }),
        _ => None,
    };
    if a.max_concurrent_upgrades == 0 {
        bail!("--max-concurrent-upgrades must be at least 1");
    }
    cfg.max_concurrent_upgrades = a.max_concurrent_upgrades;
    cfg.lease_timeout = Duration::from_secs(a.lease_timeout);
    cfg.agent_down_after = Duration::from_secs(a.agent_down_after);
    cfg.package_base_url = a.package_base_url;
    cfg.public_base_url = a.public_base_url;
    cfg.fleet_version = a.fleet_version;
    cfg.logs_dir = a.logs_dir;
    cfg.packages_require_token = a.packages_require_token;
    for s in &a.bootstrap_agent {
        cfg.bootstrap_agents.push(parse_agent(s)?);
    }
    if let Some(f) = &a.bootstrap_agents_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            cfg.bootstrap_agents
                .push(parse_agent(line).with_context(|| format!("{}:{}", f.display(), i + 1))?);
        }
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = a.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("starting the async runtime")?;
    rt.block_on(async move {
        let server = molt_server::bind(cfg).await?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "control plane listening on {}", server.url())?;
            out.flush()?;
        }
        server.run_until(molt_server::shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
