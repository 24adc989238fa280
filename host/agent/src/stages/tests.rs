//! Unit tests of the pipeline: its pure parts, and its decisions run against
//! a recording fake control plane and a temp home.

use super::*;
use crate::client::{Assigned, AssignedPackage};
use molt_layout::FileMeta;
use molt_layout::InstalledPackage;

fn pkg(kind: &str, name: &str, files: &[(&str, &str, u32)]) -> InstalledPackage {
    InstalledPackage {
        kind: kind.into(),
        name: name.into(),
        version: "v".into(),
        files: files
            .iter()
            .map(|(p, s, m)| {
                (
                    p.to_string(),
                    FileMeta {
                        size: 1,
                        sha256: s.repeat(64),
                        mode: *m,
                    },
                )
            })
            .collect(),
    }
}

#[test]
fn changed_files_are_new_or_different_in_digest_or_mode() {
    let files = [
        ("bin/molt", "a", 0o755),
        ("lib/a", "b", 0o644),
        ("lib/b", "c", 0o644),
    ];
    // The new version: another digest, another mode, one file more.
    let mut next = files.to_vec();
    next[0].1 = "d";
    next[2].2 = 0o600;
    next.push(("lib/n", "e", 0o644));
    let old = [pkg("core", "c1", &files)];
    let new = [pkg("core", "c2", &next)];
    assert_eq!(changed_files(&old, &new), ["bin/molt", "lib/b", "lib/n"]);
}

#[test]
fn missing_is_assigned_minus_installed_and_renders_in_the_seeds_shape() {
    let d = tempfile::tempdir().unwrap();
    let installed = [pkg("core", "molt-core.v1.universal.universal.zip", &[])];
    let a = |n: &str| AssignedPackage {
        kind: "core".into(),
        name: n.into(),
        url: format!("/packages/{n}"),
        size: 3,
        sha256: "0".repeat(64),
    };
    let assigned = Assigned {
        version: "v2".into(),
        source: "fleet".into(),
        packages: vec![
            a("molt-upgrade.v2.universal.universal.zip"),
            a("molt-core.v2.universal.universal.zip"),
        ],
        precheck: None,
        selector: None,
    };
    std::fs::write(
        d.path().join("molt-core.v2.universal.universal.zip"),
        b"abc",
    )
    .unwrap();
    let p = plan_packages(&installed, &assigned, d.path());
    assert_eq!(p.missing.len(), 2);
    assert_eq!(p.downloaded, ["molt-core.v2.universal.universal.zip"]);
    let r = p.render();
    assert!(
        r.starts_with("Current packages:\n  Installed: [molt-core.v1.universal.universal.zip]"),
        "{r}"
    );
    assert!(r.contains(
        "Missing: [molt-upgrade.v2.universal.universal.zip, molt-core.v2.universal.universal.zip]"
    ));
}

#[test]
fn a_pinned_agent_upgrades_by_command_only_to_its_pin() {
    assert_eq!(pin_allows(None, "v2"), Ok(()));
    assert_eq!(pin_allows(Some("v2"), "v2"), Ok(()));
    let e = pin_allows(Some("v1"), "v2").unwrap_err().to_string();
    assert!(e.contains("pinned to v1") && e.contains("v2"), "{e}");
}

#[test]
fn answers_are_bounded_on_a_character_boundary() {
    assert_eq!(bounded("abc".into(), 3), "abc");
    assert_eq!(bounded("aé".into(), 2), "a …");
}

#[test]
fn random_dir_names_have_thirteen_digits_and_dash_zero() {
    let n = random_dir_name();
    let (digits, tail) = n.split_once('-').unwrap();
    assert_eq!(digits.len(), 13);
    assert_eq!(tail, "0");
}

mod pipeline {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use molt_layout::{Home, InstalledPackage};
    use molt_protocol::{AttemptResult, FinishReport, Stage, StageReport, StageState};
    use serde_json::{Value, json};

