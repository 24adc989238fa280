//! Shared set-up for the operator-tool tests: the real `molt` binary, real
//! signed packages (with the real `molt` binary as the core package's
//! `bin/molt`), real installs laid out the way molt-deploy lays them out.
#![allow(dead_code, unused_imports)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molt_layout::{Home, InstalledPackage};
pub use molt_testkit::pki::{PackOpts, Pki, copy_tree};
pub use molt_testkit::proc::alive;
pub use molt_testkit::wait::{contains as file_contains, until as wait_for};

pub const V1: &str = "vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815";
pub const V2: &str = "vancouver-06-01-2023__patch3-08-01-2023_08-02-2023_0900";
pub const TRUSTSTORE: &str = "runtime/lib/security/cacerts.pem";
pub const STOCK: &str = "runtime/lib/security/cacerts.stock.pem";
pub const STOCK_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nU1RPQ0sgQ0E=\n-----END CERTIFICATE-----\n";
pub const CUSTOM_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nQ1VTVE9NIElOVEVSTkFMIENB\n-----END CERTIFICATE-----\n";

pub use molt_testkit::bin::{molt, molt_bin, molt_logged};

pub fn host_os() -> &'static str {
    std::env::consts::OS
}

pub fn host_arch() -> String {
    std::env::consts::ARCH.replace('_', "-")
}

/// The test kit's [`molt_testkit::pki::Kit`] (a scratch dir, a key and its
/// root in `<dir>/root.json`) with the operator tests' packages and installs.
pub struct Kit(pub molt_testkit::pki::Kit);

impl std::ops::Deref for Kit {
    type Target = molt_testkit::pki::Kit;
    fn deref(&self) -> &molt_testkit::pki::Kit {
        &self.0
    }
}

impl Kit {
    pub fn new() -> Kit {
        Kit(molt_testkit::pki::Kit::new())
    }

    /// Pack and sign a directory of `files` (path, content, mode) as `name`.
    pub fn package(&self, name: &str, files: &[(&str, Vec<u8>, u32)], sequence: u64) -> PathBuf {
        self.pack(name, files, PackOpts::seq(sequence))
    }

    /// The core package of `v`: the real `molt` binary as `bin/molt`.
    pub fn core(&self, v: &str, seq: u64) -> PathBuf {
        let name = format!("molt-core.{v}.universal.universal.zip");
        let out = self.dir.path().join("packages").join(&name);
        if out.exists() {
            return out;
        }
        let bin = std::fs::read(molt_bin()).unwrap();
        self.package(
            &name,
            &[
                ("bin/molt", bin, 0o755),
                ("lib/core.txt", v.as_bytes().to_vec(), 0o644),
            ],
            seq,
        )
    }

    pub fn runtime(&self, v: &str, seq: u64) -> PathBuf {
        let name = format!("molt-runtime.{v}.{}.{}.zip", host_os(), host_arch());
        self.package(
            &name,
            &[
                (TRUSTSTORE, STOCK_CERT.as_bytes().to_vec(), 0o644),
                (STOCK, STOCK_CERT.as_bytes().to_vec(), 0o644),
                ("runtime/bin/rt", b"#!/bin/sh\n".to_vec(), 0o755),
            ],
            seq,
        )
    }

    /// Verify and extract packages into `dest`, returning their installed meta.
    pub fn extract(&self, pkgs: &[PathBuf], dest: &Path) -> Vec<InstalledPackage> {
        pkgs.iter()
            .map(|p| {
                let tmp = tempfile::tempdir_in(self.dir.path()).unwrap();
                let m = molt_testkit::install::extract(p, &self.root, tmp.path());
                copy_tree(tmp.path(), dest);
                m
            })
            .collect()
    }

    /// An install of `v` (core + runtime) through the real `fresh_install`:
    /// `versions/<v>` with meta, `current`, the trusted root in `state/`, a
    /// config.toml pointing at `cp_url`, and a conf/ override.
    pub fn install(&self, home: &Path, v: &str, cp_url: &str) -> Home {
        self.install_packages(home, v, cp_url, &[self.core(v, 1), self.runtime(v, 1)])
    }
}

