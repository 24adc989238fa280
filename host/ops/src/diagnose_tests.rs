//! Every log-matched signature against the exact text the other crates log
//! (copied from their sources), and every state condition against a real
//! install laid out in a temp dir.
use super::*;
use crate::inputs::Line;

fn ev_with(lines: &[&str]) -> Evidence {
    Evidence {
        agent: lines
            .iter()
            .enumerate()
            .map(|(i, t)| Line {
                file: "logs/agent.log".into(),
                line: i + 1,
                text: t.to_string(),
            })
            .collect(),
        ..Evidence::default()
    }
}

fn ids_for(lines: &[&str]) -> Vec<String> {
    let t = crate::signatures::builtin().unwrap();
    let d = tempfile::tempdir().unwrap();
    let r = diagnose_with(&t, &ev_with(lines), &Home::new(d.path()));
    r.findings.iter().map(|f| f.id.clone()).collect()
}

/// (signature, a log line as the owning crate writes it).
const SNIPPETS: &[(&str, &str)] = &[
    // molt-agent download.rs DownloadError::Failed
    (
        "download-failed",
        "2026-11-22T19:00:00Z ERROR Download Upgrade Packages: The agent was unable to download molt-core.v2.universal.universal.zip from http://127.0.0.1:9/packages/x: gave up after 5 attempts: connection refused",
    ),
    (
        "download-tls-failed",
        "ERROR The agent was unable to download molt-core.v2.universal.universal.zip from https://dl/x: gave up after 5 attempts: invalid peer certificate: UnknownIssuer",
    ),
    // molt-agent client.rs ClientError::Unreachable / upgrade.rs CheckError::Query
    (
        "control-plane-unreachable",
        "ERROR Failed to query control plane for agent buildstamp: control plane unreachable at http://127.0.0.1:9/api/v1/agent/assigned: connection refused",
    ),
    (
        "control-plane-unreachable",
        "WARN Control plane unreachable; queued report for later delivery path=/api/v1/agent/attempts/3/stages",
    ),
    // molt-agent client.rs ClientError::Http
    (
        "auth-failed",
        "ERROR Failed to query control plane for agent buildstamp: GET http://127.0.0.1:8/api/v1/agent/assigned: HTTP 401: unknown agent token",
    ),
    // molt-deploy runner.rs "Deploy Binary Files failed: {e}" with an io error
    (
        "file-not-writable",
        "2026-11-22T19:00:00.000Z deploy failed before the switch: Deploy Binary Files failed: /h/versions/.v2.build-1/bin/molt: Permission denied (os error 13); keeping version v1",
    ),
    (
        "file-not-writable",
        "com.snc.dist.mid_upgrade.UpgradeException: java.io.FileNotFoundException: D:\\agent\\bin\\mid.bat (Access is denied)",
    ),
    // molt-deploy prune.rs
    (
        "version-dir-in-use",
        " WARN prune deferred: version directory in use version=v1 users=[4242]",
    ),
    (
        "disk-full",
        "ERROR /h/work/upgrade_temp/1-0/packages/core/lib/x: No space left on device (os error 28)",
    ),
    // molt-agent upgrade.rs download_and_verify + molt-bundle BundleError::Threshold
    (
        "signature-failed",
        "ERROR Package molt-core.v2.universal.universal.zip refused and deleted: /h/package/incoming/molt-core.v2.universal.universal.zip: signature verification failed: bundle x: signatures below the threshold of role `packages`: 0 valid of 1 required; key 0123456789abcdef: bad signature (content does not match what was signed)",
    ),
    (
        "old-signing-key",
        "ERROR Package p refused and deleted: signature verification failed: bundle x: signatures below the threshold of role `packages`: 0 valid of 1 required; key 0123456789abcdef: key expired at 2026-01-01T00:00:00+00:00",
    ),
    (
        "bundle-expired",
        "ERROR Package p refused and deleted: bundle /x.zip: bundle `molt-core.v2.universal.universal.zip` expired at 2026-01-01T00:00:00+00:00",
    ),
    (
        "replayed-bundle",
        "ERROR bundle /x.zip: replayed or older bundle refused: `molt-core` sequence 3 is lower than 5 already accepted",
    ),
    (
        "trust-root-problem",
        "ERROR Download Upgrade Packages: trust root /h/state/root.json: no such file",
    ),
    (
        "trust-root-problem",
        "ERROR trusted root version 1 expired at 2026-01-01T00:00:00+00:00; install a newer root (molt root rotate)",
    ),
    // molt-deploy handover.rs / error.rs HandoverTimeout, molt-agent "Failed to bootstrap."
    (
        "runner-never-started",
        "ERROR Failed to bootstrap. hand-over to deploy failed: Unable to receive upgrade process status: the runner did not signal start within 600 s",
    ),
    (
        "runner-never-started",
        "ERROR Failed to bootstrap. hand-over to deploy failed: the runner exited before signalling start (exited); see /h/work/upgrade_temp/1-0/runner.log",
    ),
    (
        "new-version-not-executable",
        "ERROR Failed to bootstrap. hand-over to deploy failed: /h/work/upgrade_temp/1-0/packages/core/bin/molt: the new version cannot be executed: `--version` exited with exit status: 1",
    ),
    // molt-deploy service.rs wait_stopped / supervisor.rs
    (
        "service-did-not-stop",
        " WARN graceful stop timed out; killing the old agent pids=[123] secs=2",
    ),
    (
        "service-did-not-stop",
        "deploy failed before the switch: Restart failed: the agent did not stop within 12 s (pids still alive: [77]); keeping version v1",
    ),
    // molt-deploy supervisor.rs / error.rs DuplicateService, molt-agent AlreadyRunning
    (
        "duplicate-service",
        "error: two services on one install: /h is already served by supervisor (pid 12)",
    ),
    (
        "duplicate-service",
        "error: another agent is already running on /h (lock /h/work/agent.lock is held)",
    ),
    // molt-agent upgrade.rs precheck
    (
        "precheck-blocked",
        "ERROR Aborting agent upgrade due to pre-upgrade check failure: 1 blocking finding(s): duplicate-install",
    ),
    // molt-sandbox sandbox.rs classify(): Trap::Interrupt / Trap::OutOfFuel findings
    (
        "precheck-timeout",
        "ERROR Pre-upgrade check error: Check slow-probe did not finish within its deadline of 2000 ms and was stopped check=slow-probe code=check.timeout",
    ),
    (
        "precheck-timeout",
        "ERROR Aborting agent upgrade due to pre-upgrade check failure: 1 blocking finding(s): check.fuel-exhausted",
    ),
    (
        "temp-folder-blocked",
        "ERROR Extract Upgrade Packages: /h/package/incoming/x.zip: extract failed: Permission denied",
    ),
    // molt-deploy error.rs HealthCheck, runner.rs rollback lines
    (
        "health-check-failed",
        "Health Check of version v2 failed: not Up within 5 s; last seen: no status file written; rolling back to v1",
    ),
    (
        "rollback-failed",
        "Upgrade Failed: Health Check of version v2 failed: not Up within 5 s; rollback to v1 failed too: Health Check of version v1 failed: not Up",
    ),
    // molt-deploy runner.rs resume / recover.rs / supervisor.rs
    (
        "deploy-interrupted",
        "resuming an interrupted deploy v1 -> v2 at step Building (current is Some(\"v1\"))",
    ),
    (
        "deploy-interrupted",
        " WARN found an unfinished deploy journal with no runner; starting a resume runner",
    ),
    (
        "agent-cannot-start",
        "ERROR cannot start the agent error=cannot start /h/current/bin/molt agent: No such file or directory (os error 2)",
    ),
    (
        "truststore-not-migrated",
        " WARN MigrateTrustStore: no stock copy in the old runtime; nothing can be told apart as custom path=/h/versions/v1/runtime/lib/security/cacerts.stock.pem",
    ),
    (
        "reinstall-service-needed",
        " WARN issue reported source=\"Reinstall Service\" code=\"reinstall-service-needed\"",
    ),
    // molt-agent config.rs ConfigError
    (
        "config-invalid",
        "error: /h/config.toml: invalid agent configuration: unknown field `run_prechek`",
    ),
    (
        "bad-assigned-version",
        "ERROR Not a valid package buildstamp: `../x`: only letters, digits, `-` and `_` are allowed",
    ),
    (
        "version-selector-failed",
        "ERROR Version selector failed; not upgrading error=version selector failed: trap",
    ),
    (
        "deploy-failed-before-switch",
        "deploy failed before the switch: Reinstall Service failed: service systemd:x: refused; keeping version v1",
    ),
    (
        "waiting-for-upgrade-slot",
        " WARN Method failed (http://127.0.0.1:1/api/v1/agent/upgrade-slot) HTTP/1.1 409 Conflict with code: 409: busy. Retrying in 20 s",
    ),
    (
        "restart-deferred",
        " INFO Restart deferred: agent is Upgrading",
    ),
];

