//! A real PostgreSQL server for tests: Debian's binaries (under
//! `/usr/lib/postgresql/<v>/bin`, not on PATH), a cluster made by `initdb` in
//! a temporary directory, started by `pg_ctl` on a free loopback port with its
//! socket in that directory. Never the system cluster, never port 5432.
//!
//! initdb refuses to run as root, so as root every server command runs as the
//! `postgres` user through `runuser` (the directory is handed to it). The
//! cluster trusts loopback connections: no password exists, so none is on a
//! command line or in the URL.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

const MISSING: &str = "PostgreSQL server binaries not found under /usr/lib/postgresql: install the postgresql package (.ci/run does)";

/// A running test cluster; stopped (immediately) and removed on drop.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
    running: bool,
}

/// The newest `/usr/lib/postgresql/<v>/bin` holding `initdb` and `pg_ctl`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local addr").port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PgServer {
    /// initdb + pg_ctl start + createdb `molt`. Panics with the reason when
    /// PostgreSQL is not installed or does not start (a test never skips).
    pub fn start() -> PgServer {
        let bin = bin_dir().unwrap_or_else(|| panic!("{MISSING}"));
        let dir = tempfile::Builder::new()
            .prefix("molt-pg-")
            .tempdir()
            .expect("temp dir for the cluster");
        let as_postgres = is_root();
        if as_postgres {
            // The postgres user must reach and own its directories.
            let uid = id_of("-u");
            let gid = id_of("-g");
            set_mode(dir.path(), 0o755);
            for d in ["data", "sock"] {
                let p = dir.path().join(d);
                std::fs::create_dir(&p).expect("cluster dir");
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown to postgres");
                set_mode(&p, 0o700);
            }
        } else {
            std::fs::create_dir(dir.path().join("data")).expect("cluster dir");
            std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        }
        let mut pg = PgServer {
            bin,
            dir,
            port: free_port(),
            as_postgres,
            running: false,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 temp path"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        pg.start_again();
        pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "molt",
            ],
        );
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/molt`.
    pub fn url(&self) -> String {
        self.url_of("molt")
    }

    /// The URL of another database on this server.
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates another database (one per test keeps tests apart) and returns its URL.
    pub fn create_database(&self, db: &str) -> String {
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                db,
            ],
        );
        self.url_of(db)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pg_ctl stop -m immediate`: the server dies as on a crash; clients see
    /// their connections drop.
    pub fn stop_immediate(&mut self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        self.running = false;
    }

    /// Starts the cluster (again) on the same port.
    pub fn start_again(&mut self) {
        let data = self.data();
        let log = self.dir.path().join("sock").join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().join("sock").display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        self.running = true;
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.args(args).env("LC_ALL", "C").current_dir(self.dir.path());
        c
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool, args)
            .output()
            .unwrap_or_else(|e| panic!("{tool} did not run: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("sock").join("server.log"))
                .unwrap_or_default();
            panic!(
                "{tool} {args:?} failed ({}):\n{}{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self
                .command(
                    "pg_ctl",
                    &[
                        "-D",
                        &data.to_string_lossy(),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ],
                )
                .output();
        }
    }
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run id");
    assert!(
        out.status.success(),
        "no postgres user: install the postgresql package (.ci/run does)"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
