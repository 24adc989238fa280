//! `molt install --service supervisor` (hosts without systemd), the way an
//! operator runs it: a real `molt serve`, real signed packages, the real
//! `molt install` starting the real supervisor (`molt run`), an upgrade
//! through the control plane, then `molt uninstall`. The systemd variant is in
//! `systemd_service.rs`.
mod ops_common;

use std::time::Duration;

use ops_common::*;

const T: Duration = Duration::from_secs(90);

fn agent_record(url: &str) -> Option<serde_json::Value> {
    let v = admin(url, "GET", "/api/v1/admin/agents", serde_json::Value::Null);
    let list = v.as_array().or(v["agents"].as_array()).cloned()?;
    list.into_iter().find(|a| a["name"] == "a1")
}

fn up_on(url: &str, version: &str) -> bool {
    agent_record(url).is_some_and(|a| a["status"] == "Up" && a["version"] == version)
}

#[test]
fn molt_install_with_the_supervisor_upgrades_through_the_control_plane_and_uninstalls() {
    let k = Kit::new();
    let core1 = k.light_release(V1);
    k.light_release(V2);
    // The next version's pre-upgrade checks (the committed signed components).
    k.side_bundle("precheck", V2, |_, _| {});
    let cp = serve(
        &k.dir.path().join("cp"),
        &k.packages_dir(),
        &["--fleet-version", V1],
    );
    let root = k.dir.path().join("root.json");
    std::fs::write(&root, k.root.to_json_pretty().unwrap()).unwrap();
    let extra = k.dir.path().join("extra.toml");
    std::fs::write(&extra, "heartbeat_secs = 2\nhealth_timeout_secs = 60\n").unwrap();
    let home = k.dir.path().join("opt-molt");
    let home_s = home.display().to_string();

    let o = molt(&[
        "install",
        "--home",
        &home_s,
        "--package",
        &core1.display().to_string(),
        "--root",
        &root.display().to_string(),
        "--control-plane",
        &cp.url,
        "--agent-name",
        "a1",
        "--token",
        AGENT_TOKEN,
        "--service",
        "supervisor",
        "--config-extra",
        &extra.display().to_string(),
        "--json",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["version"], V1, "{report:#}");
    assert_eq!(report["service"], "supervisor", "{report:#}");
    assert_eq!(report["started"], true, "{report:#}");

    let h = molt_layout::Home::new(&home);
    // Whatever happens below, nothing of this install outlives the test.
    struct Cleanup(molt_layout::Home);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            kill_all_of(&self.0);
        }
    }
    let _cleanup = Cleanup(h.clone());

    wait_for(
        "the installed agent Up on v1 at the control plane",
        T,
        || up_on(&cp.url, V1),
    );
    admin(
        &cp.url,
        "PUT",
        "/api/v1/admin/fleet",
        serde_json::json!({ "version": V2 }),
    );
    let start = std::time::Instant::now();
    while !up_on(&cp.url, V2) {
        assert!(
            start.elapsed() < T,
            "not Up on v2 at the control plane: {:?}\n--- agent.log ---\n{}\n--- supervisor.log ---\n{}",
            agent_record(&cp.url),
            std::fs::read_to_string(h.agent_log()).unwrap_or_default(),
            std::fs::read_to_string(h.logs_dir().join("supervisor.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_link(h.current_link()).unwrap(),
        std::path::PathBuf::from(format!("versions/{V2}"))
    );
    let status = h.read_status().unwrap().unwrap();
    assert_eq!(
        (status.status.as_str(), status.version.as_str()),
        ("Up", V2)
    );
    assert!(alive(status.pid), "the v2 agent is not running");
    wait_for("the hand-over dir cleaned", T, || {
        std::fs::read_dir(h.upgrade_temp_dir()).is_ok_and(|mut d| d.next().is_none())
    });

    let o = molt(&[
        "uninstall",
        "--home",
        &home_s,
        "--service",
        "supervisor",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!home.exists(), "the home is left after uninstall");
    wait_for("the agent and supervisor gone", T, || !alive(status.pid));
}
