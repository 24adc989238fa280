//! Embeds the check SDK, the logic crate it links and the WIT contract into the
//! binary, so `molt check new` writes a scaffold that builds from its own folder
//! on a machine without this source tree (nothing is read from the tree at run
//! time). Every file under those folders is embedded, so a file added to the SDK
//! later is vendored too; `workspace = true` fields of their Cargo.toml files
//! are resolved from `guest-checks/Cargo.toml`, since the scaffold has no
//! such workspace.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Folders vendored into a scaffold, relative to the repository root; the
/// scaffold keeps the same layout under `vendor/`, so the SDK's relative
/// `../../wit` still resolves.
const VENDORED: &[&str] = &["guest-checks/sdk", "guest-checks/logic", "wit"];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let repo = manifest.join("../..");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let ws_path = repo.join("guest-checks/Cargo.toml");
    let lock_path = repo.join("guest-checks/Cargo.lock");
    println!("cargo:rerun-if-changed={}", ws_path.display());
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let ws = std::fs::read_to_string(&ws_path).expect("guest-checks/Cargo.toml");
    let (ws_package, ws_deps) = workspace_tables(&ws);

    let mut files = Vec::new();
    for dir in VENDORED {
        let abs = repo.join(dir);
        println!("cargo:rerun-if-changed={}", abs.display());
        walk(&abs, dir, &mut files);
    }
    files.sort();
    let mut code = String::from(
        "/// (path under `vendor/`, contents) of every vendored file.\npub const VENDORED_FILES: &[(&str, &[u8])] = &[\n",
    );
    for (rel, abs) in &files {
        if rel.ends_with("Cargo.toml") {
            let text = std::fs::read_to_string(abs).expect("read Cargo.toml");
            let resolved = resolve_workspace_fields(&text, &ws_package, &ws_deps, rel);
            let name = rel.replace(['/', '.', '-'], "_");
            let gen_path = out.join(format!("{name}.vendored"));
            std::fs::write(&gen_path, resolved).expect("write resolved Cargo.toml");
            writeln!(
                code,
                "    ({rel:?}, include_bytes!({:?})),",
                gen_path.display().to_string()
            )
            .ok();
        } else {
            writeln!(
                code,
                "    ({rel:?}, include_bytes!({:?})),",
                abs.display().to_string()
            )
            .ok();
        }
    }
    code.push_str("];\n");
    writeln!(
        code,
        "/// The guests' Cargo.lock: the scaffold builds with the versions the committed guests use.\npub const GUEST_LOCK: &[u8] = include_bytes!({:?});",
        lock_path.display().to_string()
    )
    .ok();
    std::fs::write(out.join("scaffold_files.rs"), code).expect("write scaffold_files.rs");
    embed_demo_bundles(&repo.join("signed-bundles"), &out);
}

/// `molt demo` re-signs the committed precheck and selector bundles; they are
/// embedded (root.json and `molt-{precheck,selector}.*.zip`, about 230 KB) so
/// the binary needs no source tree. A checkout without them embeds nothing and
/// the demo skips the Pre Upgrade Check, as it says.
fn embed_demo_bundles(dir: &Path, out: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let root = dir.join("root.json");
    let mut bundles: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| {
                    (n.starts_with("molt-precheck.") || n.starts_with("molt-selector."))
                        && n.ends_with(".zip")
                })
                .collect()
        })
        .unwrap_or_default();
    bundles.sort();
    let mut code = String::new();
    if root.is_file() {
        println!("cargo:rerun-if-changed={}", root.display());
        writeln!(
            code,
            "/// The committed signed-bundles/root.json.\nconst EMBEDDED_ROOT: Option<&[u8]> = Some(include_bytes!({:?}));",
            root.display().to_string()
        )
        .ok();
    } else {
        code.push_str("const EMBEDDED_ROOT: Option<&[u8]> = None;\n");
    }
    code.push_str("/// (file name, bytes) of the committed check bundles.\nconst EMBEDDED_BUNDLES: &[(&str, &[u8])] = &[\n");
    for (name, path) in &bundles {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .ok();
    }
    code.push_str("];\n");
    std::fs::write(out.join("demo_bundles.rs"), code).expect("write demo_bundles.rs");
}

/// Regular files under `abs` (no `target` dirs, no hidden files), as (path relative to the repo, absolute path).
fn walk(abs: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(abs) else {
        panic!("cannot read {}", abs.display());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let p = e.path();
        let r = format!("{rel}/{name}");
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, &r, out),
            Ok(t) if t.is_file() => out.push((r, p)),
            _ => {}
        }
    }
}

/// `key = value` lines of `[workspace.package]` and `[workspace.dependencies]`.
fn workspace_tables(ws: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut package, mut deps) = (BTreeMap::new(), BTreeMap::new());
    let mut section = "";
    for line in ws.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = match t {
                "[workspace.package]" => "package",
                "[workspace.dependencies]" => "deps",
                _ => "",
            };
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            match section {
                "package" => {
                    package.insert(k, v);
                }
                "deps" => {
                    deps.insert(k, v);
                }
                _ => {}
            }
        }
    }
    (package, deps)
}

/// Replace `x.workspace = true` with the workspace's value; a dependency's
/// `path` is made relative to the crate (it is relative to `guest-checks/`).
fn resolve_workspace_fields(
    text: &str,
    package: &BTreeMap<String, String>,
    deps: &BTreeMap<String, String>,
    rel: &str,
) -> String {
    let mut out = String::new();
    let mut in_package = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_package = t == "[package]";
        }
        let resolved = t.strip_suffix(".workspace = true").and_then(|key| {
            let v = if in_package {
                package.get(key).cloned()
            } else {
                deps.get(key).map(|v| relative_path(v))
            };
            v.map(|v| format!("{key} = {v}"))
        });
        match resolved {
            Some(l) => out.push_str(&l),
            None => {
                if t.contains("workspace = true") {
                    println!("cargo:warning={rel}: cannot resolve `{t}` for the check scaffold");
                }
                out.push_str(line);
            }
        }
        out.push('\n');
    }
    out
}

fn relative_path(v: &str) -> String {
    v.replacen("path = \"", "path = \"../", 1)
}
