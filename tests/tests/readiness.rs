//! Fleet readiness end to end: a real `molt serve`, a real `molt agent` and
//! real signed precheck bundles. The agent runs the precheck bundle of the
//! version the readiness command names, not the one it is assigned.

use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_e2e::agent_fx::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

/// The precheck bundle of `version` from the committed checks, with
/// `disk_space` demanding more free space than any disk has: its check blocks
/// on every host, while the committed parameters pass.
fn blocking_precheck(pki: &Pki, work: &Path, packages: &Path, version: &str) {
    let src = work.join(format!("src-precheck-blocking-{version}"));
    let mut comps = committed_components("precheck", &src)
        .expect("the committed precheck bundle (signed-bundles/) is needed");
    let disk = comps
        .iter_mut()
        .find(|c| c.path.contains("disk_space"))
        .expect("the committed precheck bundle has disk_space");
    disk.params
        .insert("min_free".into(), "1000000000GiB".into());
    let name = format!("molt-precheck.{version}.universal.universal.zip");
    let _ = std::fs::remove_file(packages.join(&name));
    pki.pack(&src, &name, packages, comps);
}

/// V1 installed at `home`; the packages of V1 and V2 in `packages`.
struct Setup {
    tmp: tempfile::TempDir,
    pki: Pki,
    packages: PathBuf,
    work: PathBuf,
    home: PathBuf,
    v1: PackageSet,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = Pki::new(&root.join("pki"));
    let packages = root.join("packages");
    let work = root.join("work");
    let v1 = package_set(&pki, &work, &packages, V1, false);
    package_set(&pki, &work, &packages, V2, false);
    let home = root.join("home");
    fresh_install(&home, &pki, &v1.core, V1);
    Setup {
        pki,
        packages,
        work,
        home,
        v1,
        tmp,
    }
}

impl Setup {
    /// Serve with the fleet on `fleet`, configure the agent (`extra` lines)
    /// and start it.
    fn run(&self, fleet: &str, extra: &str) -> (Server, Proc) {
        let srv = start_server(&self.tmp.path().join("cp"), &self.packages, fleet, 0, &[]);
        write_config(&self.home, &srv.url, extra);
        (srv, start_agent(&self.home))
    }
}

/// Ask agent [`AGENT`] to upgrade to `version`.
fn command_upgrade(url: &str, version: &str) {
    admin(
        url,
        reqwest::Method::POST,
        &format!("/api/v1/admin/agents/{AGENT}/commands"),
        Some(json!({ "kind": "upgrade", "args": { "version": version } })),
    );
}

