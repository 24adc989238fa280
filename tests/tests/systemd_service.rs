//! The shipped Linux service, the way operators deploy it: a real systemd as
//! PID 1 (in a throwaway namespace, tests/systemd/boot.sh), `molt install
//! --service systemd --user molt`, a real `molt serve` on 127.0.0.1, packages on
//! a plain static site that is not the control plane (Python's http.server,
//! standing in for a CDN or mirror), the real `molt` binary as the agent in
//! every package, and upgrades moved by the control plane.
//!
//! These tests need root (CI runs as root); they fail, never skip, where
//! systemd cannot boot. They share one systemd at a time (a lock below).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use molt_e2e::agent_fx::*;
use molt_e2e::systemd::Systemd;

const UNIT: &str = "molt-agent.service";
const HOME: &str = "/opt/molt";
const T: Duration = Duration::from_secs(120);

/// One systemd namespace at a time (the notes' pitfall).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A stand-in bin/molt for a broken release: `--version` works (so the
/// hand-over's smoke run passes), anything else exits 1 at once.
const CRASHING_AGENT: &[u8] =
    b"#!/bin/sh\n# Stand-in for a broken release: starts, then crashes.\n[ \"$1\" = --version ] && { echo molt broken; exit 0; }\necho 'crashing at start' >&2\nexit 1\n";

/// A stand-in bin/molt for a release that starts but cannot reach its control
/// plane (as with a broken TLS setting): it says Up in its status file and
/// never reports to the control plane.
fn silent_agent(version: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\n# Stand-in for a release that cannot reach its control plane.\n\
         [ \"$1\" = --version ] && {{ echo molt silent; exit 0; }}\n\
         home={HOME}\n\
         printf '{{\"pid\":%d,\"version\":\"{version}\",\"status\":\"Up\",\"since\":\"%s\"}}' $$ \"$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)\" > $home/work/.st && mv $home/work/.st $home/work/agent.status.json\n\
         exec sleep 100000\n"
    )
    .into_bytes()
}

