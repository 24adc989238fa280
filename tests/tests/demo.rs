//! The README's main-job command, end to end: `molt demo` starts a real control
//! plane, installs a signed v1, runs the real supervisor and agent, and upgrades
//! to v2 through every stage (the precheck bundle's real wasm checks included).

use std::process::Command;

use molt_e2e::agent_fx::molt_bin;

#[test]
fn molt_demo_upgrades_a_real_install_from_v1_to_v2_through_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("demo");
    // An installed molt: a copy away from the source tree, run from elsewhere,
    // without $MOLT_SIGNED_BUNDLES: it uses the check bundles it embeds.
    let installed = tmp.path().join("bin/molt");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(molt_bin(), &installed).unwrap();
    let out = Command::new(&installed)
        .args(["demo", "--timeout", "150", "--keep", keep.to_str().unwrap()])
        .current_dir(tmp.path())
        .env_remove("MOLT_SIGNED_BUNDLES")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Demo complete"), "{stdout}");
    // The upgrade history, stage by stage: the checks really ran (not Skipped).
    for (stage, state) in [
        ("Pre Upgrade Check", "Complete"),
        ("Download Upgrade Packages", "Complete"),
        ("Extract Upgrade Packages", "Complete"),
        ("Deploy Binary Files", "Complete"),
        ("Restart", "Complete"),
        ("Health Check", "Complete"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(stage) && l.contains(state)),
            "{stage} not {state}:\n{stdout}"
        );
    }
    // The install really moved: `current` points at the v2 directory, which holds v2's files.
    let home = keep.join("home");
    let cur = std::fs::read_link(home.join("current")).unwrap();
    assert!(
        cur.to_string_lossy().contains("patch2"),
        "current -> {}",
        cur.display()
    );
    assert!(home.join("current/lib/new-in-v2.txt").is_file());
    // One clean upgrade under `molt run` leaves nothing for `molt diagnose`.
    let d = Command::new(molt_bin())
        .args(["diagnose", "--json", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap_or_else(|e| {
        panic!(
            "diagnose --json: {e}: {}{}",
            String::from_utf8_lossy(&d.stdout),
            String::from_utf8_lossy(&d.stderr)
        )
    });
    assert_eq!(
        report["findings"].as_array().map(Vec::len),
        Some(0),
        "{report:#}"
    );
}