#[test]
fn every_log_signature_matches_the_text_its_crate_logs() {
    let table = crate::signatures::builtin().unwrap();
    for c in &table {
        if c.sig.matcher.input == Input::State {
            continue;
        }
        assert!(
            SNIPPETS.iter().any(|(id, _)| *id == c.sig.id),
            "signature {} has no snippet test",
            c.sig.id
        );
    }
    for (id, line) in SNIPPETS {
        let ids = ids_for(&[line]);
        assert!(
            ids.iter().any(|i| i == id),
            "{id} did not match {line:?}; matched {ids:?}"
        );
    }
}

#[test]
fn a_clean_log_matches_nothing_and_exits_zero() {
    let t = crate::signatures::builtin().unwrap();
    let d = tempfile::tempdir().unwrap();
    let lines = [
        " INFO Checking to see if agent needs to upgrade",
        " INFO Current packages:",
        " INFO Package was successfully downloaded package=molt-core.v2.universal.universal.zip",
        " INFO Pre-upgrade validation tests successful. Continuing with upgrade process",
        " INFO Health Check: agent is Up version=v2 pid=10",
        " INFO Setting agent status to Up",
    ];
    let r = diagnose_with(&t, &ev_with(&lines), &Home::new(d.path()));
    assert!(r.findings.is_empty(), "{:?}", r.ids());
    assert_eq!(r.exit_code(), 0);
    assert!(
        r.render_text()
            .contains("No known failure signature matched")
    );
}

