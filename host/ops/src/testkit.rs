//! Real signed packages for the unit tests, made with the workspace's test kit
//! (`molt-testkit`, a dev-dependency): a key, a root, packed and signed core and
//! runtime bundles, and an install made from them by the real `fresh_install`.
use std::path::{Path, PathBuf};

use molt_layout::Home;
use molt_testkit::pki::PackOpts;

pub const V1: &str = "vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815";
pub const V2: &str = "vancouver-06-01-2023__patch3-08-01-2023_08-02-2023_0900";
pub const STOCK_CERT: &str = "-----BEGIN CERTIFICATE-----\nU1RPQ0s=\n-----END CERTIFICATE-----\n";
pub const CUSTOM_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nQ1VTVE9NIENB\n-----END CERTIFICATE-----\n";

pub use molt_testkit::pki::Kit;

/// The unit tests' packages and install, on the test kit's [`Kit`] (a
/// scratch dir, a key and its root).
pub trait UnitKit {
    fn package(&self, name: &str, files: &[(&str, &[u8], u32)], sequence: u64) -> PathBuf;
    fn core(&self, v: &str, seq: u64) -> PathBuf;
    fn runtime(&self, v: &str, seq: u64) -> PathBuf;
    fn install(&self, home: &Path, v: &str) -> Home;
}

impl UnitKit for Kit {
    /// Pack and sign `files` as package `name` with `sequence`.
    fn package(&self, name: &str, files: &[(&str, &[u8], u32)], sequence: u64) -> PathBuf {
        self.pki.pack_files(
            &self.dir.path().join(format!("src-{name}")),
            files,
            &self.dir.path().join("out").join(name),
            PackOpts::seq(sequence),
        )
    }

    fn core(&self, v: &str, seq: u64) -> PathBuf {
        let name = format!("molt-core.{v}.universal.universal.zip");
        self.package(
            &name,
            &[
                (
                    "bin/molt",
                    format!("#!/bin/sh\necho {v}\n").as_bytes(),
                    0o755,
                ),
                ("lib/core.txt", v.as_bytes(), 0o644),
            ],
            seq,
        )
    }

    fn runtime(&self, v: &str, seq: u64) -> PathBuf {
        let name = format!(
            "molt-runtime.{v}.{}.{}.zip",
            crate::cp::host_os(),
            crate::cp::host_arch()
        );
        self.package(
            &name,
            &[
                (
                    molt_deploy::truststore::TRUSTSTORE,
                    STOCK_CERT.as_bytes(),
                    0o644,
                ),
                (molt_deploy::truststore::STOCK, STOCK_CERT.as_bytes(), 0o644),
                ("runtime/bin/rt", b"runtime", 0o755),
            ],
            seq,
        )
    }

    /// A home with the trusted root in `state/` and version `v` installed from
    /// real packages (the kit's install: the real `fresh_install`), a
    /// config.toml and a conf/ override.
    fn install(&self, home: &Path, v: &str) -> Home {
        let (h, _) = molt_testkit::install::install(
            home,
            &self.root,
            &[self.core(v, 1), self.runtime(v, 1)],
        );
        molt_testkit::config::write_config(home, "http://127.0.0.1:9", "a1", "secret", "");
        std::fs::write(h.conf_dir().join("overrides.toml"), "threads = 7\n").unwrap();
        h
    }
}

/// A `sleep` that holds `file` open (fd 3) until the guard is dropped; returns
/// once `molt_deploy::proc::users_of(dir)` sees it (bounded wait), with its pid.
pub struct HeldOpen(std::process::Child);

impl HeldOpen {
    pub fn new(file: &Path, dir: &Path) -> HeldOpen {
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<\"$0\"; exec sleep 30")
            .arg(file)
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        for _ in 0..100 {
            if molt_deploy::proc::users_of(dir).contains(&pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        HeldOpen(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for HeldOpen {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
