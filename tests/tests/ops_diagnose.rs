//! `molt diagnose` on failures produced for real: files deleted, the control
//! plane stopped, a wrong token against a real `molt serve`, two services on
//! one install, a runner killed mid-deploy, a corrupted signature. Each test
//! runs the real `molt` binary and asserts the cause it names.
mod ops_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ops_common::*;

#[test]
fn deleted_bin_files_are_named_and_the_supervisor_failing_to_start_the_agent_too() {
    let k = Kit::new();
    let h = k.install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let (code, ids, _) = diagnose_ids(&h, &[]);
    assert_eq!(
        (code, ids.clone()),
        (0, vec![]),
        "a healthy install matches nothing: {ids:?}"
    );

    std::fs::remove_dir_all(h.current_link().join("bin")).unwrap();
    // The service tries to start the agent and cannot.
    let home = h.root().to_string_lossy().into_owned();
    let log = h.logs_dir().join("supervisor.log");
    let mut sup = spawn_logged(&["run", "--home", &home], &log);
    wait_for(
        "the supervisor to fail starting the agent",
        Duration::from_secs(20),
        || file_contains(&log, "cannot start the agent"),
    );
    sigterm(sup.0.id());
    let _ = sup.0.wait();

    let (code, text) = diagnose(&h, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("[error] install-incomplete: The installed version is incomplete or damaged"),
        "{text}"
    );
    assert!(text.contains("bin/molt"), "names the missing file: {text}");
    assert!(
        text.contains("molt repair --package"),
        "names the remedy: {text}"
    );
    assert!(text.contains("[error] agent-cannot-start"), "{text}");
    assert!(
        text.contains("logs/supervisor.log:"),
        "shows the evidence line: {text}"
    );
}

#[test]
fn a_stopped_control_plane_is_named_while_status_shows_local_state() {
    let k = Kit::new();
    let h = k.install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let home = h.root().to_string_lossy().into_owned();
    let agent = spawn_logged(
        &["agent", "--home", &home],
        &h.logs_dir().join("agent.console.log"),
    );
    wait_for(
        "the agent to report Up and fail its heartbeat",
        Duration::from_secs(30),
        || {
            file_contains(&h.agent_log(), "control plane unreachable at")
                && h.read_status()
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.status == "Up")
        },
    );
    let o = molt(&["status", "--home", &home, "--timeout", "1"]);
    let st = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{st}");
    assert!(st.contains("Status:     Up (pid"), "{st}");
    assert!(st.contains(&format!("Installed:  {V1}")), "{st}");
    assert!(
        st.contains("control plane unreachable: showing local state"),
        "{st}"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&molt(&["status", "--home", &home, "--offline", "--json"]).stdout)
            .unwrap();
    assert_eq!(j["current_version"], V1);
    assert_eq!(j["installed"].as_array().unwrap().len(), 2);
    drop(agent);

    let (code, ids, v) = diagnose_ids(&h, &[]);
    assert_eq!(code, 1);
    assert!(
        ids.contains(&"control-plane-unreachable".to_string()),
        "{ids:?}"
    );
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "control-plane-unreachable")
        .unwrap();
    assert!(
        f["cause"]
            .as_str()
            .unwrap()
            .contains("could not reach the control plane")
    );
    assert!(
        f["evidence"][0]["text"]
            .as_str()
            .unwrap()
            .contains("control plane unreachable at")
    );
}

#[test]
fn a_wrong_agent_token_against_a_real_control_plane_is_named_auth_failed() {
    let k = Kit::new();
    let pk = k.dir.path().join("cp-packages");
    std::fs::create_dir_all(&pk).unwrap();
    let mut serve = Command::new(molt_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            "admin-token-0123456789",
            "--bootstrap-agent",
            "a1:the-right-token-0123456789",
        ])
        .arg("--db")
        .arg(k.dir.path().join("cp.db"))
        .arg("--packages")
        .arg(&pk)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = serve.stdout.take().unwrap();
    let _serve = Proc(serve);
    let url = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("control plane listening on ")
                .map(str::to_string)
        })
        .expect("serve prints its url");
    let h = k.install(&k.dir.path().join("agent"), V1, &url);
    write_config(&h, &url, "a-wrong-token-0123456789");
    let home = h.root().to_string_lossy().into_owned();
    let agent = spawn_logged(
        &["agent", "--home", &home],
        &h.logs_dir().join("agent.console.log"),
    );
    wait_for(
        "the control plane to refuse the agent",
        Duration::from_secs(30),
        || file_contains(&h.agent_log(), "HTTP 401"),
    );
    drop(agent);
    let (code, text) = diagnose(&h, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "[error] auth-failed: The agent is unable to authenticate to the control plane"
        ),
        "{text}"
    );
    assert!(
        text.contains("Verify the agent token in config.toml"),
        "{text}"
    );
}