#[test]
fn a_specific_signature_hides_the_generic_one_it_supersedes() {
    let ids = ids_for(&[
        "ERROR The agent was unable to download p from https://x: invalid peer certificate: UnknownIssuer",
    ]);
    assert!(ids.contains(&"download-tls-failed".to_string()));
    assert!(!ids.contains(&"download-failed".to_string()), "{ids:?}");
}

#[test]
fn notes_alone_exit_zero_and_failures_exit_one() {
    let t = crate::signatures::builtin().unwrap();
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path());
    let r = diagnose_with(
        &t,
        &ev_with(&[" INFO Restart deferred: agent is Upgrading"]),
        &h,
    );
    assert_eq!((r.ids(), r.exit_code()), (vec!["restart-deferred"], 0));
    let r = diagnose_with(
        &t,
        &ev_with(&[
            "Failed to bootstrap. x",
            " INFO Restart deferred: agent is Upgrading",
        ]),
        &h,
    );
    assert_eq!(r.exit_code(), 1);
    assert_eq!(
        r.findings[0].id, "runner-never-started",
        "errors are listed first"
    );
}

#[test]
fn evidence_keeps_the_latest_lines_and_counts_all() {
    let t = crate::signatures::builtin().unwrap();
    let d = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..6)
        .map(|i| format!("WARN control plane unreachable at http://x: try {i}"))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = diagnose_with(&t, &ev_with(&refs), &Home::new(d.path()));
    let f = &r.findings[0];
    assert_eq!(f.matches, 6);
    assert_eq!(f.evidence.len(), 3);
    assert!(f.evidence[2].text.ends_with("try 5"));
    assert!(
        r.render_text().contains("logs/agent.log:6"),
        "{}",
        r.render_text()
    );
}