pub fn write_config(h: &Home, cp_url: &str, token: &str) {
    molt_testkit::config::write_config(h.root(), cp_url, "a1", token, "handover_wait_secs = 20\n");
}

/// A port nothing listens on.
pub fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// `molt diagnose --home H [extra]`: (exit code, stdout).
pub fn diagnose(h: &Home, extra: &[&str]) -> (i32, String) {
    let home = h.root().to_string_lossy().into_owned();
    let mut args = vec!["diagnose", "--home", home.as_str()];
    args.extend_from_slice(extra);
    let o = molt(&args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// `molt diagnose --json` finding ids.
pub fn diagnose_ids(h: &Home, extra: &[&str]) -> (i32, Vec<String>, serde_json::Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let (code, out) = diagnose(h, &args);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let ids = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    (code, ids, v)
}

/// A child killed (and its process group signalled) on drop.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `molt <args>` with stdout and stderr appended to `log`.
pub fn spawn_logged(args: &[&str], log: &Path) -> Proc {
    Proc(molt_logged(log, args).spawn().unwrap())
}

pub fn sigterm(pid: u32) {
    molt_testkit::proc::signal(pid, "TERM");
}

// ---------------------------------------------------------------------------
// Real-failure fixtures for the `ops_diagnose_*` tests: light packages (the
// core's `bin/molt` is a two-line launcher of the molt binary under test, so a
// package is a few KB instead of the 100 MB debug binary), a real `molt serve`,
// real agents and supervisors, and plans for the real runner (`molt deploy`).
// ---------------------------------------------------------------------------

/// A `bin/molt` that runs the molt binary under test with the same arguments.
/// Signed into the package like any file: the agent, the runner and the
/// supervisor all run through it.
pub fn launcher() -> Vec<u8> {
    format!("#!/bin/sh\nexec '{}' \"$@\"\n", molt_bin().display()).into_bytes()
}

impl Kit {
    /// The directory the control plane serves (every package the kit makes).
    pub fn packages_dir(&self) -> PathBuf {
        self.dir.path().join("packages")
    }

    /// Pack `files` (or the tree at `src` when `files` is empty) as `name` into
    /// the packages dir, signed by the kit's key unless `o.signer` says otherwise.
    pub fn pack(&self, name: &str, files: &[(&str, Vec<u8>, u32)], o: PackOpts<'_>) -> PathBuf {
        let src = self.dir.path().join(format!("src-{name}"));
        let out = self.packages_dir().join(name);
        if files.is_empty() {
            self.0.pki.pack_with(&src, &out, o)
        } else {
            self.0.pki.pack_files(&src, files, &out, o)
        }
    }

    /// Core package of `v` with the launcher as `bin/molt` (plus `extra` files).
    pub fn light_core(&self, v: &str, o: PackOpts<'_>, extra: &[(&str, Vec<u8>, u32)]) -> PathBuf {
        let mut files = vec![
            ("bin/molt", launcher(), 0o755),
            ("lib/core.txt", v.as_bytes().to_vec(), 0o644),
        ];
        files.extend(extra.iter().cloned());
        self.pack(&format!("molt-core.{v}.universal.universal.zip"), &files, o)
    }

    /// Upgrade package of `v`: the runner the agent hands over to (the launcher).
    pub fn light_upgrade(&self, v: &str) -> PathBuf {
        self.pack(
            &format!("molt-upgrade.{v}.universal.universal.zip"),
            &[("bin/molt", launcher(), 0o755)],
            PackOpts::default(),
        )
    }

    /// Core and upgrade packages of `v` in the packages dir: what the control
    /// plane needs to assign `v`.
    pub fn light_release(&self, v: &str) -> PathBuf {
        self.light_upgrade(v);
        self.light_core(v, PackOpts::default(), &[])
    }

    /// A precheck (or selector) bundle of `v` re-packed from the committed
    /// TEST bundle in `signed-bundles/`, signed by the kit's key, with its
    /// components changed by `tweak` (e.g. a smaller deadline; it gets the
    /// bundle's source dir to add files).
    pub fn side_bundle(
        &self,
        kind: &str,
        v: &str,
        tweak: impl FnOnce(&Path, &mut Vec<molt_bundle::Component>),
    ) -> PathBuf {
        let name = format!("molt-{kind}.{v}.universal.universal.zip");
        let src = self.dir.path().join(format!("src-{name}"));
        let mut comps = molt_e2e::agent_fx::committed_components(kind, &src)
            .unwrap_or_else(|| panic!("no committed molt-{kind} bundle in signed-bundles/"));
        tweak(&src, &mut comps);
        self.pack(
            &name,
            &[],
            PackOpts {
                components: comps,
                ..PackOpts::default()
            },
        )
    }

    /// An install of `v` made of `pkgs` (as [`Kit::install`] lays it out).
    pub fn install_packages(&self, home: &Path, v: &str, cp_url: &str, pkgs: &[PathBuf]) -> Home {
        let (h, installed) = molt_testkit::install::install(home, &self.root, pkgs);
        assert_eq!(installed, v, "the packages are of another version");
        write_config(&h, cp_url, AGENT_TOKEN);
        std::fs::write(h.conf_dir().join("overrides.toml"), "threads = 7\n").unwrap();
        h
    }

    /// `versions/<v>` with its meta, made of `pkgs` (not made current).
    pub fn place_version(&self, h: &Home, v: &str, pkgs: &[PathBuf]) {
        let vdir = h.version_dir(v);
        let metas = self.extract(pkgs, &vdir);
        molt_testkit::install::write_metas(&vdir, &metas);
    }

    /// An install of `v` with a light core and a runtime.
    pub fn light_install(&self, home: &Path, v: &str, cp_url: &str) -> Home {
        let core = self.light_core(v, PackOpts::default(), &[]);
        let rt = self.runtime(v, 1);
        self.install_packages(home, v, cp_url, &[core, rt])
    }

    /// Extract `pkgs` into a hand-over directory under `work/upgrade_temp` and
    /// write the plan the agent would write for `from -> to` (changed files
    /// computed against the current meta as the agent does), with short timeouts.
    pub fn stage_plan(
        &self,
        h: &Home,
        from: &str,
        to: &str,
        pkgs: &[PathBuf],
        stop_secs: u64,
        health_secs: u64,
    ) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = 1_000_000_000_000
            + u64::from(std::process::id()) * 1000
            + N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let up = h.upgrade_temp_dir().join(format!("{n}-0"));
        let mut metas = Vec::new();
        for p in pkgs {
            let m = self.extract(std::slice::from_ref(p), &up.join("packages").join("x"));
            let kind = m[0].kind.clone();
            std::fs::rename(up.join("packages/x"), up.join("packages").join(&kind)).unwrap();
            metas.extend(m);
        }
        let installed = molt_layout::read_meta_dir(&h.meta_dir_of(from)).unwrap();
        let mut old = std::collections::BTreeMap::new();
        for p in &installed {
            for (f, m) in &p.files {
                old.insert(f.clone(), m.clone());
            }
        }
        let mut changed: Vec<String> = metas
            .iter()
            .flat_map(|p| p.files.iter())
            .filter(|(f, m)| {
                old.get(*f)
                    .is_none_or(|o| o.sha256 != m.sha256 || o.mode != m.mode || o.size != m.size)
            })
            .map(|(f, _)| f.clone())
            .collect();
        changed.sort();
        let plan = serde_json::json!({
            "attempt_id": null,
            "control_plane": null,
            "from_version": from,
            "to_version": to,
            "packages": metas,
            "changed_files": changed,
            "options": {"stop_timeout_secs": stop_secs, "health_timeout_secs": health_secs, "report_timeout_secs": 1},
        });
        let p = up.join("plan.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
        p
    }
}

/// Run the real runner on `plan` as the hand-over starts it (`molt deploy
/// --home H --plan P`, output to `runner.log` beside the plan), with `env`.
/// Returns its exit code (0 Complete, 2 Rolled Back, 3 Failed, 1 error).
pub fn run_deploy(h: &Home, plan: &Path, env: &[(&str, &str)]) -> i32 {
    let st = molt_logged(
        &plan.parent().unwrap().join("runner.log"),
        &["deploy", "--home"],
    )
    .arg(h.root())
    .arg("--plan")
    .arg(plan)
    .envs(env.iter().copied())
    .status()
    .unwrap();
    st.code().unwrap_or(-1)
}

/// The runner's output of `plan` (its `runner.log`).
pub fn runner_log(plan: &Path) -> String {
    std::fs::read_to_string(plan.parent().unwrap().join("runner.log")).unwrap_or_default()
}

/// The admin token of every [`serve`]d control plane.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// The token `write_config` gives agent `a1`.
pub const AGENT_TOKEN: &str = "agent-token-0123456789";

/// A running `molt serve`.
pub struct Cp {
    pub proc: molt_testkit::proc::Proc,
    pub url: String,
}

/// Start a real `molt serve` on 127.0.0.1 serving `packages`, agent `a1` known,
/// with `extra` arguments (e.g. `--fleet-version V`). Its log is `<dir>/serve.log`.
pub fn serve(dir: &Path, packages: &Path, extra: &[&str]) -> Cp {
    let s = molt_testkit::serve::Serve {
        dir,
        packages,
        port: 0,
        admin_token: ADMIN_TOKEN,
        agent: ("a1", AGENT_TOKEN),
        args: extra.iter().map(|a| a.to_string()).collect(),
        env: &[],
        log: "serve.log".into(),
    }
    .start();
    Cp {
        proc: s.proc,
        url: s.url,
    }
}

/// One admin API call (JSON in and out); panics on a non-2xx answer.
pub fn admin(url: &str, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    molt_e2e::agent_fx::admin_as(url, ADMIN_TOKEN, m, path, Some(body))
}

/// Rewrite config.toml: the kit's settings plus `extra` lines (short download
/// backoff for tests).
pub fn agent_config(h: &Home, cp_url: &str, extra: &str) {
    write_config(h, cp_url, AGENT_TOKEN);
    let mut t = std::fs::read_to_string(h.config_file()).unwrap();
    t.push_str("test_download_backoff_ms = 10\n");
    t.push_str(extra);
    std::fs::write(h.config_file(), t).unwrap();
}

/// A real agent process; on drop it is killed, and so is anything else still
/// running on its install (a runner it handed over to, a supervisor that
/// runner started).
pub struct Agent(pub Child, pub Home);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        kill_all_of(&self.1);
    }
}

