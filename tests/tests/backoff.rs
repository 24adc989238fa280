//! Back-off after a rollback, end to end: a real `molt serve`, a real agent
//! under the real supervisor (`molt run`), the real deploy runner, real signed
//! packages. A version whose agent crashes at start is rolled back once; then,
//! with the agent's clock advanced 2 h (libfaketime, `FAKETIME=+2h`, preloaded
//! into the supervisor and so into the agents and runners it starts; monotonic
//! clocks left real), restarts and upgrade checks do not try it again: the
//! control plane's history keeps one attempt and `molt status` says "held
//! after rollback". When the fleet moves to another, good version, exactly one
//! new attempt runs, and it completes.
//!
//! Triggers used after the rollback: the agent's start after a supervisor
//! restart (with the faked clock), the fleet's `autoUpgrade` command (the
//! check the hourly timer runs: `Mode::Upgrade`, not an operator's retry; the
//! hourly timer itself sleeps 3,600 s on the monotonic clock and is not waited
//! for), a `restart` command and a killed agent (both restarts by the
//! supervisor). The `upgrade` command and `molt upgrade now` are an operator's
//! retry and are not used here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use molt_e2e::agent_fx::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(180);
/// A good version after the bad V2.
const V3: &str = "quebec-12-09-2020__patch3-06-18-2021_07-01-2021_1000";
const CRASHING_AGENT: &[u8] = b"#!/bin/sh\n# Stand-in for a broken release: starts, then crashes.\n[ \"$1\" = --version ] && { echo molt broken; exit 0; }\necho 'crashing at start' >&2\nexit 1\n";
const HELD: &str = "held after rollback until";

/// Kills what the test started on its home (agents, supervisors, detached
/// runners) when it ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_all_on(&self.0);
    }
}

/// libfaketime's preload library (`$MOLT_LIBFAKETIME`, else where the
/// `libfaketime` package puts it). Missing: the test fails, saying so.
fn libfaketime() -> String {
    if let Some(p) = std::env::var_os("MOLT_LIBFAKETIME") {
        return p.to_string_lossy().into_owned();
    }
    let arch = std::env::consts::ARCH;
    let candidates = [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_string(),
        "/usr/lib64/faketime/libfaketime.so.1".to_string(),
    ];
    candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is needed to advance the agent's clock (none of {candidates:?}): \
                 apt-get install -y faketime, or set MOLT_LIBFAKETIME"
            )
        })
}

fn log_of(home: &Path) -> String {
    std::fs::read_to_string(home.join("logs/agent.log")).unwrap_or_default()
}

/// Lines of the agent log saying the version is held.
fn held_count(home: &Path) -> usize {
    log_of(home).lines().filter(|l| l.contains(HELD)).count()
}

fn wait_held(home: &Path, n: usize, why: &str) {
    wait_until(&format!("{why}: hold #{n} in the agent log"), T, || {
        held_count(home) >= n
    });
    // The check that logged it has finished (its outcome is logged right after).
    wait_until("the held check to finish", T, || {
        log_of(home)
            .lines()
            .filter(|l| l.contains("Upgrade check finished") && l.contains("HeldAfterRollback"))
            .count()
            >= n
    });
}

/// Still one attempt in the control plane's history, the agent Up on V1.
fn still_one_attempt(url: &str, home: &Path, why: &str) {
    // Give a (wrong) attempt the time to show up.
    std::thread::sleep(Duration::from_secs(2));
    let a = attempts(url);
    assert_eq!(a.len(), 1, "{why}: {a:#?}\n{}", log_of(home));
    assert_eq!(a[0]["to_version"], V2);
    assert_eq!(a[0]["result"], "Rolled Back");
    assert_eq!(
        std::fs::read_link(home.join("current")).unwrap(),
        Path::new("versions").join(V1),
        "{why}"
    );
}

/// The local status written by a live agent of `version` with a pid other
/// than `not`; its pid.
fn wait_agent_up(home: &Path, version: &str, not: Option<u64>) -> u64 {
    let mut pid = 0;
    wait_until(&format!("an agent of {version} Up"), T, || {
        local_status(home).is_some_and(|s| {
            pid = s["pid"].as_u64().unwrap_or(0);
            s["status"] == "Up"
                && s["version"] == version
                && Some(pid) != not
                && Path::new(&format!("/proc/{pid}")).exists()
        })
    });
    pid
}

