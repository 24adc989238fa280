//! Rollback, shared inodes, locked files, truststore and config: real homes, the
//! real `molt deploy` and `molt run`, stand-in agents (see common/mod.rs).
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use molt_protocol::{AttemptResult, Stage, StageState};

const UP: Duration = Duration::from_secs(30);

fn queue_has(th: &TestHome, needle: &[(&str, &str)]) -> bool {
    let q = molt_deploy::report::read_queue(&th.home).unwrap();
    q.iter().any(|r| {
        needle
            .iter()
            .all(|(k, v)| r.body[*k].as_str().is_some_and(|s| s.contains(v)))
    })
}

/// `version`'s dir is exactly as built and the queue reports the truststore
/// migration Complete with `message` (e.g. `1 custom`).
fn assert_migrated(th: &TestHome, version: &str, message: &str) {
    molt_deploy::build::verify_version_dir(&th.home.version_dir(version)).unwrap();
    assert!(queue_has(
        th,
        &[
            ("stage", Stage::MigrateTrustStore.as_str()),
            ("state", StageState::Complete.as_str()),
            ("message", message)
        ]
    ));
}

#[test]
fn an_upgrade_then_a_rollback_leave_every_file_of_the_other_versions_unchanged() {
    let (v1, v2, ch2) = v1_v2(300, 10);
    let mut th = TestHome::new("v1", &v1);
    th.start_up("v1");

    let p = th.plan_core("v1", "v2", &v2, &ch2, None);
    assert_eq!(th.deploy(&p), 0, "{}", th.deploy_log());
    th.wait_up("v2", UP).unwrap();
    th.assert_exactly("v2", &v2);
    assert_dir_exactly(&th.home.version_dir("v1"), &v1);

    // The file whose mode alone changed is a separate inode; unchanged files are shared.
    use std::os::unix::fs::MetadataExt;
    let mode_changed = ch2
        .iter()
        .find(|f| {
            v1.get(*f)
                .is_some_and(|(b, m)| v2[*f].0 == *b && v2[*f].1 != *m)
        })
        .unwrap();
    let a = std::fs::metadata(th.home.version_dir("v1").join(mode_changed)).unwrap();
    let b = std::fs::metadata(th.home.version_dir("v2").join(mode_changed)).unwrap();
    assert_ne!(a.ino(), b.ino());
    assert_eq!(a.mode() & 0o7777, 0o644);
    assert_eq!(b.mode() & 0o7777, 0o600);
    let same = v1
        .keys()
        .find(|k| !ch2.contains(k) && v2.contains_key(*k))
        .unwrap();
    let a = std::fs::metadata(th.home.version_dir("v1").join(same)).unwrap();
    let b = std::fs::metadata(th.home.version_dir("v2").join(same)).unwrap();
    assert_eq!(a.ino(), b.ino(), "unchanged files are hard links");

    // v3 crashes at start: rolled back to v2, which is Up; v1 and v2 untouched.
    let (v3, ch3) = next_content(&v2, "v3", 7, Agent::Crashes);
    let p = th.plan_core("v2", "v3", &v3, &ch3, Some("a3"));
    assert_eq!(
        th.deploy(&p),
        2,
        "expected Rolled Back: {}",
        th.deploy_log()
    );
    th.wait_up("v2", UP).unwrap();
    th.assert_exactly("v2", &v2);
    assert_dir_exactly(&th.home.version_dir("v1"), &v1);
    assert!(
        !th.home.version_dir("v3").exists(),
        "the failed version is removed"
    );
    assert!(queue_has(
        &th,
        &[
            ("stage", Stage::HealthCheck.as_str()),
            ("state", StageState::Failed.as_str()),
            ("message", "rolled back to v2")
        ]
    ));
    assert!(queue_has(
        &th,
        &[("result", AttemptResult::RolledBack.as_str())]
    ));
    let log = std::fs::read_to_string(th.home.agent_log()).unwrap();
    assert!(
        log.contains("<< UPGRADE LOG BEGIN >>") && log.contains("<< UPGRADE LOG END >>"),
        "{log}"
    );
    assert!(log.contains("rolling back to v2"), "{log}");
}

