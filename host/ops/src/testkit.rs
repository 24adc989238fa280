//! Real signed packages for the unit tests: a key, a root, packed and signed
//! core and runtime bundles, and an install made from them.
use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use molt_bundle::{PackSpec, SignedRoot, SigningKey, pack_dir, sign_bundle};
use molt_layout::Home;

pub const V1: &str = "vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815";
pub const V2: &str = "vancouver-06-01-2023__patch3-08-01-2023_08-02-2023_0900";
pub const STOCK_CERT: &str = "-----BEGIN CERTIFICATE-----\nU1RPQ0s=\n-----END CERTIFICATE-----\n";
pub const CUSTOM_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nQ1VTVE9NIENB\n-----END CERTIFICATE-----\n";

pub struct Kit {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub root: SignedRoot,
}

impl Kit {
    pub fn new() -> Kit {
        let key = SigningKey::generate().unwrap().0;
        let root =
            molt_bundle::editor::single_key_root(&key, Utc::now() + Duration::days(30)).unwrap();
        Kit {
            dir: tempfile::tempdir().unwrap(),
            key,
            root,
        }
    }

    /// Pack and sign `files` as package `name` with `sequence`.
    pub fn package(&self, name: &str, files: &[(&str, &[u8], u32)], sequence: u64) -> PathBuf {
        let src = self.dir.path().join(format!("src-{name}"));
        let _ = std::fs::remove_dir_all(&src);
        for (rel, data, mode) in files {
            let p = src.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let out = self.dir.path().join("out").join(name);
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

    pub fn core(&self, v: &str, seq: u64) -> PathBuf {
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

    pub fn runtime(&self, v: &str, seq: u64) -> PathBuf {
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
    /// real packages, a config.toml and a conf/ override.
    pub fn install(&self, home: &Path, v: &str) -> Home {
        let h = Home::new(home);
        std::fs::create_dir_all(h.state_dir()).unwrap();
        std::fs::write(
            h.state_dir().join("root.json"),
            self.root.to_json_pretty().unwrap(),
        )
        .unwrap();
        let mut pkgs = Vec::new();
        for p in [self.core(v, 1), self.runtime(v, 1)] {
            let v = molt_bundle::verify_bundle(&p, &self.root, &Default::default()).unwrap();
            let dest = self.dir.path().join("x").join(v.manifest.kind.as_str());
            let _ = std::fs::remove_dir_all(&dest);
            molt_bundle::extract(&v, &p, &dest, &Default::default()).unwrap();
            pkgs.push((crate::import::installed_package(&v), dest));
        }
        molt_deploy::install::fresh_install(&h, &pkgs).unwrap();
        std::fs::write(
            h.config_file(),
            "control_plane_url = \"http://127.0.0.1:9\"\nagent_name = \"a1\"\ntoken = \"secret\"\n",
        )
        .unwrap();
        std::fs::write(h.conf_dir().join("overrides.toml"), "threads = 7\n").unwrap();
        h
    }
}
