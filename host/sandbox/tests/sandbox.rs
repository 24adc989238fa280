//! Real components from signed-bundles/ (or $MOLT_SIGNED_BUNDLES, where CI
//! rebuilds them) run in the real sandbox.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use molt_bundle::{Component, Manifest, SignedRoot, VerifyOptions};
use molt_sandbox::testing::{assert_findings, component, fresh_dir, manifest, run_check, sandbox};
use molt_sandbox::*;

const DL: &str = "https://downloads.example.com/packages/";

fn bundles() -> PathBuf {
    std::env::var_os("MOLT_SIGNED_BUNDLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../signed-bundles"))
}

fn bundle_file(kind: &str) -> PathBuf {
    let d = bundles();
    std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(&format!("molt-{kind}.")) && n.ends_with(".zip")
        })
        .unwrap_or_else(|| panic!("no molt-{kind} bundle in {}", d.display()))
}

/// Verify against the TEST-ONLY root and extract; returns (dir, manifest).
fn open_bundle(kind: &str) -> (PathBuf, Manifest) {
    let root = SignedRoot::load(&bundles().join("root.json")).unwrap();
    let path = bundle_file(kind);
    let v = molt_bundle::verify_bundle(&path, &root, &VerifyOptions::default()).unwrap();
    let dest = fresh_dir("bundle").unwrap().join("x");
    molt_bundle::extract(&v, &path, &dest, &molt_bundle::Limits::default()).unwrap();
    (dest, v.manifest)
}

fn hostile() -> PathBuf {
    bundles().join("test-guests/hostile.wasm")
}

fn healthy() -> HostFacts {
    let mut f = HostFacts::healthy();
    f.net
        .insert(DL.into(), probe(true, None, Some(200), "HTTP 200"));
    f
}

/// A probe's outcome: `ok`, the stage that failed, the HTTP status, the detail.
fn probe(
    ok: bool,
    failed_stage: Option<&str>,
    http_status: Option<u16>,
    detail: &str,
) -> ProbeOutcome {
    ProbeOutcome {
        ok,
        failed_stage: failed_stage.map(str::to_string),
        http_status,
        detail: detail.into(),
    }
}

/// The (severity, code) findings of `check` in a [`run_suite`] answer.
fn codes_of<'a>(
    r: &'a BTreeMap<String, Vec<(Severity, String)>>,
    check: &str,
) -> Vec<(Severity, &'a str)> {
    r[check].iter().map(|(s, c)| (*s, c.as_str())).collect()
}

/// `m` with only the components whose path contains `part`.
fn only_components(m: Manifest, part: &str) -> Manifest {
    Manifest {
        components: m
            .components
            .into_iter()
            .filter(|c| c.path.contains(part))
            .collect(),
        ..m
    }
}

fn ctx(home: &Path, facts: HostFacts) -> CheckContext {
    CheckContext {
        install_dir: home.to_path_buf(),
        scratch_parent: home.to_path_buf(),
        facts: FactsSource::Given(facts),
        net_allow: vec![DL.into()],
        ca_bundle: None,
        params: BTreeMap::new(),
    }
}

fn run_suite(facts: HostFacts) -> BTreeMap<String, Vec<(Severity, String)>> {
    let (dir, m) = open_bundle("precheck");
    let home = fresh_dir("home").unwrap();
    let sb = sandbox(Policy::default()).unwrap();
    let reports = sb.run_precheck(&dir, &m, &ctx(&home, facts)).unwrap();
    reports
        .into_iter()
        .map(|r| {
            (
                r.check.clone(),
                r.findings
                    .iter()
                    .map(|f| (f.severity, f.code.clone()))
                    .collect(),
            )
        })
        .collect()
}

fn hostile_with(
    params: &[(&str, &str)],
    edit: impl FnOnce(&mut Component),
    policy: Policy,
) -> CheckReport {
    let mut c = component("hostile.wasm", params);
    edit(&mut c);
    let sb = sandbox(policy).unwrap();
    let home = fresh_dir("home").unwrap();
    let m = manifest(vec![c]);
    let mut r = sb
        .run_precheck(hostile().parent().unwrap(), &m, &ctx(&home, healthy()))
        .unwrap();
    r.pop().unwrap()
}