#[test]
fn a_rollback_whose_old_version_also_fails_is_reported_as_failed() {
    let v1 = core_content("v1", 50, Agent::BreaksOnFlag);
    let (v2, ch) = next_content(&v1, "v2", 5, Agent::Crashes);
    let mut th = TestHome::new("v1", &v1);
    th.start_up("v1");
    std::fs::write(th.home.conf_dir().join("old-breaks"), b"").unwrap();
    let p = th.plan_core("v1", "v2", &v2, &ch, Some("a1"));
    assert_eq!(th.deploy(&p), 3, "expected Failed: {}", th.deploy_log());
    assert!(
        th.deploy_log().contains("rollback to v1 failed too"),
        "{}",
        th.deploy_log()
    );
    assert!(queue_has(
        &th,
        &[
            ("result", AttemptResult::Failed.as_str()),
            ("message", "rollback to v1 failed too")
        ]
    ));
    let last = molt_deploy::journal::read_last(&th.home).unwrap().unwrap();
    assert_eq!(last.result, AttemptResult::Failed);
    assert_eq!(th.home.current_version().unwrap().as_deref(), Some("v1"));
    // Once the cause is gone the supervisor brings the old version back Up.
    std::fs::remove_file(th.home.conf_dir().join("old-breaks")).unwrap();
    th.wait_up("v1", UP).unwrap();
}

#[test]
fn a_process_holding_old_files_open_does_not_stop_the_upgrade_and_pruning_retries_later() {
    let (v1, v2, ch2) = v1_v2(100, 10);
    let (v3, ch3) = next_content(&v2, "v3", 10, Agent::Good);
    let mut th = TestHome::new("v1", &v1);
    th.start_up("v1");
    // A slow process (think antivirus) keeps a file of v1 open throughout.
    let held = th.home.version_dir("v1").join("lib/d00/f0000.dat");
    let mut holder = Command::new("tail")
        .arg("-f")
        .arg(&held)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let p = th.plan_core("v1", "v2", &v2, &ch2, None);
    assert_eq!(th.deploy(&p), 0, "{}", th.deploy_log());
    th.wait_up("v2", UP).unwrap();
    let p = th.plan_core("v2", "v3", &v3, &ch3, None);
    assert_eq!(th.deploy(&p), 0, "{}", th.deploy_log());
    th.wait_up("v3", UP).unwrap();
    th.assert_exactly("v3", &v3);
    // v1 is neither current nor previous, but in use: pruning is deferred.
    assert!(th.home.version_dir("v1").exists());
    assert!(molt_deploy::prune::pending_file(&th.home).exists());
    let pending = std::fs::read_to_string(molt_deploy::prune::pending_file(&th.home)).unwrap();
    assert!(pending.contains("in use by pids"), "{pending}");

    holder.kill().unwrap();
    holder.wait().unwrap();
    // The supervisor retries in the background.
    let start = std::time::Instant::now();
    while th.home.version_dir("v1").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "v1 was never pruned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        th.home.version_dir("v2").exists(),
        "the previous version is kept for rollback"
    );
    assert!(!molt_deploy::prune::pending_file(&th.home).exists());
}

const STOCK_A: &str = "-----BEGIN CERTIFICATE-----\nU1RPQ0stQQ==\n-----END CERTIFICATE-----\n";
const STOCK_B: &str = "-----BEGIN CERTIFICATE-----\nU1RPQ0stQg==\n-----END CERTIFICATE-----\n";
const CUSTOM: &str =
    "-----BEGIN CERTIFICATE-----\nQ1VTVE9NLUNPUlAtQ0E=\n-----END CERTIFICATE-----\n";

fn runtime_content(stock: &str, java: &str) -> Content {
    let mut c = Content::new();
    c.insert(
        "runtime/bin/java".into(),
        (format!("#!/bin/sh\necho {java}\n").into_bytes(), 0o755),
    );
    c.insert(
        molt_deploy::truststore::TRUSTSTORE.into(),
        (stock.as_bytes().to_vec(), 0o644),
    );
    c.insert(
        molt_deploy::truststore::STOCK.into(),
        (stock.as_bytes().to_vec(), 0o644),
    );
    c
}

/// Deploy `from` -> `to` with a new core derived from `core` and a new runtime
/// whose stock truststore adds CA B to A; returns the new core and the
/// truststore the new version got, which must hold the new stock CA.
fn runtime_upgrade(
    th: &TestHome,
    from: &str,
    to: &str,
    core: &Content,
    attempt: &str,
) -> (Content, String) {
    let (new_core, mut ch) = next_content(core, to, 4, Agent::Good);
    let rt = runtime_content(&format!("{STOCK_A}{STOCK_B}"), &format!("rt-{to}"));
    ch.extend(rt.keys().cloned());
    let p = th.prepare_upgrade(
        from,
        to,
        &[("core", &new_core), ("runtime", &rt)],
        &ch,
        fast_opts(),
        Some(attempt),
    );
    assert_eq!(th.deploy(&p), 0, "{}", th.deploy_log());
    th.wait_up(to, UP).unwrap();
    let store = std::fs::read_to_string(th.truststore(to)).unwrap();
    assert!(
        store.contains("U1RPQ0stQg=="),
        "new stock CA present: {store}"
    );
    (new_core, store)
}

