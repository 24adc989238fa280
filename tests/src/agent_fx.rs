//! Fixtures for the agent end-to-end tests: TEST keys and root, signed package
//! sets per version, a fresh install, a real `molt serve` and real agents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use molt_sandbox::testing::{STANDARD_CHECKS, shipped_component};
pub use molt_testkit::bin::{molt_bin, repo_root};
pub use molt_testkit::pki::{Pki, write_tree};
pub use molt_testkit::proc::{Proc, kill_all_on, pids_on};
pub use molt_testkit::wait::until as wait_until;

/// A patch of the quebec family (v1), the next patch (v2) and a rome release.
pub const V1: &str = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
pub const V2: &str = "quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130";
pub const V_ROME: &str = "rome-06-10-2021__patch0-06-20-2021_07-01-2021_0900";
pub const ADMIN: &str = "admin-token-for-tests";
pub const AGENT: &str = "agent1";
pub const TOKEN: &str = "agent1-token-for-tests";

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
    noise_from(0x9e37_79b9_7f4a_7c15, n)
}

/// [`noise`] from `seed`: a different seed, different bytes, so a test can
/// find one file's bytes in a package (the bundle crate's test support).
pub use molt_bundle::testing::noise as noise_from;

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

/// The standard checks as signed-bundles/rebuild.sh packs them (the
/// sandbox's [`STANDARD_CHECKS`] and [`shipped_component`]), from a directory
/// of built guests (`$MOLT_GUEST_WASM`, e.g. `<target>/wasm32-wasip2/release`).
fn from_wasm_dir(kind: &str, wasm: &Path, dest: &Path) -> Option<Vec<molt_bundle::Component>> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest.join("checks")).ok()?;
    if kind == "precheck" {
        let mut out = Vec::new();
        for (name, caps, pre, params) in STANDARD_CHECKS {
            let path = format!("checks/{name}.wasm");
            std::fs::copy(wasm.join(format!("{name}.wasm")), dest.join(&path)).ok()?;
            out.push(shipped_component(&path, "precheck", caps, pre, params));
        }
        Some(out)
    } else {
        std::fs::remove_dir_all(dest.join("checks")).ok()?;
        std::fs::copy(
            wasm.join("version_select.wasm"),
            dest.join("version_select.wasm"),
        )
        .ok()?;
        Some(vec![shipped_component(
            "version_select.wasm",
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
        &[("bin/molt", std::fs::read(molt_bin()).unwrap(), 0o755)],
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

/// A fresh install of `core` at `home` through the kit (the real
/// `fresh_install`): `versions/<v>/` with the payload and its meta, `current`
/// pointing at it, the trust root in `state/`.
pub fn fresh_install(home: &Path, pki: &Pki, core: &Path, version: &str) {
    fresh_install_packages(home, pki, version, &[core]);
}

/// Write `<home>/config.toml` for [`AGENT`] (short download backoff).
pub fn write_config(home: &Path, url: &str, extra: &str) {
    molt_testkit::config::write_config(
        home,
        url,
        AGENT,
        TOKEN,
        &format!("test_download_backoff_ms = 100\n{extra}"),
    );
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
    start_server_with_env(dir, packages, fleet, port, extra, &[])
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
    Proc::new(child, "agent")
}

/// Wait until `<home>/logs/agent.log` contains `needle` (bounded); returns the log.
pub fn wait_log(home: &Path, needle: &str, limit: Duration) -> String {
    molt_testkit::wait::file_contains(&home.join("logs").join("agent.log"), needle, limit, || {
        let err = std::fs::read_to_string(home.join("agent.stderr")).unwrap_or_default();
        format!("--- stderr ---\n{err}")
    })
}

/// GET an admin endpoint as JSON (blocking, via a small runtime).
pub fn admin_get(url: &str, path: &str) -> serde_json::Value {
    admin(url, reqwest::Method::GET, path, None)
}

/// One blocking HTTP call (via a small runtime): `method <url><path>` with
/// bearer `token` and the JSON `body` if any; (status, body text).
pub fn http_call(
    url: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = reqwest::Client::new()
            .request(method, format!("{url}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    })
}

/// Any admin call (as [`ADMIN`]); panics on a non-2xx answer.
pub fn admin(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    admin_as(url, ADMIN, method, path, body)
}

/// An admin call with `token`; panics on a non-2xx answer, else its JSON
/// (Null if it is none).
pub fn admin_as(
    url: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let m = method.clone();
    let (status, text) = http_call(url, method, path, token, body);
    assert!(
        (200..300).contains(&status),
        "{m} {path}: HTTP {status}: {text}"
    );
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
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

/// Assert that `stage` of `attempt` ended (or stands) in `state`.
pub fn assert_stage(attempt: &serde_json::Value, stage: &str, state: &str) {
    assert_eq!(
        stage_state(attempt, stage).as_deref(),
        Some(state),
        "{stage}: {attempt:#}"
    );
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

// ---------------------------------------------------------------------------
// Whole upgrades under the built-in supervisor (`molt run`): light packages
// whose `bin/molt` is a launcher of the molt binary under test, a runtime
// package for this host, installs of several packages, supervisors started
// with a chosen environment (e.g. libfaketime).
// ---------------------------------------------------------------------------

/// A `bin/molt` that runs the molt binary under test with the same arguments:
/// the agent, the runner and the supervisor of a light package are the real ones.
pub fn launcher() -> Vec<u8> {
    format!("#!/bin/sh\nexec '{}' \"$@\"\n", molt_bin().display()).into_bytes()
}

/// Sign `files` as package `name` (a buildstamped file name) into `out_dir`.
pub fn pack_files(
    pki: &Pki,
    work: &Path,
    out_dir: &Path,
    name: &str,
    files: &[(String, Vec<u8>, u32)],
) -> PathBuf {
    pki.pack_files(
        &work.join(format!("src-{name}")),
        files,
        &out_dir.join(name),
        Default::default(),
    )
}

/// Core and upgrade packages of `version` in `out_dir`; the core's `bin/molt`
/// is `core_bin` ([`launcher`] for a working release), the upgrade's is the
/// launcher (the real runner). Returns the core package.
pub fn light_release(
    pki: &Pki,
    work: &Path,
    out_dir: &Path,
    version: &str,
    core_bin: &[u8],
) -> PathBuf {
    pack_files(
        pki,
        work,
        out_dir,
        &format!("molt-upgrade.{version}.universal.universal.zip"),
        &[("bin/molt".into(), launcher(), 0o755)],
    );
    pack_files(
        pki,
        work,
        out_dir,
        &format!("molt-core.{version}.universal.universal.zip"),
        &[
            ("bin/molt".into(), core_bin.to_vec(), 0o755),
            (
                "lib/version.txt".into(),
                format!("{version}\n").into_bytes(),
                0o644,
            ),
        ],
    )
}

/// The runtime package of `version` for this host's os and arch, named as the
/// agent asks for it (`molt-runtime.<v>.linux.x86-64.zip`).
pub fn runtime_package(pki: &Pki, work: &Path, out_dir: &Path, version: &str) -> PathBuf {
    let name = format!(
        "molt-runtime.{version}.{}.{}.zip",
        std::env::consts::OS,
        std::env::consts::ARCH.replace('_', "-")
    );
    pack_files(
        pki,
        work,
        out_dir,
        &name,
        &[
            // Where the host facts read the installed runtime's version from.
            (
                "runtime/VERSION".into(),
                format!("{version}\n").into_bytes(),
                0o644,
            ),
            ("runtime/bin/rt".into(), b"#!/bin/sh\n".to_vec(), 0o755),
            // The truststore and its stock copy (MigrateTrustStore reads both).
            (
                "runtime/lib/security/cacerts.pem".into(),
                STOCK_PEM.as_bytes().to_vec(),
                0o644,
            ),
            (
                "runtime/lib/security/cacerts.stock.pem".into(),
                STOCK_PEM.as_bytes().to_vec(),
                0o644,
            ),
        ],
    )
}

/// The stock certificate of [`runtime_package`]'s truststore.
pub const STOCK_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nU1RPQ0sgQ0E=\n-----END CERTIFICATE-----\n";

/// A side bundle (`precheck` or `selector`) of `version` re-packed from the
/// committed signed components, signed by `pki`. Panics if there is none.
pub fn side_bundle(pki: &Pki, work: &Path, out_dir: &Path, kind: &str, version: &str) -> PathBuf {
    let src = work.join(format!("src-{kind}-{version}"));
    let comps = committed_components(kind, &src).unwrap_or_else(|| {
        panic!(
            "no committed molt-{kind} bundle in {}",
            signed_bundles_dir().display()
        )
    });
    pki.pack(
        &src,
        &format!("molt-{kind}.{version}.universal.universal.zip"),
        out_dir,
        comps,
    )
}

/// A fresh install of `version` made of `packages` (core first, then e.g. a
/// runtime) through the kit (the real `fresh_install`): `versions/<v>/` with
/// each package's meta, `current` pointing at it, the trust root in `state/`.
pub fn fresh_install_packages(home: &Path, pki: &Pki, version: &str, packages: &[&Path]) {
    let (_, v) = molt_testkit::install::install(home, &pki.root, packages);
    assert_eq!(v, version, "the packages are of another version");
}

/// Start the built-in supervisor `molt run --home H --stop-timeout 5` with
/// `env` added (it passes its environment on to the agent it starts, and the
/// agent to the runner). Its output goes to `<home>/supervisor.out`.
pub fn start_supervisor(home: &Path, env: &[(&str, &str)]) -> Proc {
    let home_arg = home.to_string_lossy().into_owned();
    let child = molt_testkit::bin::molt_logged(
        &home.join("supervisor.out"),
        &["run", "--stop-timeout", "5", "--home", &home_arg],
    )
    .envs(env.iter().copied())
    .env("MOLT_LOG", "info")
    .spawn()
    .unwrap();
    Proc::new(child, "supervisor")
}

/// `<home>/work/agent.status.json`, if readable.
pub fn local_status(home: &Path) -> Option<serde_json::Value> {
    let t = std::fs::read_to_string(home.join("work/agent.status.json")).ok()?;
    serde_json::from_str(&t).ok()
}

/// The agent record (`GET /api/v1/admin/agents`) of [`AGENT`].
pub fn cp_agent(url: &str) -> Option<serde_json::Value> {
    let v = admin_get(url, "/api/v1/admin/agents");
    let list = v
        .as_array()
        .cloned()
        .or_else(|| v["agents"].as_array().cloned())?;
    list.into_iter().find(|a| a["name"] == AGENT)
}

/// Set the fleet version on the control plane.
pub fn set_fleet_version(url: &str, version: &str) {
    admin(
        url,
        reqwest::Method::PUT,
        "/api/v1/admin/fleet",
        Some(serde_json::json!({ "version": version })),
    );
}

/// As [`start_server`], with `env` added to the server's environment (e.g.
/// libfaketime to move its clock).
pub fn start_server_with_env(
    dir: &Path,
    packages: &Path,
    fleet: &str,
    port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let mut args = vec!["--fleet-version".to_string(), fleet.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let s = molt_testkit::serve::Serve {
        dir,
        packages,
        port,
        admin_token: ADMIN,
        agent: (AGENT, TOKEN),
        args,
        env,
        log: format!("serve-{port}.log"),
    }
    .start();
    Server {
        proc: s.proc,
        url: s.url,
        db: s.db,
        packages: packages.to_path_buf(),
    }
}
