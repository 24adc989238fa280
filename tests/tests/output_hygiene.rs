//! What Molt writes for people and their tools, through the real binary: a
//! hostile check's text never becomes a line of its own (agent log, console,
//! control-plane log, dashboard, `molt check run`'s table); no log file holds
//! an escape byte when stderr is not a terminal; a closed stdout ends `molt`
//! quietly; `molt bundle verify --deep` refuses entries no extraction can lay
//! out.
mod ops_common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ops_common::*;

const T: Duration = Duration::from_secs(90);

/// The start of the line the hostile guest's `forge` mode (and the forged API
/// report below) tries to put on a line of its own.
const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO Pre-upgrade validation tests successful";

fn hostile_wasm() -> PathBuf {
    molt_e2e::agent_fx::signed_bundles_dir().join("test-guests/hostile.wasm")
}

/// Panics if `text` (named `what`) has an escape byte, a Unicode line
/// separator, or a line that starts with the forged text.
fn assert_no_forgery(what: &str, text: &[u8]) {
    assert!(
        !text.contains(&0x1b),
        "{what} holds an escape byte:\n{}",
        String::from_utf8_lossy(text)
    );
    let s = String::from_utf8_lossy(text);
    assert!(
        !s.contains(['\u{2028}', '\u{2029}', '\r']),
        "{what} holds a line break other than \\n:\n{s}"
    );
    for l in s.lines() {
        let t = l.trim_start_matches(|c: char| c.is_whitespace() || c == '>' || c == '<');
        assert!(
            !t.starts_with(FORGED) && !l.contains(&format!(">{FORGED}")),
            "{what} has the forged line on a line of its own:\n{l}"
        );
    }
}

/// Every `*.log` file under `dir` (recursively).
fn log_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => log_files(&p, out),
            Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "log") => out.push(p),
            _ => {}
        }
    }
}

/// The grep-style check: no log file under `dir` holds byte 0x1b (ESC).
/// Returns the files looked at.
fn assert_no_escape_in_logs(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    log_files(dir, &mut files);
    for f in &files {
        let b = std::fs::read(f).unwrap();
        if let Some(i) = b.iter().position(|&c| c == 0x1b) {
            let from = i.saturating_sub(80);
            panic!(
                "{} holds an escape byte at {i}: …{}…",
                f.display(),
                String::from_utf8_lossy(&b[from..(i + 40).min(b.len())])
            );
        }
    }
    files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// GET (or POST with `body`) `path` with a bearer token; (status, body).
fn http(url: &str, token: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
    let method = match body {
        Some(_) => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    molt_e2e::agent_fx::http_call(url, method, path, token, body)
}

#[test]
fn a_hostile_checks_text_never_becomes_a_line_of_its_own_anywhere() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    // v2's precheck bundle carries one more check: the repo's misbehaving
    // guest in its `forge` mode (newlines, CR, OSC and CSI sequences, U+2028).
    k.side_bundle("precheck", V2, |src, comps| {
        std::fs::copy(hostile_wasm(), src.join("checks/hostile.wasm")).unwrap();
        let mut c = comps[0].clone();
        c.path = "checks/hostile.wasm".into();
        c.capabilities = ["facts", "net", "services", "log"].map(String::from).into();
        c.preopens = ["scratch", "install", "staging"].map(String::from).into();
        c.params = [("mode".to_string(), "forge".to_string())].into();
        comps.push(c);
    });
    let cp = serve(
        &k.dir.path().join("cp"),
        &k.packages_dir(),
        &["--fleet-version", V2],
    );
    let h = k.light_install(&k.dir.path().join("agent"), V1, &cp.url);
    agent_config(&h, &cp.url, "");
    let agent = start_agent(&h, &[]);
    let log = wait_agent_log(
        &h,
        "Aborting agent upgrade due to pre-upgrade check failure",
        T,
    );
    // The finding is there, as text on the agent's own line.
    assert!(
        log.lines().any(|l| l.contains("Pre-upgrade check error:")
            && l.contains(&format!("looks fine\\n{FORGED}"))
            && l.contains("\\u{1b}]0;owned\\u{7}")),
        "{log}"
    );
    wait_for("the forged finding on the control plane", T, || {
        http(&cp.url, ADMIN_TOKEN, "/api/v1/admin/issues", None)
            .1
            .contains("forge.error")
    });
    // An agent (or anything holding its token) sending forged text itself.
    let forged = format!("ok\n{FORGED}. Continuing with upgrade process\x1b[2J\r{FORGED}");
    let (st, body) = http(
        &cp.url,
        AGENT_TOKEN,
        "/api/v1/agent/issues",
        Some(serde_json::json!({ "source": "Forger\nx", "findings": [
            { "code": "forger.code", "severity": "error", "description": forged, "remediation": forged }
        ] })),
    );
    assert_eq!(st, 200, "{body}");
    let (_, issues) = http(&cp.url, ADMIN_TOKEN, "/api/v1/admin/issues", None);
    assert!(
        issues.contains(&format!("ok\\\\n{FORGED}")),
        "stored escaped: {issues}"
    );
    assert!(!issues.contains("\\u001b"), "{issues}");
    for page in ["/dashboard", "/dashboard/agents/a1"] {
        let (st, html) = http(&cp.url, ADMIN_TOKEN, page, None);
        assert_eq!(st, 200, "{page}: {html}");
        assert!(html.contains("forge.error"), "{page}: {html}");
        assert_no_forgery(page, html.as_bytes());
    }
    drop(agent);
    assert_no_forgery("agent.log", &std::fs::read(h.agent_log()).unwrap());
    assert_no_forgery(
        "agent.console.log (the agent's stderr)",
        &std::fs::read(h.logs_dir().join("agent.console.log")).unwrap(),
    );
    assert_no_forgery(
        "serve.log",
        &std::fs::read(k.dir.path().join("cp/serve.log")).unwrap(),
    );
    let seen = assert_no_escape_in_logs(k.dir.path());
    for f in ["agent.log", "agent.console.log", "serve.log"] {
        assert!(seen.iter().any(|s| s == f), "{f} not among {seen:?}");
    }
}

#[test]
fn check_run_prints_a_hostile_checks_text_as_text() {
    let t = tempfile::tempdir().unwrap();
    let wasm = t.path().join("hostile.wasm");
    std::fs::copy(hostile_wasm(), &wasm).unwrap();
    let out = Command::new(molt_bin())
        .args(["check", "run"])
        .arg(&wasm)
        .args(["--param", "mode=forge", "--cache-dir"])
        .arg(t.path().join("cache"))
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "blocking finding: {stdout}");
    assert!(
        stdout.contains("forge.error") && stdout.contains("\\u{1b}]0;owned"),
        "{stdout}"
    );
    assert_no_forgery("check run's table", &out.stdout);
    assert_no_forgery("check run's log (stderr)", &out.stderr);
}

