//! Downgrades against rollback protection, end to end: a real `molt serve`, a
//! real agent under the real supervisor (`molt run`), the real deploy runner,
//! real signed packages whose sequences rise with the version (V0 1, V1 2,
//! V2 3), and the real `molt root` commands.
//!
//! V1 -> V2 is an ordinary upgrade. The control plane is then rolled back to
//! V1, after the operator signed and installed a root whose `rollback_floor`
//! lets the assigned V1 (sequence 2) in: the agent downgrades to V1 and is Up
//! on it. A replay of V0 (sequence 1, under the floor) assigned by the control
//! plane is refused with the rollback message in the attempt's Download stage,
//! and the install stays Up on V1. Offline verification of V1 against the
//! host's state stays strict (not assigned: refused). The operator's tools
//! apply the same policy: `molt repair` accepts the downgraded install's own
//! package (nothing to fix), `molt import` and stateless `molt bundle verify
//! --root` refuse V0 naming the floor, and the import changes nothing.
#[path = "server_common/one_agent.rs"]
mod one_agent;
mod ops_common;

use std::path::Path;
use std::time::Duration;

use molt_bundle::SignedRoot;
use one_agent::{control_plane, install_v1, stage, wait_attempt_to};
use ops_common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);
/// An older patch of V1's family: the replay.
const V0: &str = "vancouver-06-01-2023__patch1-06-01-2023_06-02-2023_0800";

/// Core and upgrade packages of `v`, both with `sequence`.
fn release(k: &Kit, v: &str, sequence: u64) -> std::path::PathBuf {
    k.pack(
        &format!("molt-upgrade.{v}.universal.universal.zip"),
        &[("bin/molt", launcher(), 0o755)],
        PackOpts {
            sequence,
            ..PackOpts::default()
        },
    );
    k.light_core(
        v,
        PackOpts {
            sequence,
            ..PackOpts::default()
        },
        &[],
    )
}

/// The agent's record on the control plane.
fn cp_agent(url: &str) -> Value {
    let v = admin(url, "GET", "/api/v1/admin/agents", json!({}));
    let list = v
        .as_array()
        .cloned()
        .or_else(|| v["agents"].as_array().cloned())
        .unwrap_or_default();
    list.into_iter()
        .find(|a| a["name"] == "a1")
        .unwrap_or(Value::Null)
}

fn wait_cp_up(url: &str, v: &str) {
    wait_for(&format!("a1 Up on {v} on the control plane"), T, || {
        let a = cp_agent(url);
        a["status"] == "Up" && a["version"] == v
    });
}

fn current(h: &molt_layout::Home) -> std::path::PathBuf {
    std::fs::read_link(h.current_link()).unwrap()
}

fn molt_ok(args: &[&str]) -> String {
    let o = molt(args);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "molt {args:?} failed:\n{out}");
    out
}