// ---- state conditions on real files ----

fn meta(home: &Home, v: &str, files: &[(&str, &[u8])]) {
    let dir = home.version_dir(v);
    let mut map = std::collections::BTreeMap::new();
    for (rel, data) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        map.insert(
            rel.to_string(),
            molt_layout::FileMeta {
                size: data.len() as u64,
                sha256: molt_deploy::fsutil::sha256_bytes(data),
                mode: 0o644,
            },
        );
    }
    let pkg = molt_layout::InstalledPackage {
        kind: "core".into(),
        name: format!("molt-core.{v}.universal.universal.zip"),
        version: v.into(),
        files: map,
    };
    molt_deploy::build::write_meta(&dir, &[pkg]).unwrap();
}

fn point_current(home: &Home, v: &str) {
    let _ = std::fs::remove_file(home.current_link());
    std::os::unix::fs::symlink(format!("versions/{v}"), home.current_link()).unwrap();
}

fn state_ids(home: &Home) -> Vec<String> {
    let t = crate::signatures::builtin().unwrap();
    let ev = Evidence::gather(home, &[]);
    diagnose_with(&t, &ev, home)
        .findings
        .iter()
        .map(|f| f.id.clone())
        .collect()
}

#[test]
fn deleted_bin_files_make_the_install_incomplete() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path());
    meta(&h, "v1", &[("bin/molt", b"binary"), ("lib/a", b"lib")]);
    point_current(&h, "v1");
    assert!(state_ids(&h).is_empty());
    std::fs::remove_dir_all(h.version_dir("v1").join("bin")).unwrap();
    let ids = state_ids(&h);
    assert_eq!(ids, ["install-incomplete"]);
    let p = install_problems(&h);
    assert!(
        p[0].contains("1 file(s)") && p[0].contains("bin/molt"),
        "{p:?}"
    );
}

#[test]
fn an_unfinished_journal_without_runner_is_named() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path());
    meta(&h, "v1", &[("bin/molt", b"x")]);
    point_current(&h, "v1");
    let mut j = molt_deploy::journal::Journal {
        attempt_id: None,
        from_version: "v1".into(),
        to_version: "v2".into(),
        upgrade_dir: h.upgrade_temp_dir().join("1-0"),
        plan: h.upgrade_temp_dir().join("1-0/plan.json"),
        step: molt_deploy::journal::Step::Building,
        runner_pid: 999_999_999,
        build_dir: None,
        created_version_dir: false,
        restart_at: None,
        reason: None,
        updated: chrono::Utc::now(),
    };
    j.save(&h).unwrap();
    assert!(state_ids(&h).contains(&"deploy-unfinished".to_string()));
    // While a runner holds the deploy lock it is not reported.
    let _lock =
        molt_deploy::fsutil::FileLock::try_acquire(&molt_deploy::journal::Journal::lock_path(&h))
            .unwrap()
            .unwrap();
    let ids = state_ids(&h);
    assert!(!ids.contains(&"deploy-unfinished".to_string()), "{ids:?}");
}

#[test]
fn upgrading_status_of_a_dead_process_is_stuck() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path());
    let st = molt_layout::AgentStatus {
        pid: 999_999_998,
        version: "v1".into(),
        status: molt_protocol::AgentStatus::Upgrading,
        since: chrono::Utc::now(),
    };
    h.write_status(&st).unwrap();
    assert!(state_ids(&h).contains(&"stuck-upgrading".to_string()));
    h.write_status(&molt_layout::AgentStatus {
        pid: std::process::id(),
        ..st
    })
    .unwrap();
    assert!(!state_ids(&h).contains(&"stuck-upgrading".to_string()));
}

