//! The protocol's words live in molt-protocol only: no stage, state, status,
//! result or command literal in the product code of the other crates.
//!
//! The scanner reads every `.rs` file under `host/*/src`, `host/*/examples`
//! and every `host/*/build.rs` except `host/protocol`'s, skips test code
//! (`#[cfg(test)]` items and modules, files named `tests.rs` or `*_tests.rs`,
//! and files whose module is declared under `#[cfg(test)]`), and reports each
//! string literal that is exactly one of [`WORDS`], or one of
//! [`SEVERITY_WORDS`] on a line that names a severity, by file:line; and,
//! inside any literal, a word quoted as an SQL string (`'Queued'`, also
//! `'Done'` and `'New'`): a store binds the protocol's word as a parameter.
//! Tests keep their literals: they check the wire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use molt_protocol::{
    AgentStatus, AttemptResult, CommandKind, CommandState, FindingSeverity, IssueState, Readiness,
    Stage, StageState,
};

/// The words, as the quoted literals they would be in code.
const WORDS: &[&str] = &[
    // Upgrade History stages.
    "Pre Upgrade Check",
    "Download Upgrade Packages",
    "Extract Upgrade Packages",
    "MigrateTrustStore",
    "Deploy Binary Files",
    "Reinstall Service",
    "Restart",
    "Health Check",
    // Stage states.
    "In Progress",
    "Complete",
    "Failed",
    "Skipped",
    // Attempt results (Complete and Failed above).
    "Rolled Back",
    // Agent statuses.
    "Up",
    "Upgrading",
    "Paused",
    "Down",
    "Upgrade Failed",
    // Command kinds.
    "autoUpgrade",
    "upgrade",
    "restart",
    "grabLogs",
    "runPrecheck",
    // Command states (Failed above).
    "Queued",
    "Delivered",
    // Issue states.
    "Acknowledged",
    "Resolved",
    // Readiness for a version.
    "Ready",
    "Not Ready",
    "Pending",
    "Not Checked",
];

/// Finding severities. These are also ordinary words (`"error"` is the admin
/// API's error key, `"info"` a log level), so they count only on a line that
/// names a severity (`Severity::Warning => "warning"`, `severity: "error"`).
const SEVERITY_WORDS: &[&str] = &["error", "blocking", "warning", "info"];

/// Literals that are one of the words but another vocabulary's, or that may
/// not change: (path under the repository, word, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "host/server/src/store/sqlite.rs",
        "'Down'",
        "the agents table's status default in migration 1, which has shipped and is never edited",
    ),
    (
        "host/server/src/store/postgres.rs",
        "'Down'",
        "the agents table's status default in migration 1, which has shipped and is never edited",
    ),
    (
        "host/bundle/src/schema.rs",
        "upgrade",
        "the bundle kind `upgrade` (the runner's package), defined by the bundle format",
    ),
    (
        "host/server/src/packages.rs",
        "upgrade",
        "the package kind `upgrade` in the control plane's package file names",
    ),
    (
        "host/ops/src/repair.rs",
        "upgrade",
        "the package kind `upgrade` (the runner's package is not part of a version dir)",
    ),
    (
        "host/server/examples/fleet_sim.rs",
        "upgrade",
        "the package kind `upgrade` of the simulated package files",
    ),
];

/// One literal found: file, line, word.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    file: PathBuf,
    line: usize,
    word: String,
}

impl std::fmt::Display for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: \"{}\"",
            self.file.display(),
            self.line,
            self.word
        )
    }
}

/// A string literal of a source file: its first line and its text (escapes kept
/// as written, which is exact for the words: none has one).
struct Literal {
    line: usize,
    text: String,
}

/// What the lexer saw: literals and the token stream needed to find test items.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Str(usize, String),
    Open,
    Close,
    Semi,
    /// `#[cfg(test)]` (spaces ignored).
    CfgTest,
    Word(String),
    Other,
}

