//! Shared set-up for the operator-tool tests: the real `molt` binary, real
//! signed packages (with the real `molt` binary as the core package's
//! `bin/molt`), real installs laid out the way molt-deploy lays them out.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use molt_bundle::chrono::{Duration as CDuration, Utc};
use molt_bundle::{PackSpec, SignedRoot, SigningKey, pack_dir, sign_bundle};
use molt_layout::{FileMeta, Home, InstalledPackage};

pub const V1: &str = "vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815";
pub const V2: &str = "vancouver-06-01-2023__patch3-08-01-2023_08-02-2023_0900";
pub const TRUSTSTORE: &str = "runtime/lib/security/cacerts.pem";
pub const STOCK: &str = "runtime/lib/security/cacerts.stock.pem";
pub const STOCK_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nU1RPQ0sgQ0E=\n-----END CERTIFICATE-----\n";
pub const CUSTOM_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nQ1VTVE9NIElOVEVSTkFMIENB\n-----END CERTIFICATE-----\n";

pub use molt_e2e::agent_fx::molt_bin;

pub fn host_os() -> &'static str {
    std::env::consts::OS
}

pub fn host_arch() -> String {
    std::env::consts::ARCH.replace('_', "-")
}

/// A signing key, its single-key root and a scratch dir.
pub struct Kit {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub root: SignedRoot,
}

impl Kit {
    pub fn new() -> Kit {
        let key = SigningKey::generate().unwrap().0;
        let root =
            molt_bundle::editor::single_key_root(&key, Utc::now() + CDuration::days(30)).unwrap();
        Kit {
            dir: tempfile::tempdir().unwrap(),
            key,
            root,
        }
    }

    /// Pack and sign a directory of `files` (path, content, mode) as `name`.
    pub fn package(&self, name: &str, files: &[(&str, Vec<u8>, u32)], sequence: u64) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let src = self.dir.path().join(format!("src-{name}"));
        let _ = std::fs::remove_dir_all(&src);
        for (rel, data, mode) in files {
            let p = src.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let out = self.dir.path().join("packages").join(name);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        pack_dir(
            &src,
            &PackSpec::from_buildstamp(name, sequence).unwrap(),
            &out,
        )
        .unwrap();
        sign_bundle(&out, &[&self.key]).unwrap();
        out
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
        let mut out = Vec::new();
        for p in pkgs {
            let v = molt_bundle::verify_bundle(p, &self.root, &Default::default()).unwrap();
            let tmp = self.dir.path().join("x").join(v.manifest.kind.as_str());
            let _ = std::fs::remove_dir_all(&tmp);
            molt_bundle::extract(&v, p, &tmp, &Default::default()).unwrap();
            copy_tree(&tmp, dest);
            out.push(InstalledPackage {
                kind: v.manifest.kind.as_str().into(),
                name: v.buildstamp.to_string(),
                version: v.buildstamp.version.to_string(),
                files: v
                    .manifest
                    .entries
                    .iter()
                    .map(|e| {
                        (
                            e.path.clone(),
                            FileMeta {
                                size: e.size,
                                sha256: e.sha256.clone(),
                                mode: e.mode,
                            },
                        )
                    })
                    .collect(),
            });
        }
        out
    }

    /// An install of `v` (core + runtime): `versions/<v>` with meta, `current`,
    /// the trusted root in `state/`, a config.toml pointing at `cp_url`, and a
    /// conf/ override.
    pub fn install(&self, home: &Path, v: &str, cp_url: &str) -> Home {
        let h = Home::new(home);
        let vdir = h.version_dir(v);
        let metas = self.extract(&[self.core(v, 1), self.runtime(v, 1)], &vdir);
        std::fs::create_dir_all(vdir.join("meta")).unwrap();
        for m in &metas {
            std::fs::write(
                vdir.join("meta").join(format!("{}.meta.json", m.kind)),
                serde_json::to_vec_pretty(m).unwrap(),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(format!("versions/{v}"), h.current_link()).unwrap();
        for d in [h.state_dir(), h.conf_dir(), h.logs_dir(), h.work_dir()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            h.state_dir().join("root.json"),
            self.root.to_json_pretty().unwrap(),
        )
        .unwrap();
        write_config(&h, cp_url, "agent-token-0123456789");
        std::fs::write(h.conf_dir().join("overrides.toml"), "threads = 7\n").unwrap();
        h
    }
}

pub fn write_config(h: &Home, cp_url: &str, token: &str) {
    std::fs::write(
        h.config_file(),
        format!("control_plane_url = \"{cp_url}\"\nagent_name = \"a1\"\ntoken = \"{token}\"\nheartbeat_secs = 1\nhandover_wait_secs = 20\n"),
    )
    .unwrap();
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
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

/// Run `molt <args>` to completion.
pub fn molt(args: &[&str]) -> Output {
    Command::new(molt_bin())
        .args(args)
        .env_remove("MOLT_HOME")
        .output()
        .unwrap()
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
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(molt_bin())
        .args(args)
        .env_remove("MOLT_HOME")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    Proc(child)
}

/// Wait until `f` holds, or panic with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn file_contains(p: &Path, s: &str) -> bool {
    std::fs::read_to_string(p)
        .map(|t| t.contains(s))
        .unwrap_or(false)
}

pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
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

/// How a package is packed: which key signs it and what to change in its spec.
pub struct PackOpts<'a> {
    pub sequence: u64,
    pub signer: Option<&'a SigningKey>,
    pub expires: Option<molt_bundle::chrono::DateTime<Utc>>,
    pub components: Vec<molt_bundle::Component>,
}

impl Default for PackOpts<'_> {
    fn default() -> Self {
        PackOpts {
            sequence: 1,
            signer: None,
            expires: None,
            components: Vec::new(),
        }
    }
}