/// The agent process `pid` runs with the faked clock: libfaketime is in its
/// environment and the `since` it wrote is 2 h ahead of the real clock.
fn assert_faked(home: &Path, pid: u64) {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let env = String::from_utf8_lossy(&env);
    assert!(
        env.split('\0')
            .any(|v| v.starts_with("LD_PRELOAD=") && v.contains("libfaketime"))
            && env.split('\0').any(|v| v == "FAKETIME=+2h"),
        "LD_PRELOAD did not reach the agent process {pid}: {env}"
    );
    let s = local_status(home).unwrap();
    let since: molt_bundle::chrono::DateTime<molt_bundle::chrono::Utc> =
        s["since"].as_str().unwrap().parse().unwrap();
    let ahead = since - molt_bundle::chrono::Utc::now();
    assert!(
        ahead > molt_bundle::chrono::Duration::minutes(110)
            && ahead < molt_bundle::chrono::Duration::minutes(130),
        "the agent's clock is not 2 h ahead (since {since}, {ahead} ahead): libfaketime did not take"
    );
}

fn command(url: &str, kind: &str) -> Value {
    let before: Vec<Value> = commands(url);
    admin(
        url,
        reqwest::Method::POST,
        &format!("/api/v1/admin/agents/{AGENT}/commands"),
        Some(json!({ "kind": kind })),
    );
    let mut cmd = Value::Null;
    wait_until(&format!("the {kind} command answered"), T, || {
        cmd = commands(url)
            .into_iter()
            .find(|c| c["kind"] == kind && !before.iter().any(|b| b["id"] == c["id"]))
            .unwrap_or(Value::Null);
        matches!(cmd["state"].as_str(), Some("Done" | "Failed"))
    });
    cmd
}