#[test]
fn the_demos_log_files_hold_no_escape_bytes() {
    // `molt demo` runs the real control plane, supervisor, agent and runner,
    // each with stderr in a file (serve.log, supervisor.log, runner.log, ...).
    // NO_COLOR is not set: colour is off because stderr is not a terminal.
    let t = tempfile::tempdir().unwrap();
    let keep = t.path().join("demo");
    let out = Command::new(molt_bin())
        .args(["demo", "--timeout", "150", "--keep"])
        .arg(&keep)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.stderr.contains(&0x1b),
        "colour on a non-terminal stderr"
    );
    let seen = assert_no_escape_in_logs(&keep);
    // The runner's output is appended to agent.log (its upgrade log section).
    for f in ["agent.log", "agent.console.log", "supervisor.log"] {
        assert!(seen.iter().any(|s| s == f), "{f} not among {seen:?}");
    }
}

#[test]
fn a_closed_stdout_ends_molt_quietly() {
    let bundle = molt_e2e::agent_fx::signed_bundle("precheck").unwrap();
    let root = molt_e2e::agent_fx::signed_bundles_dir().join("root.json");
    // The reader is gone before molt writes its first byte, as with `| head -0`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(molt_bin())
        .args(["bundle", "verify", "--explain", "--root"])
        .arg(&root)
        .arg(&bundle)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    // Killed by SIGPIPE, as `cat` or `grep` would be: a shell reports 141.
    assert_eq!(st.signal(), Some(13), "{st:?}\n{err}");
}

#[test]
fn bundle_verify_deep_refuses_a_file_that_is_also_a_directory() {
    let k = Kit::new();
    let name = format!("molt-core.{V1}.universal.universal.zip");
    // Pack `lib/a.dat` and `lib/x/b.dat` for their manifest entries (real
    // sizes and digests), then write the zip again with the second one at
    // `lib/a.dat/b.dat`: `lib/a.dat` is then a file and a directory at once.
    let src = k.dir.path().join("src");
    std::fs::create_dir_all(src.join("lib/x")).unwrap();
    std::fs::write(src.join("lib/a.dat"), b"file").unwrap();
    std::fs::write(src.join("lib/x/b.dat"), b"nested").unwrap();
    let spec = molt_bundle::PackSpec::from_buildstamp(&name, 1).unwrap();
    let mut m = molt_bundle::pack_dir(&src, &spec, &k.dir.path().join("ok.zip")).unwrap();
    for e in &mut m.entries {
        if e.path == "lib/x/b.dat" {
            e.path = "lib/a.dat/b.dat".into();
        }
    }
    let out = k.dir.path().join(&name);
    let json = serde_json::to_vec(&m).unwrap();
    molt_bundle::editor::write_bundle(&out, &json, m.format, |w| {
        w.add_bytes("lib/a.dat", b"file", true, 0o100644)?;
        w.add_bytes("lib/a.dat/b.dat", b"nested", true, 0o100644)
    })
    .unwrap();
    // Signed, so only the layout rule can refuse it.
    molt_bundle::sign_bundle(&out, &[&k.key]).unwrap();
    let root = k.dir.path().join("root.json");
    std::fs::write(&root, k.root.to_json_pretty().unwrap()).unwrap();
    let o = molt(&[
        "bundle",
        "verify",
        "--deep",
        "--root",
        root.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "entry `lib/a.dat` is a file but entry `lib/a.dat/b.dat` needs it to be a directory"
        ),
        "{text}"
    );
}
