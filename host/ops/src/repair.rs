//! `molt repair`: the manual-restore article, automated. From full signed
//! packages build a fresh install folder beside the broken one, carry over
//! config.toml, conf/ overrides, the trust state and custom truststore
//! certificates, move the old folder to `<home>_old-do_not_run`, move the new one
//! into place, start it and check it comes Up. A dry run (the default) only
//! verifies the packages and prints the plan.
use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_bundle::{
    Accept, BundleKind, SequenceDecision, TrustStore, VerifiedBundle, VerifyOptions,
};
use molt_deploy::truststore::{STOCK, TRUSTSTORE, custom_certs, merge, pem_blocks};
use molt_layout::Home;
use serde::Serialize;

use crate::{OpsError, io_err};

/// Files under `conf/` that belong to a running service, not to the operator.
pub const CONF_RUNTIME_FILES: &[&str] = &[
    "agent.pid",
    "supervisor.pid",
    "supervisor.lock",
    "handover.json",
    "deploy.hold",
    "upgrade.marker",
];
/// Top-level folders carried over as they are.
pub const CARRIED_DIRS: &[&str] = &["state", "logs", "backup"];

#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Full signed packages: a core package, plus the runtime if the install has one.
    pub packages: Vec<PathBuf>,
    /// Trusted root to verify with (default: the install's).
    pub root: Option<PathBuf>,
    /// Act; without it only the plan is shown.
    pub apply: bool,
    /// Start the service (`molt run`) after the repair and wait for Up.
    pub start: bool,
    /// How long to wait for the agent to report Up.
    pub wait: Duration,
    /// The `molt` binary that runs the supervisor.
    pub molt_exe: PathBuf,
    /// Proceed even if processes still use the old folder.
    pub force: bool,
}

/// What the repair will do (dry run) or did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairPlan {
    pub home: PathBuf,
    pub old_home: PathBuf,
    pub version: String,
    pub packages: Vec<String>,
    pub carried_files: Vec<String>,
    pub custom_certs: usize,
    pub custom_certs_from: Option<PathBuf>,
    pub stop_pids: Vec<u32>,
    pub warnings: Vec<String>,
    /// What is wrong with the install now (`molt diagnose`'s install check);
    /// empty: nothing to fix, a repair would only rebuild it as it is.
    pub problems: Vec<String>,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepairOutcome {
    pub plan: RepairPlan,
    pub applied: bool,
    /// Pid of the agent that reported Up, when started and verified.
    pub up_pid: Option<u32>,
}

fn bad(home: &Home, reason: impl Into<String>) -> OpsError {
    OpsError::Repair {
        home: home.root().to_path_buf(),
        reason: reason.into(),
    }
}