fn only(r: &CheckReport, code: &str) -> Finding {
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    let f = r.findings[0].clone();
    assert_eq!(f.code, code, "{f:#?}");
    assert_eq!(f.severity, Severity::Blocking);
    f
}

#[test]
fn standard_suite_passes_on_a_healthy_host() {
    let r = run_suite(healthy());
    assert_eq!(r.len(), 7, "{r:#?}");
    for (check, findings) in &r {
        assert!(findings.is_empty(), "{check}: {findings:?}");
    }
}

#[test]
fn standard_checks_block_and_warn_on_simulated_facts() {
    use Severity::*;
    let mut f = healthy();
    f.facts.install_free_bytes = 100 << 20; // blocking
    f.facts.temp_free_bytes = (1 << 30) + 1; // warning (below 2 GiB)
    f.facts.service_account = "uid=998(molt)".into();
    f.facts.privileged = false;
    f.facts.is_64bit = false;
    f.sharing_install_dir = vec!["molt-agent.service".into(), "other-agent.service".into()];
    f.service_state = ServiceState::Running;
    f.file_holders = vec![
        FileHolder {
            pid: f.facts.agent_pid,
            name: "molt".into(),
            path: "/x/lib/a.jar".into(),
        },
        FileHolder {
            pid: 4242,
            name: "java".into(),
            path: "/x/lib/b.jar".into(),
        },
        FileHolder {
            pid: 4243,
            name: "clamscan".into(),
            path: "/x/lib/c.jar".into(),
        },
    ];
    f.net.insert(
        DL.into(),
        probe(false, Some("tls"), None, "bad certificate"),
    );
    let r = run_suite(f);
    let codes = |c: &str| codes_of(&r, c);
    assert_eq!(
        codes("disk-space"),
        vec![(Blocking, "disk.insufficient"), (Warning, "disk.low")]
    );
    assert_eq!(
        codes("download-access"),
        vec![(Blocking, "download.unreachable")]
    );
    assert_eq!(
        codes("service-account"),
        vec![(Blocking, "account.unprivileged")]
    );
    assert_eq!(codes("runtime-compat"), vec![(Warning, "runtime.skipped")]);
    assert_eq!(
        codes("duplicate-install"),
        vec![(Blocking, "install.shared")]
    );
    assert_eq!(
        codes("file-locks"),
        vec![
            (Blocking, "files.locked"),
            (Warning, "files.transient-lock")
        ]
    );

    let mut f = healthy();
    f.facts.service_account = "???".into();
    f.service_state = ServiceState::NotInstalled;
    f.file_holders = vec![FileHolder {
        pid: 9,
        name: "updatedb".into(),
        path: "/x/a".into(),
    }];
    f.facts.libc_version = Some("2.12".into());
    f.net
        .insert(DL.into(), probe(false, Some("http"), Some(503), "HTTP 503"));
    let r = run_suite(f);
    let codes = |c: &str| codes_of(&r, c);
    assert_eq!(
        codes("service-account"),
        vec![(Warning, "account.unparsable")]
    );
    assert_eq!(
        codes("duplicate-install"),
        vec![(Warning, "service.not-installed")]
    );
    assert_eq!(codes("file-locks"), vec![(Warning, "files.transient-lock")]);
    assert_eq!(codes("runtime-compat"), vec![(Warning, "runtime.skipped")]);
    assert_eq!(
        codes("download-access"),
        vec![(Warning, "download.http-status")]
    );
}

#[test]
fn runtime_compat_blocks_when_the_runtime_is_required() {
    let (dir, m) = open_bundle("precheck");
    let home = fresh_dir("home").unwrap();
    let mut f = healthy();
    f.facts.libc_version = Some("2.12".into());
    let mut c = ctx(&home, f);
    c.params.insert("runtime_required".into(), "true".into());
    let sb = sandbox(Policy::default()).unwrap();
    let r = sb.run_precheck(&dir, &m, &c).unwrap();
    let rc = r.iter().find(|r| r.check == "runtime-compat").unwrap();
    assert_findings(rc, &[(Severity::Blocking, "runtime.incompatible")]);
    // Without a runtime upgrade there is nothing to check.
    c.params.insert("runtime_upgrade".into(), "false".into());
    let r = sb.run_precheck(&dir, &m, &c).unwrap();
    assert!(
        r.iter()
            .find(|r| r.check == "runtime-compat")
            .unwrap()
            .findings
            .is_empty()
    );
}

