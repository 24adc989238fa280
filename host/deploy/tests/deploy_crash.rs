//! Crash injection: the real `molt deploy` runner is killed at every checkpoint
//! (every journal step and every 100th file of the build, via the test-only hook
//! `MOLT_DEPLOY_CRASH_AT`) and at random times (SIGKILL), across deploys of a
//! 2,000-file package. After each, the agent is started again (the supervisor
//! notices the dead runner, or the whole "host" restarts) and every case must end
//! Up on exactly the old or exactly the new version, every file's digest and mode
//! checked. Needs the `molt` binary (`cargo build -p molt`).
mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, Debug)]
enum Case {
    CrashAt(u64),
    KillAfter { ms: u64, host_restart: bool },
}

struct Fixture {
    v1: Content,
    v2: Content,
    /// v1 installed, v2 extracted and planned under work/upgrade_temp: each
    /// case runs on a fresh copy of it.
    template: TestHome,
    /// plan.json, relative to the home.
    plan: std::path::PathBuf,
}

fn run_case(fx: &Fixture, case: Case) -> &'static str {
    let mut th = fx.template.copy_of();
    th.start_up("v1");
    let plan = th.root().join(&fx.plan);
    let log = std::fs::File::create(th.root().join("runner.test.log")).unwrap();
    let mut cmd = Command::new(molt_bin());
    cmd.args([
        "deploy",
        "--home",
        th.root().to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    match case {
        Case::CrashAt(k) => {
            let st = cmd
                .env("MOLT_DEPLOY_CRASH_AT", k.to_string())
                .status()
                .unwrap();
            assert!(!st.success() || k > 0, "{case:?}");
        }
        Case::KillAfter { ms, host_restart } => {
            let mut c = cmd.spawn().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
            if host_restart {
                // The whole host goes down: supervisor and agent die too, then the service starts again.
                if let Some(mut s) = th.supervisor.take() {
                    let _ = s.kill();
                    let _ = s.wait();
                }
                if let Some(p) = molt_deploy::service::read_pid(&th.home.agent_pid_file()) {
                    molt_deploy::proc::signal(p, 9);
                }
                if let Ok(Some(s)) = th.home.read_status() {
                    molt_deploy::proc::signal(s.pid, 9);
                }
                th.start_supervisor();
            }
        }
    }
    let cur = th
        .wait_settled(Duration::from_secs(90))
        .unwrap_or_else(|e| {
            panic!(
                "{case:?}: {e}\nrunner log:\n{}\nresume log:\n{}",
                std::fs::read_to_string(th.root().join("runner.test.log")).unwrap_or_default(),
                std::fs::read_to_string(th.home.deploy_resume_log()).unwrap_or_default()
            )
        });
    match cur.as_str() {
        "v1" => {
            th.assert_exactly("v1", &fx.v1);
            "old"
        }
        "v2" => {
            th.assert_exactly("v2", &fx.v2);
            // the previous version is kept for rollback and untouched
            assert_dir_exactly(&th.home.version_dir("v1"), &fx.v1);
            "new"
        }
        other => panic!("{case:?}: current is {other}"),
    }
}

#[test]
fn every_crash_point_ends_up_on_exactly_the_old_or_the_new_version() {
    let (v1, v2, changed) = v1_v2(2000, 20); // 5% changed
    let template = TestHome::new("v1", &v1);
    let plan = template.plan_core("v1", "v2", &v2, &changed, Some("1"));
    // The runner reads only the changed files from the extracted package (the
    // rest are hard links to v1): stage just those, so a copy per case is cheap.
    let staged = plan.parent().unwrap().join("packages").join("core");
    for rel in v2.keys().filter(|k| !changed.contains(k)) {
        let _ = std::fs::remove_file(staged.join(rel));
    }
    let plan = plan.strip_prefix(template.root()).unwrap().to_path_buf();
    let fx = Arc::new(Fixture {
        v1,
        v2,
        template,
        plan,
    });

    // A full deploy first: learn the checkpoints and how long a deploy takes.
    let mut th = fx.template.copy_of();
    th.start_up("v1");
    let plan = th.root().join(&fx.plan);
    let cps = th.root().join("checkpoints.txt");
    let t0 = Instant::now();
    let st = th
        .deploy_cmd(&plan)
        .env("MOLT_DEPLOY_CHECKPOINTS", &cps)
        .status()
        .unwrap();
    let full = t0.elapsed();
    assert!(st.success(), "full deploy failed");
    th.assert_exactly("v2", &fx.v2);
    let names: Vec<String> = std::fs::read_to_string(&cps)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    drop(th);
    assert!(names.len() >= 20, "too few checkpoints: {names:?}");

    let mut cases: Vec<Case> = (1..=names.len() as u64).map(Case::CrashAt).collect();
    let random = 210usize.saturating_sub(cases.len()).max(60);
    let span = (full.as_millis() as u64 * 13 / 10).max(50);
    for i in 0..random {
        cases.push(Case::KillAfter {
            ms: rand_u64() % span,
            host_restart: i % 3 == 0,
        });
    }
    let total = cases.len();
    assert!(total >= 200);

    let queue = Arc::new(Mutex::new(cases));
    let counts = Arc::new(Mutex::new((0usize, 0usize, 0usize, 0usize))); // step-old, step-new, random-old, random-new
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (q, c, fx) = (queue.clone(), counts.clone(), fx.clone());
            std::thread::spawn(move || {
                loop {
                    let Some(case) = q.lock().unwrap().pop() else {
                        return;
                    };
                    let r = run_case(&fx, case);
                    let mut c = c.lock().unwrap();
                    match (case, r) {
                        (Case::CrashAt(_), "old") => c.0 += 1,
                        (Case::CrashAt(_), _) => c.1 += 1,
                        (_, "old") => c.2 += 1,
                        _ => c.3 += 1,
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a crash case failed (see the panic above)");
    }
    let c = *counts.lock().unwrap();
    println!(
        "crash-injection: {total} cases ({} checkpoints, {random} random-time SIGKILLs, full deploy {full:?}): \
         checkpoints -> {} old / {} new; random -> {} old / {} new; 0 mixed, all Up",
        names.len(),
        c.0,
        c.1,
        c.2,
        c.3
    );
    assert_eq!(c.0 + c.1 + c.2 + c.3, total);
    // Both outcomes must actually occur, or the test is not testing the switch.
    assert!(c.0 + c.2 > 0 && c.1 + c.3 > 0, "{c:?}");
}
