//! The fixture factory of `molt demo`: a TEST-ONLY key and root, signed v1 and
//! v2 packages that carry a given `molt` binary, the committed precheck and
//! selector bundles re-signed with that key, and a fresh v1 install with its
//! config. Offline and synchronous; the CLI starts the control plane and the
//! supervisor and narrates. The check bundles come in as bytes, so a `molt`
//! copied away from the source tree (which embeds them) still has them.
use std::path::{Path, PathBuf};

use molt_bundle::chrono::{Duration, Utc};
use molt_bundle::schema::Component;
use molt_bundle::{Limits, SignedRoot, SigningKey, VerifiedBundle, VerifyOptions};
use molt_layout::Home;

use crate::{OpsError, io_err};

/// The version the demo installs.
pub const V1: &str = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
/// The version the demo upgrades to.
pub const V2: &str = "quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130";
/// The demo agent's name and token on the control plane.
pub const AGENT: &str = "demo-agent";
pub const AGENT_TOKEN: &str = "demo-agent-token";

/// A placeholder CA bundle: the runtime package's `runtime/cacerts.pem`.
const TRUSTSTORE: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUDEMOONLYDEMOONLYDEMOONLYDEMOwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";

/// The signed check bundles (`signed-bundles/`): their root and the
/// `molt-<kind>.*.zip` files, by file name.
#[derive(Debug, Clone, Default)]
pub struct CheckBundles {
    pub root_json: Vec<u8>,
    pub bundles: Vec<(String, Vec<u8>)>,
}

impl CheckBundles {
    /// Read a `signed-bundles/`-shaped directory; `None` without a `root.json`.
    pub fn from_dir(dir: &Path) -> Result<Option<CheckBundles>, OpsError> {
        let root = dir.join("root.json");
        if !root.is_file() {
            return Ok(None);
        }
        let root_json = std::fs::read(&root).map_err(io_err(&root))?;
        let mut bundles = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("molt-") && name.ends_with(".zip") {
                let p = e.path();
                bundles.push((name, std::fs::read(&p).map_err(io_err(&p))?));
            }
        }
        bundles.sort();
        Ok(Some(CheckBundles { root_json, bundles }))
    }

    fn of_kind(&self, kind: &str) -> Option<&(String, Vec<u8>)> {
        let prefix = format!("molt-{kind}.");
        self.bundles.iter().find(|(n, _)| n.starts_with(&prefix))
    }
}

/// What [`build`] made: the key and root, and the package directory a
/// control plane serves.
pub struct Fixture {
    pub key: SigningKey,
    pub root: SignedRoot,
    pub root_path: PathBuf,
    /// Every signed package, v1 and v2.
    pub packages: PathBuf,
    /// A precheck bundle was there to re-sign (else the stage is Skipped).
    pub have_precheck: bool,
    /// The v1 core and runtime packages a fresh install is made of.
    v1_install: Vec<PathBuf>,
    work: PathBuf,
}

fn write_tree(dir: &Path, files: &[(&str, &[u8], u32)]) -> Result<(), OpsError> {
    use std::os::unix::fs::PermissionsExt;
    for (p, data, mode) in files {
        let f = dir.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(&f, data).map_err(io_err(&f))?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).map_err(io_err(&f))?;
    }
    Ok(())
}

fn pack(
    key: &SigningKey,
    src: &Path,
    name: &str,
    out: &Path,
    components: Vec<Component>,
) -> Result<PathBuf, OpsError> {
    let mut spec = molt_bundle::PackSpec::from_buildstamp(name, 1)?;
    spec.components = components;
    let p = out.join(name);
    molt_bundle::pack_dir(src, &spec, &p)?;
    molt_bundle::sign_bundle(&p, &[key])?;
    Ok(p)
}

/// Verify a committed check bundle against its own root and extract it into
/// `dest`; its components (to re-pack under the demo's key).
fn unpack_check(
    checks: &CheckBundles,
    kind: &str,
    scratch: &Path,
    dest: &Path,
) -> Result<Option<Vec<Component>>, OpsError> {
    let Some((name, bytes)) = checks.of_kind(kind) else {
        return Ok(None);
    };
    std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
    let path = scratch.join(name);
    std::fs::write(&path, bytes).map_err(io_err(&path))?;
    let root = SignedRoot::from_slice(&checks.root_json)?;
    let v = molt_bundle::verify_bundle(&path, &root, &VerifyOptions::default())?;
    molt_bundle::extract(&v, &path, dest, &Limits::default())?;
    Ok(Some(v.manifest.components.clone()))
}

