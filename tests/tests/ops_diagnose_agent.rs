//! `molt diagnose` on agent-side failures produced for real: a real `molt
//! serve` assigns a new version to a real `molt agent` (or `molt run`), and the
//! upgrade stops in the Pre Upgrade Check, the version selector, the upgrade
//! slot, the extract or the hand-over; or the agent is killed, restarted during
//! an upgrade, or refuses its config.toml.
mod ops_common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use ops_common::*;

const T: Duration = Duration::from_secs(60);

/// Kit with v1 and v2 released, a control plane assigning v2 with `serve_extra`,
/// and a v1 install whose config.toml has `extra`.
fn env(serve_extra: &[&str], extra: &str) -> (Kit, Cp, molt_layout::Home) {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    env_on(k, serve_extra, extra)
}

fn env_on(k: Kit, serve_extra: &[&str], extra: &str) -> (Kit, Cp, molt_layout::Home) {
    let mut args = vec!["--fleet-version", V2];
    args.extend_from_slice(serve_extra);
    let cp = serve(&k.dir.path().join("cp"), &k.packages_dir(), &args);
    let h = k.light_install(&k.dir.path().join("agent"), V1, &cp.url);
    agent_config(&h, &cp.url, extra);
    (k, cp, h)
}

/// facts.toml that makes the host look almost full (the documented simulation key).
fn low_disk(h: &molt_layout::Home) -> String {
    let f = h.root().join("facts.toml");
    std::fs::write(
        &f,
        "install_free_bytes = 1048576\ntemp_free_bytes = 1048576\n",
    )
    .unwrap();
    format!("facts_override = \"{}\"\n", f.display())
}

#[test]
fn a_blocking_pre_upgrade_finding_is_named_precheck_blocked() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    k.side_bundle("precheck", V2, |_, _| {});
    let (_k, _cp, h) = env_on(k, &[], "");
    let facts = low_disk(&h);
    let mut cfg = std::fs::read_to_string(h.config_file()).unwrap();
    cfg.push_str(&facts);
    std::fs::write(h.config_file(), cfg).unwrap();
    let agent = start_agent(&h, &[]);
    wait_agent_log(&h, "Setting agent status to Up", T);
    wait_agent_log(
        &h,
        "Aborting agent upgrade due to pre-upgrade check failure",
        T,
    );
    drop(agent);

    assert_diagnosed(
        &h,
        "precheck-blocked",
        "Aborting agent upgrade due to pre-upgrade check failure: 2 blocking finding(s): disk.insufficient",
        // A finding, not a check that ran out of time.
        &["precheck-timeout"],
    );
}

#[test]
fn a_pre_upgrade_check_that_runs_out_of_time_is_named_precheck_timeout() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    // The precheck bundle carries one more check, one that never returns (the
    // repo's deliberately misbehaving guest in its `loop` mode), with 200 ms.
    k.side_bundle("precheck", V2, |src, comps| {
        let wasm = molt_e2e::agent_fx::signed_bundles_dir().join("test-guests/hostile.wasm");
        std::fs::copy(&wasm, src.join("checks/hostile.wasm")).unwrap();
        let mut c = comps[0].clone();
        c.path = "checks/hostile.wasm".into();
        // It imports every interface of the contract, so it asks for all of them.
        c.capabilities = ["facts", "net", "services", "log"].map(String::from).into();
        c.preopens = ["scratch", "install", "staging"].map(String::from).into();
        c.params = [("mode".to_string(), "loop".to_string())].into();
        c.limits.deadline_ms = Some(200);
        comps.push(c);
    });
    let (_k, _cp, h) = env_on(k, &[], "");
    run_agent_until(
        &h,
        "Aborting agent upgrade due to pre-upgrade check failure",
        T,
    );

    // The specific cause hides the generic blocked precheck.
    assert_diagnosed(
        &h,
        "precheck-timeout",
        "Check hostile did not finish within its deadline of 200 ms and was stopped",
        &["precheck-blocked"],
    );
}

#[test]
fn a_version_selector_that_traps_is_named_version_selector_failed() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    // The selector component's fuel budget is far below what one selection needs.
    k.side_bundle("selector", V2, |_, comps| comps[0].limits.fuel = Some(1));
    let (_k, _cp, h) = env_on(k, &[], "run_precheck = false\n");
    run_agent_until(&h, "Version selector failed; not upgrading", T);

    assert_diagnosed(
        &h,
        "version-selector-failed",
        "Version selector failed; not upgrading: version selector failed:",
        &["precheck-blocked"],
    );
}