/// A stand-in bin/molt for a release that says Up, then crashes after 2 s.
fn flapping_agent(version: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\n# Stand-in for a release that crashes shortly after it starts.\n\
         [ \"$1\" = --version ] && {{ echo molt flapping; exit 0; }}\n\
         home={HOME}\n\
         printf '{{\"pid\":%d,\"version\":\"{version}\",\"status\":\"Up\",\"since\":\"%s\"}}' $$ \"$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)\" > $home/work/.st && mv $home/work/.st $home/work/agent.status.json\n\
         sleep 2\nexit 1\n"
    )
    .into_bytes()
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pki: Pki,
    packages: PathBuf,
    site: Proc,
    site_url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A core package of `version` whose bin/molt is `molt` (the real binary
/// unless a stand-in is given) and which ships the project's unit file.
fn core_package(e: &Env, version: &str, molt: &[u8], unit: &str) -> PathBuf {
    let name = format!("molt-core.{version}.universal.universal.zip");
    e.pki.pack_files(
        &e.root.join(format!("src-core-{version}")),
        &[
            ("bin/molt", molt, 0o755),
            ("lib/systemd/molt-agent.service", unit.as_bytes(), 0o644),
            ("lib/version.txt", version.as_bytes(), 0o644),
        ],
        &e.packages.join(name),
        Default::default(),
    )
}

/// The precheck bundle of `version` (the committed signed checks, re-signed),
/// and its upgrade package (the real runner; the control plane assigns none
/// without one).
fn precheck_package(e: &Env, version: &str) {
    let usrc = e.root.join(format!("src-upgrade-{version}"));
    std::fs::create_dir_all(usrc.join("bin")).unwrap();
    std::fs::copy(molt_bin(), usrc.join("bin/molt")).unwrap();
    e.pki.pack(
        &usrc,
        &format!("molt-upgrade.{version}.universal.universal.zip"),
        &e.packages,
        vec![],
    );
    let src = e.root.join(format!("src-precheck-{version}"));
    let c = committed_components("precheck", &src).expect("committed precheck bundle");
    e.pki.pack(
        &src,
        &format!("molt-precheck.{version}.universal.universal.zip"),
        &e.packages,
        c,
    );
}

fn shipped_unit() -> String {
    std::fs::read_to_string(repo_root().join("dist/systemd/molt-agent.service")).unwrap()
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let pki = Pki::new(&root.join("pki"));
    let packages = root.join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    let port = free_port();
    let site = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(&packages)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("site.log")).unwrap())
        .spawn()
        .expect("python3 (the static package site)");
    let site_url = format!("http://127.0.0.1:{port}");
    wait_until("the package site", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let e = Env {
        _tmp: tmp,
        root,
        pki,
        packages,
        site: Proc::new(site, "package site"),
        site_url,
    };
    let molt = std::fs::read(molt_bin()).unwrap();
    core_package(&e, V1, &molt, &shipped_unit());
    precheck_package(&e, V1);
    e
}

/// `molt serve` with packages on the static site.
fn serve(e: &Env) -> Server {
    serve_in(e, "cp")
}

/// [`serve`] with its database in `e.root/<dir>`.
fn serve_in(e: &Env, dir: &str) -> Server {
    start_server(
        &e.root.join(dir),
        &e.packages,
        V1,
        0,
        &[
            "--package-base-url",
            &e.site_url,
            "--agent-down-after",
            "30",
        ],
    )
}

/// Boot systemd and copy the packages and the trust root into it.
fn boot(e: &Env) -> Systemd {
    boot_with(e, "")
}

/// [`boot`] with more config.toml lines.
fn boot_with(e: &Env, extra: &str) -> Systemd {
    let sd = Systemd::boot();
    let dst = sd.path("/srv/molt-packages");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&e.packages).unwrap().flatten() {
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    std::fs::copy(&e.pki.root_path, dst.join("root.json")).unwrap();
    std::fs::write(
        dst.join("extra.toml"),
        format!("heartbeat_secs = 1\nhandover_wait_secs = 60\nstop_timeout_secs = 20\nhealth_timeout_secs = 20\n{extra}"),
    )
    .unwrap();
    sd
}

/// `molt install --service systemd --user molt` inside the namespace.
fn install(sd: &Systemd, srv: &Server, user: Option<&str>) -> String {
    let molt = molt_bin();
    let core = format!("/srv/molt-packages/molt-core.{V1}.universal.universal.zip");
    let mut argv: Vec<String> = vec![
        molt.to_string_lossy().into_owned(),
        "install".into(),
        "--home".into(),
        HOME.into(),
        "--package".into(),
        core,
        "--root".into(),
        "/srv/molt-packages/root.json".into(),
        "--control-plane".into(),
        srv.url.clone(),
        "--agent-name".into(),
        AGENT.into(),
        "--token".into(),
        TOKEN.into(),
        "--service".into(),
        "systemd".into(),
        "--config-extra".into(),
        "/srv/molt-packages/extra.toml".into(),
        "--json".into(),
    ];
    if let Some(u) = user {
        argv.push("--user".into());
        argv.push(u.into());
    }
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let r = sd.run(&refs);
    assert!(r.ok(), "molt install failed: {}\n{}", r.stdout, r.stderr);
    r.stdout
}

/// V1 and V2 packed (V2's `bin/molt` is `agent`, both with the shipped
/// unit), `molt serve`, a booted systemd and `molt install --user molt` in it;
/// its `--json` report.
fn installed_with_v2(agent: &[u8]) -> (Env, Server, Systemd, String) {
    let e = env();
    core_package(&e, V2, agent, &shipped_unit());
    precheck_package(&e, V2);
    let srv = serve(&e);
    let sd = boot(&e);
    let out = install(&sd, &srv, Some("molt"));
    (e, srv, sd, out)
}

fn wait_up_on(url: &str, version: &str, sd: &Systemd) {
    let start = Instant::now();
    loop {
        if let Some(a) = cp_agent(url)
            && a["status"] == "Up"
            && a["version"] == version
        {
            return;
        }
        if start.elapsed() > T {
            panic!(
                "agent not Up on {version} after {T:?}: {:?}\n--- journal ---\n{}\n--- agent.log ---\n{}",
                cp_agent(url),
                sd.journal(UNIT),
                std::fs::read_to_string(sd.path(&format!("{HOME}/logs/agent.log")))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// uid of the unit's main process, from /proc/<MainPID>/status.
fn main_uid(sd: &Systemd) -> u32 {
    let pid = sd.prop(UNIT, "MainPID");
    assert_ne!(pid, "0", "{UNIT} has no main process");
    let st = sd.run(&["cat", &format!("/proc/{pid}/status")]).stdout;
    st.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no Uid in /proc/{pid}/status: {st}"))
}

/// What the service manager and the logs say, for a failure message.
fn diag(sd: &Systemd) -> String {
    format!(
        "--- journal {UNIT} ---\n{}\n--- journal molt-agent-upgrade ---\n{}\n--- agent.log ---\n{}",
        sd.journal(UNIT),
        sd.journal("molt-agent-upgrade.service"),
        std::fs::read_to_string(sd.path(&format!("{HOME}/logs/agent.log"))).unwrap_or_default()
    )
}

fn current(sd: &Systemd) -> String {
    std::fs::read_link(sd.path(&format!("{HOME}/current")))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn latest_attempt(url: &str) -> Option<serde_json::Value> {
    attempts(url)
        .into_iter()
        .max_by_key(|a| a["id"].as_i64().unwrap_or(0))
}

fn set_fleet(url: &str, version: &str) {
    admin(
        url,
        reqwest::Method::PUT,
        "/api/v1/admin/fleet",
        Some(serde_json::json!({ "version": version })),
    );
}

/// Wait until the latest attempt ends; returns it.
fn wait_attempt_end(url: &str, sd: &Systemd) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(a) = latest_attempt(url)
            && a["result"].as_str().is_some_and(|r| !r.is_empty())
        {
            return a;
        }
        if start.elapsed() > T {
            panic!(
                "no upgrade attempt ended after {T:?}: {:#?}\n--- agent journal ---\n{}\n--- runner journal ---\n{}",
                latest_attempt(url),
                sd.journal(UNIT),
                sd.journal("molt-agent-upgrade.service")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_unprivileged_agent_under_the_shipped_unit_upgrades_through_the_control_plane() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (e, srv, sd, out) = installed_with_v2(&std::fs::read(molt_bin()).unwrap());
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["service"], format!("systemd:{UNIT}"), "{out}");
    assert_eq!(report["user"], "molt");

    wait_up_on(&srv.url, V1, &sd);
    assert_eq!(sd.is_active(UNIT), "active");
    assert_ne!(main_uid(&sd), 0, "the agent must not run as root");
    assert_eq!(sd.is_active("molt-agent-upgrade.path"), "active");

    // The control plane moves the fleet; watch for Down at the hand-over.
    set_fleet(&srv.url, V2);
    let mut runner_seen: Option<Instant> = None;
    let mut down_seen: Option<Instant> = None;
    let start = Instant::now();
    loop {
        if runner_seen.is_none()
            && latest_attempt(&srv.url)
                .is_some_and(|a| stage_state(&a, "Deploy Binary Files").is_some())
        {
            runner_seen = Some(Instant::now());
        }
        if down_seen.is_none() && cp_agent(&srv.url).is_some_and(|a| a["status"] == "Down") {
            down_seen = Some(Instant::now());
        }
        if let Some(a) = cp_agent(&srv.url)
            && a["status"] == "Up"
            && a["version"] == V2
        {
            break;
        }
        assert!(
            start.elapsed() < T,
            "not Up on {V2}: {:?} {:#?}\n--- agent ---\n{}\n--- runner ---\n{}",
            cp_agent(&srv.url),
            latest_attempt(&srv.url),
            sd.journal(UNIT),
            sd.journal("molt-agent-upgrade.service")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = wait_attempt_end(&srv.url, &sd);
    assert_eq!(a["result"], "Complete", "{a:#}\n{}", diag(&sd));
    assert_eq!(a["to_version"], V2);
    assert_eq!(current(&sd), format!("versions/{V2}"));
    assert_eq!(sd.is_active(UNIT), "active");
    assert_ne!(main_uid(&sd), 0);
    // Down was shown at the hand-over, within 5 s of the runner's first stage.
    let (r, d) = (runner_seen.expect("runner stage seen"), down_seen);
    let d = d.expect("the control plane never showed the agent Down during the upgrade");
    assert!(
        d <= r + Duration::from_secs(5),
        "Down shown {:?} after the runner started",
        d.saturating_duration_since(r)
    );
    // The unit file did not change, and no stage failed.
    assert_stage(&a, "Reinstall Service", "Skipped");
    // The upgrade dir (runner copy, logs) is cleaned by the new agent.
    let temp = sd.path(&format!("{HOME}/work/upgrade_temp"));
    wait_until("work/upgrade_temp empty", Duration::from_secs(60), || {
        std::fs::read_dir(&temp).is_ok_and(|mut d| d.next().is_none())
    });
    // Every file of the install still belongs to the account (the runner
    // worked as it; only systemctl ran as root).
    let r = sd.sh(&format!("find {HOME} ! -user molt | head -5"));
    assert!(
        r.stdout.trim().is_empty(),
        "files not owned by molt: {}",
        r.stdout
    );
    // One clean upgrade leaves nothing for `molt diagnose` to report.
    let d = sd.run(&[
        &molt_bin().to_string_lossy(),
        "diagnose",
        "--home",
        HOME,
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&d.stdout)
        .unwrap_or_else(|e| panic!("diagnose --json: {e}: {}{}", d.stdout, d.stderr));
    assert_eq!(
        report["findings"].as_array().map(Vec::len),
        Some(0),
        "{report:#}"
    );
    drop(srv);
    drop(e.site);
}

#[test]
fn a_new_version_that_crashes_at_start_is_rolled_back_with_the_unit_active_even_if_the_runner_is_killed_mid_rollback()
 {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_e, srv, sd, _) = installed_with_v2(CRASHING_AGENT);
    wait_up_on(&srv.url, V1, &sd);
    // The last journal step of the SIGKILL sweep: the runner dies as it
    // starts the rollback; systemd restarts it and it finishes the rollback.
    let dropin = sd.path("/etc/systemd/system/molt-agent-upgrade.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    let once = "/tmp/molt-killed-rolling-back";
    std::fs::write(
        dropin.join("kill.conf"),
        format!(
            "[Service]\nEnvironment=\"MOLT_DEPLOY_KILL_AT=journal RollingBack\" MOLT_DEPLOY_KILL_ONCE={once}\n"
        ),
    )
    .unwrap();
    assert!(sd.run(&["systemctl", "daemon-reload"]).ok());
    set_fleet(&srv.url, V2);
    let a = wait_attempt_end(&srv.url, &sd);
    assert!(
        sd.path(once).exists(),
        "the runner was not killed at RollingBack\n{}",
        diag(&sd)
    );
    assert_eq!(a["result"], "Rolled Back", "{a:#}\n{}", diag(&sd));
    assert_eq!(current(&sd), format!("versions/{V1}"));
    wait_up_on(&srv.url, V1, &sd);
    assert_eq!(sd.is_active(UNIT), "active");
    assert_ne!(main_uid(&sd), 0);
    assert!(
        !sd.path(&format!("{HOME}/versions/{V2}")).exists(),
        "the failed version dir is removed"
    );
    // The old version does not try the bad one again at its restart: it is
    // held after rollback (one attempt in all), and says so.
    wait_until("held after rollback", T, || {
        std::fs::read_to_string(sd.path(&format!("{HOME}/logs/agent.log")))
            .is_ok_and(|l| l.contains("held after rollback"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let to_v2 = attempts(&srv.url)
        .iter()
        .filter(|a| a["to_version"] == V2)
        .count();
    assert_eq!(to_v2, 1, "{:#?}\n{}", attempts(&srv.url), diag(&sd));
    assert_eq!(sd.is_active(UNIT), "active");
}

#[test]
fn a_second_unit_on_the_same_home_blocks_the_precheck_but_the_agents_own_unit_does_not() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_e, srv, sd, _) = installed_with_v2(&std::fs::read(molt_bin()).unwrap());
    wait_up_on(&srv.url, V1, &sd);
    // Another unit (not started) that would run a second agent on this home.
    std::fs::write(
        sd.path("/etc/systemd/system/second-agent.service"),
        format!("[Service]\nExecStart={HOME}/current/bin/molt agent --home {HOME}\n"),
    )
    .unwrap();
    set_fleet(&srv.url, V2);
    let start = Instant::now();
    let blocked = loop {
        let issues = admin_get(&srv.url, "/api/v1/admin/issues");
        let text = issues.to_string();
        if text.contains("install.shared") {
            break text;
        }
        assert!(
            start.elapsed() < T,
            "no install.shared issue: {text}\n{}",
            sd.journal(UNIT)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(blocked.contains("second-agent.service"), "{blocked}");
    assert!(
        !blocked.contains(&format!("\"{UNIT}")) && !blocked.contains(&format!(" {UNIT}")),
        "the agent's own unit counted as another service: {blocked}"
    );
    assert!(!blocked.contains("account.unprivileged"), "{blocked}");
    assert_eq!(current(&sd), format!("versions/{V1}"));
    assert_eq!(sd.is_active(UNIT), "active");
}

#[test]
fn a_new_version_that_cannot_reach_its_control_plane_while_the_runner_can_is_rolled_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_e, srv, sd, _) = installed_with_v2(&silent_agent(V2));
    wait_up_on(&srv.url, V1, &sd);
    set_fleet(&srv.url, V2);
    let a = wait_attempt_end(&srv.url, &sd);
    assert_eq!(a["result"], "Rolled Back", "{a:#}\n{}", diag(&sd));
    assert!(
        a["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not report Up to its control plane")),
        "{a:#}"
    );
    assert_eq!(current(&sd), format!("versions/{V1}"));
    wait_up_on(&srv.url, V1, &sd);
    assert_eq!(sd.is_active(UNIT), "active");
}

#[test]
fn a_new_version_that_exits_three_times_in_the_grace_period_is_rolled_back_when_nobody_reaches_the_control_plane()
 {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    core_package(&e, V2, &flapping_agent(V2), &shipped_unit());
    precheck_package(&e, V2);
    let mut srv = serve(&e);
    let sd = boot_with(&e, "health_grace_secs = 60\n");
    install(&sd, &srv, Some("molt"));
    wait_up_on(&srv.url, V1, &sd);
    set_fleet(&srv.url, V2);
    // The control plane goes away once the runner has started: neither the new
    // version nor the runner can reach it.
    wait_until("the runner's first stage", T, || {
        latest_attempt(&srv.url).is_some_and(|a| stage_state(&a, "Deploy Binary Files").is_some())
    });
    srv.proc.kill();
    let last = sd.path(&format!("{HOME}/work/last-deploy.json"));
    wait_until("the deploy to end", Duration::from_secs(180), || {
        last.is_file()
    });
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&last).unwrap()).unwrap();
    assert_eq!(l["result"], "Rolled Back", "{l:#}\n{}", diag(&sd));
    assert!(
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("crash loop")),
        "{l:#}"
    );
    assert_eq!(current(&sd), format!("versions/{V1}"));
    wait_until("the unit active on v1", T, || {
        sd.is_active(UNIT) == "active"
    });
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sd.path(&format!("{HOME}/work/agent.status.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(st["version"], V1, "{st}");
}

/// quebec patch `n` (patch2 is V2).
fn patch(n: u32) -> String {
    format!("quebec-12-09-2020__patch{n}-04-18-2021_05-01-2021_1130")
}

#[test]
fn the_runner_killed_at_each_journal_step_ends_on_the_old_or_the_new_version_up() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    let molt = std::fs::read(molt_bin()).unwrap();
    let steps = [
        "Held",
        "Building",
        "Built",
        "Stopping",
        "Stopped",
        "Switching",
        "Switched",
        "Starting",
        "HealthCheck",
    ];
    for (i, _) in steps.iter().enumerate() {
        let v = patch(i as u32 + 2);
        core_package(&e, &v, &molt, &shipped_unit());
        precheck_package(&e, &v);
    }
    let srv = serve(&e);
    let sd = boot(&e);
    install(&sd, &srv, Some("molt"));
    wait_up_on(&srv.url, V1, &sd);
    let dropin = sd.path("/etc/systemd/system/molt-agent-upgrade.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    let mut old = V1.to_string();
    for (i, step) in steps.iter().enumerate() {
        let new = patch(i as u32 + 2);
        let once = format!("/tmp/molt-killed-{i}");
        std::fs::write(
            dropin.join("kill.conf"),
            format!(
                "[Service]\nEnvironment=\"MOLT_DEPLOY_KILL_AT=journal {step}\" MOLT_DEPLOY_KILL_ONCE={once}\n"
            ),
        )
        .unwrap();
        assert!(sd.run(&["systemctl", "daemon-reload"]).ok());
        let before = attempts(&srv.url).len();
        set_fleet(&srv.url, &new);
        // The kill happens, then the deploy ends (the runner restarted by
        // systemd finishes or undoes it) on exactly one of the two versions.
        wait_until(&format!("the kill at {step}"), T, || {
            sd.path(&once).exists()
        });
        let start = Instant::now();
        let landed = loop {
            let cur = current(&sd);
            let ended = !sd.path(&format!("{HOME}/work/deploy.journal")).exists();
            let up = cp_agent(&srv.url).is_some_and(|a| {
                a["status"] == "Up"
                    && format!("versions/{}", a["version"].as_str().unwrap_or("")) == cur
            });
            if ended && up && sd.is_active(UNIT) == "active" {
                break cur;
            }
            assert!(
                start.elapsed() < Duration::from_secs(150),
                "killed at {step}: not settled (current {cur}, agent {:?}, unit {})\n{}",
                cp_agent(&srv.url),
                sd.is_active(UNIT),
                diag(&sd)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            landed == format!("versions/{old}") || landed == format!("versions/{new}"),
            "killed at {step}: current is {landed}"
        );
        assert!(attempts(&srv.url).len() > before, "no attempt for {new}");
        assert_ne!(main_uid(&sd), 0);
        eprintln!("killed at {step}: ended on {landed}");
        if landed == format!("versions/{new}") {
            old = new;
        }
    }
}

/// The shipped unit with one more setting: a changed service definition.
fn changed_unit() -> String {
    shipped_unit().replace(
        "RestartSec=5",
        "RestartSec=5\nEnvironment=MOLT_UNIT_REVISION=2",
    )
}

#[test]
fn a_changed_unit_file_is_reinstalled_by_a_root_agent_and_reported_by_an_unprivileged_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    let molt = std::fs::read(molt_bin()).unwrap();
    core_package(&e, V2, &molt, &changed_unit());
    precheck_package(&e, V2);
    for (i, user) in [None, Some("molt")].into_iter().enumerate() {
        let srv = serve_in(&e, &format!("cp-{i}"));
        let sd = boot(&e);
        install(&sd, &srv, user);
        wait_up_on(&srv.url, V1, &sd);
        if user.is_none() {
            assert_eq!(main_uid(&sd), 0, "installed without --user: root");
        }
        set_fleet(&srv.url, V2);
        let a = wait_attempt_end(&srv.url, &sd);
        assert_eq!(a["result"], "Complete", "{a:#}\n{}", diag(&sd));
        wait_up_on(&srv.url, V2, &sd);
        let installed =
            std::fs::read_to_string(sd.path(&format!("/etc/systemd/system/{UNIT}"))).unwrap();
        let issues = admin_get(&srv.url, "/api/v1/admin/issues").to_string();
        match user {
            None => {
                assert_stage(&a, "Reinstall Service", "Complete");
                assert!(installed.contains("MOLT_UNIT_REVISION=2"), "{installed}");
                assert_eq!(sd.prop(UNIT, "Environment"), "MOLT_UNIT_REVISION=2");
            }
            Some(_) => {
                assert_stage(&a, "Reinstall Service", "Skipped");
                assert!(!installed.contains("MOLT_UNIT_REVISION"), "{installed}");
                assert!(issues.contains("reinstall-service-needed"), "{issues}");
            }
        }
        assert_eq!(sd.is_active(UNIT), "active");
    }
}

#[test]
fn molt_install_refuses_bad_input_leaving_nothing_and_uninstall_removes_everything() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let e = env();
    let srv = serve(&e);
    let sd = boot(&e);
    let molt = molt_bin().to_string_lossy().into_owned();
    let core = format!("/srv/molt-packages/molt-core.{V1}.universal.universal.zip");
    let install_cmd = |home: &str, package: &str| -> Vec<String> {
        [
            molt.as_str(),
            "install",
            "--home",
            home,
            "--package",
            package,
            "--root",
            "/srv/molt-packages/root.json",
            "--control-plane",
            &srv.url,
            "--agent-name",
            AGENT,
            "--token",
            TOKEN,
            "--service",
            "systemd",
            "--user",
            "molt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |argv: &[String]| {
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        sd.run(&refs)
    };
    let nothing_left = |home: &str| {
        assert!(!sd.path(home).exists(), "{home} was left behind");
        assert!(
            !sd.path(&format!("/etc/systemd/system/{UNIT}")).exists(),
            "a unit file was left behind"
        );
        let r = sd.sh("ls -a /opt | grep installing || true");
        assert!(r.stdout.trim().is_empty(), "staging left: {}", r.stdout);
    };

    // A CA bundle that holds no certificate: refused before anything is written.
    let mut argv = install_cmd(HOME, &core);
    argv.extend([
        "--ca-bundle".to_string(),
        "/srv/molt-packages/root.json".to_string(),
    ]);
    let r = run(&argv);
    assert!(!r.ok(), "installed with a CA bundle holding no certificate");
    assert!(r.stderr.contains("BEGIN CERTIFICATE"), "{}", r.stderr);
    nothing_left(HOME);

    // A tampered package: refused, nothing written.
    let tampered = sd.path("/srv/molt-packages/tampered.zip");
    let mut bytes = std::fs::read(sd.path(&core)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();
    let r = run(&install_cmd(HOME, "/srv/molt-packages/tampered.zip"));
    assert!(!r.ok(), "a tampered package was installed: {}", r.stdout);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    nothing_left(HOME);

    // No privilege: a clear error, nothing written.
    let mut argv = vec![
        "runuser".to_string(),
        "-u".into(),
        "nobody".into(),
        "--".into(),
    ];
    argv.extend(install_cmd(HOME, &core));
    let r = run(&argv);
    assert!(!r.ok());
    assert!(r.stderr.contains("needs root"), "{}", r.stderr);
    nothing_left(HOME);

    // A good install; a second one with the same unit name is refused.
    let r = run(&install_cmd(HOME, &core));
    assert!(r.ok(), "{}{}", r.stdout, r.stderr);
    wait_up_on(&srv.url, V1, &sd);
    let r = run(&install_cmd("/opt/molt-second", &core));
    assert!(!r.ok());
    assert!(
        r.stderr.contains(&format!("the unit name {UNIT} is taken")),
        "{}",
        r.stderr
    );
    assert!(!sd.path("/opt/molt-second").exists());
    assert_eq!(
        sd.is_active(UNIT),
        "active",
        "the first install was touched"
    );

    // Uninstall removes the units, the runner copy and the home.
    let r = sd.run(&[
        &molt,
        "uninstall",
        "--home",
        HOME,
        "--service",
        "systemd",
        "--json",
    ]);
    assert!(r.ok(), "{}{}", r.stdout, r.stderr);
    nothing_left(HOME);
    for u in ["molt-agent-upgrade.path", "molt-agent-upgrade.service"] {
        assert!(
            !sd.path(&format!("/etc/systemd/system/{u}")).exists(),
            "{u}"
        );
    }
    assert!(!sd.path("/usr/local/libexec/molt/molt-agent").exists());
    assert_ne!(sd.is_active(UNIT), "active");
}