/// Make the key, the root (`<dir>/root.json`) and the signed v1 and v2
/// packages (`<dir>/packages`), each core and upgrade package carrying `molt`
/// as `bin/molt`; v1 also has a runtime package for this host.
pub fn build(dir: &Path, molt: &[u8], checks: Option<&CheckBundles>) -> Result<Fixture, OpsError> {
    let packages = dir.join("packages");
    let src = dir.join("src");
    std::fs::create_dir_all(&packages).map_err(io_err(&packages))?;
    let (key, _) = SigningKey::generate()?;
    let root = molt_bundle::editor::single_key_root(&key, Utc::now() + Duration::days(7))?;
    let root_path = dir.join("root.json");
    std::fs::write(&root_path, root.to_json_pretty()?).map_err(io_err(&root_path))?;

    let arch = std::env::consts::ARCH.replace('_', "-");
    let mut v1_install = Vec::new();
    let mut have_precheck = true;
    for v in [V1, V2] {
        let version_txt = format!("{v}\n");
        let mut files: Vec<(&str, &[u8], u32)> = vec![
            ("bin/molt", molt, 0o755),
            (
                "lib/common.txt",
                b"shared by v1 and v2: hard-linked, never copied\n",
                0o644,
            ),
            ("lib/version.txt", version_txt.as_bytes(), 0o644),
        ];
        if v == V2 {
            files.push(("lib/new-in-v2.txt", b"a file v2 adds\n", 0o644));
        }
        let s = src.join(format!("core-{v}"));
        write_tree(&s, &files)?;
        let name = format!("molt-core.{v}.universal.universal.zip");
        let core = pack(&key, &s, &name, &packages, vec![])?;
        let s = src.join(format!("upgrade-{v}"));
        write_tree(&s, &[("bin/molt", molt, 0o755)])?;
        let name = format!("molt-upgrade.{v}.universal.universal.zip");
        pack(&key, &s, &name, &packages, vec![])?;
        for kind in ["precheck", "selector"] {
            let s = src.join(format!("{kind}-{v}"));
            let found = match checks {
                Some(c) => unpack_check(c, kind, &src.join("committed"), &s)?,
                None => None,
            };
            match found {
                Some(components) => {
                    let name = format!("molt-{kind}.{v}.universal.universal.zip");
                    pack(&key, &s, &name, &packages, components)?;
                }
                None if kind == "precheck" => have_precheck = false,
                None => {}
            }
        }
        if v == V1 {
            v1_install.push(core);
            let s = src.join("runtime-v1");
            write_tree(&s, &[("runtime/cacerts.pem", TRUSTSTORE.as_bytes(), 0o644)])?;
            let name = format!("molt-runtime.{v}.linux.{arch}.zip");
            v1_install.push(pack(&key, &s, &name, &packages, vec![])?);
        }
    }
    Ok(Fixture {
        key,
        root,
        root_path,
        packages,
        have_precheck,
        v1_install,
        work: src.join("install"),
    })
}

impl Fixture {
    /// Install v1 into a fresh `home` (the real `fresh_install`), trust the
    /// demo root, and point the agent at `url` with the demo agent's token.
    pub fn install_v1(&self, home: &Home, url: &str) -> Result<(), OpsError> {
        let verified = self
            .v1_install
            .iter()
            .map(|p| molt_bundle::verify_bundle(p, &self.root, &VerifyOptions::default()))
            .collect::<Result<Vec<VerifiedBundle>, _>>()?;
        crate::import::install_verified(home, &self.work, &verified)?;
        let state = home.state_dir();
        std::fs::create_dir_all(&state).map_err(io_err(&state))?;
        let trusted = home.trusted_root_file();
        std::fs::copy(&self.root_path, &trusted).map_err(io_err(&trusted))?;
        let precheck_line = if self.have_precheck {
            ""
        } else {
            "run_precheck = false\n"
        };
        let cfg = home.config_file();
        std::fs::write(
            &cfg,
            format!(
                "control_plane_url = \"{url}\"\nagent_name = \"{AGENT}\"\ntoken = \"{AGENT_TOKEN}\"\nheartbeat_secs = 2\nhandover_wait_secs = 60\n{precheck_line}"
            ),
        )
        .map_err(io_err(&cfg))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixture_installs_v1_with_both_versions_signed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fx = build(tmp.path(), b"#!/bin/sh\nexit 0\n", None).expect("build");
        assert!(!fx.have_precheck);
        let names: Vec<String> = std::fs::read_dir(&fx.packages)
            .expect("packages")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for v in [V1, V2] {
            for kind in ["core", "upgrade"] {
                let n = format!("molt-{kind}.{v}.universal.universal.zip");
                assert!(names.contains(&n), "{n} in {names:?}");
            }
        }
        let home = Home::new(tmp.path().join("home"));
        fx.install_v1(&home, "http://127.0.0.1:1").expect("install");
        assert_eq!(home.current_version().expect("current"), Some(V1.into()));
        assert!(home.trusted_root_file().is_file());
        let cfg = std::fs::read_to_string(home.config_file()).expect("config");
        assert!(cfg.contains("run_precheck = false"), "{cfg}");
    }
}
