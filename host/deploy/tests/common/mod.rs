//! Shared fixtures for the deploy end-to-end tests: real homes on disk, real
//! packages, the real `molt` binary (`molt deploy`, `molt run`) and a STAND-IN
//! agent (a shell script installed as the version's `bin/molt`) that behaves like
//! `molt agent` towards the deploy: it writes `work/agent.status.json` with Up
//! and runs until SIGTERM. A "crashing" version's stand-in exits 1 instead.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molt_deploy::plan::{DeployOptions, DeployPlan};
use molt_layout::{FileMeta, Home, InstalledPackage};
use molt_protocol::AgentStatus;

/// The real `molt` binary (the test kit's: `$MOLT_BIN`, else beside the test).
pub use molt_testkit::bin::molt_bin;

/// How a stand-in agent behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Agent {
    /// Reports Up and runs until SIGTERM.
    Good,
    /// Exits 1 at start (a new version that cannot start).
    Crashes,
    /// Good, unless `conf/old-breaks` exists (then exits 1): an old version that
    /// also fails when it is restarted.
    BreaksOnFlag,
}

pub fn stand_in_script(version: &str, kind: Agent) -> Vec<u8> {
    let crash = match kind {
        Agent::Good => "",
        Agent::Crashes => "echo \"stand-in $V: crashing at start\" >&2; exit 1",
        Agent::BreaksOnFlag => {
            "if [ -e \"$H/conf/old-breaks\" ]; then echo \"stand-in $V: broken\" >&2; exit 1; fi"
        }
    };
    format!(
        r#"#!/bin/sh
# STAND-IN for `molt agent` used by the deploy tests (not the real agent).
V="{version}"
if [ "$1" = "--version" ]; then echo "molt $V (stand-in)"; exit 0; fi
H="$3"
{crash}
trap 'exit 0' TERM INT
T="$H/work/agent.status.json"
printf '{{"pid":%s,"version":"%s","status":"{up}","since":"%s"}}\n' $$ "$V" "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" > "$T.tmp.$$" && mv "$T.tmp.$$" "$T"
# Gone with its home: a stand-in a test's clean-up missed must not outlive it.
while [ -d "$H" ]; do sleep 0.1; done
"#,
        up = AgentStatus::Up
    )
    .into_bytes()
}

/// One package's content: path -> (bytes, mode).
pub type Content = BTreeMap<String, (Vec<u8>, u32)>;

pub fn sha(b: &[u8]) -> String {
    molt_deploy::fsutil::sha256_bytes(b)
}

pub fn manifest(kind: &str, version: &str, c: &Content) -> InstalledPackage {
    let files = c
        .iter()
        .map(|(p, (b, m))| {
            (
                p.clone(),
                FileMeta {
                    size: b.len() as u64,
                    sha256: sha(b),
                    mode: *m,
                },
            )
        })
        .collect();
    InstalledPackage {
        kind: kind.into(),
        name: format!("molt-{kind}.{version}.universal.universal.zip"),
        version: version.into(),
        files,
    }
}

/// Write a package's payload under `dir`.
pub fn write_payload(dir: &Path, c: &Content) {
    for (p, (b, m)) in c {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b).unwrap();
        molt_deploy::fsutil::set_mode(&f, *m).unwrap();
    }
}

/// A core package of `n` tiny files plus the stand-in `bin/molt`.
pub fn core_content(version: &str, n: usize, agent: Agent) -> Content {
    let mut c = Content::new();
    c.insert("bin/molt".into(), (stand_in_script(version, agent), 0o755));
    for i in 0..n {
        c.insert(
            format!("lib/d{:02}/f{i:04}.dat", i % 20),
            (
                format!("file {i} of the base version\n").into_bytes(),
                0o644,
            ),
        );
    }
    c
}

/// Derive version `to` from `from`: change every `every`-th file, change one
/// file's mode only, add one file, remove one file.
pub fn next_content(
    from: &Content,
    to: &str,
    every: usize,
    agent: Agent,
) -> (Content, Vec<String>) {
    let mut c = from.clone();
    let mut changed = vec!["bin/molt".to_string()];
    c.insert("bin/molt".into(), (stand_in_script(to, agent), 0o755));
    let libs: Vec<String> = from
        .keys()
        .filter(|k| k.starts_with("lib/"))
        .cloned()
        .collect();
    for (i, k) in libs.iter().enumerate() {
        if every > 0 && i % every == 0 {
            c.insert(
                k.clone(),
                (format!("{k} changed in {to}\n").into_bytes(), 0o644),
            );
            changed.push(k.clone());
        }
    }
    if let Some(k) = libs.get(1) {
        // same content, new mode: must be a new inode in the new version
        let (b, _) = c[k].clone();
        c.insert(k.clone(), (b, 0o600));
        changed.push(k.clone());
    }
    if let Some(k) = libs.last() {
        c.remove(k);
        changed.retain(|x| x != k);
    }
    let added = format!("lib/new-in-{to}.dat");
    c.insert(
        added.clone(),
        (format!("added in {to}\n").into_bytes(), 0o644),
    );
    changed.push(added);
    changed.sort();
    changed.dedup();
    (c, changed)
}