#[test]
fn download_access_real_probe_and_allow_list() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/packages/",
        l.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for s in l.incoming().flatten().take(4) {
            let mut s = s;
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let (dir, m) = open_bundle("precheck");
    let m = only_components(m, "download");
    let home = fresh_dir("home").unwrap();
    let sb = sandbox(Policy::default()).unwrap();
    let mut c = ctx(&home, HostFacts::healthy());
    c.net_allow = vec![url.clone()];
    let r = sb.run_precheck(&dir, &m, &c).unwrap();
    // Real HTTP answer, but not TLS.
    assert_findings(&r[0], &[(Severity::Warning, "download.not-tls")]);
    // A URL not on the allow-list is refused by the host.
    c.net_allow = vec![];
    c.params.insert("url".into(), url);
    let r = sb.run_precheck(&dir, &m, &c).unwrap();
    assert_findings(&r[0], &[(Severity::Blocking, "download.not-allowed")]);
    // Closed port: TCP stage fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let u = format!("https://127.0.0.1:{closed}/");
    c.net_allow = vec![u.clone()];
    c.params.insert("url".into(), u);
    let r = sb.run_precheck(&dir, &m, &c).unwrap();
    assert_findings(&r[0], &[(Severity::Blocking, "download.unreachable")]);
    assert!(
        r[0].findings[0].message.contains("TCP"),
        "{:?}",
        r[0].findings
    );
}

#[test]
fn file_ops_warns_on_leftovers_and_blocks_without_staging() {
    let (dir, m) = open_bundle("precheck");
    let m = only_components(m, "file_ops");
    let sb = sandbox(Policy::default()).unwrap();
    let home = fresh_dir("home").unwrap();
    std::fs::create_dir_all(home.join("work/precheck-staging")).unwrap();
    std::fs::write(home.join("work/precheck-staging/old.txt"), b"old").unwrap();
    let r = sb.run_precheck(&dir, &m, &ctx(&home, healthy())).unwrap();
    assert_findings(&r[0], &[(Severity::Warning, "fileops.leftovers")]);
    assert!(
        !home.join("work/precheck-staging").exists(),
        "staging dir is removed once empty"
    );
    // The install's work/ is a file: the staging folder cannot be created.
    let home = fresh_dir("home").unwrap();
    std::fs::write(home.join("work"), b"not a dir").unwrap();
    let scratch = fresh_dir("scratch").unwrap();
    let mut c = ctx(&home, healthy());
    c.scratch_parent = scratch.clone();
    let r = sb.run_precheck(&dir, &m, &c).unwrap();
    assert_findings(&r[0], &[(Severity::Blocking, "fileops.staging-create")]);
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch dirs are removed"
    );
}

#[test]
fn a_looping_guest_is_stopped_at_its_deadline() {
    let r = hostile_with(
        &[("mode", "loop")],
        |c| c.limits.deadline_ms = Some(200),
        Policy::default(),
    );
    let f = only(&r, "check.timeout");
    assert!(
        f.message.contains("hostile") && f.message.contains("200 ms"),
        "{f:?}"
    );
    // Fuel is the second, deterministic fence.
    let r = hostile_with(
        &[("mode", "loop")],
        |c| c.limits.fuel = Some(10_000_000),
        Policy::default(),
    );
    only(&r, "check.fuel-exhausted");
}

