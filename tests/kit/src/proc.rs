//! Child processes, every process of a test home, signals.
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn new(child: Child, name: &str) -> Proc {
        Proc {
            child,
            name: name.into(),
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGTERM, then wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        signal(self.child.id(), "TERM");
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            self.kill();
        }
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Wait for exit, bounded.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut st = None;
        crate::wait::poll(limit, || {
            st = self.child.try_wait().ok().flatten();
            st.is_some()
        });
        st
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// The pids of the processes whose command line names `home` as their home
/// (`--home <home>`): the agents, supervisors and runners a test started there.
pub fn pids_on(home: &Path) -> Vec<u32> {
    let home = home.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--home" && w[1] == home.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// SIGKILL every process [`pids_on`] finds for `home` (detached runners
/// included), by pid. Nothing else is touched.
pub fn kill_all_on(home: &Path) {
    for pid in pids_on(home) {
        signal(pid, "KILL");
    }
}

/// Send `sig` (e.g. "TERM", "STOP", "CONT") to `pid`; whether `kill` succeeded.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is a live (not zombie) process: the product's own check.
pub use molt_deploy::proc::alive;
