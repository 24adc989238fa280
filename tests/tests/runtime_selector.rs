//! Runtime upgrades through the version selector, end to end: a real `molt
//! serve` assigns a new core version, a newer runtime of its release family
//! and the version's selector bundle (the committed signed `version-select`
//! component, re-signed); a real `molt agent` under the real supervisor (`molt
//! run`) runs the selector in the sandbox, downloads, verifies, and the real
//! deploy runner installs the new version.
//!
//! - `real_host_facts_land_the_new_runtime`: the facts are this Linux host's
//!   own (probed: OS, arch, bitness, glibc), nothing simulated.
//! - `a_simulated_32_bit_host_skips_the_runtime_with_the_seeds_reason` and
//!   `a_simulated_glibc_2_12_host_skips_the_runtime_with_the_seeds_reason`:
//!   **simulated facts**, through the documented `facts_override` setting of
//!   config.toml (a facts.toml with `is_64bit = false`, resp. `libc_version =
//!   "2.12"`); the selector and the precheck see them, everything else is real.

use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_e2e::agent_fx::*;

const T: Duration = Duration::from_secs(180);

/// Kills what a test started on its home (agents, supervisors, detached
/// runners) when it ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_all_on(&self.0);
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    packages: PathBuf,
}

fn runtime_name(v: &str) -> String {
    format!(
        "molt-runtime.{v}.{}.{}.zip",
        std::env::consts::OS,
        std::env::consts::ARCH.replace('_', "-")
    )
}

/// V1 (core + runtime) installed; V2 (core, upgrade, runtime, precheck and
/// selector) served.
fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let pki = Pki::new(&root.join("pki"));
    let packages = root.join("packages");
    let work = root.join("work");
    let core1 = light_release(&pki, &work, &packages, V1, &launcher());
    let rt1 = runtime_package(&pki, &work, &packages, V1);
    light_release(&pki, &work, &packages, V2, &launcher());
    runtime_package(&pki, &work, &packages, V2);
    side_bundle(&pki, &work, &packages, "precheck", V2);
    side_bundle(&pki, &work, &packages, "selector", V2);
    let home = root.join("home");
    fresh_install_packages(&home, &pki, V1, &[&core1, &rt1]);
    Env {
        _tmp: tmp,
        root,
        home,
        packages,
    }
}

/// Run the upgrade to V2 with `extra` config lines under `molt run`; wait until
/// the attempt is Complete and the agent Up on V2 (locally and on the control
/// plane). Returns the control plane and the agent log.
fn upgrade_to_v2(e: &Env, extra: &str) -> (Server, String) {
    let srv = start_server(&e.root.join("cp"), &e.packages, V2, 0, &[]);
    write_config(
        &e.home,
        &srv.url,
        &format!("health_timeout_secs = 60\nstop_timeout_secs = 10\n{extra}"),
    );
    let _sup = start_supervisor(&e.home, &[]);
    let mut last = serde_json::Value::Null;
    wait_until("the upgrade to V2 to complete", T, || {
        last = attempts(&srv.url)
            .into_iter()
            .next()
            .unwrap_or(serde_json::Value::Null);
        if last["result"]
            .as_str()
            .is_some_and(|r| !r.is_empty() && r != "Complete")
        {
            panic!(
                "the upgrade ended {}: {last:#}\n--- agent log ---\n{}",
                last["result"],
                std::fs::read_to_string(e.home.join("logs/agent.log")).unwrap_or_default()
            );
        }
        last["result"] == "Complete"
            && cp_agent(&srv.url).is_some_and(|a| a["status"] == "Up" && a["version"] == V2)
            && local_status(&e.home).is_some_and(|s| s["status"] == "Up" && s["version"] == V2)
    });
    assert_eq!(last["from_version"], V1, "{last:#}");
    assert_eq!(last["to_version"], V2, "{last:#}");
    assert_eq!(attempts(&srv.url).len(), 1, "{:#?}", attempts(&srv.url));
    assert_eq!(
        std::fs::read_link(e.home.join("current")).unwrap(),
        Path::new("versions").join(V2)
    );
    let log = std::fs::read_to_string(e.home.join("logs/agent.log")).unwrap();
    (srv, log)
}