#[test]
fn two_services_on_one_install_are_named_duplicate_service() {
    let k = Kit::new();
    let h = k.install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let home = h.root().to_string_lossy().into_owned();
    let log = h.logs_dir().join("supervisor.log");
    let first = spawn_logged(&["run", "--home", &home], &log);
    wait_for(
        "the first service's agent to be Up",
        Duration::from_secs(30),
        || {
            h.read_status()
                .ok()
                .flatten()
                .is_some_and(|s| s.status == "Up")
        },
    );
    let mut second = spawn_logged(&["run", "--home", &home], &log);
    let st = second.0.wait().unwrap();
    assert!(
        !st.success(),
        "a second service on one install must be refused"
    );
    let first_pid = first.0.id();
    sigterm(first_pid);
    wait_for("the first service to stop", Duration::from_secs(30), || {
        !alive(first_pid)
    });
    drop(first);

    let (code, text) = diagnose(&h, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("[error] duplicate-service: Two services run on one install folder"),
        "{text}"
    );
    assert!(
        text.contains("Keep exactly one service for this install"),
        "{text}"
    );
}

#[test]
fn a_runner_killed_mid_deploy_is_named_deploy_unfinished() {
    let k = Kit::new();
    let h = k.install(&k.dir.path().join("agent"), V1, &closed_port_url());
    // A real hand-over directory: the new core extracted, and its plan.
    let up = h.upgrade_temp_dir().join("1234567890123-0");
    let metas = k.extract(&[k.core(V2, 2)], &up.join("packages").join("core"));
    let plan = serde_json::json!({
        "from_version": V1,
        "to_version": V2,
        "packages": metas,
        "changed_files": ["lib/core.txt"],
        "options": {"stop_timeout_secs": 5, "health_timeout_secs": 5, "report_timeout_secs": 1},
    });
    std::fs::write(
        up.join("plan.json"),
        serde_json::to_vec_pretty(&plan).unwrap(),
    )
    .unwrap();
    let home = h.root().to_string_lossy().into_owned();
    // Kill the runner (abort) at its third journal checkpoint: the build has started.
    let o = Command::new(molt_bin())
        .args(["deploy", "--home", &home, "--plan"])
        .arg(up.join("plan.json"))
        .env("MOLT_DEPLOY_CRASH_AT", "3")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the runner must have died: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(h.journal_file().is_file());

    let (code, text) = diagnose(&h, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "[error] deploy-unfinished: A deploy is unfinished and no runner is working on it"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("deploy {V1} -> {V2} stopped at step Building")),
        "{text}"
    );
    assert!(
        text.contains("molt deploy --home <home> --resume"),
        "{text}"
    );
    // The current version itself is intact: this is not an incomplete install.
    assert!(!text.contains("install-incomplete"), "{text}");
}

#[test]
fn a_corrupted_signature_is_named_signature_failed() {
    let k = Kit::new();
    let h = k.install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let pkg = k.runtime(V2, 2);
    let mut bytes = std::fs::read(&pkg).unwrap();
    // Flip one hex digit inside the signature value of molt/signatures.json.
    let at = bytes
        .windows(7)
        .position(|w| w == b"\"sig\":\"")
        .expect("signature slot")
        + 7;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let bad = k.dir.path().join(pkg.file_name().unwrap());
    std::fs::write(&bad, &bytes).unwrap();
    let home = h.root().to_string_lossy().into_owned();
    // The offline import refuses it; its output is the log handed to diagnose.
    let o = molt(&["import", "--home", &home, bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        std::fs::read_dir(h.incoming_dir())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "nothing placed"
    );
    let log = k.dir.path().join("import.log");
    std::fs::write(&log, &o.stderr).unwrap();

    let (code, text) = diagnose(&h, &["--log", log.to_str().unwrap()]);
    assert_eq!(
        code,
        1,
        "{text}\nimport said:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("[error] signature-failed: A package failed signature verification"),
        "{text}"
    );
    assert!(
        text.contains("bad signature"),
        "the evidence line says why: {text}"
    );
}
