//! `molt bundle verify --explain`: what a verified bundle is and why it was
//! trusted, in an operator's words: which key signed it for which role, when
//! the keys, the root and the bundle expire, its sequence against the host's
//! history and the root's rollback floor, and what each wasm component asks
//! the sandbox for.
use chrono::{DateTime, Utc};
use molt_bundle::{
    Accept, BundleKind, Manifest, ReplayRule, SignedRoot, VerifiedBundle, check_sequence,
};

fn kind_words(k: BundleKind) -> &'static str {
    match k {
        BundleKind::Core => "the agent itself (bin/ and lib/)",
        BundleKind::Runtime => "the runtime the agent runs on (runtime/, with its truststore)",
        BundleKind::Upgrade => "the upgrade runner that deploys a new version",
        BundleKind::Precheck => {
            "pre-upgrade checks, run in the wasm sandbox before anything is touched"
        }
        BundleKind::Selector => {
            "the version selector, run in the wasm sandbox to choose the target version"
        }
    }
}

fn role_words(role: &str) -> &'static str {
    match role {
        "packages" => "native code the agent installs and runs",
        "checks" => "wasm components that only run inside the sandbox",
        "root" => "the trust root itself",
        _ => "an unknown role",
    }
}

fn capability_words(c: &str) -> String {
    match c {
        "facts" => "read host facts (OS, architecture, runtime, disk space, install paths)".into(),
        "net" => "ask the host to probe allow-listed URLs (DNS, TCP, TLS, HTTP outcome); it never opens a socket itself".into(),
        "services" => "ask the service manager about services (which services run this install)".into(),
        "log" => "write lines to the agent log".into(),
        other => format!("`{other}` (not a capability this host knows: the sandbox will refuse the component)"),
    }
}

fn preopen_words(p: &str) -> String {
    match p {
        "scratch" => "a fresh empty scratch folder, read-write, removed after the run".into(),
        "install" => "the install folder, read-only".into(),
        "staging" => "work/precheck-staging inside the install, read-write (proves the service account may write there)".into(),
        other => format!("`{other}` (unknown folder: the sandbox will refuse the component)"),
    }
}

fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let days = (t - now).num_days();
    let d = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if t < now {
        format!("{d} (EXPIRED {} day(s) ago)", -days)
    } else {
        format!("{d} (in {days} day(s))")
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

/// The sequence line, by the one rollback policy ([`check_sequence`]) as an
/// offline check sees it (not an assignment), naming the root's floor: what
/// the operator reads must be what a host would decide.
fn sequence_words(m: &Manifest, root: &SignedRoot, highest: Option<u64>) -> String {
    let (seq, name, rv) = (m.sequence, &m.name, root.signed.version);
    let floor = root.signed.floor(name);
    match check_sequence(seq, highest, floor, Accept::Newer) {
        Err(ReplayRule::BelowFloor { floor, .. }) => format!(
            "  Sequence {seq}: BELOW the rollback floor {floor} that trusted root version {rv} sets for `{name}`; it would be refused on every host, assigned or not.\n"
        ),
        Err(ReplayRule::NotAssigned {
            highest: h,
            floor: Some(f),
        }) => format!(
            "  Sequence {seq}: LOWER than {h}, already accepted on this host for `{name}`; it would be refused as a replayed older bundle, except as a downgrade the control plane assigns (trusted root version {rv} allows those down to its rollback floor {f}).\n"
        ),
        Err(ReplayRule::NotAssigned { highest: h, .. } | ReplayRule::NoFloor { highest: h }) => {
            format!(
                "  Sequence {seq}: LOWER than {h}, already accepted on this host for `{name}`; it would be refused as a replayed older bundle (trusted root version {rv} sets no rollback floor for it, so not even as an assigned downgrade).\n"
            )
        }
        Ok(_) => {
            let floor = floor.map_or_else(String::new, |f| {
                format!(
                    " Trusted root version {rv} sets rollback floor {f} for it: the control plane may still assign an older one down to {f} (a downgrade), and below {f} it is refused on every host."
                )
            });
            match highest {
                Some(h) => format!(
                    "  Sequence {seq}: this host has accepted up to {h} for `{name}`; a bundle with a lower sequence would be refused as a replay.{floor}\n"
                ),
                None => format!(
                    "  Sequence {seq}: nothing accepted for `{name}` on this host yet; after this one, lower sequences are refused as replays.{floor}\n"
                ),
            }
        }
    }
}

/// Explain `v`, verified against `root`. `highest_accepted` is the sequence this
/// host already accepted for the bundle's name, if known.
pub fn explain(v: &VerifiedBundle, root: &SignedRoot, highest_accepted: Option<u64>) -> String {
    explain_at(v, root, highest_accepted, Utc::now())
}

pub fn explain_at(
    v: &VerifiedBundle,
    root: &SignedRoot,
    highest_accepted: Option<u64>,
    now: DateTime<Utc>,
) -> String {
    let m = &v.manifest;
    let mut s = String::new();
    s.push_str(&format!(
        "{} is a {} package: {}.\n",
        v.buildstamp,
        m.kind,
        kind_words(m.kind)
    ));
    s.push_str(&format!(
        "  Version {} for {}/{}.\n",
        v.buildstamp.version, m.target.os, m.target.arch
    ));
    s.push_str(&format!(
        "  Trusted because {} of the {} signature(s) required for role `{}` ({}) are valid under trusted root version {}:\n",
        v.signers.len(),
        v.threshold,
        v.role,
        role_words(v.role),
        v.root_version
    ));
    for id in &v.signers {
        let short = molt_bundle::error::short_id(id);
        let key = root.signed.keys.get(id);
        let exp = match key.and_then(|k| k.expires) {
            Some(t) => format!("key valid until {}", when(t, now)),
            None => "key has no expiry of its own".into(),
        };
        let roles: Vec<&str> = root
            .signed
            .roles
            .iter()
            .filter(|(_, r)| r.keyids.contains(id))
            .map(|(n, _)| n.as_str())
            .collect();
        s.push_str(&format!(
            "    - key {short}: signed this bundle; {exp}; may sign for: {}\n",
            roles.join(", ")
        ));
    }
    s.push_str(&format!(
        "  The trusted root expires {}.\n",
        when(root.signed.expires, now)
    ));
    s.push_str(&format!(
        "  The bundle was signed {} and expires {}.\n",
        m.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        when(m.expires, now)
    ));
    s.push_str(&sequence_words(m, root, highest_accepted));
    let total: u64 = m.entries.iter().map(|e| e.size).sum();
    s.push_str(&format!(
        "  Content: {} file(s), {} uncompressed; signed digest sha256:{}.\n",
        m.entries.len(),
        bytes(total),
        v.digest
    ));
    if m.components.is_empty() {
        if matches!(m.kind, BundleKind::Precheck | BundleKind::Selector) {
            s.push_str("  It declares no wasm components.\n");
        }
        return s;
    }
    s.push_str(&format!(
        "  It holds {} wasm component(s); each gets only what it requests and the host allows:\n",
        m.components.len()
    ));
    for c in &m.components {
        s.push_str(&format!("    - {} implements `{}`\n", c.path, c.world));
        if c.capabilities.is_empty() {
            s.push_str("        requests no host capabilities (pure computation)\n");
        }
        for cap in &c.capabilities {
            s.push_str(&format!("        may {}\n", capability_words(cap)));
        }
        for p in &c.preopens {
            s.push_str(&format!("        sees {}\n", preopen_words(p)));
        }
        let l = &c.limits;
        let mut lim = Vec::new();
        if let Some(d) = l.deadline_ms {
            lim.push(format!("at most {} ms of wall-clock time", d));
        }
        if let Some(f) = l.fuel {
            lim.push(format!("at most {f} units of fuel"));
        }
        if let Some(mb) = l.memory_bytes {
            lim.push(format!("at most {} of memory", bytes(mb)));
        }
        if lim.is_empty() {
            s.push_str("        limits: the host's defaults\n");
        } else {
            s.push_str(&format!(
                "        limits asked: {} (the host caps them further)\n",
                lim.join(", ")
            ));
        }
        for (k, val) in &c.params {
            s.push_str(&format!("        parameter {k} = {val}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn the_explanation_names_key_role_expiry_sequence_and_capabilities() {
        let k = Kit::new();
        let src = k.dir.path().join("pc");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("checks.wasm"), b"\0asm fake").unwrap();
        let name = format!("molt-precheck.{V2}.universal.universal.zip");
        let mut spec = molt_bundle::PackSpec::from_buildstamp(&name, 7).unwrap();
        spec.components = vec![molt_bundle::Component {
            path: "checks.wasm".into(),
            world: "molt:check/precheck@1.0.0".into(),
            capabilities: vec!["facts".into(), "net".into()],
            preopens: vec!["install".into()],
            limits: molt_bundle::ComponentLimits {
                deadline_ms: Some(2000),
                fuel: None,
                memory_bytes: Some(64 << 20),
            },
            params: Default::default(),
        }];
        let out = k.dir.path().join(&name);
        molt_bundle::pack_dir(&src, &spec, &out).unwrap();
        molt_bundle::sign_bundle(&out, &[&k.key]).unwrap();
        let v = molt_bundle::verify_bundle(&out, &k.root, &Default::default()).unwrap();
        let t = explain(&v, &k.root, Some(6));
        for want in [
            "is a precheck package",
            "role `checks`",
            "wasm components that only run inside the sandbox",
            molt_bundle::error::short_id(k.key.key_id()),
            "The trusted root expires",
            "Sequence 7: this host has accepted up to 6",
            "implements `molt:check/precheck@1.0.0`",
            "may read host facts",
            "may ask the host to probe allow-listed URLs",
            "sees the install folder, read-only",
            "at most 2000 ms",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
        assert!(explain(&v, &k.root, Some(9)).contains("LOWER than 9"));
        assert!(
            explain(&v, &k.root, Some(9)).contains("sets no rollback floor for it"),
            "{}",
            explain(&v, &k.root, Some(9))
        );

        // The root's floor is named, and a bundle below it is called out.
        let mut floored = k.root.clone();
        molt_bundle::editor::set_floor(&mut floored.signed, "molt-precheck", 5).unwrap();
        floored.signed.version = 2;
        let t = explain(&v, &floored, Some(9));
        assert!(
            t.contains("Sequence 7: LOWER than 9")
                && t.contains("except as a downgrade the control plane assigns (trusted root version 2 allows those down to its rollback floor 5)"),
            "{t}"
        );
        let t = explain(&v, &floored, None);
        assert!(
            t.contains("Trusted root version 2 sets rollback floor 5 for it"),
            "{t}"
        );
        molt_bundle::editor::set_floor(&mut floored.signed, "molt-precheck", 8).unwrap();
        let t = explain(&v, &floored, Some(6));
        assert!(
            t.contains("Sequence 7: BELOW the rollback floor 8 that trusted root version 2 sets for `molt-precheck`; it would be refused on every host"),
            "{t}"
        );
    }
}