/// The installed runtime package (`current/meta/runtime.meta.json`): name, version.
fn installed_runtime(home: &Path) -> Option<(String, String)> {
    let t = std::fs::read_to_string(home.join("current/meta/runtime.meta.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&t).ok()?;
    Some((
        m["name"].as_str()?.to_string(),
        m["version"].as_str()?.to_string(),
    ))
}

/// The `Current packages:` block the agent logged for the V2 upgrade.
fn current_packages(log: &str) -> String {
    let i = log
        .find("Current packages:")
        .unwrap_or_else(|| panic!("no `Current packages:` in:\n{log}"));
    log[i..].lines().take(5).collect::<Vec<_>>().join("\n")
}

fn core(v: &str) -> String {
    format!("molt-core.{v}.universal.universal.zip")
}

fn upgrade_pkg(v: &str) -> String {
    format!("molt-upgrade.{v}.universal.universal.zip")
}

fn issues(url: &str) -> Vec<serde_json::Value> {
    let v = admin_get(url, "/api/v1/admin/issues");
    v.as_array()
        .cloned()
        .or_else(|| v["issues"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn real_host_facts_land_the_new_runtime() {
    let e = env();
    let _c = Cleanup(e.home.clone());
    let (srv, log) = upgrade_to_v2(&e, "");

    // The selector (real host facts) kept the runtime in the plan.
    let plan = current_packages(&log);
    assert!(
        plan.contains(&format!("Installed: [{}, {}]", core(V1), runtime_name(V1)))
            || plan.contains(&format!("Installed: [{}, {}]", runtime_name(V1), core(V1))),
        "{plan}"
    );
    for line in [
        format!(
            "Assigned: [{}, {}, {}]",
            upgrade_pkg(V2),
            core(V2),
            runtime_name(V2)
        ),
        format!(
            "Missing: [{}, {}, {}]",
            upgrade_pkg(V2),
            core(V2),
            runtime_name(V2)
        ),
    ] {
        assert!(plan.contains(&line), "`{line}` not in:\n{plan}");
    }
    let said = format!(
        "INFO Version selector: runtime {} replaces {}",
        runtime_name(V2),
        runtime_name(V1)
    );
    assert!(log.contains(&said), "no `{said}` in:\n{log}");
    assert!(!log.contains("runtime upgrade skipped"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("Package was successfully downloaded")
                && l.contains(&runtime_name(V2))),
        "{} not downloaded:\n{log}",
        runtime_name(V2)
    );

    // On disk: V2 carries the new runtime, recorded in its meta.
    assert_eq!(
        installed_runtime(&e.home),
        Some((runtime_name(V2), V2.to_string()))
    );
    assert_eq!(
        std::fs::read_to_string(e.home.join("current/runtime/VERSION")).unwrap(),
        format!("{V2}\n")
    );
    // The upgrade history: one attempt, every stage Complete.
    let a = &attempts(&srv.url)[0];
    for s in [
        "Pre Upgrade Check",
        "Download Upgrade Packages",
        "Extract Upgrade Packages",
    ] {
        assert_stage(a, s, "Complete");
    }
    // A real 64-bit glibc host: no runtime.skipped finding reached the control plane.
    assert!(
        !issues(&srv.url)
            .iter()
            .any(|i| i.to_string().contains("runtime.skipped")),
        "{:#?}",
        issues(&srv.url)
    );
}

/// Simulated facts (`facts_override`): the runtime is skipped with `reason`;
/// core V2 is still installed, the runtime stays V1's.
fn skipped_with(facts: &str, reason: &str) {
    let e = env();
    let _c = Cleanup(e.home.clone());
    let f = e.home.join("facts.toml");
    std::fs::write(&f, facts).unwrap();
    let (srv, log) = upgrade_to_v2(&e, &format!("facts_override = \"{}\"\n", f.display()));

    // What the user reads in the agent log: the seeds' reason, and a plan
    // without the runtime.
    let said = format!(
        "WARN Version selector: {reason} ({} not installed)",
        runtime_name(V2)
    );
    assert!(log.contains(&said), "no `{said}` in:\n{log}");
    let plan = current_packages(&log);
    for line in [
        format!("Assigned: [{}, {}]", upgrade_pkg(V2), core(V2)),
        format!("Missing: [{}, {}]", upgrade_pkg(V2), core(V2)),
    ] {
        assert!(plan.contains(&line), "`{line}` not in:\n{plan}");
    }
    assert!(!plan.contains(&runtime_name(V2)), "{plan}");
    assert!(
        !log.lines()
            .any(|l| l.contains("Package was successfully downloaded")
                && l.contains(&runtime_name(V2))),
        "{log}"
    );
    assert!(
        !e.home
            .join("package/incoming")
            .join(runtime_name(V2))
            .exists()
    );

    // What the control plane shows: the precheck's runtime.skipped warning
    // with the same reason (an UpgradeCheck issue), and the upgrade Complete.
    let found = issues(&srv.url);
    assert!(
        found.iter().any(|i| {
            i["source"] == "UpgradeCheck"
                && i["code"] == "runtime.skipped"
                && i["description"] == format!("{reason}; the agent keeps runtime {V1}")
        }),
        "no runtime.skipped issue saying `{reason}; the agent keeps runtime {V1}`: {found:#?}"
    );

    // On disk: V2's core, V1's runtime; V2's runtime is not installed.
    assert_eq!(
        std::fs::read_to_string(e.home.join("current/lib/version.txt")).unwrap(),
        format!("{V2}\n")
    );
    let rt = installed_runtime(&e.home);
    assert_eq!(rt, Some((runtime_name(V1), V1.to_string())), "{rt:?}");
    assert_eq!(
        std::fs::read_to_string(e.home.join("current/runtime/VERSION")).unwrap(),
        format!("{V1}\n")
    );
}

#[test]
fn a_simulated_32_bit_host_skips_the_runtime_with_the_seeds_reason() {
    skipped_with(
        "is_64bit = false\n",
        "runtime upgrade skipped: the host is 32-bit",
    );
}

#[test]
fn a_simulated_glibc_2_12_host_skips_the_runtime_with_the_seeds_reason() {
    skipped_with(
        "libc_version = \"2.12\"\n",
        "runtime upgrade skipped: glibc 2.12 < 2.17",
    );
}