#[test]
fn a_guest_allocating_1_gib_is_refused() {
    let r = hostile_with(&[("mode", "alloc")], |_| {}, Policy::default());
    let f = only(&r, "check.out-of-memory");
    // Known from the store's limiter, which refused the growth.
    assert!(
        f.message.contains("needed more than its memory cap of") && f.message.contains("asked for"),
        "{f:?}"
    );
    // A guest that asks politely gets an allocation error it can report.
    let r = hostile_with(&[("mode", "alloc-try")], |_| {}, Policy::default());
    assert_findings(&r, &[(Severity::Info, "alloc.refused")]);
    // A guest that only prints the allocator's message and crashes did not run
    // out of memory: its own output cannot make it so.
    let r = hostile_with(&[("mode", "fake-oom")], |_| {}, Policy::default());
    let f = only(&r, "check.crashed");
    assert!(f.message.contains("crashed"), "{f:?}");
}

/// The line the hostile guest's `forge` mode tries to put on a line of its own.
const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO Pre-upgrade validation tests successful";

#[test]
fn guest_text_leaves_the_sandbox_escaped_and_bounded() {
    let r = hostile_with(&[("mode", "forge")], |_| {}, Policy::default());
    let codes: Vec<&str> = r.findings.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(
        codes,
        ["forge.error", "forge.warning", "forge.long"],
        "{r:#?}"
    );
    for f in &r.findings {
        for text in [&f.code, &f.message, &f.remediation] {
            assert!(
                !text.chars().any(|c| c.is_control() || c == '\u{2028}'),
                "control character left in {text:?}"
            );
            assert!(
                text.len() <= 2048 + "…(truncated)".len(),
                "{} bytes",
                text.len()
            );
        }
    }
    let m = &r.findings[0].message;
    assert!(
        m.starts_with("looks fine\\n2026-01-01T00:00:00.000000Z  INFO Pre-upgrade")
            && m.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\r2026-")
            && m.contains("\\u{2028}2026-"),
        "{m}"
    );
    assert!(r.findings[0].remediation.starts_with("none\\n2026-"));
    assert!(
        r.findings[2].message.ends_with("…(truncated)"),
        "{}",
        r.findings[2].message
    );
    assert!(
        !r.findings[0]
            .message
            .lines()
            .skip(1)
            .any(|l| l.starts_with(FORGED))
    );
}

#[test]
fn a_guest_cannot_leave_its_preopens_or_open_sockets() {
    let r = hostile_with(&[("mode", "escape")], |_| {}, Policy::default());
    assert!(r.findings.len() >= 6, "{:#?}", r.findings);
    for f in &r.findings {
        assert_eq!(f.code, "escape.blocked", "{f:#?}");
    }
    assert!(r.findings[0].message.starts_with("read /etc/passwd"));
    let r = hostile_with(&[("mode", "socket")], |_| {}, Policy::default());
    assert_eq!(r.findings.len(), 4, "{:#?}", r.findings);
    for f in &r.findings {
        assert_eq!(f.code, "escape.blocked", "{f:#?}");
    }
}

#[test]
fn a_capability_beyond_policy_never_runs() {
    let mut p = Policy::default();
    p.capabilities.remove(&Capability::Net);
    let r = hostile_with(&[("mode", "net")], |_| {}, p);
    let f = only(&r, "check.denied");
    assert!(f.message.contains("`net`"), "{f:?}");
    // Imports beyond what the manifest requested: refused too.
    let r = hostile_with(
        &[("mode", "net")],
        |c| c.capabilities = vec!["facts".into()],
        Policy::default(),
    );
    let f = only(&r, "check.denied");
    assert!(f.message.contains("net"), "{f:?}");
    // Granted: it runs.
    let r = hostile_with(&[("mode", "net")], |_| {}, Policy::default());
    assert_findings(&r, &[(Severity::Info, "greedy.ran")]);
}