#[test]
fn an_upgrade_waiting_for_a_slot_is_a_note_and_exits_zero() {
    let (_k, cp, h) = env(
        &[
            "--max-concurrent-upgrades",
            "1",
            "--bootstrap-agent",
            "a2:agent2-token-0123456789",
        ],
        "run_precheck = false\ntest_slot_retry_secs = 1\n",
    );
    // Another agent holds the fleet's only upgrade slot.
    let (status, text) = molt_e2e::agent_fx::http_call(
        &cp.url,
        reqwest::Method::POST,
        "/api/v1/agent/upgrade-slot",
        "agent2-token-0123456789",
        Some(serde_json::json!({ "to_version": V2 })),
    );
    assert!((200..300).contains(&status), "{status}: {text}");
    run_agent_until(&h, "409 Conflict", T);

    let v = assert_diagnosed(
        &h,
        "waiting-for-upgrade-slot",
        "HTTP/1.1 409 Conflict with code: 409",
        &["control-plane-unreachable", "stuck-upgrading"],
    );
    assert_eq!(finding(&v, "waiting-for-upgrade-slot")["severity"], "info");
    let (code, text) = diagnose(&h, &[]);
    assert_eq!(code, 0, "a note is not a failure: {text}");
    assert!(text.contains("[note] waiting-for-upgrade-slot"), "{text}");
}

#[test]
fn a_restart_command_during_an_upgrade_is_named_restart_deferred() {
    // The download site is down, so the upgrade ends (Failed) and the deferred
    // restart is then performed.
    let site = format!("{}/packages", closed_port_url());
    let (_k, cp, h) = env(
        &["--package-base-url", &site],
        "run_precheck = false\ntest_hooks = true\n",
    );
    let hold = h.work_dir().join("hold.download-upgrade-packages");
    std::fs::create_dir_all(h.work_dir()).unwrap();
    std::fs::write(&hold, b"").unwrap();
    let mut agent = start_agent(&h, &[]);
    wait_agent_log(&h, "Holding before stage", T);
    admin(
        &cp.url,
        "POST",
        "/api/v1/admin/agents/a1/commands",
        serde_json::json!({ "kind": "restart" }),
    );
    wait_agent_log(&h, "Restart deferred: agent is Upgrading", T);
    std::fs::remove_file(&hold).unwrap();
    wait_agent_log(&h, "Performing the restart deferred during the upgrade", T);
    let st = agent.0.wait().unwrap();
    assert_eq!(st.code(), Some(75), "exit code of a requested restart");

    let v = assert_diagnosed(
        &h,
        "restart-deferred",
        "Restart deferred: agent is Upgrading",
        &["stuck-upgrading"],
    );
    assert_eq!(finding(&v, "restart-deferred")["severity"], "info");
}

#[test]
fn an_agent_killed_while_upgrading_is_named_stuck_upgrading() {
    let (_k, _cp, h) = env(&[], "run_precheck = false\ntest_hooks = true\n");
    std::fs::create_dir_all(h.work_dir()).unwrap();
    std::fs::write(h.work_dir().join("hold.download-upgrade-packages"), b"").unwrap();
    let mut agent = start_agent(&h, &[]);
    wait_agent_log(&h, "Holding before stage", T);
    let pid = agent.0.id();
    assert_eq!(h.read_status().unwrap().unwrap().status, "Upgrading");
    // The OOM killer (or an operator's kill -9) takes the agent mid-upgrade.
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();

    assert_diagnosed(
        &h,
        "stuck-upgrading",
        "status Upgrading since",
        &["deploy-unfinished"],
    );
    let (_, text) = diagnose(&h, &[]);
    assert!(
        text.contains(&format!("written by pid {pid}, which is gone")),
        "{text}"
    );
}

