//! The `molt` binary under test and the repo root.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `molt` binary under test: `$MOLT_BIN`, else the one beside the test
/// executable (`target/<profile>/molt`). Every test uses this one.
pub fn molt_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOLT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("molt");
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p molt` (or set MOLT_BIN)",
        p.display()
    );
    p
}

/// The repo root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// `molt <args>` (without `$MOLT_HOME`), ready to run.
pub fn molt_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(molt_bin());
    c.args(args).env_remove("MOLT_HOME");
    c
}

/// Run `molt <args>` to completion.
pub fn molt(args: &[&str]) -> Output {
    molt_cmd(args).output().unwrap()
}

/// `molt <args>` (without `$MOLT_HOME`, stdin closed) with its stdout and
/// stderr appended to `log` (its folder made), ready to run or spawn.
pub fn molt_logged(log: &std::path::Path, args: &[&str]) -> Command {
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = molt_cmd(args);
    c.stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    c
}
