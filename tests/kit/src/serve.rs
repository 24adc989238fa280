//! A real `molt serve` as a child process.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::proc::Proc;

/// How to start `molt serve`: its database goes to `<dir>/cp.db`, its stderr
/// to `<dir>/<log>`.
pub struct Serve<'a> {
    pub dir: &'a Path,
    pub packages: &'a Path,
    /// `--listen 127.0.0.1:<port>` (0: any free port).
    pub port: u16,
    pub admin_token: &'a str,
    /// `--bootstrap-agent <name>:<token>`.
    pub agent: (&'a str, &'a str),
    /// More arguments (e.g. `--fleet-version V`).
    pub args: Vec<String>,
    pub env: &'a [(&'a str, &'a str)],
    /// The stderr log's file name in `dir`.
    pub log: String,
}

/// A running `molt serve` (killed on drop) and the URL it printed.
pub struct Served {
    pub proc: Proc,
    pub url: String,
    pub db: PathBuf,
    pub log: PathBuf,
}

impl Serve<'_> {
    /// Start it and wait (30 s at most) for its `listening on <url>` line.
    pub fn start(&self) -> Served {
        std::fs::create_dir_all(self.dir).unwrap();
        let db = self.dir.join("cp.db");
        let log = self.dir.join(&self.log);
        let mut cmd = command();
        cmd.arg("--db")
            .arg(&db)
            .arg("--packages")
            .arg(self.packages)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--admin-token", self.admin_token])
            .args([
                "--bootstrap-agent",
                &format!("{}:{}", self.agent.0, self.agent.1),
            ])
            .args(&self.args)
            .envs(self.env.iter().copied());
        let (proc, url) = listening(cmd, "serve", &log, Duration::from_secs(30));
        Served { proc, url, db, log }
    }
}

/// `molt serve` with the tests' environment (`MOLT_LOG=info`; no
/// `MOLT_HOME` or `MOLT_ADMIN_TOKEN` inherited from the caller): add the
/// arguments, then [`listening`].
pub fn command() -> Command {
    let mut c = Command::new(crate::bin::molt_bin());
    c.arg("serve")
        .env("MOLT_LOG", "info")
        .env_remove("MOLT_HOME")
        .env_remove("MOLT_ADMIN_TOKEN");
    c
}

/// Spawn `cmd` (a [`command`]) with its stderr to `log` and wait (`limit` at
/// most) for the `control plane listening on <url>` line on its stdout; the
/// process (killed on drop, named `name`) and the URL. Its stdout keeps being
/// drained so the server never writes into a closed pipe.
pub fn listening(mut cmd: Command, name: &str, log: &Path, limit: Duration) -> (Proc, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let proc = Proc::new(child, name);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(u) = line.strip_prefix("control plane listening on ") {
                let _ = tx.send(u.trim().to_string());
            }
        }
    });
    let url = rx.recv_timeout(limit).unwrap_or_else(|e| {
        panic!(
            "{name} did not print its URL within {limit:?} ({e}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    (proc, url)
}
