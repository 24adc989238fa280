//! End-to-end tests of `molt keygen`, `molt root`, `molt bundle` and
//! `molt buildstamp` through the real binary, on real files.
use std::path::Path;
use std::process::{Command, Output};

use molt_e2e::agent_fx::molt_bin;

struct Run {
    code: i32,
    out: String,
    err: String,
}

fn molt(dir: &Path, args: &[&str]) -> Run {
    let o: Output = Command::new(molt_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let r = molt(dir, args);
    assert_eq!(r.code, 0, "molt {args:?} failed:\n{}\n{}", r.out, r.err);
    r.out
}

const V1: &str = "vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815";
fn core(v: &str) -> String {
    format!("molt-core.{v}.universal.universal.zip")
}

/// Keys (TEST-ONLY), root.json and a payload dir in a temp dir. Returns key ids.
struct Kit {
    tmp: tempfile::TempDir,
}

impl Kit {
    fn new() -> Kit {
        let tmp = tempfile::TempDir::new().unwrap();
        let d = tmp.path();
        for k in ["root", "checks", "packages"] {
            let out = ok(d, &["keygen", "--out", &format!("{k}-TEST-ONLY.pk8")]);
            assert!(out.contains("key id: "), "{out}");
        }
        ok(
            d,
            &[
                "root",
                "init",
                "--out",
                "root.json",
                "--root-key",
                "root-TEST-ONLY.pk8",
                "--checks-key",
                "checks-TEST-ONLY.pk8",
                "--packages-key",
                "packages-TEST-ONLY.pk8",
            ],
        );
        std::fs::create_dir_all(d.join("payload/bin")).unwrap();
        std::fs::write(d.join("payload/bin/run.sh"), "#!/bin/sh\necho up\n").unwrap();
        std::fs::write(
            d.join("payload/notes.txt"),
            "Current packages: Installed\n".repeat(50),
        )
        .unwrap();
        Kit { tmp }
    }
    fn d(&self) -> &Path {
        self.tmp.path()
    }
    fn key_id(&self, name: &str) -> String {
        let pk8 = std::fs::read(self.d().join(format!("{name}-TEST-ONLY.pk8"))).unwrap();
        molt_bundle::SigningKey::from_pkcs8(&pk8)
            .unwrap()
            .key_id()
            .to_string()
    }
    /// `molt bundle verify --root root.json --state state BUNDLE`, which must pass.
    fn verify_with_state(&self, bundle: &str) -> String {
        let args = [
            "bundle",
            "verify",
            "--root",
            "root.json",
            "--state",
            "state",
        ];
        let mut args = args.to_vec();
        args.push(bundle);
        ok(self.d(), &args)
    }
    fn pack(&self, out: &str, seq: u64, key: &str) -> String {
        ok(
            self.d(),
            &[
                "bundle",
                "pack",
                "payload",
                "--buildstamp",
                &core(V1),
                "--sequence",
                &seq.to_string(),
                "--out",
                out,
                "--key",
                &format!("{key}-TEST-ONLY.pk8"),
            ],
        )
    }
}

#[test]
fn pack_sign_verify_human_and_json() {
    let k = Kit::new();
    let out = k.pack("b.zip", 1, "packages");
    assert!(out.contains("packed b.zip: 2 files"), "{out}");
    let v = ok(k.d(), &["bundle", "verify", "--root", "root.json", "b.zip"]);
    assert!(v.starts_with("VALID b.zip"), "{v}");
    assert!(v.contains("name:       molt-core"), "{v}");
    assert!(
        v.contains("kind:       core (signed by role `packages`)"),
        "{v}"
    );
    assert!(v.contains(&format!("buildstamp: {}", core(V1))), "{v}");
    assert!(v.contains("sequence:   1"), "{v}");
    assert!(v.contains(&k.key_id("packages")), "{v}");
    let j: serde_json::Value = serde_json::from_str(&ok(
        k.d(),
        &[
            "bundle",
            "verify",
            "--root",
            "root.json",
            "b.zip",
            "--json",
            "--deep",
        ],
    ))
    .unwrap();
    assert_eq!(j["valid"], true);
    assert_eq!(j["name"], "molt-core");
    assert_eq!(j["kind"], "core");
    assert_eq!(j["role"], "packages");
    assert_eq!(j["sequence"], 1);
    assert_eq!(j["deep"], true);
    assert_eq!(j["signers"][0], k.key_id("packages").as_str());
    let i = ok(k.d(), &["bundle", "inspect", "b.zip"]);
    assert!(
        i.contains("NOT VERIFIED") && i.contains("bin/run.sh"),
        "{i}"
    );
    let x = ok(
        k.d(),
        &["bundle", "extract", "--root", "root.json", "b.zip", "out"],
    );
    assert!(x.contains("extracted 2 files"), "{x}");
    assert_eq!(
        std::fs::read_to_string(k.d().join("out/bin/run.sh")).unwrap(),
        "#!/bin/sh\necho up\n"
    );
}

#[test]
fn invalid_bundles_exit_1_and_say_why() {
    let k = Kit::new();
    k.pack("b.zip", 1, "packages");
    let mut bytes = std::fs::read(k.d().join("b.zip")).unwrap();
    bytes[40] ^= 1; // inside the compressed manifest
    std::fs::write(k.d().join("bad.zip"), &bytes).unwrap();
    let (text, error) = refused(k.d(), "bad.zip");
    assert!(text.contains("reason: bundle bad.zip:"), "{text}");
    assert!(error.contains("bad.zip"), "{error}");
    // Signed by the wrong role's key.
    k.pack("wrong.zip", 1, "checks");
    let (text, _) = refused(k.d(), "wrong.zip");
    assert!(text.contains("not a key of role `packages`"), "{text}");
}

/// `molt bundle verify --root root.json BUNDLE`, text and `--json`: both
/// must exit 1 and say INVALID. Returns the text and the JSON `error`.
fn refused(dir: &Path, bundle: &str) -> (String, String) {
    let text = molt(dir, &["bundle", "verify", "--root", "root.json", bundle]);
    assert_eq!(text.code, 1, "{}{}", text.out, text.err);
    assert!(
        text.out.starts_with(&format!("INVALID {bundle}")),
        "{}",
        text.out
    );
    let args = ["bundle", "verify", "--root", "root.json", bundle, "--json"];
    let json = molt(dir, &args);
    assert_eq!(json.code, 1, "{}{}", json.out, json.err);
    let j: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    assert_eq!(j["valid"], false);
    let error = j["error"].as_str().unwrap().to_string();
    (text.out, error)
}

/// A bundle from a newer molt (its signature slot says format 3): refused
/// with the one message that says what to do, in text and JSON.
#[test]
fn a_newer_bundle_format_says_what_to_do() {
    let k = Kit::new();
    k.pack("b.zip", 1, "packages");
    let mut bytes = std::fs::read(k.d().join("b.zip")).unwrap();
    let at = bytes
        .windows(10)
        .rposition(|w| w == b"{\"format\":")
        .expect("signature slot");
    bytes[at + 10] = b'3';
    std::fs::write(k.d().join("new.zip"), &bytes).unwrap();
    let want = "bundle new.zip: bundle format 3 is newer than this molt understands (1 or 2): upgrade molt (agents before the control plane's packages), or pack with --format 1";
    let (text, error) = refused(k.d(), "new.zip");
    assert!(text.contains(&format!("reason: {want}")), "{text}");
    assert!(error.contains(want), "{error}");

    // What the message advises exists: `--format 1` packs what older agents
    // read (whole-file signatures only), and it verifies.
    let pack_as = |format: &str, seq: &str, out: &str| {
        let core = core(V1);
        let args = [
            "bundle",
            "pack",
            "payload",
            "--buildstamp",
            &core,
            "--sequence",
            seq,
            "--out",
            out,
            "--format",
            format,
            "--key",
            "packages-TEST-ONLY.pk8",
        ];
        molt(k.d(), &args)
    };
    let packed = pack_as("1", "2", "v1.zip");
    assert_eq!(packed.code, 0, "{}", packed.err);
    let packed = packed.out;
    assert!(packed.contains("packed v1.zip"), "{packed}");
    let i = ok(k.d(), &["bundle", "inspect", "v1.zip"]);
    assert!(
        i.contains("format:     1 (whole-file signatures only)"),
        "{i}"
    );
    let i2 = ok(k.d(), &["bundle", "inspect", "b.zip"]);
    assert!(i2.contains("format:     2 ("), "{i2}");
    let v = ok(
        k.d(),
        &["bundle", "verify", "--root", "root.json", "v1.zip"],
    );
    assert!(v.starts_with("VALID v1.zip"), "{v}");
    let bad = pack_as("9", "3", "v9.zip");
    assert_ne!(bad.code, 0);
    assert!(
        bad.err.contains("bundle format 9 (known: 1 or 2)"),
        "{}",
        bad.err
    );
}

#[test]
fn usage_errors_exit_2() {
    let k = Kit::new();
    let r = molt(k.d(), &["bundle", "verify", "b.zip"]);
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(r.err.contains("--root"), "{}", r.err);
    assert_eq!(molt(k.d(), &["bundle", "verify", "--bogus"]).code, 2);
    let h = ok(k.d(), &["bundle", "verify", "--help"]);
    assert!(
        h.contains("Exit 0 valid, 1 invalid, 2 usage") && h.contains("--state"),
        "{h}"
    );
}

#[test]
fn state_dir_refuses_a_replayed_lower_sequence() {
    let k = Kit::new();
    k.pack("s2.zip", 2, "packages");
    k.pack("s1.zip", 1, "packages");
    k.verify_with_state("s2.zip");
    let r = molt(k.d(), &["bundle", "verify", "--state", "state", "s1.zip"]);
    assert_eq!(r.code, 1);
    assert!(
        r.out
            .contains("replayed or older bundle refused: `molt-core` sequence 1 is lower than 2"),
        "{}",
        r.out
    );
    // Stateless verification has no memory and accepts it.
    ok(
        k.d(),
        &["bundle", "verify", "--root", "root.json", "s1.zip"],
    );
    let seq: serde_json::Value =
        serde_json::from_slice(&std::fs::read(k.d().join("state/sequences.json")).unwrap())
            .unwrap();
    assert_eq!(seq["sequences"]["molt-core"], 2);
}

#[test]
fn root_rotation_through_the_cli() {
    let k = Kit::new();
    k.pack("old.zip", 1, "packages");
    k.verify_with_state("old.zip");
    ok(k.d(), &["keygen", "--out", "packages2-TEST-ONLY.pk8"]);
    let old_id = k.key_id("packages");
    let out = ok(
        k.d(),
        &[
            "root",
            "rotate",
            "--from",
            "root.json",
            "--out",
            "root2.json",
            "--add-key",
            "packages=packages2-TEST-ONLY.pk8",
            "--revoke",
            &old_id[..16],
            "--key",
            "root-TEST-ONLY.pk8",
        ],
    );
    assert!(
        out.contains("root version 2") && out.contains("rotation from version 1 is acceptable"),
        "{out}"
    );
    let a = ok(k.d(), &["root", "apply", "--state", "state", "root2.json"]);
    assert!(a.contains("rotated from version 1 to 2"), "{a}");
    // Re-applying (or an older root) is refused.
    let r = molt(k.d(), &["root", "apply", "--state", "state", "root2.json"]);
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains("is not newer than the trusted version 2"),
        "{}",
        r.err
    );
    // The old packages key is revoked; the new one signs.
    let r = molt(k.d(), &["bundle", "verify", "--state", "state", "old.zip"]);
    assert_eq!(r.code, 1);
    assert!(r.out.contains("key revoked in root version 2"), "{}", r.out);
    k.pack("new.zip", 2, "packages2");
    ok(k.d(), &["bundle", "verify", "--state", "state", "new.zip"]);
}