/// `<home>_old-do_not_run`, or with `.2`, `.3` ... if that exists.
pub fn old_home_path(home: &Path) -> PathBuf {
    let base = format!("{}_old-do_not_run", home.display());
    let mut p = PathBuf::from(&base);
    let mut n = 2;
    while p.exists() || p.symlink_metadata().is_ok() {
        p = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    p
}

/// The custom certificates of the old install: its truststore minus its stock
/// copy; if the runtime folder is gone, the newest truststore backup instead.
fn old_custom_certs(home: &Home, new_stock: Option<&str>) -> (Vec<String>, Option<PathBuf>) {
    let cur = home
        .current_version()
        .ok()
        .flatten()
        .map(|v| home.version_dir(&v));
    if let Some(dir) = &cur {
        let store = dir.join(TRUSTSTORE);
        if let Ok(text) = std::fs::read_to_string(&store) {
            let stock = std::fs::read_to_string(dir.join(STOCK))
                .ok()
                .or_else(|| new_stock.map(str::to_string))
                .unwrap_or_default();
            return (custom_certs(&text, &stock), Some(store));
        }
    }
    let Ok(rd) = std::fs::read_dir(home.truststore_backup_dir()) else {
        return (Vec::new(), None);
    };
    let newest = rd
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    match newest {
        Some((_, p)) => {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (custom_certs(&text, new_stock.unwrap_or_default()), Some(p))
        }
        None => (Vec::new(), None),
    }
}

/// Processes (not us) that run from or hold files in `dir`.
fn users(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    molt_deploy::proc::users_of(dir)
        .into_iter()
        .filter(|p| *p != me)
        .collect()
}

/// How repair judges a package's sequence. A package of the installed current
/// version was accepted as assigned when it was installed (after a control
/// plane rollback its sequence may be lower than the highest recorded), so it
/// gets the agent's rule, [`Accept::Assigned`]: rebuilding what is installed is
/// no new downgrade, and the root's floor still refuses anything below it. Any
/// other package would move the host to a version nobody assigned: the strict
/// rule, [`Accept::Newer`].
pub fn repair_accept(home: &Home, v: &VerifiedBundle) -> Accept {
    let name = v.buildstamp.to_string();
    let installed = home
        .installed()
        .unwrap_or_default()
        .iter()
        .any(|p| p.name == name);
    // The meta may be what is broken: the core package also names the version
    // folder `current` points at.
    let core_of_current = v.manifest.kind == BundleKind::Core
        && home
            .current_version()
            .ok()
            .flatten()
            .is_some_and(|c| c == v.buildstamp.version.to_string());
    if installed || core_of_current {
        Accept::Assigned
    } else {
        Accept::Newer
    }
}

/// Verify the packages and work out the plan; changes nothing.
pub fn plan(
    home: &Home,
    opts: &RepairOptions,
) -> Result<(RepairPlan, Vec<VerifiedBundle>), OpsError> {
    if opts.packages.is_empty() {
        return Err(bad(
            home,
            "name at least one full package with --package (molt-core...zip, plus molt-runtime...zip if the install has a runtime)",
        ));
    }
    let root_path = opts
        .root
        .clone()
        .unwrap_or_else(|| crate::import::trusted_root_path(home));
    let root = crate::import::load_root(&root_path)?;
    let mut verified = Vec::new();
    let mut downgrades = Vec::new();
    for p in &opts.packages {
        let v = crate::import::verify_deep(p, &root)?;
        let accept = repair_accept(home, &v);
        if crate::import::check_rollback(&v, &root, &home.state_dir(), accept)?
            == SequenceDecision::Downgrade
        {
            downgrades.push(v.buildstamp.to_string());
        }
        crate::import::check_platform(&v)?;
        if !matches!(
            v.manifest.kind,
            molt_bundle::BundleKind::Core
                | molt_bundle::BundleKind::Runtime
                | molt_bundle::BundleKind::Upgrade
        ) {
            return Err(OpsError::Package {
                path: p.clone(),
                reason: format!(
                    "a {} bundle cannot be installed; repair needs core (and runtime) packages",
                    v.manifest.kind
                ),
            });
        }
        if verified
            .iter()
            .any(|o: &VerifiedBundle| o.manifest.kind == v.manifest.kind)
        {
            return Err(OpsError::Package {
                path: p.clone(),
                reason: format!("a second {} package was given", v.manifest.kind),
            });
        }
        verified.push(v);
    }
    let core = verified
        .iter()
        .find(|v| v.manifest.kind == molt_bundle::BundleKind::Core)
        .ok_or_else(|| bad(home, "no core package (molt-core...zip) among the packages"))?;
    let version = core.buildstamp.version.to_string();
    let mut warnings = Vec::new();
    if !home.root().is_dir() {
        return Err(bad(home, "the install folder does not exist"));
    }
    if !home.config_file().is_file() {
        warnings.push("no config.toml in the old install: write one before starting (control_plane_url, agent_name, token)".into());
    }
    if let Ok(old) = molt_layout::read_meta_dir(
        &home.meta_dir_of(&home.current_version().ok().flatten().unwrap_or_default()),
    ) {
        for p in old {
            if !verified.iter().any(|v| v.manifest.kind.as_str() == p.kind) && p.kind != "upgrade" {
                warnings.push(format!("the old install had a {} package ({}) and none was given: the new install will not have it", p.kind, p.name));
            }
        }
    }
    let mut carried = Vec::new();
    if let Ok(rd) = std::fs::read_dir(home.root()) {
        let mut names: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        carried.extend(names);
    }
    if let Ok(rd) = std::fs::read_dir(home.conf_dir()) {
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !CONF_RUNTIME_FILES.contains(&n.as_str()))
            .map(|n| format!("conf/{n}"))
            .collect();
        names.sort();
        carried.extend(names);
    }
    for d in CARRIED_DIRS {
        if home.root().join(d).is_dir() {
            carried.push(format!("{d}/"));
        }
    }
    let (certs, from) = old_custom_certs(home, None);
    let mut stop_pids: Vec<u32> = Vec::new();
    for f in [home.supervisor_pid_file(), home.agent_pid_file()] {
        if let Some(p) = molt_deploy::service::read_pid(&f)
            && molt_deploy::proc::alive(p)
            && !stop_pids.contains(&p)
        {
            stop_pids.push(p);
        }
    }
    if let Ok(Some(s)) = home.read_status()
        && molt_deploy::proc::alive(s.pid)
        && !stop_pids.contains(&s.pid)
    {
        stop_pids.push(s.pid);
    }
    for s in molt_deploy::service::detect_services(home).unwrap_or_default() {
        if s.starts_with("systemd") {
            warnings.push(format!(
                "{s} serves this install: stop it (systemctl stop) before --apply, start it after"
            ));
        }
    }
    let old_home = old_home_path(home.root());
    let names: Vec<String> = verified.iter().map(|v| v.buildstamp.to_string()).collect();
    let mut steps = vec![format!(
        "verify {} (done: signatures, expiry, sequence, every entry's digest)",
        names.join(", ")
    )];
    if !downgrades.is_empty() {
        steps[0].push_str(&format!(
            "; {} of the installed version, older than the highest sequence accepted: accepted as when it was assigned, within the trusted root's rollback floor",
            downgrades.join(", ")
        ));
    }
    if !stop_pids.is_empty() {
        steps.push(format!(
            "stop the running service (pids {stop_pids:?}) and wait until every process has exited"
        ));
    }
    steps.push(format!(
        "build a fresh install of version {version} in a new folder beside {}",
        home.root().display()
    ));
    steps.push(format!(
        "carry over {}",
        if carried.is_empty() {
            "nothing (none found)".into()
        } else {
            carried.join(", ")
        }
    ));
    if !certs.is_empty() {
        steps.push(format!(
            "add {} custom truststore certificate(s) from {} to the new {TRUSTSTORE}",
            certs.len(),
            from.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    steps.push(format!(
        "move {} to {}",
        home.root().display(),
        old_home.display()
    ));
    steps.push(format!("move the new folder to {}", home.root().display()));
    if opts.start {
        steps.push(format!("start the service (molt run --home {}) and wait up to {} s for version {version} to report Up", home.root().display(), opts.wait.as_secs()));
    } else {
        steps.push(format!(
            "(not started: add --start, or start the service yourself: molt run --home {})",
            home.root().display()
        ));
    }
    let plan = RepairPlan {
        home: home.root().to_path_buf(),
        old_home,
        version,
        packages: names,
        carried_files: carried,
        custom_certs: certs.len(),
        custom_certs_from: from,
        stop_pids,
        warnings,
        problems: crate::diagnose::install_problems(home),
        steps,
    };
    Ok((plan, verified))
}

/// Plan, and with `opts.apply` carry it out.
pub fn repair(home: &Home, opts: &RepairOptions) -> Result<RepairOutcome, OpsError> {
    let (mut plan, verified) = plan(home, opts)?;
    if !opts.apply {
        return Ok(RepairOutcome {
            plan,
            applied: false,
            up_pid: None,
        });
    }
    // Stop the service: the supervisor forwards SIGTERM to the agent.
    for p in &plan.stop_pids {
        molt_deploy::proc::signal(*p, libc::SIGTERM);
    }
    let left = molt_deploy::proc::wait_gone(&plan.stop_pids, Duration::from_secs(70));
    if !left.is_empty() {
        return Err(bad(
            home,
            format!("the service did not stop (pids still alive: {left:?}); nothing was changed"),
        ));
    }
    let busy = users(home.root());
    if !busy.is_empty() && !opts.force {
        let named: Vec<String> = busy
            .iter()
            .map(|p| format!("{p} ({})", crate::diagnose::process_name(*p)))
            .collect();
        return Err(bad(
            home,
            format!(
                "processes still use files in the install: {}; stop them (or use --force); nothing was changed",
                named.join(", ")
            ),
        ));
    }

    let parent = home
        .root()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = home
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "home".into());
    let new_root = parent.join(format!(".{name}.repair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&new_root);
    let built = build_new(home, &new_root, &verified, &mut plan);
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&new_root);
        return Err(e);
    }
    // The switch: two renames on one file system.
    std::fs::rename(home.root(), &plan.old_home).map_err(|e| {
        let _ = std::fs::remove_dir_all(&new_root);
        bad(
            home,
            format!(
                "cannot move the old folder to {}: {e}; nothing was changed",
                plan.old_home.display()
            ),
        )
    })?;
    if let Err(e) = std::fs::rename(&new_root, home.root()) {
        // Put the old folder back so the operator is where they started.
        let back = std::fs::rename(&plan.old_home, home.root());
        return Err(bad(
            home,
            format!(
                "cannot move the new folder into place: {e}; old folder {}",
                if back.is_ok() {
                    "restored"
                } else {
                    "left at its _old-do_not_run name"
                }
            ),
        ));
    }
    let _ = molt_deploy::fsutil::sync_dir(parent);
    tracing::info!(home = %home.root().display(), old = %plan.old_home.display(), version = %plan.version, "Repair: fresh install in place");

    let mut up_pid = None;
    if opts.start {
        let at = chrono::Utc::now();
        molt_deploy::service::spawn_detached(
            &opts.molt_exe,
            &["run", "--home", &home.root().to_string_lossy()],
            &home.supervisor_log(),
        )?;
        let pid = molt_deploy::health::wait_up(home, &plan.version, at, opts.wait)
            .map_err(|e| bad(home, format!("repaired, but the agent did not come Up: {e}; see {} and run `molt diagnose`", home.agent_console_log().display())))?;
        up_pid = Some(pid);
    }
    Ok(RepairOutcome {
        plan,
        applied: true,
        up_pid,
    })
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), OpsError> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for e in std::fs::read_dir(from).map_err(io_err(from))? {
        let e = e.map_err(io_err(from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().map_err(io_err(&src))?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(io_err(&src))?;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&src).map_err(io_err(&src))?;
            std::os::unix::fs::symlink(&t, &dst).map_err(io_err(&dst))?;
        }
    }
    Ok(())
}

fn build_new(
    home: &Home,
    new_root: &Path,
    verified: &[VerifiedBundle],
    plan: &mut RepairPlan,
) -> Result<(), OpsError> {
    let new = Home::new(new_root);
    let version = crate::import::install_verified(&new, &new.work_dir().join("repair"), verified)?;
    plan.version = version.clone();

    // config.toml and other top-level files, conf/ overrides, state, logs, backups.
    for e in std::fs::read_dir(home.root())
        .map_err(io_err(home.root()))?
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let dst = new_root.join(e.file_name());
            std::fs::copy(e.path(), &dst).map_err(io_err(&dst))?;
        }
    }
    if let Ok(rd) = std::fs::read_dir(home.conf_dir()) {
        std::fs::create_dir_all(new.conf_dir()).map_err(io_err(&new.conf_dir()))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if CONF_RUNTIME_FILES.contains(&n.as_str()) {
                continue;
            }
            let dst = new.conf_dir().join(&n);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                copy_tree(&e.path(), &dst)?;
            } else {
                std::fs::copy(e.path(), &dst).map_err(io_err(&dst))?;
            }
        }
    }
    for d in CARRIED_DIRS {
        let src = home.root().join(d);
        if src.is_dir() {
            copy_tree(&src, &new_root.join(d))?;
        }
    }

    // Custom truststore certificates into the new runtime's truststore.
    let vdir = new.version_dir(&version);
    let new_store_p = vdir.join(TRUSTSTORE);
    if new_store_p.is_file() {
        let new_stock = std::fs::read_to_string(vdir.join(STOCK)).ok();
        let (certs, from) = old_custom_certs(home, new_stock.as_deref());
        let new_store = std::fs::read_to_string(&new_store_p).map_err(io_err(&new_store_p))?;
        let have = pem_blocks(&new_store);
        let add: Vec<String> = certs.into_iter().filter(|c| !have.contains(c)).collect();
        plan.custom_certs = add.len();
        plan.custom_certs_from = from;
        if !add.is_empty() {
            let mode = molt_deploy::fsutil::mode_of(&new_store_p)?;
            molt_layout::write_atomic(&new_store_p, merge(&new_store, &add).as_bytes())?;
            molt_deploy::fsutil::set_mode(&new_store_p, mode)?;
            // Keep the installed meta true to the file, as the deploy does.
            let sha = molt_deploy::fsutil::sha256_file(&new_store_p)?;
            let size = std::fs::metadata(&new_store_p)
                .map_err(io_err(&new_store_p))?
                .len();
            let mut metas = molt_layout::read_meta_dir(&molt_layout::meta_dir_in(&vdir))?;
            for p in metas.iter_mut() {
                if let Some(f) = p.files.get_mut(TRUSTSTORE) {
                    f.sha256 = sha.clone();
                    f.size = size;
                }
            }
            molt_deploy::build::write_meta(&vdir, &metas)?;
        }
    }

    // Record the accepted sequences in the carried trust state, by the rule
    // the packages were verified with (a downgraded install's own packages
    // leave the recorded highest as it is).
    if let Ok(mut store) = TrustStore::open(&new.state_dir()) {
        for v in verified {
            store
                .verify_bundle_as(&v.path, &VerifyOptions::default(), repair_accept(home, v))
                .map_err(|e| OpsError::Package {
                    path: v.path.clone(),
                    reason: e.to_string(),
                })?;
        }
    }
    molt_deploy::fsutil::sync_filesystem(new_root)?;
    Ok(())
}

