//! Self-hosted TLS: the control plane and the package site (a second server,
//! not the control plane) serve HTTPS with certificates of a private CA that
//! no public root signed. One setting, `ca_bundle`, makes every client of the
//! host trust it: the agent's control-plane and download client, the
//! sandbox's `net.probe` behind the `download-access` pre-upgrade check, and
//! the deploy runner's health check and reports. Real parts throughout: two
//! real `molt serve` over rustls, a CA and a server certificate made by
//! `openssl`, a real agent under a real supervisor (`molt run`), the real
//! signed precheck components.
mod ops_common;

use std::path::Path;
use std::time::Duration;

use molt_e2e::tls::private_ca;
use ops_common::*;

const T: Duration = Duration::from_secs(90);

/// `GET` on the admin API of a control plane whose certificate `ca` signed.
fn admin_get(url: &str, path: &str, ca: &Path) -> serde_json::Value {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap()
            .get(format!("{url}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    })
}

#[test]
fn a_self_hosted_control_plane_and_package_site_behind_a_private_ca_upgrade_with_ca_bundle() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    // The next version's precheck: `download-access` probes the package site
    // over HTTPS from the sandbox; a TLS failure there is blocking.
    k.side_bundle("precheck", V2, |_, _| {});
    let pki = private_ca(&k.dir.path().join("tls"), "Example Corp Private CA");
    let ca = pki.ca.clone();
    let tls_args = pki.serve_args();
    let tls: Vec<&str> = tls_args.iter().map(String::as_str).collect();

    let mirror = serve(&k.dir.path().join("mirror"), &k.packages_dir(), &tls);
    assert!(mirror.url.starts_with("https://"), "{}", mirror.url);
    let site = format!("{}/packages", mirror.url.trim_end_matches('/'));
    let mut args = vec!["--fleet-version", V2, "--package-base-url", site.as_str()];
    args.extend(tls.iter().copied());
    let cp = serve(&k.dir.path().join("cp"), &k.packages_dir(), &args);
    assert!(cp.url.starts_with("https://"), "{}", cp.url);

    let h = k.light_install(&k.dir.path().join("agent"), V1, &cp.url);

    // Without the CA the agent cannot even reach its control plane, and says why.
    agent_config(&h, &cp.url, "");
    {
        let _agent = start_agent(&h, &[]);
        let log = wait_agent_log(&h, "certificate", T);
        assert!(
            log.contains("UnknownIssuer") || log.contains("invalid peer certificate"),
            "{log}"
        );
    }
    kill_all_of(&h);

    // A bundle that holds no certificate is refused at start, by key.
    let junk = k.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    agent_config(
        &h,
        &cp.url,
        &format!("ca_bundle = {:?}\n", junk.display().to_string()),
    );
    let o = molt(&["agent", "--home", &h.root().display().to_string()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("ca_bundle") && err.contains("BEGIN CERTIFICATE"),
        "{err}"
    );

    // With `ca_bundle` the whole upgrade goes through. The grace period is an
    // hour: the runner's health check can only pass within this test by
    // reaching the control plane over HTTPS itself.
    agent_config(
        &h,
        &cp.url,
        &format!(
            "ca_bundle = {:?}\nhealth_timeout_secs = 60\nhealth_grace_secs = 3600\n",
            ca.display().to_string()
        ),
    );
    let mut svc = Service::start(&h);
    svc.wait_up(V2, T);
    wait_for("the control plane to show the agent Up on v2", T, || {
        let v = admin_get(&cp.url, "/api/v1/admin/agents", &ca);
        let list = v
            .as_array()
            .or(v["agents"].as_array())
            .cloned()
            .unwrap_or_default();
        let Some(a) = list.into_iter().find(|a| a["name"] == "a1") else {
            return false;
        };
        a["status"] == "Up" && a["version"] == V2
    });
    // The sandbox probed the package site over HTTPS and trusted the CA: a
    // TLS failure there is a blocking `download.unreachable` finding.
    let log = std::fs::read_to_string(h.agent_log()).unwrap_or_default();
    assert!(
        log.lines().any(
            |l| l.contains("Pre-upgrade check ran check=download-access")
                && l.contains("findings=0")
        ),
        "download-access did not pass over HTTPS:\n{log}"
    );
    wait_for("the attempt to v2 to be recorded Complete", T, || {
        let attempts = admin_get(&cp.url, "/api/v1/admin/agents/a1/attempts", &ca);
        attempts.as_array().is_some_and(|a| {
            a.iter()
                .any(|t| t["to_version"] == V2 && t["result"] == "Complete")
        })
    });
    svc.stop();
}
