//! Pack and sign the standard precheck and selector bundles from built guest
//! `.wasm` files, with the TEST-ONLY key (created on first use).
//!
//! cargo run -p molt-sandbox --example pack_bundles -- <wasm-dir> <out-dir>
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use molt_bundle::editor::{new_root, sign_root};
use molt_bundle::{Component, PackSpec, SignedRoot, SigningKey, pack_dir, sign_bundle};
use molt_sandbox::testing::{STANDARD_CHECKS, shipped_component as comp};

pub const VERSION: &str = "xanadu-07-01-2024__patch0-07-01-2024_07-01-2024_1200";
const KEY: &str = "TEST-ONLY-checks.pk8";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: pack_bundles <wasm-dir> <out-dir>".into());
    }
    let wasm_dir = PathBuf::from(&args[1]);
    let out = PathBuf::from(&args[2]);
    std::fs::create_dir_all(&out)?;
    let key_path = out.join(KEY);
    let key = if key_path.is_file() {
        SigningKey::load(&key_path)?
    } else {
        let (k, pk8) = SigningKey::generate()?;
        std::fs::write(&key_path, pk8)?;
        k
    };
    let root_path = out.join("root.json");
    let root_ok = SignedRoot::load(&root_path)
        .map(|r| r.signed.keys.contains_key(key.key_id()))
        .unwrap_or(false);
    if !root_ok {
        let mut roles = BTreeMap::new();
        for r in ["root", "checks", "packages"] {
            roles.insert(r.to_string(), (vec![&key], 1));
        }
        let signed = new_root(&roles, chrono::Utc::now() + chrono::Duration::days(3650))?;
        let mut root = SignedRoot {
            signed,
            signatures: vec![],
        };
        sign_root(&mut root, &[&key])?;
        std::fs::write(&root_path, root.to_json_pretty()?)?;
    }
    let stage = tempdir(&out)?;
    // precheck bundle
    let p = stage.join("precheck");
    std::fs::create_dir_all(p.join("checks"))?;
    let mut comps = Vec::new();
    for (name, caps, pre, params) in STANDARD_CHECKS {
        std::fs::copy(
            wasm_dir.join(format!("{name}.wasm")),
            p.join(format!("checks/{name}.wasm")),
        )?;
        comps.push(comp(
            &format!("checks/{name}.wasm"),
            "precheck",
            caps,
            pre,
            params,
        ));
    }
    pack(&p, "molt-precheck", comps, &out, &key)?;
    // selector bundle
    let s = stage.join("selector");
    std::fs::create_dir_all(&s)?;
    std::fs::copy(
        wasm_dir.join("version_select.wasm"),
        s.join("version_select.wasm"),
    )?;
    pack(
        &s,
        "molt-selector",
        vec![comp("version_select.wasm", "selector", &["log"], &[], &[])],
        &out,
        &key,
    )?;
    // hostile test guest (raw wasm: tests build their own manifests for it)
    std::fs::create_dir_all(out.join("test-guests"))?;
    std::fs::copy(
        wasm_dir.join("hostile.wasm"),
        out.join("test-guests/hostile.wasm"),
    )?;
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}

fn tempdir(out: &Path) -> std::io::Result<PathBuf> {
    let d = out.join(format!(".stage-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn pack(
    src: &Path,
    product: &str,
    comps: Vec<Component>,
    out: &Path,
    key: &SigningKey,
) -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("{product}.{VERSION}.universal.universal.zip");
    let mut spec = PackSpec::from_buildstamp(&name, 1)?;
    spec.expires = chrono::Utc::now() + chrono::Duration::days(3650);
    spec.components = comps;
    let path = out.join(&name);
    pack_dir(src, &spec, &path)?;
    let digest = sign_bundle(&path, &[key])?;
    println!("{} {digest}", path.display());
    Ok(())
}
