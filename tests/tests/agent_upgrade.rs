//! The agent end to end: a real `molt serve`, real signed packages, a real
//! install and a real `molt agent` process, up to the hand-over to deploy.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use molt_e2e::agent_fx::*;

const T: Duration = Duration::from_secs(90);

struct Env {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    home: std::path::PathBuf,
    pki: Pki,
    packages: std::path::PathBuf,
}

/// v1 installed, packages of v1 and `target` served.
fn env(target: &str, tamper: bool) -> Env {
    env_with(target, tamper, false)
}

/// As `env`, with the target version's selector bundle served when `selector`.
fn env_with(target: &str, tamper: bool, selector: bool) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let pki = Pki::new(&root.join("pki"));
    let packages = root.join("packages");
    let v1 = package_set(&pki, &root.join("work"), &packages, V1, false);
    let t = package_set(&pki, &root.join("work"), &packages, target, selector);
    if tamper {
        // Flip one byte inside the payload: the control plane's digest is of the
        // tampered file, so only the signature check can catch it.
        let mut bytes = std::fs::read(&t.core).unwrap();
        // lib/big.bin is stored incompressible noise: the middle of the file is payload.
        let i = bytes.len() / 2;
        bytes[i] ^= 0xff;
        std::fs::write(&t.core, bytes).unwrap();
    }
    let home = root.join("home");
    fresh_install(&home, &pki, &v1.core, V1);
    Env {
        _tmp: tmp,
        root,
        home,
        pki,
        packages,
    }
}

impl Env {
    /// Serve `fleet` (database in `root/cp`), write the agent's config with
    /// `extra` lines and start the agent.
    fn run(&self, fleet: &str, extra: &str) -> (Server, Proc) {
        let srv = start_server(&self.root.join("cp"), &self.packages, fleet, 0, &[]);
        write_config(&self.home, &srv.url, extra);
        (srv, start_agent(&self.home))
    }
}

fn low_disk(home: &Path) -> String {
    let f = home.join("facts.toml");
    std::fs::write(
        &f,
        "install_free_bytes = 1048576\ntemp_free_bytes = 1048576\n",
    )
    .unwrap();
    format!("facts_override = \"{}\"\n", f.display())
}

fn latest(url: &str) -> serde_json::Value {
    attempts(url)
        .into_iter()
        .max_by_key(|a| a["id"].as_i64().unwrap_or(0))
        .expect("no upgrade attempt recorded")
}

#[test]
fn a_clean_run_downloads_verifies_extracts_and_prepares_the_hand_over() {
    let e = env_with(V2, false, true);
    let (srv, _agent) = e.run(V2, "test_skip_handover = true\n");
    let log = wait_log(&e.home, "hand-over to deploy skipped", T);
    for line in [
        "Checking to see if agent needs to upgrade",
        "Current packages:",
        &format!("Installed: [molt-core.{V1}.universal.universal.zip]"),
        &format!(
            "Missing: [molt-upgrade.{V2}.universal.universal.zip, molt-core.{V2}.universal.universal.zip]"
        ),
        "Setting agent status to Upgrading",
        "Performing pre-upgrade validation tests",
        "Pre-upgrade validation tests successful. Continuing with upgrade process",
        "Package was successfully downloaded",
        "Upgrading agent",
        "Extracting: ",
    ] {
        assert!(log.contains(line), "missing `{line}` in:\n{log}");
    }
    // Every stage reported when it started and when it ended.
    // The installed version is not "upgraded" again: exactly one attempt.
    assert_eq!(attempts(&srv.url).len(), 1);
    let a = latest(&srv.url);
    assert_eq!(a["from_version"], V1);
    assert_eq!(a["to_version"], V2);
    for s in [
        "Pre Upgrade Check",
        "Download Upgrade Packages",
        "Extract Upgrade Packages",
    ] {
        assert_stage(&a, s, "Complete");
    }
    // The packages are in package/incoming and the plan names only the changed file.
    for n in [
        format!("molt-core.{V2}.universal.universal.zip"),
        format!("molt-upgrade.{V2}.universal.universal.zip"),
    ] {
        assert!(
            e.home.join("package/incoming").join(&n).is_file(),
            "{n} not downloaded"
        );
    }
    let dirs: Vec<_> = std::fs::read_dir(e.home.join("work/upgrade_temp"))
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .filter(|p| p.join("plan.json").is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let name = dirs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.len() == 15 && name.ends_with("-0"), "{name}");
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("plan.json")).unwrap()).unwrap();
    assert_eq!(
        plan["changed_files"],
        serde_json::json!(["lib/version.txt"])
    );
    assert_eq!(plan["to_version"], V2);
    assert!(plan["attempt_id"].is_string(), "{plan}");
    let staged = dirs[0].join("packages/core/lib/version.txt");
    assert_eq!(std::fs::read_to_string(staged).unwrap().trim(), V2);
    // Precheck temp files are gone.
    assert!(
        !std::fs::read_dir(e.home.join("work/upgrade_temp"))
            .unwrap()
            .flatten()
            .any(|d| d.file_name().to_string_lossy().ends_with("-precheck"))
    );
    assert_eq!(agent_status(&srv.url).as_deref(), Some("Upgrading"));
}