/// The seeds' package names (one list, with molt-bundle's and the guests' tests).
use molt_bundle::buildstamp::SEED_NAMES;

#[test]
fn buildstamp_parses_sorts_and_rejects() {
    let d = tempfile::TempDir::new().unwrap();
    let mut args = vec!["buildstamp", "--sort"];
    args.extend(SEED_NAMES.iter().rev());
    let out = ok(d.path(), &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), SEED_NAMES.len());
    assert!(
        lines[0].starts_with("mid-jre.madrid-12-18-2018__patch1-02-13-2019"),
        "{out}"
    );
    // Nine names: the madrid hotfix2 core and jre share a version (core first).
    assert!(lines[7].contains("quebec-12-09-2020__patch1-"), "{out}");
    assert!(
        lines[8].starts_with("mid-upgrade.quebec-12-09-2020__patch1-"),
        "{out}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(d.path(), &["buildstamp", "--json", SEED_NAMES[0]])).unwrap();
    assert_eq!(j[0]["family"], "madrid");
    assert_eq!(j[0]["patch"], 1);
    assert_eq!(j[0]["hotfix"], 2);
    assert_eq!(j[0]["built"], "2019-03-20T13:04");
    assert_eq!(j[0]["os"], "universal");
    let h = ok(d.path(), &["buildstamp", SEED_NAMES[4]]);
    assert!(
        h.contains("kind:        jre (runtime)") && h.contains("os/arch:     windows/x86-64"),
        "{h}"
    );
    let r = molt(d.path(), &["buildstamp", "mid-core...zip"]);
    assert_eq!(r.code, 1);
    assert!(
        r.err
            .contains("Not a valid package buildstamp: mid-core...zip: the version is elided"),
        "{}",
        r.err
    );
}

