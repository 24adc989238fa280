//! `molt diagnose` on signature and trust failures produced for real: a real
//! `molt serve` assigns packages that a real `molt agent` refuses after
//! downloading them (signed with a key rotated out of the trust root, expired,
//! older than one already accepted, or checked against an expired root).
mod ops_common;

use std::collections::BTreeMap;
use std::time::Duration;

use molt_bundle::SigningKey;
use molt_bundle::chrono::{Duration as CDuration, Utc};
use ops_common::*;

const T: Duration = Duration::from_secs(30);
const V3: &str = "vancouver-06-01-2023__patch4-09-01-2023_09-02-2023_0900";

/// A control plane assigning `V2` (packages already in the kit's dir) and an
/// agent install of `V1` pointed at it, with `extra` config lines.
fn agent_env(k: &Kit, extra: &str) -> (Cp, molt_layout::Home) {
    k.light_release(V1);
    let cp = serve(
        &k.dir.path().join("cp"),
        &k.packages_dir(),
        &["--fleet-version", V2],
    );
    let h = k.light_install(&k.dir.path().join("agent"), V1, &cp.url);
    agent_config(&h, &cp.url, &format!("run_precheck = false\n{extra}"));
    (cp, h)
}

#[test]
fn a_package_signed_by_a_key_rotated_out_of_the_root_is_named_old_signing_key() {
    let k = Kit::new();
    // The v2 packages are signed with the kit's key, the one every root so far trusted.
    k.light_release(V2);
    // The operator installs root version 2: the packages role moves to a new key
    // (signed by the old root key, as a rotation must be).
    let new_key = SigningKey::generate().unwrap().0;
    let mut roles = BTreeMap::new();
    for r in ["root", "checks", "packages"] {
        roles.insert(r.to_string(), (vec![&new_key], 1));
    }
    let mut signed =
        molt_bundle::editor::new_root(&roles, Utc::now() + CDuration::days(30)).unwrap();
    signed.version = 2;
    let mut root2 = molt_bundle::SignedRoot {
        signed,
        signatures: vec![],
    };
    molt_bundle::editor::sign_root(&mut root2, &[&k.key, &new_key]).unwrap();
    let root2_path = k.dir.path().join("root-v2.json");
    std::fs::write(&root2_path, root2.to_json_pretty().unwrap()).unwrap();
    let (_cp, h) = agent_env(&k, &format!("trust_root = \"{}\"\n", root2_path.display()));
    let log = run_agent_until_download_failed(&h, T);
    assert!(log.contains("Trusted root rotated"), "{log}");

    // The specific cause hides the generic signature failure.
    assert_diagnosed(
        &h,
        "old-signing-key",
        "unknown key (not in root version 2)",
        &["signature-failed", "download-failed"],
    );
}

#[test]
fn an_expired_package_is_named_bundle_expired() {
    let k = Kit::new();
    k.light_upgrade(V2);
    k.light_core(
        V2,
        PackOpts {
            expires: Some(Utc::now() - CDuration::days(1)),
            ..PackOpts::default()
        },
        &[],
    );
    let (_cp, h) = agent_env(&k, "");
    run_agent_until_download_failed(&h, T);

    assert_diagnosed(
        &h,
        "bundle-expired",
        "bundle `molt-core` expired at",
        &["signature-failed", "old-signing-key"],
    );
}

#[test]
fn an_older_package_than_one_already_accepted_is_named_replayed_bundle() {
    let k = Kit::new();
    // v2's core is signed with sequence 5 and accepted by the agent...
    k.light_upgrade(V2);
    k.light_core(
        V2,
        PackOpts {
            sequence: 5,
            ..PackOpts::default()
        },
        &[],
    );
    let (cp, h) = agent_env(&k, "test_skip_handover = true\n");
    let agent = start_agent(&h, &[]);
    wait_agent_log(&h, "hand-over to deploy skipped", T);
    // ...then the control plane assigns v3, whose core carries an older sequence
    // (a mirror serving a package signed before the one already accepted).
    k.light_upgrade(V3);
    k.light_core(
        V3,
        PackOpts {
            sequence: 3,
            ..PackOpts::default()
        },
        &[],
    );
    admin(
        &cp.url,
        "PUT",
        "/api/v1/admin/fleet",
        serde_json::json!({ "version": V3 }),
    );
    wait_download_failed(&h, T);
    drop(agent);

    assert_diagnosed(
        &h,
        "replayed-bundle",
        "replayed or older bundle refused: `molt-core` sequence 3 is lower than 5 already accepted",
        &["signature-failed"],
    );
}

#[test]
fn an_expired_trust_root_is_named_trust_root_problem() {
    let k = Kit::new();
    k.light_release(V2);
    let (_cp, h) = agent_env(&k, "");
    // The install's trusted root (the same key) expired yesterday.
    let expired =
        molt_bundle::editor::single_key_root(&k.key, Utc::now() - CDuration::days(1)).unwrap();
    std::fs::write(
        h.state_dir().join("root.json"),
        expired.to_json_pretty().unwrap(),
    )
    .unwrap();
    run_agent_until_download_failed(&h, T);

    // Every package is refused because of the root, not because it was tampered with.
    assert_diagnosed(
        &h,
        "trust-root-problem",
        "trusted root version 1 expired at",
        &["signature-failed"],
    );
}