#[test]
fn a_blocking_precheck_on_a_patch_stops_the_upgrade_with_an_issue_and_status_up() {
    let e = env(V2, false);
    let extra = low_disk(&e.home);
    let (srv, _agent) = e.run(V2, &format!("test_skip_handover = true\n{extra}"));
    let log = wait_log(
        &e.home,
        "Aborting agent upgrade due to pre-upgrade check failure",
        T,
    );
    wait_log(&e.home, "Setting agent status to Up", T);
    assert!(
        !log.contains("Package was successfully downloaded package=molt-core"),
        "{log}"
    );
    let a = latest(&srv.url);
    assert_stage(&a, "Pre Upgrade Check", "Failed");
    assert_eq!(stage_state(&a, "Download Upgrade Packages"), None);
    wait_until("status Up on the control plane", T, || {
        agent_status(&srv.url).as_deref() == Some("Up")
    });
    let issues = admin_get(&srv.url, "/api/v1/admin/issues");
    let issues = issues
        .as_array()
        .cloned()
        .or_else(|| issues["issues"].as_array().cloned())
        .unwrap_or_default();
    assert!(
        issues
            .iter()
            .any(|i| i["source"] == "UpgradeCheck" && i["severity"] == "blocking"),
        "no blocking UpgradeCheck issue: {issues:#?}"
    );
    assert!(
        std::fs::read_dir(e.home.join("package/incoming"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn a_release_family_change_with_a_blocking_finding_ends_upgrade_failed() {
    let e = env(V_ROME, false);
    let extra = low_disk(&e.home);
    let (srv, _agent) = e.run(V_ROME, &format!("test_skip_handover = true\n{extra}"));
    wait_log(&e.home, "Setting agent status to Upgrade Failed", T);
    wait_until("status Upgrade Failed", T, || {
        agent_status(&srv.url).as_deref() == Some("Upgrade Failed")
    });
    let a = latest(&srv.url);
    assert_stage(&a, "Pre Upgrade Check", "Failed");
}

#[test]
fn run_precheck_false_marks_the_stage_skipped() {
    let e = env(V2, false);
    let (srv, _agent) = e.run(V2, "test_skip_handover = true\nrun_precheck = false\n");
    wait_log(&e.home, "hand-over to deploy skipped", T);
    let a = latest(&srv.url);
    assert_stage(&a, "Pre Upgrade Check", "Skipped");
    assert_stage(&a, "Extract Upgrade Packages", "Complete");
}

#[test]
fn a_tampered_package_is_refused_and_deleted() {
    let e = env(V2, true);
    let (srv, _agent) = e.run(V2, "test_skip_handover = true\nrun_precheck = false\n");
    let log = wait_log(&e.home, "refused and deleted", T);
    assert!(log.contains(&format!("molt-core.{V2}")), "{log}");
    wait_log(&e.home, "Setting agent status to Up", T);
    assert!(
        !e.home
            .join(format!(
                "package/incoming/molt-core.{V2}.universal.universal.zip"
            ))
            .exists()
    );
    // The stage report reaches the control plane through the report queue,
    // possibly after the status line: wait for it (bounded).
    wait_until("Download Upgrade Packages: Failed", T, || {
        stage_state(&latest(&srv.url), "Download Upgrade Packages").as_deref() == Some("Failed")
    });
    let a = latest(&srv.url);
    assert_eq!(stage_state(&a, "Extract Upgrade Packages"), None);
}

/// A TCP proxy that cuts the first response carrying a core package after `cut` bytes.
fn cutting_proxy(upstream: String, cut: usize) -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let up = TcpStream::connect(&upstream).unwrap();
            let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            let armed = Arc::new(AtomicBool::new(false));
            let a2 = armed.clone();
            let d3 = d2.clone();
            // client -> server: arm the cut when a core package is requested.
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut c = c;
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let s = String::from_utf8_lossy(&buf[..n]);
                    if s.contains("GET /packages/molt-core.")
                        && !s.contains("Range:")
                        && !s.contains("range:")
                        && !d3.load(Ordering::SeqCst)
                    {
                        a2.store(true, Ordering::SeqCst);
                    }
                    if up2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let d4 = d2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut sent = 0usize;
                let mut up = up;
                while let Ok(n) = up.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if armed.load(Ordering::SeqCst) && !d4.load(Ordering::SeqCst) {
                        if sent + n >= cut {
                            let _ = c2.write_all(&buf[..cut - sent]);
                            d4.store(true, Ordering::SeqCst);
                            let _ = c2.shutdown(std::net::Shutdown::Both);
                            let _ = up.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        sent += n;
                    }
                    if c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, done)
}

#[test]
fn a_download_cut_mid_transfer_resumes_with_range_and_verifies() {
    let e = env(V2, false);
    let srv = start_server(&e.root.join("cp"), &e.packages, V2, 0, &[]);
    let upstream = srv
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (proxy, cut_done) = cutting_proxy(upstream, 100_000);
    write_config(
        &e.home,
        &proxy,
        "test_skip_handover = true\nrun_precheck = false\n",
    );
    let _agent = start_agent(&e.home);
    let log = wait_log(&e.home, "hand-over to deploy skipped", T);
    assert!(
        cut_done.load(Ordering::SeqCst),
        "the proxy never cut a transfer"
    );
    assert!(log.contains("Download interrupted; retrying"), "{log}");
    assert!(log.contains("Resuming download"), "{log}");
    assert!(log.contains("resumed=true"), "{log}");
    let a = latest(&srv.url);
    assert_stage(&a, "Download Upgrade Packages", "Complete");
}

#[test]
fn reports_are_queued_while_the_control_plane_is_down_and_delivered_in_order() {
    let e = env(V2, false);
    let cp = e.root.join("cp");
    let srv = start_server(&cp, &e.packages, V2, 0, &[]);
    let port: u16 = srv
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    write_config(
        &e.home,
        &srv.url,
        "test_skip_handover = true\nrun_precheck = false\ntest_hooks = true\n",
    );
    std::fs::create_dir_all(e.home.join("work")).unwrap();
    let hold = e.home.join("work/hold.extract-upgrade-packages");
    std::fs::write(&hold, b"").unwrap();
    let _agent = start_agent(&e.home);
    wait_log(&e.home, "Holding before stage", T);
    let mut srv = srv;
    srv.proc.kill();
    std::fs::remove_file(&hold).unwrap();
    wait_log(&e.home, "hand-over to deploy skipped", T);
    let log = wait_log(&e.home, "queued report for later delivery", T);
    assert!(log.contains("Control plane unreachable"), "{log}");
    assert!(e.home.join("work/report-queue.jsonl").is_file());
    // Back on the same port with the same database: the queue drains in order.
    let srv2 = start_server(&cp, &e.packages, V2, port, &[]);
    wait_until("the report queue to drain", T, || {
        !e.home.join("work/report-queue.jsonl").exists()
    });
    wait_log(&e.home, "Delivered queued reports to the control plane", T);
    let a = latest(&srv2.url);
    assert_stage(&a, "Extract Upgrade Packages", "Complete");
}

#[test]
fn a_409_from_the_upgrade_slot_is_retried_until_a_slot_is_granted() {
    let e = env(V2, false);
    let srv = start_server(
        &e.root.join("cp"),
        &e.packages,
        V2,
        0,
        &[
            "--max-concurrent-upgrades",
            "1",
            "--bootstrap-agent",
            "agent2:agent2-token-for-tests",
        ],
    );
    // agent2 holds the only slot.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let slot = |method: reqwest::Method| {
        rt.block_on(async {
            let r = reqwest::Client::new()
                .request(method, format!("{}/api/v1/agent/upgrade-slot", srv.url))
                .bearer_auth("agent2-token-for-tests")
                .json(&serde_json::json!({"to_version": V2}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        })
    };
    slot(reqwest::Method::POST);
    write_config(
        &e.home,
        &srv.url,
        "test_skip_handover = true\nrun_precheck = false\ntest_slot_retry_secs = 1\n",
    );
    let _agent = start_agent(&e.home);
    let log = wait_log(&e.home, "409 Conflict", T);
    assert!(log.contains("Retrying in 1 s"), "{log}");
    assert!(!log.contains("Setting agent status to Upgrading"), "{log}");
    slot(reqwest::Method::DELETE);
    wait_log(&e.home, "hand-over to deploy skipped", T);
    let _ = &e.pki;
}

#[test]
fn an_invalid_config_stops_the_agent_at_start_naming_the_key() {
    let e = env(V2, false);
    std::fs::write(e.home.join("config.toml"), "control_plane_url = \"http://127.0.0.1:1\"\nagent_name = \"a\"\ntoken = \"t\"\nrun_prechek = false\n").unwrap();
    let mut agent = start_agent(&e.home);
    let st = agent.wait_exit(T).expect("agent did not stop");
    assert!(!st.success());
    let err = std::fs::read_to_string(e.home.join("agent.stderr")).unwrap();
    assert!(err.contains("run_prechek"), "{err}");
}