/// Start the real agent on `h` (stderr to `logs/agent.console.log`, as the
/// supervisor does), with `env`.
pub fn start_agent(h: &Home, env: &[(&str, &str)]) -> Agent {
    let child = molt_logged(
        &h.logs_dir().join("agent.console.log"),
        &["agent", "--home"],
    )
    .arg(h.root())
    .envs(env.iter().copied())
    .spawn()
    .unwrap();
    Agent(child, h.clone())
}

/// Wait until `logs/agent.log` holds `needle`; returns the log.
pub fn wait_agent_log(h: &Home, needle: &str, limit: Duration) -> String {
    molt_testkit::wait::file_contains(&h.agent_log(), needle, limit, || {
        let console = h.logs_dir().join("agent.console.log");
        format!(
            "--- console ---\n{}",
            std::fs::read_to_string(console).unwrap_or_default()
        )
    })
}

/// What the agent logs when its download failed.
pub const DOWNLOAD_FAILED: &str = "Upgrade History stage Download Upgrade Packages: Failed";

/// Wait (`limit` at most) until the agent on `h` reports its download failed.
pub fn wait_download_failed(h: &Home, limit: Duration) -> String {
    wait_agent_log(h, DOWNLOAD_FAILED, limit)
}

/// Start the agent on `h`, wait (`limit` at most) until its download
/// failed, and stop it.
pub fn run_agent_until_download_failed(h: &Home, limit: Duration) -> String {
    run_agent_until(h, DOWNLOAD_FAILED, limit)
}