#[test]
fn panics_nonsense_and_unknown_majors_are_blocking_findings() {
    let r = hostile_with(&[("mode", "panic")], |_| {}, Policy::default());
    let f = only(&r, "check.crashed");
    assert!(
        f.message.contains("hostile") && f.message.contains("panics on purpose"),
        "{f:?}"
    );
    only(
        &hostile_with(&[("mode", "nonsense")], |_| {}, Policy::default()),
        "check.nonsense",
    );
    only(
        &hostile_with(&[("mode", "many")], |_| {}, Policy::default()),
        "check.nonsense",
    );
    let r = hostile_with(
        &[],
        |c| c.world = "molt:check/precheck@2.0.0".into(),
        Policy::default(),
    );
    let f = only(&r, "check.incompatible");
    assert!(
        f.message.contains("@2.x") && f.message.contains("@1.x"),
        "{f:?}"
    );
    let r = hostile_with(
        &[],
        |c| c.path = "../hostile.wasm".into(),
        Policy::default(),
    );
    only(&r, "check.invalid");
}

#[test]
fn tampered_wasm_is_refused() {
    let (dir, m) = open_bundle("precheck");
    std::fs::copy(hostile(), dir.join("checks/disk_space.wasm")).unwrap();
    let home = fresh_dir("home").unwrap();
    let sb = sandbox(Policy::default()).unwrap();
    let r = sb.run_precheck(&dir, &m, &ctx(&home, healthy())).unwrap();
    let d = r
        .iter()
        .find(|r| r.component.contains("disk_space"))
        .unwrap();
    let f = only(d, "check.invalid");
    assert!(f.message.contains("SHA-256"), "{f:?}");
}

#[test]
fn warm_cache_compiles_nothing() {
    let (dir, m) = open_bundle("precheck");
    let cache = fresh_dir("cache").unwrap();
    let home = fresh_dir("home").unwrap();
    let cfg = || SandboxConfig {
        cache_dir: cache.clone(),
        policy: Policy::default(),
    };
    let cold = Sandbox::new(cfg()).unwrap();
    cold.run_precheck(&dir, &m, &ctx(&home, healthy())).unwrap();
    assert_eq!(
        cold.cache_stats(),
        CacheStats {
            compiled: 7,
            loaded: 0
        }
    );
    drop(cold);
    let warm = Sandbox::new(cfg()).unwrap();
    let r = warm.run_precheck(&dir, &m, &ctx(&home, healthy())).unwrap();
    assert_eq!(
        warm.cache_stats(),
        CacheStats {
            compiled: 0,
            loaded: 7
        }
    );
    assert!(r.iter().all(|r| r.findings.is_empty()));
}

#[test]
fn checks_run_concurrently_and_a_hang_does_not_hold_the_others() {
    let (dir, mut m) = open_bundle("precheck");
    std::fs::copy(hostile(), dir.join("hostile.wasm")).unwrap();
    let mut c = component("hostile.wasm", &[("mode", "loop")]);
    c.limits.deadline_ms = Some(300);
    m.components.insert(0, c);
    let home = fresh_dir("home").unwrap();
    let sb = sandbox(Policy::default()).unwrap();
    let r = sb.run_precheck(&dir, &m, &ctx(&home, healthy())).unwrap();
    assert_eq!(r.len(), 8);
    only(&r[0], "check.timeout");
    assert!(r[1..].iter().all(|r| r.findings.is_empty()), "{r:#?}");
}

#[test]
fn works_from_tokio_spawn_blocking() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        tokio::task::spawn_blocking(|| {
            let (dir, m) = open_bundle("precheck");
            let home = fresh_dir("home").unwrap();
            let sb = sandbox(Policy::default()).unwrap();
            let reports = sb.run_precheck(&dir, &m, &ctx(&home, healthy())).unwrap();
            let (sdir, sm) = open_bundle("selector");
            let plan = sb.select_version_in_bundle(&sdir, &sm, &madrid()).unwrap();
            (reports.len(), plan.action)
        })
        .await
        .unwrap()
    });
    assert_eq!(r, (7, Action::Upgrade));
}

#[test]
fn the_test_helper_runs_one_component() {
    let sb = sandbox(Policy::default()).unwrap();
    let r = run_check(
        &sb,
        &hostile(),
        HostFacts::healthy(),
        &[("mode", "alloc-try")],
    )
    .unwrap();
    assert_findings(&r, &[(Severity::Info, "alloc.refused")]);
}

// ---- version-select -------------------------------------------------------