pub struct TestHome {
    pub dir: tempfile::TempDir,
    pub home: Home,
    pub supervisor: Option<Child>,
}

impl TestHome {
    /// A home with `version` installed (core package only) and config files.
    pub fn new(version: &str, core: &Content) -> TestHome {
        Self::with_packages(&[("core", version, core)])
    }

    pub fn with_packages(pkgs: &[(&str, &str, &Content)]) -> TestHome {
        let dir = tempfile::Builder::new()
            .prefix("molt-deploy-e2e-")
            .tempdir()
            .unwrap();
        let home = Home::new(dir.path());
        let src = dir.path().join("src");
        let mut list = Vec::new();
        for (kind, v, c) in pkgs {
            let d = src.join(kind);
            write_payload(&d, c);
            list.push((manifest(kind, v, c), d));
        }
        molt_deploy::install::fresh_install(&home, &list).unwrap();
        std::fs::remove_dir_all(&src).unwrap();
        std::fs::write(
            home.config_file(),
            b"# agent config\ncontrol_plane = \"http://127.0.0.1:1\"\nproxy_password = \"\"\n",
        )
        .unwrap();
        std::fs::write(home.conf_dir().join("override.properties"), b"x=1\n").unwrap();
        TestHome {
            dir,
            home,
            supervisor: None,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A copy of this (stopped) home in a new temp dir, with `cp -a`: the same
    /// files, modes and relative `current` symlink, but new inodes. The crash
    /// test clones one prepared home per case instead of installing (and
    /// fsyncing) 2,000 files each time.
    pub fn copy_of(&self) -> TestHome {
        assert!(self.supervisor.is_none(), "copy a stopped home only");
        let dir = tempfile::Builder::new()
            .prefix("molt-deploy-e2e-")
            .tempdir()
            .unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.root().display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "cp -a failed");
        let home = Home::new(dir.path());
        TestHome {
            dir,
            home,
            supervisor: None,
        }
    }

    /// Start the real supervisor and wait until the agent of `version` is
    /// Up; its pid.
    pub fn start_up(&mut self, version: &str) -> u32 {
        self.start_supervisor();
        self.wait_up(version, Duration::from_secs(30)).unwrap()
    }

    /// [`TestHome::prepare_upgrade`] of the core package only, with [`fast_opts`].
    pub fn plan_core(
        &self,
        from: &str,
        to: &str,
        core: &Content,
        changed: &[String],
        attempt: Option<&str>,
    ) -> PathBuf {
        self.prepare_upgrade(from, to, &[("core", core)], changed, fast_opts(), attempt)
    }

    /// `molt deploy --home <home> --plan <plan>`, to run.
    pub fn deploy_cmd(&self, plan: &Path) -> Command {
        let mut c = Command::new(molt_bin());
        c.arg("deploy")
            .arg("--home")
            .arg(self.root())
            .arg("--plan")
            .arg(plan);
        c
    }

    /// The truststore file of `version`.
    pub fn truststore(&self, version: &str) -> PathBuf {
        self.home
            .version_dir(version)
            .join(molt_deploy::truststore::TRUSTSTORE)
    }

    /// Start the real supervisor (`molt run`).
    pub fn start_supervisor(&mut self) {
        let log = std::fs::File::create(self.root().join("supervisor.test.log")).unwrap();
        let c = Command::new(molt_bin())
            .args([
                "run",
                "--home",
                self.root().to_str().unwrap(),
                "--stop-timeout",
                "10",
            ])
            .env("MOLT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.supervisor = Some(c);
    }

    /// Prepare `work/upgrade_temp/<13 digits>-0/` with plan.json and the extracted packages.
    pub fn prepare_upgrade(
        &self,
        from: &str,
        to: &str,
        pkgs: &[(&str, &Content)],
        changed: &[String],
        opts: DeployOptions,
        attempt: Option<&str>,
    ) -> PathBuf {
        let n: u64 = 1_000_000_000_000 + rand_u64() % 9_000_000_000_000;
        let dir = self.home.upgrade_temp_dir().join(format!("{n}-0"));
        for (kind, c) in pkgs {
            // only changed files need to be staged, but the agent extracts whole packages
            write_payload(&dir.join("packages").join(kind), c);
        }
        let plan = DeployPlan {
            attempt_id: attempt.map(String::from),
            control_plane: None,
            from_version: from.into(),
            to_version: to.into(),
            packages: pkgs.iter().map(|(k, c)| manifest(k, to, c)).collect(),
            changed_files: changed.to_vec(),
            options: opts,
        };
        let p = dir.join("plan.json");
        plan.save(&p).unwrap();
        p
    }

    /// Run `molt deploy` to the end; returns its exit code.
    pub fn deploy(&self, plan: &Path) -> i32 {
        let out = self.deploy_cmd(plan).output().unwrap();
        std::fs::write(
            self.root().join("deploy.test.log"),
            [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
        )
        .unwrap();
        out.status.code().unwrap_or(-1)
    }

    pub fn deploy_log(&self) -> String {
        std::fs::read_to_string(self.root().join("deploy.test.log")).unwrap_or_default()
    }

    /// Wait until the agent of `version` reports Up from a live process.
    pub fn wait_up(&self, version: &str, limit: Duration) -> Result<u32, String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.home.read_status()
                && s.status == AgentStatus::Up
                && s.version == version
                && molt_deploy::proc::alive(s.pid)
            {
                return Ok(s.pid);
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "{version} not Up after {limit:?}; status: {:?}",
                    self.home.read_status()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until no deploy is in progress (no journal, no hold, lock free) and some agent is Up.
    pub fn wait_settled(&self, limit: Duration) -> Result<String, String> {
        let start = Instant::now();
        let lock = molt_deploy::journal::Journal::lock_path(&self.home);
        loop {
            let busy = self.home.journal_file().exists()
                || self.home.hold_marker().exists()
                || molt_deploy::fsutil::FileLock::is_held(&lock).unwrap_or(true);
            if !busy && let Ok(Some(s)) = self.home.read_status() {
                let cur = self.home.current_version().unwrap().unwrap_or_default();
                if s.status == AgentStatus::Up
                    && s.version == cur
                    && molt_deploy::proc::alive(s.pid)
                {
                    return Ok(cur);
                }
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "not settled after {limit:?}: journal={} hold={} status={:?} current={:?}",
                    self.home.journal_file().exists(),
                    self.home.hold_marker().exists(),
                    self.home.read_status(),
                    self.home.current_version()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `current` is exactly `version`: every file's digest and mode as expected, nothing extra.
    pub fn assert_exactly(&self, version: &str, expected: &Content) {
        assert_eq!(
            self.home.current_version().unwrap().as_deref(),
            Some(version)
        );
        assert_dir_exactly(&self.home.version_dir(version), expected);
    }

    pub fn stop_supervisor(&mut self) {
        if let Some(mut c) = self.supervisor.take() {
            molt_deploy::proc::signal(c.id(), libc_sigterm());
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        self.stop_supervisor();
        // A supervisor the runner (re)started detached, not our child.
        if let Some(p) = molt_deploy::service::read_pid(&self.home.supervisor_pid_file()) {
            molt_deploy::proc::signal(p, 9);
        }
        // Stop any agent still running from this home.
        if let Ok(Some(s)) = self.home.read_status() {
            molt_deploy::proc::signal(s.pid, 9);
        }
        if let Some(p) = molt_deploy::service::read_pid(&self.home.agent_pid_file()) {
            molt_deploy::proc::signal(p, 9);
        }
    }
}

pub fn libc_sigterm() -> i32 {
    15
}

/// A version dir holds exactly `expected` (digests, modes) and its meta.
pub fn assert_dir_exactly(dir: &Path, expected: &Content) {
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                if rel != "meta" {
                    stack.push(p);
                }
                continue;
            }
            let (b, m) = expected
                .get(&rel)
                .unwrap_or_else(|| panic!("{}: unexpected file {rel}", dir.display()));
            let got = std::fs::read(&p).unwrap();
            assert!(
                got == *b,
                "{}: {rel} has the wrong content (mixed versions?)",
                dir.display()
            );
            assert_eq!(
                molt_deploy::fsutil::mode_of(&p).unwrap(),
                *m,
                "{}: {rel} has the wrong mode",
                dir.display()
            );
            seen += 1;
        }
    }
    assert_eq!(seen, expected.len(), "{}: files missing", dir.display());
    molt_deploy::build::verify_version_dir(dir).unwrap();
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// Version `v1` of `n` files and `v2` made from it with every `every`-th
/// file changed, both with good stand-ins; and v2's changed files.
pub fn v1_v2(n: usize, every: usize) -> (Content, Content, Vec<String>) {
    let v1 = core_content("v1", n, Agent::Good);
    let (v2, changed) = next_content(&v1, "v2", every, Agent::Good);
    (v1, v2, changed)
}

/// Fast options for tests.
pub fn fast_opts() -> DeployOptions {
    DeployOptions {
        stop_timeout_secs: 10,
        health_timeout_secs: 15,
        report_timeout_secs: 1,
        grace_secs: 30,
    }
}
