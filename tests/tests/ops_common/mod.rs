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

/// `target/<profile>/molt` next to this test executable (or `MOLT_BIN`).
pub fn molt_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOLT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("molt");
    assert!(
        p.exists(),
        "{} not found: build it first with `cargo build -p molt` (or set MOLT_BIN)",
        p.display()
    );
    p
}

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
