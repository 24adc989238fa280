//! Delta downloads end to end (issue 17): a real agent under the real
//! supervisor (`molt run`), the real deploy runner, real signed format-2
//! packages, served by a real `molt serve` and by a real nginx serving the same
//! files as plain static files (the control plane's `--package-base-url` names
//! it). V1 -> V2 changes one file of a 2 MiB core: the agent reads the metadata
//! with Range, fetches only that entry and is Up on V2; the Download stage says
//! `fetched X of Y bytes (delta)`. nginx with `max_ranges 0` ignores Range: the
//! agent falls back to the full download, says why, and the upgrade completes.
//! A tampered entry: the delta refuses it, the full download is refused by its
//! signature, the attempt fails with the reason and nothing changed on disk.
#[path = "server_common/one_agent.rs"]
mod one_agent;
mod ops_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_e2e::agent_fx::noise_from as noise;
use one_agent::{control_plane, install_v1, stage, wait_attempt_to};
use ops_common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const BIG: usize = 512 * 1024;

/// The changed file of `v`.
fn changed(v: &str) -> Vec<u8> {
    noise(v.bytes().map(u64::from).sum::<u64>() * 7919, 64 * 1024)
}

/// Core and upgrade of `v`: four unchanged 512 KiB files and one that changes.
fn release(k: &Kit, v: &str) -> PathBuf {
    k.light_upgrade(v);
    let mut extra: Vec<(&str, Vec<u8>, u32)> = ["lib/a.bin", "lib/b.bin", "lib/c.bin", "lib/d.bin"]
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, noise(i as u64 + 11, BIG), 0o644))
        .collect();
    extra.push(("lib/changed.bin", changed(v), 0o644));
    k.light_core(v, PackOpts::default(), &extra)
}

/// V1 installed under the supervisor, V1 and V2 released, a control plane
/// assigning V2 whose package site is `site(packages dir)` (None: itself).
struct Setup {
    _k: Kit,
    h: molt_layout::Home,
    cp: Cp,
    _nginx: Option<molt_e2e::nginx::Nginx>,
}

fn setup(site: Option<&str>, tamper: bool) -> Setup {
    let k = Kit::new();
    let core1 = release(&k, V1);
    let core2 = release(&k, V2);
    if tamper {
        // Flip one byte inside the changed entry's data: the control plane's
        // digest is of the tampered file; only the signed manifest can catch it.
        let mut bytes = std::fs::read(&core2).unwrap();
        let c = changed(V2);
        let needle = &c[c.len() / 2..c.len() / 2 + 32];
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the changed entry's bytes are in the package");
        bytes[at + 16] ^= 0xff;
        std::fs::write(&core2, bytes).unwrap();
    }
    // nginx serves the same files: www/packages -> the kit's packages dir.
    let www = k.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::os::unix::fs::symlink(k.packages_dir(), www.join("packages")).unwrap();
    let root = format!("root {};", www.display());
    let ngx = site.map(|conf| molt_e2e::nginx::start(&k.dir.path().join("nginx"), conf, &root));
    let base = ngx.as_ref().map(|n| format!("{}/packages", n.url));
    let mut args = vec!["--fleet-version", V2];
    if let Some(b) = &base {
        args.extend(["--package-base-url", b.as_str()]);
    }
    let cp = control_plane(&k, &args);
    let h = install_v1(&k, &cp.url, &core1);
    Setup {
        _k: k,
        h,
        cp,
        _nginx: ngx,
    }
}

/// The attempt to V2, once it has a result.
fn wait_attempt(url: &str, h: &molt_layout::Home) -> Value {
    wait_attempt_to(url, h, V2)
}

