//! Fixtures for the agent end-to-end tests: TEST keys and root, signed package
//! sets per version, a fresh install, a real `molt serve` and real agents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molt_bundle::{PackSpec, SigningKey};

/// A patch of the quebec family (v1), the next patch (v2) and a rome release.
pub const V1: &str = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
pub const V2: &str = "quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130";
pub const V_ROME: &str = "rome-06-10-2021__patch0-06-20-2021_07-01-2021_0900";
pub const ADMIN: &str = "admin-token-for-tests";
pub const AGENT: &str = "agent1";
pub const TOKEN: &str = "agent1-token-for-tests";

/// The `molt` binary beside the test executable (`target/<profile>/molt`).
pub fn molt_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("molt");
    assert!(
        p.is_file(),
        "{} is missing: build it first: cargo build -p molt",
        p.display()
    );
    p
}

/// The repo root (tests/..).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A TEST signing key and the single-key root that trusts it.
pub struct Pki {
    pub key: SigningKey,
    pub root_path: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let (key, _pk8) = SigningKey::generate().unwrap();
        let root = molt_bundle::editor::single_key_root(
            &key,
            molt_bundle::chrono::Utc::now() + molt_bundle::chrono::Duration::days(30),
        )
        .unwrap();
        let root_path = dir.join("root.json");
        std::fs::write(&root_path, root.to_json_pretty().unwrap()).unwrap();
        Pki { key, root_path }
    }

    /// Pack every file under `src` as package `name` and sign it.
    pub fn pack(
        &self,
        src: &Path,
        name: &str,
        out_dir: &Path,
        components: Vec<molt_bundle::Component>,
    ) -> PathBuf {
        std::fs::create_dir_all(out_dir).unwrap();
        let mut spec = PackSpec::from_buildstamp(name, 1).unwrap();
        spec.components = components;
        let out = out_dir.join(name);
        molt_bundle::pack_dir(src, &spec, &out).unwrap();
        molt_bundle::sign_bundle(&out, &[&self.key]).unwrap();
        out
    }
}

/// Files of the core payload of `version`: bin/molt (a script), lib files (one
/// changes in every version), conf defaults.
pub fn core_files(version: &str) -> Vec<(String, Vec<u8>, u32)> {
    vec![
        (
            "bin/molt".into(),
            b"#!/bin/sh\necho molt test payload\n".to_vec(),
            0o755,
        ),
        (
            "lib/common.txt".into(),
            b"unchanged between versions\n".to_vec(),
            0o644,
        ),
        (
            "lib/version.txt".into(),
            format!("{version}\n").into_bytes(),
            0o644,
        ),
        ("lib/big.bin".into(), noise(256 * 1024), 0o644),
    ]
}

/// Deterministic incompressible bytes (so a package is big on the wire).
pub fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write_tree(dir: &Path, files: &[(String, Vec<u8>, u32)]) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    for (p, data, mode) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, data).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// The committed prebuilt bundles (or `$MOLT_SIGNED_BUNDLES`).
pub fn signed_bundles_dir() -> PathBuf {
    std::env::var_os("MOLT_SIGNED_BUNDLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("signed-bundles"))
}

/// The `molt-<kind>.*.zip` in [`signed_bundles_dir`], if there is one.
pub fn signed_bundle(kind: &str) -> Option<PathBuf> {
    let prefix = format!("molt-{kind}.");
    std::fs::read_dir(signed_bundles_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".zip"))
        })
}

/// Extract the committed `molt-<kind>.*.zip` (verified against its TEST root)
/// into `dest`; returns its components. `None` if there is none.
pub fn committed_components(kind: &str, dest: &Path) -> Option<Vec<molt_bundle::Component>> {
    if let Some(w) = std::env::var_os("MOLT_GUEST_WASM") {
        return from_wasm_dir(kind, Path::new(&w), dest);
    }
    let dir = signed_bundles_dir();
    let bundle = signed_bundle(kind)?;
    let root = molt_bundle::SignedRoot::load(&dir.join("root.json")).ok()?;
    let v = molt_bundle::verify_bundle(&bundle, &root, &Default::default()).ok()?;
    let _ = std::fs::remove_dir_all(dest);
    molt_bundle::extract(&v, &bundle, dest, &Default::default()).ok()?;
    Some(v.manifest.components.clone())
}