#[test]
fn verify_explain_names_the_signer_role_sequence_and_capabilities() {
    // The committed precheck bundle: real components requesting capabilities.
    let sb = molt_e2e::agent_fx::signed_bundles_dir();
    let bundle = molt_e2e::agent_fx::signed_bundle("precheck")
        .expect("a committed precheck bundle in signed-bundles/");
    let tmp = tempfile::TempDir::new().unwrap();
    let root = sb.join("root.json");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "bundle".to_string(),
            "verify".into(),
            "--root".into(),
            root.to_str().unwrap().into(),
            "--state".into(),
            "state".into(),
            "--explain".into(),
            bundle.to_str().unwrap().into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let first: Vec<String> = args(&[]);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let out = ok(tmp.path(), &first);
    assert!(out.starts_with("VALID "), "{out}");
    assert!(out.contains("is a precheck package"), "{out}");
    assert!(out.contains("for role `checks`"), "{out}");
    assert!(
        out.contains("nothing accepted for `molt-precheck` on this host yet"),
        "{out}"
    );
    assert!(out.contains("wasm component(s)"), "{out}");
    // The disk check requests the host facts capability; the explanation says so.
    assert!(out.contains("may read host facts"), "{out}");
    // The second time, the host remembers the sequence it accepted.
    let out = ok(tmp.path(), &first);
    assert!(out.contains("this host has accepted up to"), "{out}");
    // --explain and --json are exclusive: a usage error, exit 2.
    let both: Vec<String> = args(&["--json"]);
    let both: Vec<&str> = both.iter().map(String::as_str).collect();
    assert_eq!(molt(tmp.path(), &both).code, 2);
}

