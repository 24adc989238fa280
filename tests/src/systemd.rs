//! A real systemd as PID 1 of a throwaway PID + mount namespace, for the
//! end-to-end tests of the shipped Linux service (`tests/systemd/boot.sh` says
//! how and why every write lands in a tmpfs).
//!
//! Needs root and systemd installed. Booting is never skipped: a machine where
//! it fails makes these tests fail with the reason (CI runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One booted systemd; killed (with its whole namespace) on drop.
pub struct Systemd {
    /// PID of the namespace's PID 1 as seen from outside.
    pub pid: u32,
    unshare: std::process::Child,
    scratch: PathBuf,
}

/// Output of a command run inside, with its text.
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(o: Output) -> Ran {
        Ran {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

impl Systemd {
    /// Boot it and wait until `systemctl is-system-running` says running or
    /// degraded. Panics with the reason when that cannot happen here.
    pub fn boot() -> Systemd {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc_geteuid() },
            0,
            "the systemd tests boot systemd in a namespace and need root (CI runs as root)"
        );
        assert!(
            Path::new("/lib/systemd/systemd").is_file(),
            "systemd is not installed (/lib/systemd/systemd missing): apt-get install systemd"
        );
        let script = crate::agent_fx::repo_root().join("tests/systemd/boot.sh");
        let scratch = std::env::temp_dir().join(format!(
            "molt-systemd-{}-{:x}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(&scratch).unwrap();
        let log = std::fs::File::create(scratch.with_extension("log")).unwrap();
        let unshare = Command::new("setsid")
            .args([
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--propagation",
                "private",
                "bash",
            ])
            .arg(&script)
            .arg(scratch.join("mnt"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run unshare (util-linux)");
        let start = Instant::now();
        // The namespace's PID 1 is unshare's child.
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let pid = loop {
            if let Some(p) = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "systemd namespace did not start: {}",
                std::fs::read_to_string(scratch.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let sd = Systemd {
            pid,
            unshare,
            scratch,
        };
        loop {
            let r = sd.run(&["systemctl", "is-system-running"]);
            let state = r.stdout.trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "systemd did not boot within 60 s (state `{state}`): {}{}",
                r.stderr,
                std::fs::read_to_string(sd.scratch.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sd
    }

    /// `nsenter` into the namespace, as root.
    pub fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-p", "-u", "--"])
            .args(argv)
            .stdin(Stdio::null());
        c
    }

    /// Run a command inside and collect its output.
    pub fn run(&self, argv: &[&str]) -> Ran {
        Ran::from(self.cmd(argv).output().unwrap())
    }

    /// Run a shell command inside.
    pub fn sh(&self, script: &str) -> Ran {
        self.run(&["sh", "-c", script])
    }

    /// `systemctl show -p <prop> --value <unit>`.
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.run(&["systemctl", "show", "-p", prop, "--value", unit])
            .stdout
            .trim()
            .to_string()
    }

    /// `systemctl is-active <unit>` (its word, whatever the exit code).
    pub fn is_active(&self, unit: &str) -> String {
        self.run(&["systemctl", "is-active", unit])
            .stdout
            .trim()
            .to_string()
    }

    /// A path inside the namespace, reachable from outside.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.pid,
            inside.trim_start_matches('/')
        ))
    }

    /// The journal of a unit (for failure messages).
    pub fn journal(&self, unit: &str) -> String {
        self.run(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-precise",
            "-u",
            unit,
        ])
        .stdout
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // SIGKILL to PID 1 ends the whole namespace; its tmpfs goes with it.
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.unshare.wait();
        let _ = std::fs::remove_dir_all(&self.scratch);
        let _ = std::fs::remove_file(self.scratch.with_extension("log"));
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}