/// The standard checks as signed-bundles/rebuild.sh packs them, from a directory
/// of built guests (`$MOLT_GUEST_WASM`, e.g. `<target>/wasm32-wasip2/release`).
fn from_wasm_dir(kind: &str, wasm: &Path, dest: &Path) -> Option<Vec<molt_bundle::Component>> {
    type Check = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );
    const CHECKS: &[Check] = &[
        ("disk_space", &["facts"], &[], &[("min_free", "1GiB")]),
        ("download_access", &["net"], &[], &[]),
        ("file_ops", &[], &["scratch", "staging"], &[]),
        ("service_account", &["facts"], &[], &[]),
        ("runtime_compat", &["facts"], &[], &[]),
        ("duplicate_install", &["services"], &[], &[]),
        ("file_locks", &["facts", "services"], &[], &[]),
    ];
    let comp = |path: String, world: &str, caps: &[&str], pre: &[&str], params: &[(&str, &str)]| {
        molt_bundle::Component {
            path,
            world: format!("molt:check/{world}@1.0.0"),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            preopens: pre.iter().map(|s| s.to_string()).collect(),
            limits: molt_bundle::ComponentLimits {
                deadline_ms: Some(5_000),
                fuel: None,
                memory_bytes: Some(32 << 20),
            },
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    };
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest.join("checks")).ok()?;
    if kind == "precheck" {
        let mut out = Vec::new();
        for (name, caps, pre, params) in CHECKS {
            std::fs::copy(
                wasm.join(format!("{name}.wasm")),
                dest.join(format!("checks/{name}.wasm")),
            )
            .ok()?;
            out.push(comp(
                format!("checks/{name}.wasm"),
                "precheck",
                caps,
                pre,
                params,
            ));
        }
        Some(out)
    } else {
        std::fs::remove_dir_all(dest.join("checks")).ok()?;
        std::fs::copy(
            wasm.join("version_select.wasm"),
            dest.join("version_select.wasm"),
        )
        .ok()?;
        Some(vec![comp(
            "version_select.wasm".into(),
            "selector",
            &["log"],
            &[],
            &[],
        )])
    }
}

/// What a package set holds.
pub struct PackageSet {
    pub dir: PathBuf,
    pub core: PathBuf,
    pub upgrade: PathBuf,
    pub precheck: Option<PathBuf>,
}

/// Build the signed packages of `version` into `out_dir`: core, upgrade,
/// precheck (re-packed from the committed bundle); the selector only if `selector`.
pub fn package_set(
    pki: &Pki,
    work: &Path,
    out_dir: &Path,
    version: &str,
    selector: bool,
) -> PackageSet {
    let src = work.join(format!("src-core-{version}"));
    write_tree(&src, &core_files(version));
    let core = pki.pack(
        &src,
        &format!("molt-core.{version}.universal.universal.zip"),
        out_dir,
        vec![],
    );
    let usrc = work.join(format!("src-upgrade-{version}"));
    write_tree(
        &usrc,
        &[("bin/molt".into(), std::fs::read(molt_bin()).unwrap(), 0o755)],
    );
    let upgrade = pki.pack(
        &usrc,
        &format!("molt-upgrade.{version}.universal.universal.zip"),
        out_dir,
        vec![],
    );
    let psrc = work.join(format!("src-precheck-{version}"));
    let precheck = committed_components("precheck", &psrc).map(|c| {
        pki.pack(
            &psrc,
            &format!("molt-precheck.{version}.universal.universal.zip"),
            out_dir,
            c,
        )
    });
    if selector {
        let ssrc = work.join(format!("src-selector-{version}"));
        if let Some(c) = committed_components("selector", &ssrc) {
            pki.pack(
                &ssrc,
                &format!("molt-selector.{version}.universal.universal.zip"),
                out_dir,
                c,
            );
        }
    }
    PackageSet {
        dir: out_dir.to_path_buf(),
        core,
        upgrade,
        precheck,
    }
}

/// A fresh install of `core` at `home`: `versions/<v>/` with the payload and
/// `meta/core.meta.json`, `current` pointing at it, the trust root in `state/`.
pub fn fresh_install(home: &Path, pki: &Pki, core: &Path, version: &str) {
    let root = molt_bundle::SignedRoot::load(&pki.root_path).unwrap();
    let v = molt_bundle::verify_bundle(core, &root, &Default::default()).unwrap();
    let vdir = home.join("versions").join(version);
    molt_bundle::extract(&v, core, &vdir, &Default::default()).unwrap();
    let files = v
        .manifest
        .entries
        .iter()
        .map(|e| {
            (
                e.path.clone(),
                molt_layout::FileMeta {
                    size: e.size,
                    sha256: e.sha256.clone(),
                    mode: e.mode,
                },
            )
        })
        .collect();
    let meta = molt_layout::InstalledPackage {
        kind: "core".into(),
        name: core.file_name().unwrap().to_string_lossy().into_owned(),
        version: version.into(),
        files,
    };
    molt_layout::write_json_atomic(&vdir.join("meta").join("core.meta.json"), &meta).unwrap();
    std::os::unix::fs::symlink(format!("versions/{version}"), home.join("current")).unwrap();
    std::fs::create_dir_all(home.join("state")).unwrap();
    std::fs::copy(&pki.root_path, home.join("state").join("root.json")).unwrap();
}

