//! `molt diagnose` on deploy failures produced for real: an install of v1 run
//! by the real supervisor (`molt run`, real `molt agent`), and the real runner
//! (`molt deploy --plan`, as the hand-over starts it, with short timeouts in
//! its plan) deploying v2 into a folder that refuses new files, past a hung
//! agent, to a version that crashes, with a broken config.toml, killed half-way,
//! back and forth, or with custom truststore certificates.
//!
//! `reinstall-service-needed` has no test here: the runner reports it only for
//! a systemd service whose unit changed while the runner is not root, and this
//! host has neither systemd as PID 1 nor a non-root runner (the supervisor
//! service never needs a reinstall). It is not faked.
mod ops_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use ops_common::*;

const UP: Duration = Duration::from_secs(30);
const V0: &str = "vancouver-06-01-2023__patch1-06-01-2023_06-02-2023_0800";

/// v1 installed (light core + runtime), the supervisor running and v1 Up.
fn running_v1() -> (Kit, molt_layout::Home, Service) {
    let k = Kit::new();
    let h = k.light_install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let svc = Service::start(&h);
    svc.wait_up(V1, UP);
    (k, h, svc)
}

/// A hand-over of a light core of V2 staged on `h` (stop and health check
/// timeouts in seconds).
fn plan_v2(k: &Kit, h: &molt_layout::Home, stop: u64, health: u64) -> std::path::PathBuf {
    k.stage_plan(
        h,
        V1,
        V2,
        &[k.light_core(V2, PackOpts::default(), &[])],
        stop,
        health,
    )
}

#[test]
fn a_versions_folder_that_refuses_new_files_is_named_file_not_writable() {
    let (k, h, _svc) = running_v1();
    let plan = plan_v2(&k, &h, 5, 10);
    let _guard = match Immutable::set(&h.versions_dir()) {
        Ok(g) => g,
        Err(why) => {
            println!(
                "SKIPPED a_versions_folder_that_refuses_new_files_is_named_file_not_writable: {why}"
            );
            return;
        }
    };
    let code = run_deploy(&h, &plan, &[]);
    assert_eq!(code, 2, "Rolled Back expected:\n{}", runner_log(&plan));

    assert_diagnosed(
        &h,
        "file-not-writable",
        "Operation not permitted (os error 1)",
        &["disk-full", "install-incomplete", "rollback-failed"],
    );
    assert_diagnosed(
        &h,
        "deploy-failed-before-switch",
        &format!(
            "deploy failed before the switch: Deploy Binary Files failed: {}",
            h.versions_dir().display()
        ),
        &[],
    );
}