fn madrid() -> SelectorInput {
    SelectorInput {
        installed: vec![
            "mid-core.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.universal.universal.zip".into(),
            "mid-jre.madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807.windows.x86-64.zip".into(),
        ],
        assigned_version: "madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650".into(),
        assigned: vec![
            "mid-upgrade.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip".into(),
            "mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip".into(),
        ],
        downloaded: vec![],
        pinned: None,
        os: "windows".into(),
        arch: "x86-64".into(),
        is_64bit: true,
        libc_version: None,
    }
}

fn select(input: &SelectorInput) -> Plan {
    let (dir, m) = open_bundle("selector");
    let sb = sandbox(Policy::default()).unwrap();
    let p = sb.select_version_in_bundle(&dir, &m, input).unwrap();
    // The same code natively gives the same answer.
    let native = molt_check_logic::select::select(input).unwrap();
    assert_eq!(p, native);
    p
}

#[test]
fn version_select_reproduces_the_madrid_seed_example() {
    let p = select(&madrid());
    assert_eq!(p.action, Action::Upgrade);
    assert_eq!(
        p.current_packages_lines().join("\n"),
        "Current packages:
 Installed: [mid-core.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.universal.universal.zip, mid-jre.madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807.windows.x86-64.zip]
 Assigned: [mid-upgrade.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip, mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip]
 Missing: [mid-upgrade.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip, mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip]
 Downloaded: []"
    );
    assert!(!p.crosses_family);
    assert_eq!(p.runtime, RuntimeDecision::Current);
}

fn quebec() -> SelectorInput {
    SelectorInput {
        installed: vec![
            "mid-core.quebec-12-09-2020__patch0-hotfix3-01-20-2021_01-21-2021_0905.universal.universal.zip".into(),
            "mid-jre.quebec-12-09-2020__patch0-hotfix1-01-04-2021_01-06-2021_1339.windows.x86-64.zip".into(),
        ],
        assigned_version: "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225".into(),
        assigned: vec![
            "mid-upgrade.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip".into(),
            "mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip".into(),
        ],
        ..madrid()
    }
}

#[test]
fn version_select_reproduces_the_quebec_seed_example() {
    let p = select(&quebec());
    assert_eq!(
        p.current_packages_lines().join("\n"),
        "Current packages:
 Installed: [mid-core.quebec-12-09-2020__patch0-hotfix3-01-20-2021_01-21-2021_0905.universal.universal.zip, mid-jre.quebec-12-09-2020__patch0-hotfix1-01-04-2021_01-06-2021_1339.windows.x86-64.zip]
 Assigned: [mid-upgrade.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip, mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip]
 Missing: [mid-upgrade.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip, mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip]
 Downloaded: []"
    );
}

