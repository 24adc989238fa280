//! Hand-over (agent side) and recovery at start, with the real runner binary.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use molt_deploy::handover::{HandoverOptions, hand_over};
use molt_deploy::recover::{RecoveryOutcome, recover_with};
use molt_protocol::AttemptResult;

const UP: Duration = Duration::from_secs(30);

fn stage_upgrade_runner(th: &TestHome, plan: &std::path::Path) {
    // The upgrade package carries the runner: the real molt binary.
    let dst = plan.parent().unwrap().join("packages/upgrade/bin/molt");
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(molt_bin(), &dst).unwrap();
    let _ = th;
}

#[test]
fn hand_over_starts_the_runner_which_deploys_the_new_version() {
    let (v1, v2, ch) = v1_v2(200, 20);
    let mut th = TestHome::new("v1", &v1);
    let agent = th.start_up("v1");
    let plan = th.plan_core("v1", "v2", &v2, &ch, Some("h1"));
    stage_upgrade_runner(&th, &plan);
    let dir = plan.parent().unwrap();
    // A stale start marker from an earlier try must not be believed.
    std::fs::write(dir.join("runner.started"), b"1\n").unwrap();
    let opts = HandoverOptions {
        agent_pid: Some(agent),
        poll: Duration::from_millis(100),
        limit: Duration::from_secs(60),
        ..Default::default()
    };
    let out = hand_over(&th.home, dir, &opts).unwrap();
    assert!(
        out.runner_exe.starts_with(dir),
        "the runner runs from the upgrade dir"
    );
    assert!(dir.join("changed_files.txt").is_file());
    let h = molt_deploy::service::Handover::load(&th.home);
    let _ = h; // may already be removed by a fast runner
    th.wait_up("v2", UP).unwrap();
    th.wait_settled(UP).unwrap();
    th.assert_exactly("v2", &v2);
    assert!(!th.home.upgrade_marker_file().exists());
    let log = std::fs::read_to_string(th.home.agent_log()).unwrap();
    assert!(log.contains("<< UPGRADE LOG BEGIN >>"), "{log}");
    assert!(log.contains("Upgrade Complete"), "{log}");
}

#[test]
fn hand_over_times_out_with_the_seeds_issue_and_the_agent_stays_up() {
    let (v1, v2, ch) = v1_v2(10, 2);
    let mut th = TestHome::new("v1", &v1);
    let agent = th.start_up("v1");
    let plan = th.plan_core("v1", "v2", &v2, &ch, None);
    // A runner that starts but never signals (hung before its first step).
    let hung = th.root().join("hung-runner.sh");
    std::fs::write(&hung, b"#!/bin/sh\nsleep 300\n").unwrap();
    molt_deploy::fsutil::set_mode(&hung, 0o755).unwrap();
    let opts = HandoverOptions {
        agent_pid: Some(agent),
        poll: Duration::from_millis(100),
        limit: Duration::from_secs(1),
        runner: Some(hung),
        ..Default::default()
    };
    let err = hand_over(&th.home, plan.parent().unwrap(), &opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("Unable to receive upgrade process status"),
        "{err}"
    );
    assert_eq!(
        th.wait_up("v1", UP).unwrap(),
        agent,
        "the same agent is still Up"
    );
    assert!(!th.home.upgrade_marker_file().exists());
    assert!(
        !th.home.handover_file().exists(),
        "a failed hand-over leaves no pids for a later runner to signal"
    );
}

#[test]
fn hand_over_refuses_a_new_version_that_cannot_run() {
    let (v1, mut v2, ch) = v1_v2(10, 2);
    v2.insert("bin/molt".into(), (b"#!/bin/sh\nexit 7\n".to_vec(), 0o755));
    let th = TestHome::new("v1", &v1);
    let plan = th.plan_core("v1", "v2", &v2, &ch, None);
    let opts = HandoverOptions {
        agent_pid: Some(1),
        skip_wait: true,
        ..Default::default()
    };
    let err = hand_over(&th.home, plan.parent().unwrap(), &opts).unwrap_err();
    assert!(
        matches!(err, molt_deploy::DeployError::NotExecutable { .. }),
        "{err}"
    );
    assert!(
        !plan.parent().unwrap().join("runner").exists(),
        "no runner was started"
    );
    assert!(!th.home.handover_file().exists());
}