#[test]
fn a_control_plane_rollback_downgrades_within_the_floor_and_a_replay_below_it_is_refused() {
    // A kit whose root key is also on disk (the operator's `molt root` needs it).
    let k = Kit::new();
    let pki = k.dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let key_file = pki.join("root.pk8");
    std::fs::write(&key_file, &k.pk8).unwrap();
    let root1 = pki.join("root-1.json");
    std::fs::write(&root1, k.root.to_json_pretty().unwrap()).unwrap();

    let core0 = release(&k, V0, 1);
    let core1 = release(&k, V1, 2);
    let core2 = release(&k, V2, 3);
    let cp = control_plane(&k, &["--fleet-version", V2]);
    let h = install_v1(&k, &cp.url, &core1);
    let svc = Service::start(&h);

    // 1. V1 -> V2, sequences rising: the host records 3 for both names.
    let a = wait_attempt_to(&cp.url, &h, V2);
    assert_eq!(a["result"], "Complete", "{a:#}");
    svc.wait_up(V2, T);
    wait_cp_up(&cp.url, V2);
    let state = h.state_dir();
    let seqs: Value =
        serde_json::from_slice(&std::fs::read(state.join("sequences.json")).unwrap()).unwrap();
    assert_eq!(seqs["sequences"]["molt-core"], 3, "{seqs}");
    assert_eq!(seqs["sequences"]["molt-upgrade"], 3, "{seqs}");

    // 2. The operator authorises going back to V1: root version 2 with a
    // rollback floor at V1's sequence for both names, signed and installed.
    let root2 = pki.join("root-2.json");
    let (r1, r2, st) = (
        root1.to_string_lossy().into_owned(),
        root2.to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
    );
    let out = molt_ok(&[
        "root",
        "rotate",
        "--from",
        &r1,
        "--out",
        &r2,
        "--floor",
        "molt-core=2",
        "--floor",
        "molt-upgrade=2",
        "--key",
        &key_file.to_string_lossy(),
    ]);
    assert!(
        out.contains("rollback floors: molt-core >= 2, molt-upgrade >= 2"),
        "{out}"
    );
    assert!(
        out.contains("rotation from version 1 is acceptable"),
        "{out}"
    );
    let out = molt_ok(&["root", "apply", "--state", &st, &r2]);
    assert!(
        out.contains("trusted root rotated from version 1 to 2"),
        "{out}"
    );
    assert_eq!(
        SignedRoot::load(&state.join("root.json"))
            .unwrap()
            .signed
            .floor("molt-core"),
        Some(2)
    );

    // Offline verification is not an assignment: V1 stays refused there.
    let o = molt(&["bundle", "verify", "--state", &st, &core1.to_string_lossy()]);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("`molt-core` sequence 2 is lower than 3 already accepted; only the version the control plane assigns may go back"),
        "{text}"
    );

    // 3. The control plane is rolled back to V1: the agent downgrades.
    admin(
        &cp.url,
        "PUT",
        "/api/v1/admin/fleet",
        json!({ "version": V1 }),
    );
    let a = wait_attempt_to(&cp.url, &h, V1);
    assert_eq!(a["result"], "Complete", "{a:#}");
    assert_eq!(a["from_version"], V2, "{a:#}");
    svc.wait_up(V1, T);
    wait_cp_up(&cp.url, V1);
    assert_eq!(current(&h), Path::new("versions").join(V1));
    let log = std::fs::read_to_string(h.agent_log()).unwrap_or_default();
    assert!(log.contains("Downgrade accepted"), "{log}");
    // The highest accepted stays: V2 could come back, V0 could not.
    let seqs: Value =
        serde_json::from_slice(&std::fs::read(state.join("sequences.json")).unwrap()).unwrap();
    assert_eq!(seqs["sequences"]["molt-core"], 3, "{seqs}");

    // 3b. The operator's tools agree with the agent. `molt repair` (dry run)
    // accepts the downgraded install's own package: V1 was assigned, so it is
    // judged as assigned, within the floor; and there is nothing to fix.
    let home = h.root().to_string_lossy().into_owned();
    let out = molt_ok(&[
        "repair",
        "--home",
        &home,
        "--package",
        &core1.to_string_lossy(),
    ]);
    assert!(out.starts_with("Dry run"), "{out}");
    assert!(
        out.contains("Nothing to fix: the installed version is complete"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "molt-core.{V1}.universal.universal.zip of the installed version, older than the highest sequence accepted"
        )),
        "{out}"
    );
    assert!(!k.dir.path().join("agent_old-do_not_run").exists());
    // `molt import` of V0 (below the floor): refused with the agent's floor
    // message, and nothing on disk changes (incoming/, the trust state).
    let snapshot = || {
        let incoming: Vec<String> = std::fs::read_dir(h.incoming_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        (
            incoming,
            std::fs::read(state.join("sequences.json")).unwrap(),
            std::fs::read(state.join("root.json")).unwrap(),
        )
    };
    let before = snapshot();
    let o = molt(&["import", "--home", &home, &core0.to_string_lossy()]);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("replayed or older bundle refused: `molt-core` sequence 1 is below the rollback floor 2 that trusted root version 2 sets for `molt-core` (3 already accepted)")
            && text.contains("sign a root with rollback_floor `molt-core` <= 1"),
        "{text}"
    );
    assert_eq!(snapshot(), before);
    // Stateless `molt bundle verify --root` applies the root's floor: V0 is
    // refused naming it, V1 (at the floor) passes.
    let o = molt(&["bundle", "verify", "--root", &r2, &core0.to_string_lossy()]);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("INVALID")
            && text.contains("`molt-core` sequence 1 is below the rollback floor 2 that trusted root version 2 sets for `molt-core`"),
        "{text}"
    );
    molt_ok(&["bundle", "verify", "--root", &r2, &core1.to_string_lossy()]);
    // Against root version 1 (no floor) stateless verification knows no history.
    molt_ok(&["bundle", "verify", "--root", &r1, &core0.to_string_lossy()]);
    // Nor does `molt bundle extract --root` or `molt install` lay out V0
    // under a root whose floor is above it.
    let out_dir = k.dir.path().join("extract-v0");
    let o = molt(&[
        "bundle",
        "extract",
        "--root",
        &r2,
        &core0.to_string_lossy(),
        &out_dir.to_string_lossy(),
    ]);
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "extracted below the floor");
    assert!(text.contains("below the rollback floor 2"), "{text}");
    assert!(
        !out_dir.join("bin").exists(),
        "files laid out below the floor"
    );
    let new_home = k.dir.path().join("fresh-v0");
    let o = molt(&[
        "install",
        "--home",
        &new_home.to_string_lossy(),
        "--package",
        &core0.to_string_lossy(),
        "--root",
        &r2,
        "--control-plane",
        "http://127.0.0.1:9",
        "--agent-name",
        "fresh",
        "--token",
        "t",
        "--service",
        "supervisor",
        "--no-start",
    ]);
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "installed below the floor");
    assert!(text.contains("below the rollback floor 2"), "{text}");
    assert!(!new_home.exists(), "a home was left by a refused install");

    // 4. A replay of V0 (sequence 1, below the floor), assigned: refused.
    admin(
        &cp.url,
        "PUT",
        "/api/v1/admin/fleet",
        json!({ "version": V0 }),
    );
    let a = wait_attempt_to(&cp.url, &h, V0);
    assert_eq!(a["result"], "Failed", "{a:#}");
    let d = stage(&a, "Download Upgrade Packages");
    assert_eq!(d["state"], "Failed", "{a:#}");
    let m = d["message"].as_str().unwrap_or_default();
    // The first package downloaded is refused (molt-upgrade or molt-core: both
    // have sequence 1 and floor 2), naming the floor and what to do.
    let refused = ["molt-upgrade", "molt-core"].into_iter().find(|n| {
        m.contains(&format!("Package {n}.{V0}.universal.universal.zip refused"))
            && m.contains(&format!("replayed or older bundle refused: `{n}` sequence 1 is below the rollback floor 2 that trusted root version 2 sets for `{n}` (3 already accepted)"))
            && m.contains(&format!("sign a root with rollback_floor `{n}` <= 1"))
    });
    assert!(refused.is_some(), "{a:#}");
    assert!(stage(&a, "Extract Upgrade Packages").is_null(), "{a:#}");
    // The install stays on V1, Up, and the refused package is gone.
    wait_cp_up(&cp.url, V1);
    svc.wait_up(V1, T);
    assert_eq!(current(&h), Path::new("versions").join(V1));
    assert!(
        !h.root()
            .join(format!(
                "package/incoming/molt-core.{V0}.universal.universal.zip"
            ))
            .exists()
    );
    let _ = core2;
}
