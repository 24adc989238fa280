//! The check author's tools through the real binary: `molt check run` on the
//! signed precheck bundle with simulated facts, and `molt check new` scaffolding
//! a crate that builds to a component `molt check run` then runs.
use std::path::Path;
use std::process::Command;

use molt_e2e::agent_fx::{molt_bin, repo_root, signed_bundle, signed_bundles_dir};

fn precheck_bundle() -> std::path::PathBuf {
    signed_bundle("precheck").unwrap_or_else(|| {
        panic!(
            "no molt-precheck.*.zip in {}",
            signed_bundles_dir().display()
        )
    })
}

fn check_run(args: &[&str], cache: &Path) -> (i32, String, String) {
    let o = Command::new(molt_bin())
        .args(["check", "run"])
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_run_reports_simulated_low_disk_as_blocking_and_plenty_as_passing() {
    let t = tempfile::tempdir().unwrap();
    let bundle = precheck_bundle();
    let b = bundle.to_str().unwrap();
    let cache = t.path().join("cache");

    let low = t.path().join("low.toml");
    std::fs::write(&low, "install_free_bytes = 5\n").unwrap();
    let (code, out, err) = check_run(&[b, "--facts", low.to_str().unwrap(), "--json"], &cache);
    assert_eq!(code, 1, "blocking findings exit 1\n{out}\n{err}");
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    let findings: Vec<&serde_json::Value> = reports
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["findings"].as_array().unwrap())
        .collect();
    let disk = findings
        .iter()
        .find(|f| f["code"] == "disk.insufficient")
        .unwrap_or_else(|| panic!("no disk.insufficient in {out}"));
    assert_eq!(disk["severity"], "blocking", "{disk}");

    // Plenty of disk: no disk finding; the table names every check.
    let plenty = t.path().join("plenty.toml");
    std::fs::write(&plenty, "install_free_bytes = 1099511627776\n").unwrap();
    let (_, out, err) = check_run(&[b, "--facts", plenty.to_str().unwrap()], &cache);
    assert!(!out.contains("disk.insufficient"), "{out}\n{err}");
    for check in ["disk-space", "file-ops", "runtime-compat", "file-locks"] {
        assert!(out.contains(check), "{check} missing from\n{out}");
    }
}

#[test]
fn check_new_scaffolds_a_crate_that_builds_and_runs_in_the_sandbox() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(molt_bin())
        .args(["check", "new", "tmp-space", "--dir"])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let krate = t.path().join("tmp-space");
    let lib = std::fs::read_to_string(krate.join("src/lib.rs")).unwrap();
    assert!(lib.contains("molt_check_sdk::check!(TmpSpace);"), "{lib}");
    // A second scaffold of the same name does not overwrite it.
    let again = Command::new(molt_bin())
        .args(["check", "new", "tmp-space", "--dir"])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let wasm_ok = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"));
    if !wasm_ok {
        println!(
            "SKIPPED building the scaffold: the wasm32-wasip2 target is not installed (rustup target add wasm32-wasip2)"
        );
        return;
    }
    // The scaffold is self-contained: the SDK, its logic crate and the WIT
    // files are vendored from the binary, nothing points into this tree. Move
    // it to a fresh directory elsewhere, as a check author on another machine
    // would have it, and build it there.
    let repo = std::fs::canonicalize(repo_root()).unwrap();
    let mut files = Vec::new();
    walk(&krate, &mut files);
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        assert!(
            !text.contains(repo.to_str().unwrap()),
            "{} refers to the Molt source tree",
            f.display()
        );
    }
    assert!(krate.join("vendor/guest-checks/sdk/Cargo.toml").is_file());
    assert!(krate.join("vendor/wit/check.wit").is_file());
    assert!(krate.join("Cargo.lock").is_file());
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("tmp-space");
    copy_tree(&krate, &moved);
    std::fs::remove_dir_all(&krate).unwrap();
    let krate = moved;
    // The guests' target dir, so the SDK's dependencies are already compiled
    // when CI rebuilt the guests (it holds no source the scaffold could use).
    let target = std::env::var_os("CARGO_TARGET_DIR_GUESTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| repo_root().join("guest-checks/target"));
            std::path::PathBuf::from(format!("{}-guests", base.display()))
        });
    let build = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "scaffold does not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/tmp_space.wasm");
    assert!(wasm.is_file(), "{} missing", wasm.display());

    let cache = t.path().join("cache");
    let low = t.path().join("low.toml");
    std::fs::write(&low, "install_free_bytes = 5\n").unwrap();
    let (code, out, err) = check_run(
        &[wasm.to_str().unwrap(), "--facts", low.to_str().unwrap()],
        &cache,
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("tmp-space.insufficient"), "{out}");
    // The check's parameter reaches the guest: 1 byte is always free.
    let (code, out, err) = check_run(&[wasm.to_str().unwrap(), "--param", "min_free=1"], &cache);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("passed"), "{out}");
}

/// Every regular file under `dir`.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Copy the tree at `from` to `to` (files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}