/// A small Rust lexer: comments, strings (plain, byte, raw), chars and
/// lifetimes, braces, `;`, identifiers and `#[...]` attributes.
fn lex(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let n = b.len();
    while i < n {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'/' if i + 1 < n && b[i + 1] == b'/' => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if i + 1 < n && b[i + 1] == b'*' => {
                let mut depth = 0;
                while i < n {
                    if b[i] == b'/' && i + 1 < n && b[i + 1] == b'*' {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && i + 1 < n && b[i + 1] == b'/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if b[i] == b'\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            b'"' => {
                let start_line = line;
                i += 1;
                let s = i;
                while i < n && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if i < n && b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                out.push(Tok::Str(start_line, src[s..i.min(n)].to_string()));
                i += 1;
            }
            b'r' | b'b' | b'c'
                if {
                    // Raw strings: r"..", r#".."#, br"..", cr"..".
                    let mut j = i;
                    if b[j] != b'r' && j + 1 < n && b[j + 1] == b'r' {
                        j += 1;
                    }
                    b[j] == b'r'
                        && j + 1 < n
                        && (b[j + 1] == b'"' || b[j + 1] == b'#')
                        && (i == 0 || !is_ident(b[i - 1]))
                } =>
            {
                let mut j = i;
                if b[j] != b'r' {
                    j += 1;
                }
                j += 1;
                let mut hashes = 0;
                while j < n && b[j] == b'#' {
                    hashes += 1;
                    j += 1;
                }
                if j >= n || b[j] != b'"' {
                    // `r#ident` (a raw identifier).
                    out.push(Tok::Other);
                    i = j;
                    continue;
                }
                let start_line = line;
                j += 1;
                let s = j;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < n && !b[j..].starts_with(&close) {
                    if b[j] == b'\n' {
                        line += 1;
                    }
                    j += 1;
                }
                out.push(Tok::Str(start_line, src[s..j.min(n)].to_string()));
                i = j + close.len();
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if i + 2 < n && b[i + 1] == b'\\' {
                    let mut j = i + 2;
                    while j < n && b[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                } else if i + 2 < n && b[i + 2] == b'\'' {
                    i += 3;
                } else {
                    // Multi-byte char ('é') or a lifetime.
                    let rest = &src[i + 1..];
                    let ch = rest.chars().next().map(char::len_utf8).unwrap_or(1);
                    if rest.as_bytes().get(ch) == Some(&b'\'') {
                        i += 2 + ch;
                    } else {
                        i += 1;
                    }
                }
                out.push(Tok::Other);
            }
            b'{' => {
                out.push(Tok::Open);
                i += 1;
            }
            b'}' => {
                out.push(Tok::Close);
                i += 1;
            }
            b';' => {
                out.push(Tok::Semi);
                i += 1;
            }
            b'#' if i + 1 < n && (b[i + 1] == b'[' || b[i + 1] == b'!') => {
                // An attribute: up to its matching `]`.
                let mut j = i + 1;
                while j < n && b[j] != b'[' {
                    j += 1;
                }
                let s = j;
                let mut depth = 0;
                while j < n {
                    match b[j] {
                        b'[' => depth += 1,
                        b']' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        b'\n' => line += 1,
                        _ => {}
                    }
                    j += 1;
                }
                let attr: String = src[s..(j + 1).min(n)]
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                out.push(if attr == "[cfg(test)]" {
                    Tok::CfgTest
                } else {
                    Tok::Other
                });
                i = j + 1;
            }
            c if is_ident(c) => {
                let s = i;
                while i < n && is_ident(b[i]) {
                    i += 1;
                }
                out.push(Tok::Word(src[s..i].to_string()));
            }
            _ => {
                if !c.is_ascii_whitespace() {
                    out.push(Tok::Other);
                }
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The string literals outside `#[cfg(test)]` items, and the names of the file
/// modules declared under `#[cfg(test)]` (`#[cfg(test)] mod x;`).
fn product_literals(src: &str) -> (Vec<Literal>, Vec<String>) {
    let toks = lex(src);
    let mut lits = Vec::new();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::CfgTest => {
                // Skip the item: to its `;` (before any brace) or its closing brace.
                let mut j = i + 1;
                let mut depth = 0usize;
                let mut words: Vec<String> = Vec::new();
                while j < toks.len() {
                    match &toks[j] {
                        Tok::Open => depth += 1,
                        Tok::Close => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                break;
                            }
                        }
                        Tok::Semi if depth == 0 => {
                            if let Some(p) = words.iter().position(|w| w == "mod")
                                && let Some(name) = words.get(p + 1)
                            {
                                test_mods.push(name.clone());
                            }
                            break;
                        }
                        Tok::Word(w) if depth == 0 => words.push(w.clone()),
                        _ => {}
                    }
                    j += 1;
                }
                i = j + 1;
            }
            Tok::Str(line, text) => {
                lits.push(Literal {
                    line: *line,
                    text: text.clone(),
                });
                i += 1;
            }
            _ => i += 1,
        }
    }
    (lits, test_mods)
}

fn is_test_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut ents: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    ents.sort();
    for p in ents {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// What a scan found, and which product files it read (paths relative to the root).
struct Scan {
    hits: Vec<Hit>,
    read: Vec<PathBuf>,
}

/// Is this literal a protocol word: one of `words`, or a severity word on a
/// line that names a severity?
fn is_word(text: &str, line: &str, words: &[&str]) -> bool {
    words.contains(&text)
        || (SEVERITY_WORDS.contains(&text) && line.to_ascii_lowercase().contains("severity"))
}

/// The words quoted as SQL strings inside a literal (`state = 'Queued'`), as
/// `'word'`. `Done` and `New`, too ordinary for a whole literal, are certain
/// here.
fn sql_words(text: &str, words: &[&str]) -> Vec<String> {
    words
        .iter()
        .chain(["Done", "New"].iter())
        .chain(SEVERITY_WORDS.iter())
        .map(|w| format!("'{w}'"))
        .filter(|q| text.contains(q.as_str()))
        .collect()
}

/// Every word literal in the product code of the crates under `root/host`
/// (except host/protocol), with paths relative to `root`.
fn scan(root: &Path, words: &[&str], allowed: &[(&str, &str, &str)]) -> Scan {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("host"))
        .unwrap_or_else(|e| panic!("{}: {e}", root.join("host").display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    let mut hits = Vec::new();
    let mut read = Vec::new();
    for c in crates {
        if c.file_name().is_some_and(|n| n == "protocol") {
            continue;
        }
        let mut files = Vec::new();
        rs_files(&c.join("src"), &mut files);
        rs_files(&c.join("examples"), &mut files);
        if c.join("build.rs").is_file() {
            files.push(c.join("build.rs"));
        }
        let mut parsed = Vec::new();
        let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
        for f in &files {
            let src = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let (lits, mods) = product_literals(&src);
            let dir = f.parent().unwrap_or(Path::new(""));
            // `mod x;` in a.rs or mod.rs/lib.rs/main.rs: x.rs beside it or a/x.rs.
            let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            for m in mods {
                test_only.insert(dir.join(format!("{m}.rs")));
                test_only.insert(dir.join(&m).join("mod.rs"));
                test_only.insert(dir.join(stem).join(format!("{m}.rs")));
            }
            parsed.push((f.clone(), src, lits));
        }
        for (f, src, lits) in parsed {
            if is_test_file(&f) || test_only.contains(&f) {
                continue;
            }
            let rel = f.strip_prefix(root).unwrap_or(&f).to_path_buf();
            let rel_s = rel.to_string_lossy().replace('\\', "/");
            read.push(rel.clone());
            let lines: Vec<&str> = src.lines().collect();
            for l in lits {
                let line = lines.get(l.line.saturating_sub(1)).copied().unwrap_or("");
                if is_word(&l.text, line, words)
                    && !allowed.iter().any(|(p, w, _)| *p == rel_s && *w == l.text)
                {
                    hits.push(Hit {
                        file: rel.clone(),
                        line: l.line,
                        word: l.text.clone(),
                    });
                }
                for q in sql_words(&l.text, words) {
                    if !allowed.iter().any(|(p, w, _)| *p == rel_s && *w == q) {
                        hits.push(Hit {
                            file: rel.clone(),
                            line: l.line,
                            word: q,
                        });
                    }
                }
            }
        }
    }
    hits.sort();
    Scan { hits, read }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

#[test]
fn no_protocol_word_is_a_literal_outside_molt_protocol() {
    let root = repo_root();
    // Every allowance is still needed (a stale one would hide a new literal).
    let Scan { hits: all, read } = scan(&root, WORDS, &[]);
    // The scan read every crate's product code (a wrong root must not pass).
    for c in std::fs::read_dir(root.join("host")).unwrap().flatten() {
        let name = c.file_name();
        if name == "protocol" || !c.path().is_dir() {
            continue;
        }
        assert!(
            read.iter()
                .any(|f| f.starts_with(Path::new("host").join(&name))),
            "no product file of host/{} was scanned",
            name.to_string_lossy()
        );
    }
    for f in [
        "host/ops/src/status.rs",
        "host/cli/build.rs",
        "host/server/examples/fleet_sim.rs",
    ] {
        assert!(
            read.iter().any(|r| r == Path::new(f)),
            "{f} was not scanned"
        );
    }
    for (path, word, why) in ALLOWED {
        assert!(
            all.iter()
                .any(|h| h.file == Path::new(path) && h.word == *word),
            "allowance no longer needed: {path} \"{word}\" ({why})"
        );
    }
    let hits = scan(&root, WORDS, ALLOWED).hits;
    assert!(
        hits.is_empty(),
        "protocol words written as literals outside host/protocol (use the molt_protocol types):\n{}",
        hits.iter()
            .map(|h| format!("  {h}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_scanner_fails_on_an_inserted_literal() {
    let t = std::env::temp_dir().join(format!("molt-protocol-words-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    let src = t.join("host/demo/src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(t.join("host/protocol/src")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        concat!(
            "//! \"Rolled Back\" in a comment is fine.\n",
            "mod sub;\n",
            "#[cfg(test)]\n",
            "mod helpers;\n",
            "fn f() -> &'static str {\n",
            "    let _c = '{';\n",
            "    let _s = \"Rolled Back: with more words\";\n",
            "    \"In Progress\"\n",
            "}\n",
            "#[cfg(test)]\n",
            "mod tests {\n",
            "    fn g() { let _ = \"Rolled Back\"; }\n",
            "}\n",
            "fn h() -> &'static str { r#\"autoUpgrade\"# }\n",
            "fn sev(s: Severity) -> &'static str { match s { Severity::Warning => \"warning\" } }\n",
            "fn level() -> &'static str { \"info\" }\n",
            "fn q() -> &'static str { \"UPDATE c SET state = 'Delivered' WHERE state != 'New'\" }\n",
        ),
    )
    .unwrap();
    std::fs::create_dir_all(t.join("host/demo/examples")).unwrap();
    std::fs::write(
        t.join("host/demo/examples/sim.rs"),
        "fn main() { let _ = \"Resolved\"; }\n",
    )
    .unwrap();
    std::fs::write(
        t.join("host/demo/build.rs"),
        "fn main() { let _ = \"Down\"; }\n",
    )
    .unwrap();
    std::fs::write(src.join("sub.rs"), "pub const S: &str = \"Up\";\n").unwrap();
    std::fs::write(src.join("helpers.rs"), "pub const S: &str = \"Down\";\n").unwrap();
    std::fs::write(src.join("x_tests.rs"), "const S: &str = \"Failed\";\n").unwrap();
    std::fs::write(
        t.join("host/protocol/src/lib.rs"),
        "pub const S: &str = \"Up\";\n",
    )
    .unwrap();
    let hits: Vec<String> = scan(&t, WORDS, &[])
        .hits
        .iter()
        .map(|h| h.to_string())
        .collect();
    let _ = std::fs::remove_dir_all(&t);
    assert_eq!(
        hits,
        vec![
            "host/demo/build.rs:1: \"Down\"".to_string(),
            "host/demo/examples/sim.rs:1: \"Resolved\"".to_string(),
            "host/demo/src/lib.rs:8: \"In Progress\"".to_string(),
            "host/demo/src/lib.rs:14: \"autoUpgrade\"".to_string(),
            "host/demo/src/lib.rs:15: \"warning\"".to_string(),
            "host/demo/src/lib.rs:17: \"'Delivered'\"".to_string(),
            "host/demo/src/lib.rs:17: \"'New'\"".to_string(),
            "host/demo/src/sub.rs:1: \"Up\"".to_string(),
        ]
    );
    // And the same file is allowed when listed.
    let hits = {
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("lib.rs"), "const S: &str = \"upgrade\";\n").unwrap();
        let h = scan(&t, WORDS, &[("host/demo/src/lib.rs", "upgrade", "test")]).hits;
        let _ = std::fs::remove_dir_all(&t);
        h
    };
    assert!(hits.is_empty(), "{hits:?}");
}

#[test]
fn the_word_list_is_the_protocols_words() {
    let mut protocol: BTreeSet<&str> = BTreeSet::new();
    protocol.extend(Stage::ALL.iter().map(|w| w.as_str()));
    protocol.extend(StageState::ALL.iter().map(|w| w.as_str()));
    protocol.extend(AttemptResult::ALL.iter().map(|w| w.as_str()));
    protocol.extend(AgentStatus::ALL.iter().map(|w| w.as_str()));
    protocol.extend(CommandKind::ALL.iter().map(|w| w.as_str()));
    protocol.extend(CommandState::ALL.iter().map(|w| w.as_str()));
    protocol.extend(IssueState::ALL.iter().map(|w| w.as_str()));
    protocol.extend(Readiness::ALL.iter().map(|w| w.as_str()));
    // "Done" (a command state) and "New" (an issue state) are left out: they
    // are also ordinary text in many log and answer strings; CommandState::Done
    // and IssueState::New are used where the state is meant.
    protocol.remove("Done");
    protocol.remove("New");
    let list: BTreeSet<&str> = WORDS.iter().copied().collect();
    assert_eq!(list, protocol);
    assert_eq!(list.len(), WORDS.len(), "a word is listed twice");
    let severities: BTreeSet<&str> = FindingSeverity::ALL.iter().map(|w| w.as_str()).collect();
    assert_eq!(
        SEVERITY_WORDS.iter().copied().collect::<BTreeSet<_>>(),
        severities
    );
}