/// Write `<home>/config.toml`.
pub fn write_config(home: &Path, url: &str, extra: &str) {
    std::fs::create_dir_all(home).unwrap();
    let text = format!(
        "control_plane_url = \"{url}\"\nagent_name = \"{AGENT}\"\ntoken = \"{TOKEN}\"\nheartbeat_secs = 1\ntest_download_backoff_ms = 100\n{extra}"
    );
    std::fs::write(home.join("config.toml"), text).unwrap();
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGTERM, then wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Wait for exit, bounded.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// A running `molt serve`.
pub struct Server {
    pub proc: Proc,
    pub url: String,
    pub db: PathBuf,
    pub packages: PathBuf,
}

/// Start `molt serve` on 127.0.0.1:`port` (0 = any) with the agent and fleet version.
pub fn start_server(dir: &Path, packages: &Path, fleet: &str, port: u16, extra: &[&str]) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let db = dir.join("cp.db");
    let mut cmd = Command::new(molt_bin());
    cmd.args(["serve", "--db"])
        .arg(&db)
        .arg("--packages")
        .arg(packages)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            ADMIN,
            "--fleet-version",
            fleet,
        ])
        .args(["--bootstrap-agent", &format!("{AGENT}:{TOKEN}")])
        .args(extra)
        .env("MOLT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("serve-{port}.log"))).unwrap());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(i) = line.find("http://") {
                let _ = tx.send(line[i..].trim().to_string());
            }
        }
    });
    let log = dir.join(format!("serve-{port}.log"));
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "molt serve did not print its URL within 30 s ({e}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    Server {
        proc: Proc {
            child,
            name: "serve".into(),
        },
        url,
        db,
        packages: packages.to_path_buf(),
    }
}

/// Start `molt agent --home H`.
pub fn start_agent(home: &Path) -> Proc {
    let child = Command::new(molt_bin())
        .args(["agent", "--home"])
        .arg(home)
        .env("MOLT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.join("agent.stderr")).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        name: "agent".into(),
    }
}

/// Wait until `<home>/logs/agent.log` contains `needle` (bounded); returns the log.
pub fn wait_log(home: &Path, needle: &str, limit: Duration) -> String {
    let log = home.join("logs").join("agent.log");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        if start.elapsed() > limit {
            let err = std::fs::read_to_string(home.join("agent.stderr")).unwrap_or_default();
            panic!(
                "`{needle}` not in {} after {limit:?}:\n{text}\n--- stderr ---\n{err}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait for a condition (bounded).
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET an admin endpoint as JSON (blocking, via a small runtime).
pub fn admin_get(url: &str, path: &str) -> serde_json::Value {
    admin(url, reqwest::Method::GET, path, None)
}

/// Any admin call.
pub fn admin(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let mut r = c.request(method, format!("{url}{path}")).bearer_auth(ADMIN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    })
}

/// The agent's upgrade attempts (newest first, as the control plane lists them).
pub fn attempts(url: &str) -> Vec<serde_json::Value> {
    admin_get(url, &format!("/api/v1/admin/agents/{AGENT}/attempts"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// State of `stage` in an attempt.
pub fn stage_state(attempt: &serde_json::Value, stage: &str) -> Option<String> {
    attempt["stages"]
        .as_array()?
        .iter()
        .find(|s| s["stage"] == stage)
        .and_then(|s| s["state"].as_str())
        .map(str::to_string)
}

/// The agent's status as the control plane shows it.
pub fn agent_status(url: &str) -> Option<String> {
    let v = admin_get(url, "/api/v1/admin/agents");
    let list = v
        .as_array()
        .cloned()
        .or_else(|| v["agents"].as_array().cloned())?;
    list.iter()
        .find(|a| a["name"] == AGENT)
        .and_then(|a| a["status"].as_str())
        .map(str::to_string)
}