#[test]
fn buildstamp_takes_lettered_security_patches_in_release_order() {
    let d = tempfile::TempDir::new().unwrap();
    let name = |p: &str| {
        format!(
            "mid-core.helsinki-03-16-2016__{p}-08-25-2017_08-25-2017_1200.universal.universal.zip"
        )
    };
    // The seeds' platform tags real builds like `glide-helsinki-03-16-2016__patch12a-08-25-2017`.
    let h = ok(d.path(), &["buildstamp", &name("patch12a")]);
    assert!(h.contains("12a"), "{h}");
    let given = [
        "patch7",
        "patch6a-hotfix1",
        "patch6",
        "patch6a",
        "patch6-hotfix2",
        "patch6b",
    ];
    let names: Vec<String> = given.iter().map(|p| name(p)).collect();
    let mut args = vec!["buildstamp", "--sort"];
    args.extend(names.iter().map(String::as_str));
    let out = ok(d.path(), &args);
    let order: Vec<&str> = out
        .lines()
        .map(|l| {
            given
                .iter()
                .copied()
                .filter(|p| l.contains(&format!("__{p}-")))
                .max_by_key(|p| p.len())
                .unwrap_or("?")
        })
        .collect();
    assert_eq!(
        order,
        [
            "patch6",
            "patch6-hotfix2",
            "patch6a",
            "patch6a-hotfix1",
            "patch6b",
            "patch7"
        ],
        "{out}"
    );
    let r = molt(d.path(), &["buildstamp", &name("patch12ab")]);
    assert_eq!(r.code, 1);
}