impl RepairOutcome {
    pub fn render_text(&self) -> String {
        let p = &self.plan;
        let mut s = String::new();
        if self.applied {
            s.push_str(&format!(
                "Repaired {}: fresh install of version {}.\n",
                p.home.display(),
                p.version
            ));
        } else {
            s.push_str(&format!(
                "Dry run: repair of {} (nothing changed; add --apply to do it).\n",
                p.home.display()
            ));
        }
        if !self.applied {
            if p.problems.is_empty() {
                s.push_str("  Nothing to fix: the installed version is complete (every file matches its meta); --apply would rebuild it anyway.\n");
            } else {
                s.push_str("  Problems found:\n");
                for pr in &p.problems {
                    s.push_str(&format!("    - {pr}\n"));
                }
            }
        }
        for (i, st) in p.steps.iter().enumerate() {
            s.push_str(&format!("  {}. {st}\n", i + 1));
        }
        for w in &p.warnings {
            s.push_str(&format!("  Warning: {w}\n"));
        }
        if self.applied {
            s.push_str(&format!(
                "  Custom truststore certificates carried over: {}\n",
                p.custom_certs
            ));
            s.push_str(&format!(
                "  The old folder is kept at {} — do not run it; delete it once the agent is Up.\n",
                p.old_home.display()
            ));
            match self.up_pid {
                Some(pid) => s.push_str(&format!(
                    "  Verified: version {} is Up (pid {pid}).\n",
                    p.version
                )),
                None => s.push_str("  Not started (no --start).\n"),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    fn opts(pkgs: Vec<PathBuf>, apply: bool) -> RepairOptions {
        RepairOptions {
            packages: pkgs,
            root: None,
            apply,
            start: false,
            wait: Duration::from_secs(5),
            molt_exe: PathBuf::from("/bin/false"),
            force: false,
        }
    }

    #[test]
    fn a_dry_run_changes_nothing_and_names_every_step() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("agent"), V1);
        let before = std::fs::read_dir(h.root()).unwrap().count();
        let out = repair(&h, &opts(vec![k.core(V1, 1), k.runtime(V1, 1)], false)).unwrap();
        assert!(!out.applied);
        assert_eq!(std::fs::read_dir(h.root()).unwrap().count(), before);
        assert!(!out.plan.old_home.exists());
        assert!(
            out.plan
                .old_home
                .to_string_lossy()
                .ends_with("agent_old-do_not_run")
        );
        assert!(out.plan.carried_files.contains(&"config.toml".to_string()));
        assert!(
            out.plan
                .carried_files
                .contains(&"conf/overrides.toml".to_string())
        );
        let text = out.render_text();
        assert!(text.starts_with("Dry run"), "{text}");
    }

    #[test]
    fn deleted_bin_files_are_rebuilt_with_config_conf_and_custom_certificates() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("agent"), V1);
        // The operator added a CA certificate in place; then bin/ was deleted.
        let store = h
            .version_dir(&h.current_version().unwrap().unwrap())
            .join(TRUSTSTORE);
        std::fs::write(&store, format!("{STOCK_CERT}{CUSTOM_CERT}")).unwrap();
        std::fs::remove_dir_all(h.current_link().join("bin")).unwrap();
        assert!(!crate::diagnose::install_problems(&h).is_empty());
        let config = std::fs::read(h.config_file()).unwrap();