#[test]
fn certificates_in_a_backup_but_not_in_the_running_truststore_are_lost() {
    use molt_deploy::truststore::{STOCK, TRUSTSTORE};
    let a = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let c = "-----BEGIN CERTIFICATE-----\nCUSTOM\n-----END CERTIFICATE-----\n";
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path());
    let both = format!("{a}{c}");
    meta(
        &h,
        "v2",
        &[
            ("bin/molt", b"x"),
            (TRUSTSTORE, a.as_bytes()),
            (STOCK, a.as_bytes()),
        ],
    );
    point_current(&h, "v2");
    std::fs::create_dir_all(h.truststore_backup_dir()).unwrap();
    std::fs::write(h.truststore_backup_dir().join("v1.cacerts.pem"), &both).unwrap();
    assert!(state_ids(&h).contains(&"truststore-certs-lost".to_string()));
    // Once the certificate is back (added in place), nothing is reported,
    // and the in-place edit does not count as a damaged install.
    std::fs::write(h.version_dir("v2").join(TRUSTSTORE), &both).unwrap();
    assert!(state_ids(&h).is_empty(), "{:?}", state_ids(&h));
}

#[test]
fn back_and_forth_deploys_are_flapping() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path());
    std::fs::create_dir_all(h.logs_dir()).unwrap();
    let mut log = String::new();
    for (a, b) in [("v1", "v2"), ("v2", "v1"), ("v1", "v2"), ("v2", "v1")] {
        log.push_str(&format!(
            "<< UPGRADE LOG BEGIN >>\n2026 Upgrade runner started (pid 5): {a} -> {b}\n2026 Upgrade Complete: version {b} is Up (pid 6)\n<< UPGRADE LOG END >>\n"
        ));
    }
    std::fs::write(h.agent_log(), &log).unwrap();
    let t = crate::signatures::builtin().unwrap();
    let r = diagnose_with(&t, &Evidence::gather(&h, &[]), &h);
    let f = r
        .findings
        .iter()
        .find(|f| f.id == "version-flapping")
        .expect("flapping");
    assert!(
        f.details[0].contains("v1 -> v2 -> v1 -> v2 -> v1"),
        "{:?}",
        f.details
    );
    // One upgrade and one downgrade (a control-plane rollback) is not flapping.
    let two: String = log
        .split("<< UPGRADE LOG END >>\n")
        .take(2)
        .map(|s| format!("{s}<< UPGRADE LOG END >>\n"))
        .collect();
    std::fs::write(h.agent_log(), two).unwrap();
    assert!(!state_ids(&h).contains(&"version-flapping".to_string()));
}

#[test]
fn a_process_holding_an_old_version_is_named() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::new(d.path());
    meta(&h, "v1", &[("bin/molt", b"x"), ("lib/held", b"y")]);
    meta(&h, "v2", &[("bin/molt", b"x2")]);
    point_current(&h, "v2");
    std::fs::create_dir_all(h.logs_dir()).unwrap();
    std::fs::write(
        h.agent_log(),
        " WARN prune deferred: version directory in use version=v1\n",
    )
    .unwrap();
    let held = h.version_dir("v1").join("lib/held");
    let holder = crate::testkit::HeldOpen::new(&held, &h.version_dir("v1"));
    let me = holder.pid();
    let t = crate::signatures::builtin().unwrap();
    let r = diagnose_with(&t, &Evidence::gather(&h, &[]), &h);
    drop(holder);
    let f = r
        .findings
        .iter()
        .find(|f| f.id == "version-dir-in-use")
        .unwrap();
    assert!(
        f.details
            .iter()
            .any(|d| d.contains(&format!("pid {me}")) && d.contains("sleep")),
        "{:?}",
        f.details
    );
}