fn readiness(url: &str, version: &str) -> Vec<Value> {
    admin_get(url, &format!("/api/v1/admin/readiness?version={version}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Run readiness for `version` and wait until the agent has answered.
fn run_readiness(url: &str, version: &str) -> Value {
    admin(
        url,
        reqwest::Method::POST,
        "/api/v1/admin/readiness",
        Some(json!({ "version": version })),
    );
    let mut last = Value::Null;
    wait_until(&format!("readiness for {version}"), T, || {
        last = readiness(url, version)
            .into_iter()
            .find(|r| r["agent"] == AGENT)
            .unwrap_or(Value::Null);
        matches!(last["readiness"].as_str(), Some("Ready" | "Not Ready"))
    });
    last
}

fn dashboard(url: &str, version: &str) -> String {
    let (status, text) = http_call(
        url,
        reqwest::Method::GET,
        &format!("/dashboard?readiness={version}"),
        ADMIN,
        None,
    );
    assert!((200..300).contains(&status), "dashboard: HTTP {status}");
    text
}

#[test]
fn readiness_for_a_next_version_whose_check_blocks_is_not_ready_while_the_current_passes() {
    let s = setup();
    let home = &s.home;
    assert!(s.v1.precheck.is_some(), "no committed precheck bundle");
    // The next version V2: its own precheck bundle, whose disk check blocks.
    blocking_precheck(&s.pki, &s.work, &s.packages, V2);
    // The fleet (and the agent) on V1.
    let (srv, _agent) = s.run(V1, "");
    wait_log(home, "Agent is up to date with the assigned version", T);
    wait_until("agent Up on V1", T, || {
        agent_status(&srv.url).as_deref() == Some("Up")
    });

    // The current version's checks pass.
    let r = run_readiness(&srv.url, V1);
    assert_eq!(r["readiness"], "Ready", "{r}");
    assert!(r["message"].as_str().unwrap().contains(V1), "{r}");

    // The next version's check blocks: Not Ready, with the finding.
    let r = run_readiness(&srv.url, V2);
    assert_eq!(r["readiness"], "Not Ready", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains(V2)
            && msg.contains("disk.insufficient")
            && msg.contains("Not enough free disk space"),
        "{r}"
    );
    // V1's answer stays what it was.
    let r1 = readiness(&srv.url, V1);
    assert_eq!(r1[0]["readiness"], "Ready", "{r1:?}");

    // The dashboard shows it the same way.
    let html = dashboard(&srv.url, V2);
    assert!(
        html.contains(&format!("Fleet readiness for {V2}")),
        "{html}"
    );
    assert!(html.contains("s-NotReady"), "{html}");
    assert!(html.contains("disk.insufficient"), "{html}");
    assert!(html.contains("0 of 1 agents ready"), "{html}");
    let html = dashboard(&srv.url, V1);
    assert!(html.contains("s-Ready\">Ready"), "{html}");

    // The agent fetched and ran V2's precheck bundle for it (and V1's for V1),
    // and did not upgrade: still Up on V1, no attempt recorded.
    let log = std::fs::read_to_string(home.join("logs/agent.log")).unwrap();
    let pc = |v: &str| format!("molt-precheck.{v}.universal.universal.zip");
    for v in [V1, V2] {
        assert!(
            log.contains(&format!(
                "Performing pre-upgrade validation tests (readiness check, no upgrade): {} for {v}",
                pc(v)
            )),
            "{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("Package was successfully downloaded") && l.contains(&pc(v))),
            "{} not downloaded:\n{log}",
            pc(v)
        );
    }
    assert!(attempts(&srv.url).is_empty());
    assert_eq!(agent_status(&srv.url).as_deref(), Some("Up"));
    assert_eq!(
        std::fs::read_link(home.join("current")).unwrap(),
        Path::new("versions").join(V1)
    );
}

#[test]
fn upgrade_with_a_version_against_the_pin_is_refused_and_nothing_happens() {
    let s = setup();
    let home = &s.home;
    let (srv, _agent) = s.run(
        V1,
        &format!("pinned_version = \"{V1}\"\ntest_skip_handover = true\n"),
    );
    wait_log(home, "Agent is up to date with the assigned version", T);
    command_upgrade(&srv.url, V2);
    let mut cmd = Value::Null;
    wait_until("the upgrade command answered", T, || {
        cmd = admin_get(&srv.url, &format!("/api/v1/admin/commands?agent={AGENT}"))
            .as_array()
            .and_then(|a| a.iter().find(|c| c["kind"] == "upgrade").cloned())
            .unwrap_or(Value::Null);
        matches!(cmd["state"].as_str(), Some("Done" | "Failed"))
    });
    assert_eq!(cmd["state"], "Failed", "{cmd}");
    let msg = cmd["message"].as_str().unwrap();
    assert!(msg.contains("pinned to") && msg.contains(V2), "{cmd}");
    assert!(attempts(&srv.url).is_empty());
}

#[test]
fn upgrade_with_a_version_goes_to_that_version_not_the_fleets() {
    let s = setup();
    let home = &s.home;
    // The fleet stays on V1; the operator asks this agent for V2.
    let (srv, _agent) = s.run(V1, "test_skip_handover = true\n");
    wait_log(home, "Agent is up to date with the assigned version", T);
    command_upgrade(&srv.url, V2);
    wait_log(home, "hand-over to deploy skipped", T);
    let a = attempts(&srv.url);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0]["from_version"].as_str(), a[0]["to_version"].as_str()),
        (Some(V1), Some(V2))
    );
}