        let out = repair(&h, &opts(vec![k.core(V1, 1), k.runtime(V1, 1)], true)).unwrap();
        assert!(out.applied);
        assert!(
            crate::diagnose::install_problems(&h).is_empty(),
            "{:?}",
            crate::diagnose::install_problems(&h)
        );
        molt_deploy::build::verify_version_dir(&h.version_dir(&out.plan.version)).unwrap();
        assert_eq!(std::fs::read(h.config_file()).unwrap(), config);
        assert_eq!(
            std::fs::read_to_string(h.conf_dir().join("overrides.toml")).unwrap(),
            "threads = 7\n"
        );
        let new_store = std::fs::read_to_string(h.current_link().join(TRUSTSTORE)).unwrap();
        assert!(new_store.contains(CUSTOM_CERT.trim()), "{new_store}");
        assert_eq!(out.plan.custom_certs, 1);
        assert!(h.current_link().join("bin/molt").is_file());
        // The old folder is kept, under the seeds' name, untouched.
        assert!(out.plan.old_home.join("config.toml").is_file());
        assert!(!out.plan.old_home.join("current/bin").exists());
        // Trust state carried: the sequence of the package is recorded.
        let st = TrustStore::open(&h.state_dir()).unwrap();
        assert_eq!(st.highest_sequence("molt-core"), Some(1));
    }

    /// An older patch of V1's family (a version this host never ran).
    const V0: &str = "vancouver-06-01-2023__patch1-06-01-2023_06-02-2023_0800";

    /// `h` runs V1 (sequence 1) after a downgrade: it had accepted sequence 3
    /// for both names, and trusts root version 2 with floor `floor` for both.
    fn downgraded(k: &Kit, h: &Home, floor: u64) {
        let mut st = TrustStore::open(&h.state_dir()).unwrap();
        for p in [k.core(V2, 3), k.runtime(V2, 3)] {
            st.verify_bundle(&p, &VerifyOptions::default()).unwrap();
        }
        let mut r = k.root.clone();
        r.signed.version = 2;
        for n in ["molt-core", "molt-runtime"] {
            molt_bundle::editor::set_floor(&mut r.signed, n, floor).unwrap();
        }
        molt_bundle::editor::sign_root(&mut r, &[&k.key]).unwrap();
        st.update_root(r).unwrap();
    }

    #[test]
    fn a_downgraded_install_is_repaired_from_its_own_packages_within_the_floor() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("agent"), V1);
        downgraded(&k, &h, 1);
        let pkgs = vec![k.core(V1, 1), k.runtime(V1, 1)];
        let out = repair(&h, &opts(pkgs.clone(), false)).unwrap();
        assert!(out.plan.problems.is_empty(), "{:?}", out.plan.problems);
        let text = out.render_text();
        assert!(text.contains("Nothing to fix"), "{text}");
        assert!(
            text.contains("of the installed version, older than the highest sequence accepted"),
            "{text}"
        );
        // Applied: rebuilt, and the recorded highest is not lowered.
        let out = repair(&h, &opts(pkgs, true)).unwrap();
        assert!(out.applied);
        assert!(crate::diagnose::install_problems(&h).is_empty());
        let st = TrustStore::open(&h.state_dir()).unwrap();
        assert_eq!(st.highest_sequence("molt-core"), Some(3));
        assert_eq!(st.highest_sequence("molt-runtime"), Some(3));
    }

    #[test]
    fn an_older_version_than_installed_is_no_assignment_and_the_floor_holds_for_all() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("agent"), V1);
        downgraded(&k, &h, 1);
        // Another version, within the floor but never assigned: strict rule.
        let e = repair(&h, &opts(vec![k.core(V0, 2)], false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`molt-core` sequence 2 is lower than 3 already accepted; only the version the control plane assigns may go back"),
            "{e}"
        );
        // The install's own packages, but the floor was raised above them.
        let mut st = TrustStore::open(&h.state_dir()).unwrap();
        let mut r = st.root().clone();
        r.signed.version = 3;
        molt_bundle::editor::set_floor(&mut r.signed, "molt-core", 2).unwrap();
        molt_bundle::editor::sign_root(&mut r, &[&k.key]).unwrap();
        st.update_root(r).unwrap();
        let e = repair(&h, &opts(vec![k.core(V1, 1), k.runtime(V1, 1)], true))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`molt-core` sequence 1 is below the rollback floor 2 that trusted root version 3 sets for `molt-core` (3 already accepted)"),
            "{e}"
        );
        assert!(!old_home_path(h.root()).to_string_lossy().ends_with(".2"));
        assert!(!k.dir.path().join("agent_old-do_not_run").exists());
    }

    #[test]
    fn repair_refuses_without_a_core_package() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("agent"), V1);
        let e = repair(&h, &opts(vec![k.runtime(V1, 1)], true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no core package"), "{e}");
    }

    #[test]
    fn a_process_using_the_old_folder_stops_the_repair_before_any_change() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("agent"), V1);
        let held = h.current_link().join("lib/core.txt");
        let holder = crate::testkit::HeldOpen::new(&held, h.root());
        let pid = holder.pid();
        let e = repair(&h, &opts(vec![k.core(V1, 1), k.runtime(V1, 1)], true))
            .unwrap_err()
            .to_string();
        drop(holder);
        assert!(
            e.contains(&pid.to_string()) && e.contains("nothing was changed"),
            "{e}"
        );
        assert!(!old_home_path(h.root()).to_string_lossy().ends_with(".2"));
        assert!(h.current_link().join("bin/molt").is_file());
    }
}
