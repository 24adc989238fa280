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
        let mut child = Command::new(crate::bin::molt_bin())
            .args(["serve", "--db"])
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
            .envs(self.env.iter().copied())
            .env("MOLT_LOG", "info")
            .env_remove("MOLT_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let proc = Proc::new(child, "serve");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stdout so the server never writes into a closed pipe.
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("control plane listening on ") {
                    let _ = tx.send(u.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| {
                panic!(
                    "molt serve did not print its URL within 30 s ({e}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Served { proc, url, db, log }
    }
}