#[test]
fn version_select_pins_downgrades_and_skips_the_runtime() {
    // Pinned: the pin overrides the assignment.
    let mut i = quebec();
    i.pinned = Some("quebec-12-09-2020__patch0-hotfix3-01-20-2021_01-21-2021_0905".into());
    let p = select(&i);
    assert_eq!(p.action, Action::None);
    assert!(p.missing.is_empty());
    assert!(
        p.notes.iter().any(|n| n.contains("pinned")),
        "{:?}",
        p.notes
    );
    // Downgrade: assigned older than installed (instance rollback).
    let mut i = quebec();
    i.installed[0] =
        "mid-core.quebec-12-09-2020__patch2-04-01-2021_04-05-2021_1000.universal.universal.zip"
            .into();
    let p = select(&i);
    assert_eq!(p.action, Action::Downgrade);
    assert_eq!(p.missing.len(), 2);
    // Family change with a runtime upgrade, on a 64-bit glibc 2.31 Linux host.
    let rt = "molt-runtime.rome-10-07-2021__patch0-09-30-2021_10-05-2021_1200.linux.x86-64.zip";
    let mut i = SelectorInput {
        installed: vec![
            "molt-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip".into(),
            "molt-runtime.quebec-12-09-2020__patch0-01-04-2021_01-06-2021_1339.linux.x86-64.zip".into(),
        ],
        assigned_version: "rome-10-07-2021__patch0-09-30-2021_10-05-2021_1200".into(),
        assigned: vec![
            "molt-upgrade.rome-10-07-2021__patch0-09-30-2021_10-05-2021_1200.universal.universal.zip".into(),
            "molt-core.rome-10-07-2021__patch0-09-30-2021_10-05-2021_1200.universal.universal.zip".into(),
            rt.into(),
        ],
        downloaded: vec![rt.into()],
        pinned: None,
        os: "linux".into(),
        arch: "x86-64".into(),
        is_64bit: true,
        libc_version: Some("2.31".into()),
    };
    let p = select(&i);
    assert!(p.crosses_family);
    assert_eq!(p.runtime, RuntimeDecision::Upgrade);
    assert_eq!(p.missing.len(), 3);
    assert_eq!(p.downloaded, vec![rt.to_string()]);
    // Same on glibc 2.12: runtime skipped, with the reason, and not assigned.
    i.libc_version = Some("2.12".into());
    let p = select(&i);
    assert_eq!(p.runtime, RuntimeDecision::Skip);
    assert!(
        p.runtime_reason.contains("glibc 2.12 < 2.17"),
        "{}",
        p.runtime_reason
    );
    assert_eq!(p.assigned.len(), 2);
    // 32-bit host: skipped too.
    i.libc_version = Some("2.31".into());
    i.is_64bit = false;
    let p = select(&i);
    assert_eq!(p.runtime, RuntimeDecision::Skip);
    assert!(p.runtime_reason.contains("32-bit"));
    // Garbage in: a clear error naming the package.
    let mut i = madrid();
    i.assigned
        .push("mid-core.not-a-version.universal.universal.zip".into());
    let (dir, m) = open_bundle("selector");
    let sb = sandbox(Policy::default()).unwrap();
    let e = sb
        .select_version_in_bundle(&dir, &m, &i)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mid-core.not-a-version"), "{e}");
}

// ---- buildstamp vectors in wasm ---------------------------------------------

/// guest-checks/logic/testdata/buildstamp-vectors.txt, the file the host's
/// unit tests read too.
fn buildstamp_vectors() -> Vec<molt_check_logic::vectors::Vector> {
    let v = molt_check_logic::vectors::parse_vectors(molt_check_logic::vectors::BUILDSTAMP_VECTORS)
        .unwrap();
    assert!(v.len() >= 30, "{} vectors", v.len());
    v
}

fn is_ok(v: &molt_check_logic::vectors::Vector) -> bool {
    matches!(v.expect, molt_check_logic::vectors::Expect::Ok { .. })
}