#[test]
fn an_old_version_held_open_by_a_process_is_named_version_dir_in_use() {
    let k = Kit::new();
    let h = k.light_install(&k.dir.path().join("agent"), V1, &closed_port_url());
    // v0 is what ran before v1; a log tailer still has one of its files open.
    k.place_version(
        &h,
        V0,
        &[k.light_core(V0, PackOpts::default(), &[]), k.runtime(V0, 1)],
    );
    let tail = Proc(
        Command::new("tail")
            .arg("-f")
            .arg(h.version_dir(V0).join("lib/core.txt"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let svc = Service::start(&h);
    svc.wait_up(V1, UP);
    let plan = plan_v2(&k, &h, 5, 15);
    let code = run_deploy(&h, &plan, &[]);
    assert_eq!(code, 0, "{}", runner_log(&plan));
    assert!(
        h.version_dir(V0).is_dir(),
        "a folder in use is never deleted"
    );

    let v = assert_diagnosed(
        &h,
        "version-dir-in-use",
        "pruning deferred",
        &["deploy-failed-before-switch", "file-not-writable"],
    );
    let details = finding(&v, "version-dir-in-use")["details"].to_string();
    assert!(
        details.contains(&format!("versions/{V0} is in use by pid {}", tail.0.id()))
            && details.contains("tail"),
        "the probe names the process: {details}"
    );
    drop(tail);
}

#[test]
fn a_hung_old_agent_is_named_service_did_not_stop() {
    let (k, h, svc) = running_v1();
    let pid = svc.wait_up(V1, UP);
    // The old agent hangs (stopped, as a process stuck in a shutdown hook is):
    // it cannot act on SIGTERM.
    signal(pid, "STOP");
    let plan = plan_v2(&k, &h, 1, 15);
    let code = run_deploy(&h, &plan, &[]);
    assert_eq!(code, 0, "killed, then upgraded:\n{}", runner_log(&plan));
    svc.wait_up(V2, UP);

    let v = assert_diagnosed(
        &h,
        "service-did-not-stop",
        "graceful stop timed out; killing the old agent",
        &["deploy-failed-before-switch", "health-check-failed"],
    );
    assert_eq!(finding(&v, "service-did-not-stop")["severity"], "warning");
}

/// A core package whose `bin/molt` answers `--version` (so the hand-over's
/// smoke run passes) but exits 1 when started as the agent: a new version that
/// crashes at start.
fn crashing_core(k: &Kit, v: &str) -> std::path::PathBuf {
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then exec '{}' --version; fi\necho \"molt {v}: crashing at start (test payload)\" >&2\nexit 1\n",
        molt_bin().display()
    );
    k.pack(
        &format!("molt-core.{v}.universal.universal.zip"),
        &[
            ("bin/molt", script.into_bytes(), 0o755),
            ("lib/core.txt", v.as_bytes().to_vec(), 0o644),
        ],
        PackOpts::default(),
    )
}

#[test]
fn a_new_version_that_crashes_at_start_is_named_health_check_failed() {
    let (k, h, svc) = running_v1();
    let plan = k.stage_plan(&h, V1, V2, &[crashing_core(&k, V2)], 5, 3);
    let code = run_deploy(&h, &plan, &[]);
    assert_eq!(code, 2, "Rolled Back expected:\n{}", runner_log(&plan));
    svc.wait_up(V1, UP);

    assert_diagnosed(
        &h,
        "health-check-failed",
        &format!("Health Check of version {V2} failed: not Up within 3 s"),
        // The old version came back Up.
        &["rollback-failed", "install-incomplete"],
    );
}

#[test]
fn a_config_broken_while_the_agent_ran_is_named_rollback_failed_and_config_invalid() {
    let (k, h, _svc) = running_v1();
    // Someone edits config.toml while v1 runs: the running agent read it at
    // start, so nothing shows until the next start, which is the upgrade's.
    let mut cfg = std::fs::read_to_string(h.config_file()).unwrap();
    cfg = cfg.replace("heartbeat_secs = 1", "heartbeat_secs = 0");
    std::fs::write(h.config_file(), cfg).unwrap();
    let plan = plan_v2(&k, &h, 5, 3);
    let code = run_deploy(&h, &plan, &[]);
    assert_eq!(code, 3, "Failed expected:\n{}", runner_log(&plan));

    assert_diagnosed(
        &h,
        "rollback-failed",
        &format!("rollback to {V1} failed too"),
        &["deploy-unfinished"],
    );
    assert_diagnosed(
        &h,
        "config-invalid",
        "invalid value for `heartbeat_secs`: must be at least 1",
        &[],
    );
    assert_diagnosed(
        &h,
        "health-check-failed",
        &format!("Health Check of version {V2} failed"),
        &[],
    );
}

#[test]
fn a_runner_killed_mid_deploy_and_resumed_by_the_supervisor_is_named_deploy_interrupted() {
    let (k, h, svc) = running_v1();
    let plan = plan_v2(&k, &h, 5, 10);
    // The runner dies at its third checkpoint (the build has started).
    let code = run_deploy(&h, &plan, &[("MOLT_DEPLOY_CRASH_AT", "3")]);
    assert_ne!(code, 0);
    // The supervisor notices the orphaned journal and a resume runner undoes it.
    wait_for("the resume runner to finish", UP, || {
        h.work_dir().join("last-deploy.json").is_file() && !h.journal_file().exists()
    });
    svc.wait_up(V1, UP);

    let v = assert_diagnosed(
        &h,
        "deploy-interrupted",
        "the upgrade runner was interrupted at step Building",
        // Finished by the resume runner: nothing is left unfinished.
        &["deploy-unfinished", "install-incomplete"],
    );
    // Also matched: the supervisor's and the resume runner's own lines.
    let f = finding(&v, "deploy-interrupted");
    assert!(f["matches"].as_u64().unwrap() >= 4, "{f:#}");
    let resume = std::fs::read_to_string(h.logs_dir().join("deploy-resume.log")).unwrap();
    assert!(
        resume.contains(&format!(
            "resuming an interrupted deploy {V1} -> {V2} at step Building"
        )),
        "{resume}"
    );
    assert_diagnosed(
        &h,
        "deploy-failed-before-switch",
        "the upgrade runner was interrupted at step Building",
        &[],
    );
}

#[test]
fn upgrades_and_downgrades_back_and_forth_are_named_version_flapping() {
    let (k, h, svc) = running_v1();
    let core1 = k.light_core(V1, PackOpts::default(), &[]);
    let core2 = k.light_core(V2, PackOpts::default(), &[]);
    // What an agent does when the control plane keeps changing its answer.
    for (from, to, core) in [(V1, V2, &core2), (V2, V1, &core1), (V1, V2, &core2)] {
        let plan = k.stage_plan(&h, from, to, std::slice::from_ref(core), 5, 15);
        let code = run_deploy(&h, &plan, &[]);
        assert_eq!(code, 0, "{from} -> {to}:\n{}", runner_log(&plan));
        svc.wait_up(to, UP);
    }

    assert_diagnosed(
        &h,
        "version-flapping",
        &format!("{V1} -> {V2} -> {V1} -> {V2}"),
        &["health-check-failed", "deploy-failed-before-switch"],
    );
}

/// A runtime package of `v` whose truststore and stock copy hold `stock`
/// (the stock copy left out when `with_stock_copy` is false: older packaging).
fn runtime_with(k: &Kit, v: &str, stock: &str, with_stock_copy: bool) -> std::path::PathBuf {
    let mut files = vec![
        (TRUSTSTORE, stock.as_bytes().to_vec(), 0o644),
        ("runtime/bin/rt", b"#!/bin/sh\n".to_vec(), 0o755),
    ];
    if with_stock_copy {
        files.push((STOCK, stock.as_bytes().to_vec(), 0o644));
    }
    k.pack(
        &format!("molt-runtime.{v}.{}.{}.zip", host_os(), host_arch()),
        &files,
        PackOpts::default(),
    )
}

/// A second stock CA that the next runtime ships.
const NEW_STOCK_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nTkVXIFNUT0NLIENB\n-----END CERTIFICATE-----\n";

/// v1 (light core + `rt1`) with the operator's corporate CA added to its
/// truststore, run by the supervisor; then deployed to v2 with a runtime whose
/// stock CAs changed.
fn deploy_runtime_upgrade(with_old_stock_copy: bool) -> (Kit, molt_layout::Home, Service) {
    let k = Kit::new();
    let rt1 = runtime_with(&k, V1, STOCK_CERT, with_old_stock_copy);
    let h = k.install_packages(
        &k.dir.path().join("agent"),
        V1,
        &closed_port_url(),
        &[k.light_core(V1, PackOpts::default(), &[]), rt1],
    );
    // The operator adds the corporate CA (write and rename, as the guide says).
    molt_layout::write_atomic(
        &h.version_dir(V1).join(TRUSTSTORE),
        format!("{STOCK_CERT}{CUSTOM_CERT}").as_bytes(),
    )
    .unwrap();
    let svc = Service::start(&h);
    svc.wait_up(V1, UP);
    let rt2 = runtime_with(&k, V2, &format!("{STOCK_CERT}{NEW_STOCK_CERT}"), true);
    let plan = k.stage_plan(
        &h,
        V1,
        V2,
        &[k.light_core(V2, PackOpts::default(), &[]), rt2],
        5,
        15,
    );
    let code = run_deploy(&h, &plan, &[]);
    assert_eq!(code, 0, "{}", runner_log(&plan));
    svc.wait_up(V2, UP);
    (k, h, svc)
}

#[test]
fn a_runtime_without_a_stock_truststore_copy_is_named_truststore_not_migrated() {
    let (_k, h, _svc) = deploy_runtime_upgrade(false);
    let store = std::fs::read_to_string(h.current_link().join(TRUSTSTORE)).unwrap();
    assert!(!store.contains("Q1VTVE9NIElOVEVSTkFMIENB"), "{store}");

    assert_diagnosed(
        &h,
        "truststore-not-migrated",
        "MigrateTrustStore: no stock copy in the old runtime",
        // No backup was made, so nothing can be shown as lost from one.
        &["truststore-certs-lost", "install-incomplete"],
    );
}

#[test]
fn custom_certificates_overwritten_after_an_upgrade_are_named_truststore_certs_lost() {
    let (_k, h, _svc) = deploy_runtime_upgrade(true);
    let cur = h.current_link();
    let store = std::fs::read_to_string(cur.join(TRUSTSTORE)).unwrap();
    assert!(
        store.contains("Q1VTVE9NIElOVEVSTkFMIENB"),
        "carried: {store}"
    );
    // A runtime reinstall outside Molt puts the stock truststore back (7.7).
    let stock = std::fs::read(cur.join(STOCK)).unwrap();
    molt_layout::write_atomic(&cur.join(TRUSTSTORE), &stock).unwrap();

    assert_diagnosed(
        &h,
        "truststore-certs-lost",
        &format!("backup/truststore/{V1}.cacerts.pem holds 1 certificate(s) missing"),
        &["truststore-not-migrated", "install-incomplete"],
    );
}