fn commands(url: &str) -> Vec<Value> {
    admin_get(url, &format!("/api/v1/admin/commands?agent={AGENT}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn molt_status(home: &Path) -> String {
    let out = Command::new(molt_bin())
        .args(["status", "--home"])
        .arg(home)
        .env_remove("MOLT_HOME")
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_version_crashing_at_start_is_rolled_back_once_held_2h_later_and_left_when_the_fleet_moves_on()
{
    let started = Instant::now();
    let faketime = libfaketime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = Pki::new(&root.join("pki"));
    let packages = root.join("packages");
    let work = root.join("work");
    let core1 = light_release(&pki, &work, &packages, V1, &launcher());
    light_release(&pki, &work, &packages, V2, CRASHING_AGENT);
    side_bundle(&pki, &work, &packages, "precheck", V2);
    light_release(&pki, &work, &packages, V3, &launcher());
    side_bundle(&pki, &work, &packages, "precheck", V3);
    let home = root.join("home");
    fresh_install_packages(&home, &pki, V1, &[&core1]);
    let _c = Cleanup(home.clone());

    // The fleet on the crashing V2 from the start.
    let srv = start_server(&root.join("cp"), &packages, V2, 0, &[]);
    write_config(
        &home,
        &srv.url,
        "health_timeout_secs = 10\nstop_timeout_secs = 10\n",
    );
    let mut sup = start_supervisor(&home, &[]);

    // Rolled back once.
    let mut a = Value::Null;
    wait_until("the V2 attempt to end", T, || {
        a = attempts(&srv.url).into_iter().next().unwrap_or(Value::Null);
        a["result"].as_str().is_some_and(|r| !r.is_empty())
    });
    assert_eq!(a["result"], "Rolled Back", "{a:#}\n{}", log_of(&home));
    assert_eq!(
        (a["from_version"].as_str(), a["to_version"].as_str()),
        (Some(V1), Some(V2))
    );
    let pid = wait_agent_up(&home, V1, None);
    // The old version's start check: held, no second attempt.
    wait_held(&home, 1, "the restarted V1 agent's start check");
    still_one_attempt(&srv.url, &home, "after the rollback");
    let held: Value = serde_json::from_str(
        &std::fs::read_to_string(home.join("state/held-after-rollback.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(held["held"]["version"], V2, "{held}");
    assert_eq!(held["held"]["rollbacks"], 1, "{held}");

    // Two hours later: the supervisor (and so the agents and runners it
    // starts) restarted with libfaketime, 2 h ahead. The control plane keeps
    // the real clock: the host's clock is 2 h ahead of it, a skew the health
    // check of the final upgrade must survive (it confirms the new version by
    // the pid the control plane reports, not by comparing the two clocks).
    sup.stop();
    wait_until("everything on the home stopped", T, || {
        pids_on(&home).is_empty()
    });
    let fake = [
        ("LD_PRELOAD", faketime.as_str()),
        ("FAKETIME", "+2h"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut sup = start_supervisor(&home, &fake);
    // Trigger 1: the agent's start.
    let pid = wait_agent_up(&home, V1, Some(pid));
    assert_faked(&home, pid);
    wait_held(&home, 2, "trigger 1, the agent's start 2 h later");
    still_one_attempt(&srv.url, &home, "trigger 1 (start, +2 h)");

    // Trigger 2: the fleet's autoUpgrade (the hourly check's path).
    let cmd = command(&srv.url, "autoUpgrade");
    assert_eq!(cmd["state"], "Failed", "{cmd}");
    let msg = cmd["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("Version {V2} {HELD}")) && msg.contains("1 rollback(s) in a row"),
        "{cmd}"
    );
    wait_held(&home, 3, "trigger 2, autoUpgrade");
    still_one_attempt(&srv.url, &home, "trigger 2 (autoUpgrade, +2 h)");

    // Trigger 3: a restart command; the supervisor starts the agent again.
    let cmd = command(&srv.url, "restart");
    assert_eq!(cmd["state"], "Done", "{cmd}");
    let pid = wait_agent_up(&home, V1, Some(pid));
    assert_faked(&home, pid);
    wait_held(&home, 4, "trigger 3, restart command");
    still_one_attempt(&srv.url, &home, "trigger 3 (restart, +2 h)");

    // And a crash of the agent: the supervisor restarts it.
    // kill(1) by pid: the agent this test's supervisor started.
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let pid = wait_agent_up(&home, V1, Some(pid));
    assert_faked(&home, pid);
    wait_held(&home, 5, "trigger 4, the agent killed and restarted");
    still_one_attempt(&srv.url, &home, "trigger 4 (killed agent, +2 h)");
    wait_until("the agent Up on V1 on the control plane", T, || {
        cp_agent(&srv.url).is_some_and(|a| a["status"] == "Up" && a["version"] == V1)
    });

    // The control plane's clock is the real one: its last_seen of the agent
    // is not 2 h ahead, though the agent's clock is.
    let seen: molt_bundle::chrono::DateTime<molt_bundle::chrono::Utc> = cp_agent(&srv.url)
        .and_then(|a| a["last_seen"].as_str().and_then(|t| t.parse().ok()))
        .expect("the control plane's last_seen of the agent");
    assert!(
        seen - molt_bundle::chrono::Utc::now() < molt_bundle::chrono::Duration::minutes(10),
        "the control plane's clock is not the real one: last_seen {seen}"
    );

    // What the operator sees locally: the rolled-back attempt, the
    // assignment it did not follow, and the hold.
    let status = molt_status(&home);
    assert!(
        status.contains(&format!("Held after rollback: {V2} until")),
        "{status}"
    );
    assert!(
        status.contains(&format!("{V1} -> {V2}: Rolled Back"))
            && status.contains(&format!(
                "Assigned:   {V2} (source fleet), differs from installed"
            )),
        "{status}"
    );

    // The fleet moves to the good V3: exactly one new attempt, and it completes.
    set_fleet_version(&srv.url, V3);
    let mut a = Value::Null;
    wait_until("the V3 attempt to complete", T, || {
        a = attempts(&srv.url).into_iter().next().unwrap_or(Value::Null);
        if a["to_version"] == V3
            && a["result"]
                .as_str()
                .is_some_and(|r| !r.is_empty() && r != "Complete")
        {
            panic!("the V3 attempt ended {a:#}\n{}", log_of(&home));
        }
        a["to_version"] == V3 && a["result"] == "Complete"
    });
    assert_eq!(a["from_version"], V1, "{a:#}");
    let pid = wait_agent_up(&home, V3, None);
    assert_faked(&home, pid);
    wait_until("the agent Up on V3 on the control plane", T, || {
        cp_agent(&srv.url).is_some_and(|a| a["status"] == "Up" && a["version"] == V3)
    });
    assert_eq!(
        std::fs::read_link(home.join("current")).unwrap(),
        Path::new("versions").join(V3)
    );
    std::thread::sleep(Duration::from_secs(3));
    let all = attempts(&srv.url);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        all.iter().filter(|a| a["to_version"] == V3).count(),
        1,
        "{all:#?}"
    );
    assert_eq!(
        all.iter().filter(|a| a["to_version"] == V2).count(),
        1,
        "{all:#?}"
    );
    assert!(
        log_of(&home).contains("Hold after rollback released: the assignment changed"),
        "{}",
        log_of(&home)
    );
    sup.stop();
    println!("backoff e2e: {:?}", started.elapsed());
}