#[test]
fn buildstamp_vectors_parse_and_sort_the_same_in_wasm() {
    let vectors = buildstamp_vectors();
    // Keys scramble the file order, so the guest's sort has work to do.
    let n = vectors.len();
    let keyed: Vec<(String, &molt_check_logic::vectors::Vector)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("name-{:03}", (i * 7 + 3) % n), v))
        .collect();
    assert_eq!(
        keyed
            .iter()
            .map(|(k, _)| k)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        n,
        "keys must be distinct (7 and {n} coprime)"
    );
    let params: Vec<(&str, &str)> = keyed
        .iter()
        .map(|(k, v)| (k.as_str(), v.name.as_str()))
        .collect();
    let sb = sandbox(Policy::default()).unwrap();
    let wasm = bundles().join("test-guests/buildstamp_vectors.wasm");
    let r = run_check(&sb, &wasm, HostFacts::healthy(), &params).unwrap();
    assert_eq!(r.findings.len(), n + 1, "{:#?}", r.findings);
    assert!(
        r.findings.iter().all(|f| f.severity == Severity::Info),
        "{:#?}",
        r.findings
    );
    let from_wasm: BTreeMap<&str, &str> = r
        .findings
        .iter()
        .filter(|f| f.code != "buildstamp.order")
        .map(|f| f.message.split_once(' ').unwrap())
        .collect();
    for (k, v) in &keyed {
        let wasm_says = from_wasm[k.as_str()];
        // Identical to the same code run natively, field for field ...
        assert_eq!(
            wasm_says,
            molt_check_logic::vectors::describe(&v.name),
            "line {}",
            v.line
        );
        // ... to what the vector file expects ...
        molt_check_logic::vectors::check_description(v, wasm_says).unwrap();
        // ... and to the host's chrono-typed parse.
        match v.name.parse::<molt_bundle::Buildstamp>() {
            Ok(b) => {
                assert!(wasm_says.starts_with("ok "), "line {}: {wasm_says}", v.line);
                let patch = format!("patch={}{}", b.version.patch, b.version.patch_suffix);
                assert!(wasm_says.contains(&patch), "line {}: {wasm_says}", v.line);
                assert!(wasm_says.ends_with(&format!("display={b}")));
            }
            Err(e) => assert_eq!(wasm_says, format!("err {e}"), "line {}", v.line),
        }
    }
    // The guest's sorted order is the file's order of the `ok` vectors, which
    // is also the host's order.
    let order = &r
        .findings
        .iter()
        .find(|f| f.code == "buildstamp.order")
        .unwrap()
        .message;
    let by_key: BTreeMap<&str, &str> = keyed
        .iter()
        .map(|(k, v)| (k.as_str(), v.name.as_str()))
        .collect();
    let wasm_sorted: Vec<&str> = order.split(' ').map(|k| by_key[k]).collect();
    let expected: Vec<&str> = vectors
        .iter()
        .filter(|v| is_ok(v))
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(wasm_sorted, expected);
    let mut host: Vec<molt_bundle::Buildstamp> = keyed
        .iter()
        .filter_map(|(_, v)| v.name.parse().ok())
        .collect();
    host.sort();
    let host: Vec<String> = host.iter().map(|b| b.to_string()).collect();
    assert_eq!(wasm_sorted, host);
}

/// The real signed selector, asked to go from one vector's version to
/// another's, upgrades exactly when the host says the target is newer.
#[test]
fn the_signed_selector_orders_the_vector_versions_like_the_host() {
    let vectors = buildstamp_vectors();
    let mut versions: Vec<molt_bundle::Version> = vectors
        .iter()
        .filter(|v| is_ok(v))
        .map(|v| v.name.parse::<molt_bundle::Buildstamp>().unwrap().version)
        .collect();
    versions.dedup();
    assert!(versions.len() >= 30, "{} versions", versions.len());
    let (dir, m) = open_bundle("selector");
    let sb = sandbox(Policy::default()).unwrap();
    let core = |v: &molt_bundle::Version| format!("mid-core.{v}.universal.universal.zip");
    let input = |from: &molt_bundle::Version, to: &molt_bundle::Version| SelectorInput {
        installed: vec![core(from)],
        assigned_version: to.to_string(),
        assigned: vec![core(to)],
        downloaded: vec![],
        pinned: None,
        os: "linux".into(),
        arch: "x86-64".into(),
        is_64bit: true,
        libc_version: Some("2.31".into()),
    };
    let mut asked = 0;
    for from in &versions {
        for to in &versions {
            let p = sb
                .select_version_in_bundle(&dir, &m, &input(from, to))
                .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
            let want = match to.cmp(from) {
                std::cmp::Ordering::Greater => Action::Upgrade,
                std::cmp::Ordering::Less => Action::Downgrade,
                std::cmp::Ordering::Equal => Action::None,
            };
            assert_eq!(p.action, want, "{from} -> {to}");
            assert_eq!(p.target_version, to.to_string());
            asked += 1;
        }
    }
    assert_eq!(asked, versions.len() * versions.len());
    // Refused names: the selector's reason is the host parser's reason.
    for v in vectors.iter().filter(|v| !is_ok(v)) {
        let mut i = input(&versions[0], &versions[1]);
        i.installed = vec![v.name.clone()];
        let e = sb
            .select_version_in_bundle(&dir, &m, &i)
            .unwrap_err()
            .to_string();
        let host = v.name.parse::<molt_bundle::Buildstamp>().unwrap_err();
        assert!(e.contains(&host.to_string()), "line {}: {e}", v.line);
    }
}