/// Start the agent on `h`, wait (`limit` at most) until its log holds
/// `needle`, and stop it; returns the log.
pub fn run_agent_until(h: &Home, needle: &str, limit: Duration) -> String {
    let agent = start_agent(h, &[]);
    let log = wait_agent_log(h, needle, limit);
    drop(agent);
    log
}

/// A supervisor (`molt run`) on an install; on drop it and every agent,
/// supervisor or runner recorded for the install are stopped.
pub struct Service {
    pub home: Home,
    pub sup: Option<Proc>,
}

impl Service {
    /// Start `molt run --home H --stop-timeout 5` (log: `logs/supervisor.log`).
    pub fn start(h: &Home) -> Service {
        let home = h.root().to_string_lossy().into_owned();
        let p = spawn_logged(
            &["run", "--home", &home, "--stop-timeout", "5"],
            &h.logs_dir().join("supervisor.log"),
        );
        Service {
            home: h.clone(),
            sup: Some(p),
        }
    }

    /// Wait until the agent of `v` reports Up from a live process; its pid.
    pub fn wait_up(&self, v: &str, limit: Duration) -> u32 {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.home.read_status()
                && s.status == "Up"
                && s.version == v
                && alive(s.pid)
            {
                return s.pid;
            }
            assert!(
                start.elapsed() < limit,
                "{v} not Up after {limit:?}: {:?}\n{}",
                self.home.read_status(),
                std::fs::read_to_string(self.home.logs_dir().join("supervisor.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM the supervisor and wait for it (it stops its agent first).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.sup.take() {
            sigterm(p.0.id());
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = p.0.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
        kill_all_of(&self.home);
    }
}

/// SIGKILL every process whose command line names `h` as its home (`--home
/// <h>`): the agents, supervisors and runners this test started there, even
/// detached ones. Nothing else is touched.
pub fn kill_all_of(h: &Home) {
    molt_testkit::proc::kill_all_on(h.root());
}

/// Send `sig` (e.g. "STOP", "CONT") to `pid`.
pub fn signal(pid: u32, sig: &str) {
    assert!(molt_testkit::proc::signal(pid, sig), "kill -{sig} {pid}");
}

/// The finding `id` of a `molt diagnose --json` answer.
pub fn finding<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id} in {v:#}"))
}

/// Run `molt diagnose --json` and check that it names `id`, that one of its
/// evidence lines (or facts) contains `evidence` (the real message), and that
/// none of `absent` is reported. Returns the JSON answer.
pub fn assert_diagnosed(h: &Home, id: &str, evidence: &str, absent: &[&str]) -> serde_json::Value {
    assert_diagnosed_with(h, &[], id, evidence, absent)
}

/// [`assert_diagnosed`] with extra `molt diagnose` arguments (`--log F`).
pub fn assert_diagnosed_with(
    h: &Home,
    extra: &[&str],
    id: &str,
    evidence: &str,
    absent: &[&str],
) -> serde_json::Value {
    let (code, ids, v) = diagnose_ids(h, extra);
    assert!(
        ids.iter().any(|i| i == id),
        "{id} not diagnosed: {ids:?}\n{v:#}"
    );
    let f = finding(&v, id);
    // Log signatures show the matching lines; state conditions the facts found.
    let mut ev: Vec<&str> = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    if ev.is_empty() {
        ev = f["details"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d.as_str())
            .collect();
    }
    assert!(
        ev.iter().any(|t| t.contains(evidence)),
        "{id}: no evidence line contains `{evidence}`: {ev:#?}"
    );
    for a in absent {
        assert!(
            !ids.iter().any(|i| i == a),
            "{a} must not be diagnosed here: {ids:?}\n{v:#}"
        );
    }
    let failure = ids.iter().any(|i| {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == i.as_str() && f["severity"] != "info")
    });
    assert_eq!(code, i32::from(failure), "exit code: {v:#}");
    v
}

/// `chattr +i` on a directory for the life of the guard (what hardening or
/// security software does to a folder); an error where the file system refuses.
pub struct Immutable(PathBuf);

impl Immutable {
    pub fn set(dir: &Path) -> Result<Immutable, String> {
        let o = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .map_err(|e| format!("chattr: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "chattr +i {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(Immutable(dir.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}
