//! `molt repair` on an install whose bin/ files were deleted: it comes back Up
//! on the package's version with its original config and custom certificates.
//! Also `molt import` placing packages for an offline upgrade.
mod ops_common;

use std::time::Duration;

use ops_common::*;

#[test]
fn repair_brings_an_install_with_deleted_bin_files_back_up_with_its_config_and_certificates() {
    let k = Kit::new();
    let h = k.install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let home = h.root().to_string_lossy().into_owned();
    // The operator added an internal CA to the truststore; then bin/ was lost.
    let store = h.current_link().join(TRUSTSTORE);
    std::fs::write(&store, format!("{STOCK_CERT}{CUSTOM_CERT}")).unwrap();
    std::fs::remove_dir_all(h.current_link().join("bin")).unwrap();
    let config = std::fs::read(h.config_file()).unwrap();
    let (code, ids, _) = diagnose_ids(&h, &[]);
    assert_eq!((code, ids), (1, vec!["install-incomplete".to_string()]));

    let core = k.core(V1, 1);
    let runtime = k.runtime(V1, 1);
    let args = [
        "repair",
        "--home",
        &home,
        "--package",
        core.to_str().unwrap(),
        "--package",
        runtime.to_str().unwrap(),
    ];
    // Dry run: the plan, and nothing touched.
    let o = molt(&args);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.starts_with("Dry run"), "{text}");
    assert!(
        text.contains("agent_old-do_not_run")
            && text.contains("config.toml")
            && text.contains("conf/overrides.toml"),
        "{text}"
    );
    assert!(
        text.contains("1 custom truststore certificate(s)"),
        "{text}"
    );
    assert!(!h.current_link().join("bin").exists());
    assert!(!k.dir.path().join("agent_old-do_not_run").exists());

    let mut apply = args.to_vec();
    apply.extend(["--apply", "--start", "--wait", "60"]);
    let o = molt(&apply);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains(&format!("Verified: version {V1} is Up")),
        "{text}"
    );

    // Up on the package's version, from a live process.
    let st = h.read_status().unwrap().unwrap();
    assert_eq!((st.status.as_str(), st.version.as_str()), ("Up", V1));
    assert!(alive(st.pid));
    let s = molt(&["status", "--home", &home, "--offline"]);
    assert!(
        String::from_utf8_lossy(&s.stdout).contains("Status:     Up"),
        "{}",
        String::from_utf8_lossy(&s.stdout)
    );
    // Original config, overrides and custom certificate.
    assert_eq!(std::fs::read(h.config_file()).unwrap(), config);
    assert_eq!(
        std::fs::read_to_string(h.conf_dir().join("overrides.toml")).unwrap(),
        "threads = 7\n"
    );
    let new_store = std::fs::read_to_string(h.current_link().join(TRUSTSTORE)).unwrap();
    assert!(
        new_store.contains(CUSTOM_CERT.trim()) && new_store.contains(STOCK_CERT.trim()),
        "{new_store}"
    );
    assert!(h.current_link().join("bin/molt").is_file());
    // The old folder is kept under the seeds' name.
    let old = k.dir.path().join("agent_old-do_not_run");
    assert!(old.join("config.toml").is_file());
    // And nothing is wrong any more.
    let (code, ids, _) = diagnose_ids(&h, &[]);
    assert!(!ids.contains(&"install-incomplete".to_string()), "{ids:?}");
    let _ = code;

    // Stop the service we started.
    let sup = std::fs::read_to_string(h.conf_dir().join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
    sigterm(sup);
    wait_for(
        "the supervisor and agent to stop",
        Duration::from_secs(30),
        || !alive(sup) && !alive(st.pid),
    );
}

#[test]
fn import_places_verified_packages_where_the_agent_looks_for_downloads() {
    let k = Kit::new();
    let h = k.install(&k.dir.path().join("agent"), V1, &closed_port_url());
    let home = h.root().to_string_lossy().into_owned();
    let set = k.dir.path().join("usb");
    std::fs::create_dir_all(&set).unwrap();
    let core = k.core(V2, 2);
    std::fs::copy(&core, set.join(core.file_name().unwrap())).unwrap();
    let o = molt(&["import", "--home", &home, set.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let name = format!("molt-core.{V2}.universal.universal.zip");
    assert_eq!(v[0]["name"], name.as_str());
    let placed = h.incoming_dir().join(&name);
    assert_eq!(
        std::fs::read(&placed).unwrap(),
        std::fs::read(&core).unwrap()
    );
    let o = molt(&["import", "--home", &home, core.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Already present:"));
}