    use super::super::control::AssignedQuery;
    use super::super::extract::Extracted;
    use super::super::precheck::{PrecheckError, conclude, summarize};
    use super::super::*;
    use crate::client::{Assigned, AssignedPackage, ClientError, Finding};
    use crate::config::AgentConfig;
    use crate::deps::CheckFinding;
    use crate::download::{DownloadError, DownloadOptions, DownloadSpec, Outcome};
    use crate::reporter::{Delivery, QueueError};
    use crate::service::Status;

    const V1: &str = "quebec-12-09-2020__patch1-04-18-2021_05-01-2021_1130";
    const V2: &str = "quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130";

    /// One control-plane call, as the fake saw it.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Assigned(Option<String>),
        AcquireSlot(String),
        ReleaseSlot,
        CreateAttempt(String, String),
        Stage(Stage, StageState, String),
        Finish(AttemptResult, String),
        Issues(Value),
        Status(Status),
        Download(String),
    }

    /// A control plane that answers `assigned`, serves (or refuses) the
    /// downloads, and records every call.
    struct Fake {
        assigned: Assigned,
        base: reqwest::Url,
        /// Downloads are copied from here; without it every download fails.
        serves: Option<std::path::PathBuf>,
        calls: Mutex<Vec<Call>>,
    }

    impl Fake {
        fn new(assigned: Assigned) -> Self {
            Self {
                assigned,
                base: reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
                serves: None,
                calls: Mutex::new(Vec::new()),
            }
        }
        fn push(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ControlPlane for Fake {
        async fn assigned(&self, q: AssignedQuery<'_>) -> Result<Assigned, ClientError> {
            self.push(Call::Assigned(q.version.map(str::to_string)));
            Ok(self.assigned.clone())
        }
        async fn acquire_slot(&self, to_version: &str) -> Result<(), ClientError> {
            self.push(Call::AcquireSlot(to_version.into()));
            Ok(())
        }
        async fn release_slot(&self) -> Result<(), ClientError> {
            self.push(Call::ReleaseSlot);
            Ok(())
        }
        async fn create_attempt(&self, from: &str, to: &str) -> Result<Value, ClientError> {
            self.push(Call::CreateAttempt(from.into(), to.into()));
            Ok(json!("a1"))
        }
        async fn report(&self, path: &str, body: Value) -> Result<Delivery, QueueError> {
            let call = if path == "/api/v1/agent/attempts/a1/stages" {
                let r: StageReport = serde_json::from_value(body).unwrap();
                Call::Stage(r.stage, r.state, r.message)
            } else if path == "/api/v1/agent/attempts/a1/finish" {
                let r: FinishReport = serde_json::from_value(body).unwrap();
                Call::Finish(r.result, r.message)
            } else {
                assert_eq!(path, "/api/v1/agent/issues");
                Call::Issues(body)
            };
            self.push(call);
            Ok(Delivery::Delivered)
        }
        async fn publish_status(&self, status: Status) {
            self.push(Call::Status(status));
        }
        async fn download(
            &self,
            spec: &DownloadSpec,
            _opts: &DownloadOptions,
        ) -> Result<Outcome, DownloadError> {
            self.push(Call::Download(spec.name.clone()));
            if let Some(dir) = &self.serves {
                std::fs::copy(dir.join(&spec.name), &spec.dest).unwrap();
                return Ok(Outcome::Downloaded {
                    resumed: false,
                    attempts: 1,
                });
            }
            Err(DownloadError::Failed {
                name: spec.name.clone(),
                url: spec.url.to_string(),
                message: "HTTP 404 Not Found".into(),
            })
        }
        fn base(&self) -> &reqwest::Url {
            &self.base
        }
        fn token(&self) -> &str {
            "tok"
        }
        fn resolve(&self, path_or_url: &str) -> Result<reqwest::Url, ClientError> {
            self.base
                .join(path_or_url)
                .map_err(|e| ClientError::Decode {
                    url: path_or_url.into(),
                    message: e.to_string(),
                })
        }
    }

    fn core(v: &str) -> String {
        format!("molt-core.{v}.universal.universal.zip")
    }

    fn upgrade(v: &str) -> String {
        format!("molt-upgrade.{v}.universal.universal.zip")
    }

    fn assigned(v: &str, names: &[String]) -> Assigned {
        Assigned {
            version: v.into(),
            source: "fleet".into(),
            packages: names
                .iter()
                .map(|n| AssignedPackage {
                    kind: "core".into(),
                    name: n.clone(),
                    url: format!("/packages/{n}"),
                    size: 3,
                    sha256: "0".repeat(64),
                })
                .collect(),
            precheck: None,
            selector: None,
        }
    }

    /// A temp home with V1 installed (one core package), a trust root, and
    /// the agent state a pipeline borrows.
    struct Env {
        _dir: tempfile::TempDir,
        home: Home,
        /// The trust root's only key.
        key: molt_bundle::SigningKey,
        cfg: AgentConfig,
        last_assigned: Mutex<Option<String>>,
        retry: AtomicBool,
        on_command: AtomicBool,
    }

    impl Env {
        fn new(config: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let home = Home::new(dir.path());
            for d in [
                home.work_dir(),
                home.state_dir(),
                home.incoming_dir(),
                home.upgrade_temp_dir(),
                home.logs_dir(),
                home.meta_dir_of(V1),
            ] {
                std::fs::create_dir_all(d).unwrap();
            }
            let meta = InstalledPackage {
                kind: "core".into(),
                name: core(V1),
                version: V1.into(),
                files: Default::default(),
            };
            std::fs::write(
                home.meta_dir_of(V1).join("core.meta.json"),
                serde_json::to_vec(&meta).unwrap(),
            )
            .unwrap();
            std::os::unix::fs::symlink(home.version_dir(V1), home.current_link()).unwrap();
            let key = molt_bundle::SigningKey::generate().unwrap().0;
            let root = molt_bundle::editor::single_key_root(
                &key,
                chrono::Utc::now() + chrono::Duration::days(30),
            )
            .unwrap();
            let root_path = dir.path().join("root.json");
            std::fs::write(&root_path, root.to_json_pretty().unwrap()).unwrap();
            let text = format!(
                "control_plane_url = \"http://127.0.0.1:9/\"\nagent_name = \"t\"\ntoken = \"tok\"\n\
                 service = \"supervisor\"\ntrust_root = \"{}\"\ntest_skip_handover = true\n\
                 test_download_backoff_ms = 1\n{config}",
                root_path.display()
            );
            let cfg =
                AgentConfig::parse(&text, dir.path(), &dir.path().join("config.toml")).unwrap();
            Self {
                _dir: dir,
                home,
                key,
                cfg,
                last_assigned: Mutex::new(None),
                retry: AtomicBool::new(false),
                on_command: AtomicBool::new(false),
            }
        }

        fn pipeline<'a>(&'a self, plane: &'a Fake) -> Pipeline<'a, Fake> {
            Pipeline {
                home: &self.home,
                cfg: &self.cfg,
                plane,
                last_assigned: &self.last_assigned,
                retry_requested: &self.retry,
                on_command: &self.on_command,
            }
        }
    }

    /// The calls of an attempt that starts (slot, status, attempt record).
    fn started() -> Vec<Call> {
        vec![
            Call::Assigned(None),
            Call::AcquireSlot(V2.into()),
            Call::Status(Status::Upgrading),
            Call::CreateAttempt(V1.into(), V2.into()),
        ]
    }

    /// [`started`], then the precheck skipped by `run_precheck = false`.
    fn started_without_precheck() -> Vec<Call> {
        let mut calls = started();
        calls.push(Call::Stage(
            Stage::PreUpgradeCheck,
            StageState::Skipped,
            "run_precheck = false".into(),
        ));
        calls
    }

    #[tokio::test]
    async fn nothing_missing_is_up_to_date_and_touches_no_slot() {
        let env = Env::new("");
        let fake = Fake::new(assigned(V1, &[core(V1)]));
        let out = env.pipeline(&fake).run(Mode::Upgrade, None).await;
        assert!(matches!(out, UpgradeOutcome::UpToDate), "{out:?}");
        assert_eq!(fake.calls(), [Call::Assigned(None)]);
        assert_eq!(env.last_assigned.lock().unwrap().as_deref(), Some(V1));
    }

    #[tokio::test]
    async fn a_pinned_agent_refuses_another_version_without_asking() {
        let env = Env::new(&format!("pinned_version = \"{V1}\"\n"));
        let fake = Fake::new(assigned(V2, &[core(V2)]));
        let out = env.pipeline(&fake).run(Mode::Upgrade, Some(V2)).await;
        let UpgradeOutcome::Refused { message } = out else {
            panic!("{out:?}")
        };
        assert!(message.contains(&format!("pinned to {V1}")), "{message}");
        assert_eq!(fake.calls(), []);
    }

    #[tokio::test]
    async fn a_version_rolled_back_here_is_held_before_any_slot_or_attempt() {
        let env = Env::new("");
        molt_deploy::journal::write_last(
            &env.home,
            &molt_deploy::journal::LastDeploy {
                attempt_id: None,
                from_version: V1.into(),
                to_version: V2.into(),
                result: AttemptResult::RolledBack,
                message: "health check failed".into(),
                running_version: V1.into(),
                at: chrono::Utc::now(),
            },
        )
        .unwrap();
        let fake = Fake::new(assigned(V2, &[core(V2)]));
        let out = env.pipeline(&fake).run(Mode::Upgrade, None).await;
        let UpgradeOutcome::HeldAfterRollback { message } = out else {
            panic!("{out:?}")
        };
        assert!(
            message.contains(&format!("Version {V2} held after rollback until")),
            "{message}"
        );
        assert_eq!(fake.calls(), [Call::Assigned(None)]);
    }

    #[tokio::test]
    async fn a_precheck_that_cannot_run_fails_its_stage_and_ends_the_attempt() {
        let env = Env::new("");
        let fake = Fake::new(assigned(V2, &[core(V2)]));
        let out = env.pipeline(&fake).run(Mode::Upgrade, None).await;
        let msg = format!(
            "Aborting agent upgrade due to pre-upgrade check failure: {}",
            PrecheckError::NoBundle { version: V2.into() }
        );
        let UpgradeOutcome::Failed { stage, message } = out else {
            panic!("{out:?}")
        };
        assert_eq!(stage, FailedAt::Stage(Stage::PreUpgradeCheck));
        assert_eq!(message, msg);
        let mut want = started();
        want.extend([
            Call::Stage(
                Stage::PreUpgradeCheck,
                StageState::InProgress,
                String::new(),
            ),
            Call::Stage(Stage::PreUpgradeCheck, StageState::Failed, msg.clone()),
            Call::Finish(AttemptResult::Failed, msg),
            Call::ReleaseSlot,
            Call::Status(Status::Up),
        ]);
        assert_eq!(fake.calls(), want);
    }

    fn finding(code: &str, blocking: bool) -> CheckFinding {
        CheckFinding {
            check: "c".into(),
            blocking,
            finding: Finding {
                code: code.into(),
                severity: String::new(),
                description: format!("{code} text"),
                remediation: String::new(),
            },
        }
    }

    #[tokio::test]
    async fn blocking_findings_fail_the_precheck_stage_and_the_attempt() {
        let env = Env::new("");
        let fake = Fake::new(assigned(V2, &[]));
        let attempt = Attempt::new(&fake, "a1".into(), Status::UpgradeFailed, &env.home, false);
        let r = summarize(&[finding("disk.space", true), finding("net.slow", false)]);
        assert_eq!((r.total, r.blocking, r.warnings), (2, 1, 1));
        assert_eq!(r.details, "disk.space: disk.space text");
        let out = conclude(&attempt, Ok(r)).await.unwrap_err();
        let msg = "Aborting agent upgrade due to pre-upgrade check failure: 1 blocking finding(s): disk.space";
        let UpgradeOutcome::Blocked { findings, message } = out else {
            panic!("{out:?}")
        };
        assert_eq!((findings, message.as_str()), (1, msg));
        assert_eq!(
            fake.calls(),
            [
                Call::Stage(Stage::PreUpgradeCheck, StageState::Failed, msg.into()),
                Call::Finish(AttemptResult::Failed, msg.into()),
                Call::ReleaseSlot,
                Call::Status(Status::UpgradeFailed),
            ]
        );

        // Warnings alone: the stage completes and the attempt goes on.
        let fake = Fake::new(assigned(V2, &[]));
        let attempt = Attempt::new(&fake, "a1".into(), Status::Up, &env.home, false);
        let r = summarize(&[finding("net.slow", false)]);
        conclude(&attempt, Ok(r)).await.unwrap();
        assert_eq!(
            fake.calls(),
            [Call::Stage(
                Stage::PreUpgradeCheck,
                StageState::Complete,
                "1 finding(s), 1 warning(s)".into()
            )]
        );
    }

    #[tokio::test]
    async fn a_failed_download_fails_its_stage_with_the_downloads_message() {
        let env = Env::new("run_precheck = false\n");
        let fake = Fake::new(assigned(V2, &[upgrade(V2), core(V2)]));
        let out = env.pipeline(&fake).run(Mode::Upgrade, None).await;
        let UpgradeOutcome::Failed { stage, message } = out else {
            panic!("{out:?}")
        };
        assert_eq!(stage, FailedAt::Stage(Stage::Download));
        assert_eq!(
            message,
            format!(
                "The agent was unable to download {} from http://127.0.0.1:9/packages/{}: HTTP 404 Not Found",
                upgrade(V2),
                upgrade(V2)
            )
        );
        let mut want = started_without_precheck();
        want.extend([
            Call::Stage(
                Stage::Download,
                StageState::InProgress,
                format!("{}, {}", upgrade(V2), core(V2)),
            ),
            Call::Download(upgrade(V2)),
            Call::Stage(Stage::Download, StageState::Failed, message.clone()),
            Call::Finish(AttemptResult::Failed, message),
            Call::ReleaseSlot,
            Call::Status(Status::Up),
        ]);
        assert_eq!(fake.calls(), want);
    }

    #[tokio::test]
    async fn the_hand_over_writes_the_deploy_plan_into_the_upgrade_dir() {
        let env = Env::new("");
        let fake = Fake::new(assigned(V2, &[core(V2)]));
        let attempt = Attempt::new(&fake, "a1".into(), Status::Up, &env.home, false);
        let upgrade_dir = env.home.upgrade_temp_dir().join(random_dir_name());
        std::fs::create_dir_all(&upgrade_dir).unwrap();
        let new = InstalledPackage {
            kind: "core".into(),
            name: core(V2),
            version: V2.into(),
            files: [(
                "bin/molt".to_string(),
                molt_layout::FileMeta {
                    size: 1,
                    sha256: "a".repeat(64),
                    mode: 0o755,
                },
            )]
            .into(),
        };
        let out = env
            .pipeline(&fake)
            .hand_over(
                &attempt,
                V1.into(),
                V2.into(),
                Extracted {
                    upgrade_dir: upgrade_dir.clone(),
                    packages: vec![new.clone()],
                    changed_files: vec!["bin/molt".into()],
                },
            )
            .await;
        let UpgradeOutcome::Prepared {
            to_version,
            upgrade_dir: dir,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!((to_version.as_str(), &dir), (V2, &upgrade_dir));
        let plan = molt_deploy::DeployPlan::load(&upgrade_dir.join("plan.json")).unwrap();
        assert_eq!(plan.attempt_id.as_deref(), Some("a1"));
        assert_eq!(
            (plan.from_version.as_str(), plan.to_version.as_str()),
            (V1, V2)
        );
        assert_eq!(plan.packages, [new]);
        assert_eq!(plan.changed_files, ["bin/molt"]);
        let cp = plan.control_plane.unwrap();
        assert_eq!(
            (cp.url.as_str(), cp.token.as_str()),
            ("http://127.0.0.1:9", "tok")
        );
        assert_eq!(fake.calls(), []);
    }

    #[tokio::test]
    async fn a_verified_download_is_extracted_and_handed_over_with_its_plan() {
        let env = Env::new("run_precheck = false\n");
        // V2's core package, signed by the trust root's key, served by the fake.
        let served = tempfile::tempdir().unwrap();
        let src = served.path().join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/molt"), b"new molt").unwrap();
        let bundle = served.path().join(core(V2));
        molt_bundle::pack_dir(
            &src,
            &molt_bundle::PackSpec::from_buildstamp(&core(V2), 2).unwrap(),
            &bundle,
        )
        .unwrap();
        molt_bundle::sign_bundle(&bundle, &[&env.key]).unwrap();
        let mut fake = Fake::new(assigned(V2, &[core(V2)]));
        fake.serves = Some(served.path().to_path_buf());

        let out = env.pipeline(&fake).run(Mode::Upgrade, None).await;
        let UpgradeOutcome::Prepared {
            to_version,
            upgrade_dir,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(to_version, V2);
        assert_eq!(
            upgrade_dir.parent(),
            Some(env.home.upgrade_temp_dir().as_path())
        );
        assert_eq!(
            std::fs::read(upgrade_dir.join("packages/core/bin/molt")).unwrap(),
            b"new molt"
        );
        let plan = molt_deploy::DeployPlan::load(&upgrade_dir.join("plan.json")).unwrap();
        assert_eq!(plan.attempt_id.as_deref(), Some("a1"));
        assert_eq!(
            (plan.from_version.as_str(), plan.to_version.as_str()),
            (V1, V2)
        );
        assert_eq!(plan.changed_files, ["bin/molt"]);
        assert_eq!(plan.packages.len(), 1);
        assert_eq!(plan.packages[0].name, core(V2));
        let mut want = started_without_precheck();
        want.extend([
            Call::Stage(Stage::Download, StageState::InProgress, core(V2)),
            Call::Download(core(V2)),
            Call::Stage(
                Stage::Download,
                StageState::Complete,
                "fetched 3 of 3 bytes (full)".into(),
            ),
            Call::Stage(Stage::Extract, StageState::InProgress, String::new()),
            Call::Stage(
                Stage::Extract,
                StageState::Complete,
                "1 changed file(s)".into(),
            ),
        ]);
        assert_eq!(fake.calls(), want);
        assert!(env.home.incoming_dir().join(core(V2)).is_file());
    }

    #[tokio::test]
    async fn a_readiness_check_runs_the_precheck_alone_without_an_attempt() {
        let env = Env::new("");
        let fake = Fake::new(assigned(V2, &[core(V2)]));
        let out = env.pipeline(&fake).run(Mode::PrecheckOnly, Some(V2)).await;
        let UpgradeOutcome::Failed { stage, message } = out else {
            panic!("{out:?}")
        };
        assert_eq!(stage, FailedAt::Stage(Stage::PreUpgradeCheck));
        assert_eq!(
            message,
            format!("the control plane assigned no precheck bundle for {V2}")
        );
        // A command's version is not the assignment: not remembered as one.
        assert_eq!(fake.calls(), [Call::Assigned(Some(V2.into()))]);
        assert_eq!(*env.last_assigned.lock().unwrap(), None);
    }

    #[tokio::test]
    async fn a_selector_that_cannot_be_fetched_ends_the_check_before_any_attempt() {
        let env = Env::new("");
        let mut a = assigned(V2, &[core(V2)]);
        a.selector = Some(AssignedPackage {
            kind: "selector".into(),
            name: format!("molt-selector.{V2}.universal.universal.zip"),
            url: "/packages/sel.zip".into(),
            size: 3,
            sha256: "0".repeat(64),
        });
        let fake = Fake::new(a);
        let out = env.pipeline(&fake).run(Mode::Upgrade, None).await;
        let UpgradeOutcome::CheckFailed { message } = out else {
            panic!("{out:?}")
        };
        assert!(
            message.starts_with("The agent was unable to download molt-selector."),
            "{message}"
        );
        assert_eq!(
            fake.calls(),
            [
                Call::Assigned(None),
                Call::Download(format!("molt-selector.{V2}.universal.universal.zip")),
            ]
        );
        // Its scratch directory is gone.
        assert_eq!(
            std::fs::read_dir(env.home.upgrade_temp_dir())
                .unwrap()
                .count(),
            0
        );
    }
}