/// A control plane that answers `/api/v1/agent/assigned` with `version` and
/// everything else with 404: it plays a newer control plane whose release
/// family this agent does not know. (The real `molt serve` refuses to assign
/// a version its own buildstamp parser rejects, and it shares the agent's
/// parser, so the same binary cannot produce this answer.)
fn stand_in_control_plane(version: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let (status, body) = if head.starts_with("GET /api/v1/agent/assigned") {
                (
                    "200 OK",
                    serde_json::json!({"version": version, "source": "fleet", "packages": []})
                        .to_string(),
                )
            } else {
                ("404 Not Found", r#"{"error":"not found"}"#.to_string())
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn a_version_of_an_unknown_release_family_is_named_bad_assigned_version() {
    let k = Kit::new();
    let url = stand_in_control_plane("brazil-06-01-2030__patch0-06-20-2030_07-01-2030_0900");
    let h = k.light_install(&k.dir.path().join("agent"), V1, &url);
    agent_config(&h, &url, "");
    run_agent_until(&h, "Not a valid package buildstamp", T);

    assert_diagnosed(
        &h,
        "bad-assigned-version",
        "unknown release family `brazil`",
        &["control-plane-unreachable"],
    );
}

#[test]
fn a_typo_in_config_toml_is_named_config_invalid_not_agent_cannot_start() {
    let k = Kit::new();
    let h = k.light_install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let mut cfg = std::fs::read_to_string(h.config_file()).unwrap();
    cfg.push_str("run_prechek = false\n");
    std::fs::write(h.config_file(), cfg).unwrap();
    let svc = Service::start(&h);
    wait_agent_log(&h, "invalid agent configuration", T);
    drop(svc);

    assert_diagnosed(
        &h,
        "config-invalid",
        "invalid agent configuration: line 6 (`run_prechek = false`): unknown field `run_prechek`",
        // The supervisor did start the agent: the agent refused its config.
        &["agent-cannot-start", "install-incomplete"],
    );
}

#[test]
fn an_upgrade_temp_folder_that_refuses_new_files_is_named_temp_folder_blocked() {
    let (_k, _cp, h) = env(&[], "run_precheck = false\n");
    std::fs::create_dir_all(h.upgrade_temp_dir()).unwrap();
    let _guard = match Immutable::set(&h.upgrade_temp_dir()) {
        Ok(g) => g,
        Err(why) => {
            println!(
                "SKIPPED an_upgrade_temp_folder_that_refuses_new_files_is_named_temp_folder_blocked: {why}"
            );
            return;
        }
    };
    run_agent_until(
        &h,
        "Upgrade History stage Extract Upgrade Packages: Failed",
        T,
    );

    assert_diagnosed(
        &h,
        "temp-folder-blocked",
        "Operation not permitted (os error 1)",
        &["disk-full", "download-failed"],
    );
}

/// The first bytes of an ELF executable for another CPU than this host's: a
/// core package built for the wrong architecture (KB1001926).
fn foreign_elf() -> Vec<u8> {
    let machine: u16 = if cfg!(target_arch = "aarch64") {
        0x3e // x86-64
    } else {
        0xb7 // aarch64
    };
    let mut b = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    b.resize(16, 0);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0x40_0078u64.to_le_bytes()); // entry
    b.extend_from_slice(&64u64.to_le_bytes()); // phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.resize(4096, 0);
    b
}

#[test]
fn a_new_version_built_for_another_cpu_is_named_new_version_not_executable() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_upgrade(V2);
    k.pack(
        &format!("molt-core.{V2}.universal.universal.zip"),
        &[
            ("bin/molt", foreign_elf(), 0o755),
            ("lib/core.txt", V2.as_bytes().to_vec(), 0o644),
        ],
        PackOpts::default(),
    );
    let (_k, _cp, h) = env_on(k, &[], "run_precheck = false\n");
    let agent = start_agent(&h, &[]);
    wait_agent_log(&h, "Failed to bootstrap", T);
    wait_agent_log(&h, "Setting agent status to Up", T);
    drop(agent);

    // The specific cause hides the generic "runner never started".
    assert_diagnosed(
        &h,
        "new-version-not-executable",
        "the new version cannot be executed: cannot execute: Exec format error",
        &["runner-never-started", "deploy-unfinished"],
    );
}

#[test]
fn a_runner_that_dies_before_signalling_start_is_named_runner_never_started() {
    let (_k, _cp, h) = env(&[], "run_precheck = false\n");
    // The runner the agent starts is killed at its first step (test hook,
    // inherited from the agent's environment): it never writes runner.started.
    let agent = start_agent(&h, &[("MOLT_DEPLOY_CRASH_AT", "1")]);
    wait_agent_log(&h, "Failed to bootstrap", T);
    drop(agent);

    let v = assert_diagnosed(
        &h,
        "runner-never-started",
        "the runner exited before signalling start",
        &["new-version-not-executable"],
    );
    // The log line points at the runner's own output, and it is still there.
    let line = finding(&v, "runner-never-started")["evidence"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = line
        .split("see ")
        .nth(1)
        .and_then(|t| t.split(".log").next())
        .map(|p| format!("{p}.log"))
        .unwrap_or_else(|| panic!("no log named in {line}"));
    assert!(kept.contains("/logs/runner-"), "{line}");
    let kept = kept.as_str();
    let out = std::fs::read_to_string(kept).unwrap_or_else(|e| panic!("{kept}: {e}; {line}"));
    assert!(out.contains("deploy crash injected"), "{out}");
}