/// v1 of 20 files with the runtime of stock CA A installed: (core, home).
fn with_runtime_v1() -> (Content, TestHome) {
    let core1 = core_content("v1", 20, Agent::Good);
    let rt1 = runtime_content(STOCK_A, "rt1");
    let th = TestHome::with_packages(&[("core", "v1", &core1), ("runtime", "v1", &rt1)]);
    (core1, th)
}

#[test]
fn a_custom_certificate_survives_a_runtime_upgrade_and_config_is_byte_identical() {
    let (core1, mut th) = with_runtime_v1();
    // The operator adds a corporate CA to the running runtime's truststore.
    let store = th.truststore("v1");
    molt_layout::write_atomic(&store, format!("{STOCK_A}{CUSTOM}").as_bytes()).unwrap();
    let config_before = std::fs::read(th.home.config_file()).unwrap();
    let conf_before = std::fs::read(th.home.conf_dir().join("override.properties")).unwrap();
    th.start_up("v1");

    let (_, new_store) = runtime_upgrade(&th, "v1", "v2", &core1, "t1");
    let blocks = molt_deploy::truststore::pem_blocks(&new_store);
    assert_eq!(blocks.len(), 3, "{new_store}");
    assert!(
        new_store.contains("Q1VTVE9NLUNPUlAtQ0E="),
        "custom CA carried over"
    );
    let backup = th.home.backup_dir().join("truststore/v1.cacerts.pem");
    assert_eq!(
        std::fs::read_to_string(backup).unwrap(),
        format!("{STOCK_A}{CUSTOM}")
    );
    // The old version's truststore is untouched (it was never written in place).
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        format!("{STOCK_A}{CUSTOM}")
    );
    assert_migrated(&th, "v2", "1 custom");

    assert_eq!(
        std::fs::read(th.home.config_file()).unwrap(),
        config_before,
        "config.toml byte-identical"
    );
    assert_eq!(
        std::fs::read(th.home.conf_dir().join("override.properties")).unwrap(),
        conf_before
    );
}

/// The operator edits the running truststore *in place* (keytool, `cat >>`):
/// a later core-only upgrade and a later runtime upgrade both succeed and keep
/// the certificate. (Before the fix the build hard-linked the edited file and
/// checked it against the stock digest: "digest mismatch", retried forever.)
#[test]
fn a_truststore_edited_in_place_does_not_break_later_upgrades() {
    use std::io::Write;
    let (core1, mut th) = with_runtime_v1();
    let store_v1 = th.truststore("v1");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&store_v1)
        .unwrap()
        .write_all(CUSTOM.as_bytes())
        .unwrap();
    th.start_up("v1");

    // 1. Core only: the runtime package is carried over from v1.
    let (core2, ch) = next_content(&core1, "v2", 4, Agent::Good);
    let p = th.plan_core("v1", "v2", &core2, &ch, Some("t1"));
    assert_eq!(th.deploy(&p), 0, "{}", th.deploy_log());
    th.wait_up("v2", UP).unwrap();
    let v2_store = th.truststore("v2");
    let text = std::fs::read_to_string(&v2_store).unwrap();
    assert!(
        text.contains("Q1VTVE9NLUNPUlAtQ0E="),
        "custom CA kept: {text}"
    );
    assert!(text.contains("U1RPQ0stQQ=="), "stock CA kept: {text}");
    assert_migrated(&th, "v2", "1 custom");
    // A fresh inode: a later in-place edit of v2's truststore cannot reach v1.
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        std::fs::metadata(&v2_store).unwrap().ino(),
        std::fs::metadata(&store_v1).unwrap().ino()
    );

    // 2. Another in-place edit, then a runtime upgrade with a new stock CA.
    const SECOND: &str =
        "-----BEGIN CERTIFICATE-----\nU0VDT05ELUNPUlAtQ0E=\n-----END CERTIFICATE-----\n";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&v2_store)
        .unwrap()
        .write_all(SECOND.as_bytes())
        .unwrap();
    let (_, text) = runtime_upgrade(&th, "v2", "v3", &core2, "t2");
    let blocks = molt_deploy::truststore::pem_blocks(&text);
    assert_eq!(blocks.len(), 4, "two stock and two custom: {text}");
    assert!(
        text.contains("U0VDT05ELUNPUlAtQ0E="),
        "second custom CA kept"
    );
    molt_deploy::build::verify_version_dir(&th.home.version_dir("v3")).unwrap();
}

#[test]
fn a_second_supervisor_on_the_same_install_is_refused() {
    let v1 = core_content("v1", 5, Agent::Good);
    let mut th = TestHome::new("v1", &v1);
    th.start_up("v1");
    let out = Command::new(molt_bin())
        .args(["run", "--home", th.root().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("two services on one install"), "{err}");
    th.wait_up("v1", UP).unwrap();
}