/// A hand-over file naming a pid that another process has reused since (here:
/// an unrelated `sleep` with the recorded start time off by one): the runner
/// neither signals it nor waits for it.
#[test]
fn the_runner_leaves_alone_a_process_that_reused_a_recorded_pid() {
    let (v1, v2, ch) = v1_v2(10, 2);
    let mut th = TestHome::new("v1", &v1);
    th.start_up("v1");
    let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
    let pid = bystander.id();
    let ticks = molt_deploy::proc::start_ticks(pid).unwrap();
    let mut h = molt_deploy::service::Handover::new(
        molt_deploy::service::ServiceKind::Supervisor,
        vec![pid],
    );
    h.start_ticks.insert(pid, ticks + 1);
    molt_layout::write_json_atomic(&th.home.handover_file(), &h).unwrap();

    let plan = th.plan_core("v1", "v2", &v2, &ch, None);
    assert_eq!(th.deploy(&plan), 0, "{}", th.deploy_log());
    th.wait_up("v2", UP).unwrap();
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the process that reused the pid was not signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn recovery_at_start_undoes_a_deploy_interrupted_before_the_switch() {
    let (v1, v2, ch) = v1_v2(300, 10);
    let th = TestHome::new("v1", &v1);
    let plan = th.plan_core("v1", "v2", &v2, &ch, Some("r1"));
    // Checkpoint 5 is in the middle of the build (after "journal Building").
    let st = th
        .deploy_cmd(&plan)
        .env("MOLT_DEPLOY_CRASH_AT", "5")
        .env("MOLT_DEPLOY_CHECKPOINTS", th.root().join("cps.txt"))
        .status()
        .unwrap();
    assert!(!st.success());
    let cps = std::fs::read_to_string(th.root().join("cps.txt")).unwrap();
    assert!(cps.lines().last().unwrap().contains("build file"), "{cps}");
    assert!(th.home.journal_file().exists());
    match recover_with(
        &th.home,
        &molt_bin(),
        &molt_deploy::service::ServiceKind::Supervisor,
    )
    .unwrap()
    {
        RecoveryOutcome::RolledBack {
            version,
            to_version,
            ..
        } => {
            assert_eq!(version, "v1");
            assert_eq!(to_version, "v2");
        }
        other => panic!("{other:?}"),
    }
    assert!(!th.home.journal_file().exists());
    assert!(!th.home.hold_marker().exists());
    assert!(!th.home.version_dir("v2").exists());
    let hidden: Vec<_> = std::fs::read_dir(th.home.versions_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "no partial build left");
    assert!(
        std::fs::read_dir(th.home.upgrade_temp_dir())
            .map(|r| r.count())
            .unwrap_or(0)
            == 0,
        "upgrade temp dirs and runners removed"
    );
    th.assert_exactly("v1", &v1);
    assert!(
        molt_deploy::report::read_queue(&th.home)
            .unwrap()
            .iter()
            .any(|r| r.body["result"] == AttemptResult::RolledBack.as_str())
    );
    // A clean start afterwards finds nothing to do.
    assert!(matches!(
        recover_with(
            &th.home,
            &molt_bin(),
            &molt_deploy::service::ServiceKind::Supervisor
        )
        .unwrap(),
        RecoveryOutcome::Clean { .. }
    ));
}

#[test]
fn recovery_at_start_after_the_switch_health_checks_the_new_version() {
    let (v1, v2, ch) = v1_v2(100, 10);
    let mut th = TestHome::new("v1", &v1);
    th.start_up("v1");
    let plan = th.plan_core("v1", "v2", &v2, &ch, None);
    // Find the checkpoint number of "journal Switched" from a counting run on another home.
    let th2 = TestHome::new("v1", &v1);
    let plan2 = th2.plan_core("v1", "v2", &v2, &ch, None);
    let _ = th2
        .deploy_cmd(&plan2)
        .env("MOLT_DEPLOY_CHECKPOINTS", th2.root().join("cps.txt"))
        .env("MOLT_DEPLOY_CRASH_AT", "1000000")
        .status()
        .unwrap();
    let cps = std::fs::read_to_string(th2.root().join("cps.txt")).unwrap();
    let n: u64 = cps
        .lines()
        .find(|l| l.ends_with("journal Switched"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Stop the supervisor so only the agent-start recovery acts.
    let st = th
        .deploy_cmd(&plan)
        .env("MOLT_DEPLOY_CRASH_AT", n.to_string())
        .status()
        .unwrap();
    assert!(!st.success());
    assert_eq!(th.home.current_version().unwrap().as_deref(), Some("v2"));
    th.stop_supervisor();
    match recover_with(
        &th.home,
        &molt_bin(),
        &molt_deploy::service::ServiceKind::Supervisor,
    )
    .unwrap()
    {
        RecoveryOutcome::HealthCheckPending { version, .. } => assert_eq!(version, "v2"),
        other => panic!("{other:?}"),
    }
    // The resume runner finds no supervisor, starts one, and checks v2 comes Up.
    th.wait_up("v2", UP).unwrap();
    th.wait_settled(UP).unwrap();
    th.assert_exactly("v2", &v2);
    let last = molt_deploy::journal::read_last(&th.home).unwrap().unwrap();
    assert_eq!(last.result, AttemptResult::Complete);
    // The resume runner started a supervisor of its own; stop it via its pid file.
    if let Some(p) = molt_deploy::service::read_pid(&th.home.supervisor_pid_file()) {
        molt_deploy::proc::signal(p, 15);
    }
}