fn download_message(a: &Value) -> String {
    stage(a, "Download Upgrade Packages")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `fetched X of Y bytes (mode…` → (X, Y, the rest).
fn fetched(m: &str) -> (u64, u64, String) {
    let rest = m
        .strip_prefix("fetched ")
        .unwrap_or_else(|| panic!("{m:?}"));
    let (x, rest) = rest.split_once(" of ").unwrap();
    let (y, rest) = rest.split_once(" bytes ").unwrap();
    (x.parse().unwrap(), y.parse().unwrap(), rest.to_string())
}

/// Upgrade to V2 and check the user-visible result; the Download stage message.
fn upgrades(s: &Setup) -> String {
    let svc = Service::start(&s.h);
    let a = wait_attempt(&s.cp.url, &s.h);
    assert_eq!(a["result"], "Complete", "{a:#}");
    svc.wait_up(V2, T);
    let v2 = s.h.version_dir(V2);
    assert_eq!(
        std::fs::read(v2.join("lib/changed.bin")).unwrap(),
        changed(V2)
    );
    assert_eq!(std::fs::read(v2.join("lib/a.bin")).unwrap(), noise(11, BIG));
    download_message(&a)
}

fn assert_delta(m: &str) {
    let (x, y, mode) = fetched(m);
    assert!(mode.starts_with("(delta"), "{m}");
    // The changed entry (64 KiB) and the metadata, not the 2 MiB core.
    assert!(x < y / 2, "{m}");
}

#[test]
fn an_upgrade_from_molt_serve_fetches_only_the_changed_entry() {
    let s = setup(None, false);
    let m = upgrades(&s);
    assert_delta(&m);
    let log = std::fs::read_to_string(s.h.agent_log()).unwrap();
    assert!(
        log.contains("mode=\"delta\"") || log.contains("mode=delta"),
        "{log}"
    );
}

#[test]
fn an_upgrade_from_nginx_serving_static_files_fetches_only_the_changed_entry() {
    let s = setup(Some(""), false);
    let m = upgrades(&s);
    assert_delta(&m);
}

#[test]
fn a_server_without_range_support_gets_the_full_download_and_the_upgrade_completes() {
    let s = setup(Some("max_ranges 0;"), false);
    let m = upgrades(&s);
    let (x, y, mode) = fetched(&m);
    assert!(mode.starts_with("(full)"), "{m}");
    assert!(
        m.contains("the server ignores Range (HTTP 200 instead of 206)"),
        "{m}"
    );
    assert!(x >= y - 1024 * 1024, "{m}");
    let log = std::fs::read_to_string(s.h.agent_log()).unwrap();
    assert!(
        log.contains("Delta download not used; downloading the full package"),
        "{log}"
    );
}

/// Everything the upgrade could change, byte for byte: versions/, current,
/// conf/ (paths, contents, modes, link targets).
fn disk_digest(h: &molt_layout::Home) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut ents: Vec<_> = rd.flatten().collect();
        ents.sort_by_key(|e| e.path());
        for e in ents {
            let p = e.path();
            // The supervisor's lock: made when `molt run` starts, not by an upgrade.
            if p.file_name().is_some_and(|n| n == "supervisor.lock") {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((p.display().to_string(), b"dir".to_vec()));
                walk(&p, out);
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((
                    p.display().to_string(),
                    t.display().to_string().into_bytes(),
                ));
            } else {
                use std::os::unix::fs::PermissionsExt;
                let mut b = std::fs::read(&p).unwrap();
                b.extend(e.metadata().unwrap().permissions().mode().to_le_bytes());
                out.push((p.display().to_string(), b));
            }
        }
    }
    let mut all = Vec::new();
    walk(&h.versions_dir(), &mut all);
    walk(&h.conf_dir(), &mut all);
    all.push((
        "current".into(),
        std::fs::read_link(h.current_link())
            .unwrap()
            .display()
            .to_string()
            .into_bytes(),
    ));
    all
}

#[test]
fn a_tampered_entry_is_refused_by_delta_and_full_and_nothing_changes_on_disk() {
    let s = setup(None, true);
    let before = disk_digest(&s.h);
    let svc = Service::start(&s.h);
    let a = wait_attempt(&s.cp.url, &s.h);
    assert_eq!(a["result"], "Failed", "{a:#}");
    let m = download_message(&a);
    let core = format!("molt-core.{V2}.universal.universal.zip");
    assert!(
        m.contains(&format!("Package {core} refused and deleted")),
        "{m}"
    );
    let log = std::fs::read_to_string(s.h.agent_log()).unwrap();
    // The delta refused the entry first (its SHA-256 against the signed manifest).
    assert!(
        log.lines().any(
            |l| l.contains("Delta download not used; downloading the full package")
                && l.contains(&core)
        ),
        "{log}"
    );
    svc.wait_up(V1, T);
    drop(svc);
    let after = disk_digest(&s.h);
    let changed: Vec<&String> = after
        .iter()
        .filter(|e| !before.contains(e))
        .chain(before.iter().filter(|e| !after.contains(e)))
        .map(|(p, _)| p)
        .collect();
    assert!(
        changed.is_empty(),
        "versions/, current or conf/ changed: {changed:?}"
    );
    assert!(!s.h.incoming_dir().join(&core).exists());
}

/// A build of V2's change downloaded earlier and kept in the package cache
/// (not installed; another version): its entries are a delta source.
const V2_KEPT: &str = "vancouver-06-01-2023__patch3-08-01-2023_08-01-2023_0800";

#[test]
fn a_package_kept_in_the_cache_supplies_entries_so_fewer_bytes_go_on_the_wire() {
    let s = setup(None, false);
    let kept = format!("molt-core.{V2_KEPT}.universal.universal.zip");
    s._k.pki.pack_files(
        &s._k.dir.path().join("src-kept"),
        &[("lib/changed.bin", changed(V2), 0o644)],
        &s.h.incoming_dir().join(&kept),
        PackOpts::default(),
    );
    let m = upgrades(&s);
    assert_delta(&m);
    // The metadata (at most the tail read and the manifest) and lib/core.txt:
    // less than the tail read plus the 64 KiB changed entry, which the cache held.
    let (x, _, _) = fetched(&m);
    assert!(x < molt_bundle::TAIL_GUESS + 64 * 1024, "{m}");
    let log = std::fs::read_to_string(s.h.agent_log()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("Cached package is a delta source") && l.contains(&kept)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("Package was successfully downloaded") && l.contains("cached=1")),
        "{log}"
    );
}
