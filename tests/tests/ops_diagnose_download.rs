//! `molt diagnose` on Download Upgrade Packages failures produced for real: a
//! real `molt serve` assigns a new version, a real `molt agent` tries to fetch
//! it and fails (download site down, a TLS proxy's certificate, a full disk), and
//! diagnose must name the cause from the lines the agent wrote.
mod ops_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use ops_common::*;

const T: Duration = Duration::from_secs(30);

/// v1 installed with a light core, v1 and v2 released in the packages dir.
fn kit_with_releases() -> Kit {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    k
}

/// V1 installed, a control plane assigning V2 with its packages at `site`,
/// and an agent run (no precheck) until its download failed.
fn download_fails_from(k: &Kit, site: &str) -> (Cp, molt_layout::Home) {
    let cp = serve(
        &k.dir.path().join("cp"),
        &k.packages_dir(),
        &["--fleet-version", V2, "--package-base-url", site],
    );
    let h = k.light_install(&k.dir.path().join("agent"), V1, &cp.url);
    agent_config(&h, &cp.url, "run_precheck = false\n");
    run_agent_until_download_failed(&h, T);
    (cp, h)
}

#[test]
fn an_unreachable_download_site_is_named_download_failed() {
    let k = kit_with_releases();
    // The control plane is up, but the download site it names is not.
    let site = format!("{}/packages", closed_port_url());
    let (_cp, h) = download_fails_from(&k, &site);

    let v = assert_diagnosed(
        &h,
        "download-failed",
        &format!(
            "The agent was unable to download molt-upgrade.{V2}.universal.universal.zip from {site}/"
        ),
        // The control plane itself answered: it is not the cause.
        &["download-tls-failed", "control-plane-unreachable"],
    );
    let f = finding(&v, "download-failed");
    assert!(
        f["evidence"][0]["text"]
            .as_str()
            .unwrap()
            .contains("gave up after 5 attempts"),
        "{f:#}"
    );
}

#[test]
fn a_download_site_behind_an_untrusted_certificate_is_named_download_tls_failed() {
    let k = kit_with_releases();
    // The packages are served over HTTPS with a certificate no public CA signed.
    // A TLS-inspecting proxy's CA, which the agent is not told to trust.
    let pki = molt_e2e::tls::private_ca(&k.dir.path().join("tls"), "Corporate TLS inspection CA");
    let tls_args = pki.serve_args();
    let tls: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let mirror = serve(&k.dir.path().join("mirror"), &k.packages_dir(), &tls);
    assert!(mirror.url.starts_with("https://"), "{}", mirror.url);
    let site = format!("{}/packages", mirror.url.trim_end_matches('/'));
    let (_cp, h) = download_fails_from(&k, &site);

    // The specific cause hides the generic download failure.
    let v = assert_diagnosed(
        &h,
        "download-tls-failed",
        "invalid peer certificate",
        &["download-failed", "control-plane-unreachable"],
    );
    assert!(
        finding(&v, "download-tls-failed")["remediation"]
            .as_str()
            .unwrap()
            .contains("CA certificate"),
        "{v:#}"
    );
}

/// Whether this host lets us mount a tmpfs in a private mount namespace.
fn tmpfs_in_namespace_works() -> Result<(), String> {
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=64k molt-test \"$d\"; rc=$?; umount \"$d\" 2>/dev/null; rmdir \"$d\"; exit $rc")
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot mount a tmpfs in a private mount namespace here ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

#[test]
fn a_full_disk_under_package_incoming_is_named_disk_full() {
    // A real full disk needs a small tmpfs in a private mount namespace (root,
    // as CI runs); where that is impossible the test fails with the reason.
    if let Err(why) = tmpfs_in_namespace_works() {
        panic!("cannot produce a full disk here: {why}");
    }
    let k = Kit::new();
    k.light_release(V1);
    k.light_upgrade(V2);
    // A core package bigger than the space left on the disk.
    k.light_core(
        V2,
        PackOpts::default(),
        &[("lib/big.bin", molt_e2e::agent_fx::noise(512 * 1024), 0o644)],
    );
    let cp = serve(
        &k.dir.path().join("cp"),
        &k.packages_dir(),
        &["--fleet-version", V2],
    );
    let h = k.light_install(&k.dir.path().join("agent"), V1, &cp.url);
    agent_config(&h, &cp.url, "run_precheck = false\n");
    // The agent runs with package/incoming on a 128 KiB file system (a tmpfs in
    // its own mount namespace, gone when it exits).
    let incoming = h.incoming_dir();
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mkdir -p \"$1\" && mount -t tmpfs -o size=128k molt-full \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(&incoming)
        .arg(molt_bin())
        .args(["agent", "--home"])
        .arg(h.root())
        .env_remove("MOLT_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(h.logs_dir().join("agent.console.log")).unwrap())
        .spawn()
        .unwrap();
    let agent = Proc(child);
    wait_download_failed(&h, T);
    drop(agent);

    assert_diagnosed(
        &h,
        "disk-full",
        "No space left on device (os error 28)",
        // Nothing is wrong with the download site.
        &["download-failed", "control-plane-unreachable"],
    );
}