impl Kit {
    /// The directory the control plane serves (every package the kit makes).
    pub fn packages_dir(&self) -> PathBuf {
        self.dir.path().join("packages")
    }

    /// Pack `files` (or the tree at `src` when `files` is empty) as `name` into
    /// the packages dir, signed by the kit's key unless `o.signer` says otherwise.
    pub fn pack(&self, name: &str, files: &[(&str, Vec<u8>, u32)], o: PackOpts<'_>) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let src = self.dir.path().join(format!("src-{name}"));
        if !files.is_empty() {
            let _ = std::fs::remove_dir_all(&src);
            for (rel, data, mode) in files {
                let p = src.join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, data).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
        let out = self.packages_dir().join(name);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let mut spec = PackSpec::from_buildstamp(name, o.sequence).unwrap();
        if let Some(e) = o.expires {
            spec.expires = e;
        }
        spec.components = o.components;
        pack_dir(&src, &spec, &out).unwrap();
        sign_bundle(&out, &[o.signer.unwrap_or(&self.key)]).unwrap();
        out
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
        let h = Home::new(home);
        self.place_version(&h, v, pkgs);
        std::os::unix::fs::symlink(format!("versions/{v}"), h.current_link()).unwrap();
        for d in [h.state_dir(), h.conf_dir(), h.logs_dir(), h.work_dir()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            h.state_dir().join("root.json"),
            self.root.to_json_pretty().unwrap(),
        )
        .unwrap();
        write_config(&h, cp_url, "agent-token-0123456789");
        std::fs::write(h.conf_dir().join("overrides.toml"), "threads = 7\n").unwrap();
        h
    }

    /// `versions/<v>` with its meta, made of `pkgs` (not made current).
    pub fn place_version(&self, h: &Home, v: &str, pkgs: &[PathBuf]) {
        let vdir = h.version_dir(v);
        let metas = self.extract(pkgs, &vdir);
        std::fs::create_dir_all(vdir.join("meta")).unwrap();
        for m in &metas {
            std::fs::write(
                vdir.join("meta").join(format!("{}.meta.json", m.kind)),
                serde_json::to_vec_pretty(m).unwrap(),
            )
            .unwrap();
        }
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
    let log = plan.parent().unwrap().join("runner.log");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let st = Command::new(molt_bin())
        .args(["deploy", "--home"])
        .arg(h.root())
        .arg("--plan")
        .arg(plan)
        .envs(env.iter().copied())
        .env_remove("MOLT_HOME")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
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
    pub proc: Proc,
    pub url: String,
}

/// Start a real `molt serve` on 127.0.0.1 serving `packages`, agent `a1` known,
/// with `extra` arguments (e.g. `--fleet-version V`). Its log is `<dir>/serve.log`.
pub fn serve(dir: &Path, packages: &Path, extra: &[&str]) -> Cp {
    use std::io::{BufRead, BufReader};
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(molt_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .args(["--bootstrap-agent", &format!("a1:{AGENT_TOKEN}")])
        .arg("--db")
        .arg(dir.join("cp.db"))
        .arg("--packages")
        .arg(packages)
        .args(extra)
        .env_remove("MOLT_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stdout so the server never writes into a closed pipe.
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(u) = l.strip_prefix("control plane listening on ") {
                let _ = tx.send(u.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "molt serve did not print its URL: {}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            )
        });
    Cp { proc, url }
}

/// One admin API call (JSON in and out); panics on a non-2xx answer.
pub fn admin(url: &str, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = reqwest::Client::new()
            .request(m, format!("{url}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            status.is_success(),
            "{method} {path}: HTTP {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    })
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
    std::fs::create_dir_all(h.logs_dir()).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.logs_dir().join("agent.console.log"))
        .unwrap();
    let child = Command::new(molt_bin())
        .args(["agent", "--home"])
        .arg(h.root())
        .envs(env.iter().copied())
        .env_remove("MOLT_HOME")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    Agent(child, h.clone())
}

/// Wait until `logs/agent.log` holds `needle`; returns the log.
pub fn wait_agent_log(h: &Home, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let t = std::fs::read_to_string(h.agent_log()).unwrap_or_default();
        if t.contains(needle) {
            return t;
        }
        assert!(
            start.elapsed() < limit,
            "`{needle}` not in the agent log after {limit:?}:\n{t}\n--- console ---\n{}",
            std::fs::read_to_string(h.logs_dir().join("agent.console.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let home = h.root().to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
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
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Send `sig` (e.g. "STOP", "CONT") to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
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
