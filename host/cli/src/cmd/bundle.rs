//! `molt keygen`, `molt root`, `molt bundle`, `molt buildstamp`: thin wrappers
//! over `molt-bundle` (docs/bundle-format.md).
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use molt_bundle::chrono::{Duration, SubsecRound, Utc};
use molt_bundle::editor::{self, PackSpec};
use molt_bundle::rotation::RootEditor;
use molt_bundle::schema::{Component, SignedRoot};
use molt_bundle::{Buildstamp, Limits, SigningKey, TrustStore, VerifiedBundle, VerifyOptions};
use molt_ops::views::{BuildstampView, InvalidView, VerifiedView};

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Subcommand)]
pub enum RootCmd {
    /// Create root.json version 1, signed by its root keys.
    Init(RootInitArgs),
    /// Add signatures to a root.json (for roles with a threshold above 1).
    Sign(RootSignArgs),
    /// Create version N+1 from version N: change keys, roles, thresholds,
    /// revocations, rollback floors.
    ///
    /// The new root is accepted only when signed by a threshold of the old
    /// root keys AND of its own root keys; pass those keys with --key (or add
    /// them later with `molt root sign`).
    Rotate(RootRotateArgs),
    /// Install a newer root into a state directory (rotation rules apply).
    Apply(RootApplyArgs),
}

#[derive(clap::Args)]
pub struct RootInitArgs {
    /// Output file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Root role key (PKCS#8 file); repeat for several. These sign the new root.
    #[arg(long = "root-key", value_name = "PK8", required = true)]
    pub root_keys: Vec<PathBuf>,
    /// Key of the `checks` role (signs precheck and selector bundles): PKCS#8 file or public key hex.
    #[arg(long = "checks-key", value_name = "KEY", required = true)]
    pub checks_keys: Vec<String>,
    /// Key of the `packages` role (signs core, runtime, upgrade bundles): PKCS#8 file or public key hex.
    #[arg(long = "packages-key", value_name = "KEY", required = true)]
    pub packages_keys: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u32,
    #[arg(long, default_value_t = 1)]
    pub checks_threshold: u32,
    #[arg(long, default_value_t = 1)]
    pub packages_threshold: u32,
    /// Days until this root expires.
    #[arg(long, default_value_t = 365)]
    pub expires_days: i64,
}

#[derive(clap::Args)]
pub struct RootSignArgs {
    /// The root.json to sign (rewritten in place).
    pub root: PathBuf,
    /// Signing key (PKCS#8); repeat for several.
    #[arg(long = "key", value_name = "PK8", required = true)]
    pub keys: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct RootRotateArgs {
    /// The currently trusted root.json (version N).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Where to write version N+1.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Add a key to a role: ROLE=KEY (KEY: PKCS#8 file or public key hex).
    #[arg(long = "add-key", value_name = "ROLE=KEY")]
    pub add_keys: Vec<String>,
    /// Remove a key from a role: ROLE=KEYID.
    #[arg(long = "remove-key", value_name = "ROLE=KEYID")]
    pub remove_keys: Vec<String>,
    /// Revoke a key everywhere (signatures by it no longer count): KEYID.
    #[arg(long = "revoke", value_name = "KEYID")]
    pub revoke: Vec<String>,
    /// Set a role's threshold: ROLE=N.
    #[arg(long = "threshold", value_name = "ROLE=N")]
    pub thresholds: Vec<String>,
    /// Set the rollback floor of a bundle name: NAME=SEQUENCE (e.g.
    /// mid-core=7). Hosts refuse bundles of NAME below SEQUENCE, and accept a
    /// downgrade the control plane assigns down to it. Lowering a floor is
    /// allowed (it authorises older versions) and printed.
    #[arg(long = "floor", value_name = "NAME=SEQUENCE")]
    pub floors: Vec<String>,
    /// Remove the rollback floor of a bundle name (then no downgrade of it at all).
    #[arg(long = "clear-floor", value_name = "NAME")]
    pub clear_floors: Vec<String>,
    /// Days until the new root expires.
    #[arg(long, default_value_t = 365)]
    pub expires_days: i64,
    /// Keys to sign the new root with (old and new root keys).
    #[arg(long = "key", value_name = "PK8")]
    pub keys: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct RootApplyArgs {
    /// State directory holding the trusted root.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// The new root.json.
    pub root: PathBuf,
}

#[derive(clap::Subcommand)]
pub enum BundleCmd {
    /// Pack a directory into an (unsigned) bundle.
    Pack(PackArgs),
    /// Add signatures to a bundle (no other byte of the file changes).
    Sign(SignArgs),
    /// Verify a bundle offline. Exit 0 valid, 1 invalid, 2 usage.
    Verify(VerifyArgs),
    /// Show a bundle's manifest and signatures WITHOUT verifying them.
    Inspect(InspectArgs),
    /// Verify, then extract a bundle into a directory.
    Extract(ExtractArgs),
}

#[derive(clap::Args)]
pub struct PackArgs {
    /// Directory whose regular files become the payload.
    pub dir: PathBuf,
    /// Package name, e.g. `molt-precheck.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip`;
    /// kind, name and target are taken from it.
    #[arg(long, value_name = "NAME")]
    pub buildstamp: String,
    /// Monotonic sequence number for this bundle name (rollback protection).
    #[arg(long)]
    pub sequence: u64,
    /// Output file (default: the buildstamp in the current directory).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Days until the bundle expires.
    #[arg(long, default_value_t = 365)]
    pub expires_days: i64,
    /// JSON file with the wasm components: [{"path","world","capabilities","preopens","limits","params"}].
    #[arg(long, value_name = "FILE")]
    pub components: Option<PathBuf>,
    /// Sign right away with these keys (PKCS#8).
    #[arg(long = "key", value_name = "PK8")]
    pub keys: Vec<PathBuf>,
    /// Bundle format: 2 (default; manifest signatures, for delta downloads)
    /// or 1 (what agents older than format 2 accept).
    #[arg(long, value_name = "N", default_value_t = molt_bundle::editor::PACK_FORMAT)]
    pub format: u32,
}

#[derive(clap::Args)]
pub struct SignArgs {
    pub bundle: PathBuf,
    /// Signing key (PKCS#8); repeat for several.
    #[arg(long = "key", value_name = "PK8", required = true)]
    pub keys: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    pub bundle: PathBuf,
    /// Trust root to verify against (stateless: no replay protection beyond
    /// the root's rollback floor, which is applied).
    #[arg(long, value_name = "ROOT_JSON", required_unless_present = "state")]
    pub root: Option<PathBuf>,
    /// State directory: trusted root and highest accepted sequences (refuses
    /// replayed older bundles). With --root, initialises or rotates it.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Also inflate every entry and check size, CRC-32 and SHA-256.
    #[arg(long)]
    pub deep: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// After verifying, say in words which key signed for which role, the
    /// expiry, the sequence and what each component may do.
    #[arg(long, conflicts_with = "json")]
    pub explain: bool,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    pub bundle: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    pub bundle: PathBuf,
    /// Destination directory (must not contain the files already).
    pub dest: PathBuf,
    #[arg(long, value_name = "ROOT_JSON")]
    pub root: PathBuf,
}

#[derive(clap::Args)]
pub struct BuildstampArgs {
    /// Package names, e.g. `mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip`.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Print the names oldest first instead of their fields.
    #[arg(long)]
    pub sort: bool,
    #[arg(long)]
    pub json: bool,
}

fn write_new_secret(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let mut f = o.open(path).with_context(|| {
        format!(
            "cannot create {} (use --force to overwrite)",
            path.display()
        )
    })?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

pub fn keygen(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    let (key, pk8) = SigningKey::generate()?;
    write_new_secret(&a.out, &pk8, a.force)?;
    println!("key id: {}", key.key_id());
    println!("public: {}", key.public_hex());
    println!("file:   {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    paths
        .iter()
        .map(|p| SigningKey::load(p).with_context(|| format!("signing key {}", p.display())))
        .collect()
}

/// A key argument: a PKCS#8 file or 64 hex digits of public key. Returns public hex.
fn public_of(arg: &str) -> anyhow::Result<String> {
    if arg.len() == 64 && arg.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Ok(arg.to_lowercase());
    }
    let k = SigningKey::load(Path::new(arg))
        .with_context(|| format!("key `{arg}` is neither a PKCS#8 file nor 64 hex digits"))?;
    Ok(k.public_hex())
}

fn write_root(path: &Path, root: &SignedRoot) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("output path has no file name")?;
    molt_bundle::store::write_atomic(dir, name, &root.to_json_pretty()?)?;
    Ok(())
}

fn root_summary(r: &SignedRoot) -> String {
    let roles: Vec<String> = r
        .signed
        .roles
        .iter()
        .map(|(n, k)| format!("{n} {}/{}", k.threshold, k.keyids.len()))
        .collect();
    let floors = if r.signed.rollback_floor.is_empty() {
        String::new()
    } else {
        let f: Vec<String> = r
            .signed
            .rollback_floor
            .iter()
            .map(|(n, s)| format!("{n} >= {s}"))
            .collect();
        format!("; rollback floors: {}", f.join(", "))
    };
    format!(
        "root version {} expires {}; roles: {}{floors}; {} signature(s)",
        r.signed.version,
        r.signed.expires.to_rfc3339(),
        roles.join(", "),
        r.signatures.len()
    )
}

pub fn root(c: RootCmd) -> anyhow::Result<ExitCode> {
    match c {
        RootCmd::Init(a) => {
            let root_keys = load_keys(&a.root_keys)?;
            let mut e =
                RootEditor::init(Utc::now().trunc_subsecs(0) + Duration::days(a.expires_days))?;
            let root_pubs: Vec<String> = root_keys.iter().map(|k| k.public_hex()).collect();
            e.set_role("root", &root_pubs, a.root_threshold)?;
            let pubs = |ks: &[String]| {
                ks.iter()
                    .map(|k| public_of(k))
                    .collect::<anyhow::Result<Vec<_>>>()
            };
            e.set_role("checks", &pubs(&a.checks_keys)?, a.checks_threshold)?;
            e.set_role("packages", &pubs(&a.packages_keys)?, a.packages_threshold)?;
            let root = e.finish(&root_keys.iter().collect::<Vec<_>>())?;
            root.check_self_signed()?;
            write_root(&a.out, &root)?;
            println!("wrote {}: {}", a.out.display(), root_summary(&root));
            Ok(ExitCode::SUCCESS)
        }
        RootCmd::Sign(a) => {
            let bytes =
                std::fs::read(&a.root).with_context(|| format!("read {}", a.root.display()))?;
            let mut root: SignedRoot = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not root JSON", a.root.display()))?;
            root.signed.validate()?;
            let keys = load_keys(&a.keys)?;
            editor::sign_root(&mut root, &keys.iter().collect::<Vec<_>>())?;
            write_root(&a.root, &root)?;
            println!("signed {}: {}", a.root.display(), root_summary(&root));
            match root.check_self_signed() {
                Ok(()) => println!("its own root-role threshold is met"),
                Err(e) => println!("not yet acceptable: {e}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        RootCmd::Rotate(a) => {
            let old = SignedRoot::load(&a.from)?;
            let mut e = RootEditor::rotate(
                &old,
                Utc::now().trunc_subsecs(0) + Duration::days(a.expires_days),
            );
            for spec in &a.add_keys {
                let (role, key) = spec
                    .split_once('=')
                    .with_context(|| format!("--add-key `{spec}` is not ROLE=KEY"))?;
                e.add_key(role, &public_of(key)?).context("--add-key")?;
            }
            for spec in &a.remove_keys {
                let (role, id) = spec
                    .split_once('=')
                    .with_context(|| format!("--remove-key `{spec}` is not ROLE=KEYID"))?;
                e.remove_key(role, id).context("--remove-key")?;
            }
            for id in &a.revoke {
                e.revoke(id).context("--revoke")?;
            }
            for spec in &a.thresholds {
                let (role, n) = spec
                    .split_once('=')
                    .with_context(|| format!("--threshold `{spec}` is not ROLE=N"))?;
                let n: u32 = n
                    .parse()
                    .with_context(|| format!("--threshold: `{n}` is not a number"))?;
                e.set_threshold(role, n).context("--threshold")?;
            }
            for spec in &a.floors {
                let (name, n) = spec
                    .split_once('=')
                    .with_context(|| format!("--floor `{spec}` is not NAME=SEQUENCE"))?;
                let n: u64 = n
                    .parse()
                    .with_context(|| format!("--floor: `{n}` is not a sequence number"))?;
                e.set_floor(name, n).context("--floor")?;
            }
            for name in &a.clear_floors {
                e.clear_floor(name).context("--clear-floor")?;
            }
            let keys = load_keys(&a.keys)?;
            let root = e.finish(&keys.iter().collect::<Vec<_>>())?;
            write_root(&a.out, &root)?;
            println!("wrote {}: {}", a.out.display(), root_summary(&root));
            for c in old.signed.floor_changes(&root.signed) {
                println!("{c}");
            }
            match old.check_rotation(&root, Utc::now()) {
                Ok(()) => println!("rotation from version {} is acceptable", old.signed.version),
                Err(e) => {
                    println!("not yet acceptable (add signatures with `molt root sign`): {e}")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RootCmd::Apply(a) => {
            let new = SignedRoot::load(&a.root)?;
            let mut store = TrustStore::open(&a.state)?;
            let from = store.root().signed.version;
            let changes = store.root().signed.floor_changes(&new.signed);
            store.update_root(new)?;
            for c in changes {
                println!("{c}");
            }
            println!(
                "trusted root rotated from version {from} to {}",
                store.root().signed.version
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn human_size(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn print_verified(v: &VerifiedBundle, deep: bool) {
    let m = &v.manifest;
    println!("VALID {}", v.path.display());
    println!("  name:       {}", m.name);
    println!("  kind:       {} (signed by role `{}`)", m.kind, v.role);
    println!("  buildstamp: {}", m.buildstamp);
    println!("  target:     {}/{}", m.target.os, m.target.arch);
    println!("  sequence:   {}", m.sequence);
    println!("  created:    {}", m.created.to_rfc3339());
    println!("  expires:    {}", m.expires.to_rfc3339());
    println!(
        "  entries:    {} files, {}{}",
        m.entries.len(),
        human_size(m.entries.iter().map(|e| e.size).sum()),
        if m.components.is_empty() {
            String::new()
        } else {
            format!(", {} wasm component(s)", m.components.len())
        }
    );
    println!("  digest:     sha256:{}", v.digest);
    println!(
        "  signers:    {} of threshold {} (root version {})",
        v.signers.len(),
        v.threshold,
        v.root_version
    );
    for s in &v.signers {
        println!("              {s} ({})", v.role);
    }
    println!(
        "  checks:     {}",
        if deep {
            "deep (every entry inflated and hashed)"
        } else {
            "fast (whole-file digest, structure)"
        }
    );
}

pub fn bundle(c: BundleCmd) -> anyhow::Result<ExitCode> {
    match c {
        BundleCmd::Pack(a) => {
            let mut spec = PackSpec::from_buildstamp(&a.buildstamp, a.sequence)?;
            spec.expires = Utc::now().trunc_subsecs(0) + Duration::days(a.expires_days);
            if let Some(cp) = &a.components {
                let b = std::fs::read(cp).with_context(|| format!("read {}", cp.display()))?;
                spec.components = serde_json::from_slice::<Vec<Component>>(&b)
                    .with_context(|| format!("{}: not a JSON array of components", cp.display()))?;
            }
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(&a.buildstamp));
            let m = molt_bundle::editor::pack_dir_format(&a.dir, &spec, &out, a.format)?;
            println!(
                "packed {}: {} files, {}, sequence {}",
                out.display(),
                m.entries.len(),
                human_size(m.entries.iter().map(|e| e.size).sum()),
                m.sequence
            );
            if !a.keys.is_empty() {
                let keys = load_keys(&a.keys)?;
                let d = molt_bundle::sign_bundle(&out, &keys.iter().collect::<Vec<_>>())?;
                println!("signed digest sha256:{d} with {} key(s)", keys.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        BundleCmd::Sign(a) => {
            let keys = load_keys(&a.keys)?;
            let d = molt_bundle::sign_bundle(&a.bundle, &keys.iter().collect::<Vec<_>>())?;
            println!("signed {} (digest sha256:{d})", a.bundle.display());
            for k in &keys {
                println!("  key {}", k.key_id());
            }
            Ok(ExitCode::SUCCESS)
        }
        BundleCmd::Verify(a) => {
            let opts = VerifyOptions {
                deep: a.deep,
                ..Default::default()
            };
            // The root the bundle was checked against and, with --state, the
            // highest sequence accepted before this one (for --explain).
            type Verified = (VerifiedBundle, SignedRoot, Option<u64>);
            let result = (|| -> Result<Verified, molt_bundle::BundleError> {
                match (&a.root, &a.state) {
                    (Some(r), None) => {
                        let root = SignedRoot::load(r)?;
                        let v = molt_bundle::verify_bundle(&a.bundle, &root, &opts)?;
                        // No host state, but the root's signed floor still holds.
                        molt_bundle::verify::check_floor(&v, &root)?;
                        Ok((v, root, None))
                    }
                    (r, Some(dir)) => {
                        let mut store = match r {
                            Some(r) => TrustStore::open_or_init(dir, &SignedRoot::load(r)?)?,
                            None => TrustStore::open(dir)?,
                        };
                        let before = molt_bundle::verify::inspect(&a.bundle)
                            .ok()
                            .and_then(|i| store.highest_sequence(&i.manifest.name));
                        let v = store.verify_bundle(&a.bundle, &opts)?;
                        Ok((v, store.root().clone(), before))
                    }
                    (None, None) => unreachable!("clap requires --root or --state"),
                }
            })();
            match result {
                Ok((v, root, before)) => {
                    if a.explain {
                        print_verified(&v, a.deep);
                        println!();
                        print!("{}", molt_ops::explain::explain(&v, &root, before));
                    } else if a.json {
                        println!("{}", json(&VerifiedView::new(&v, a.deep))?);
                    } else {
                        print_verified(&v, a.deep);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if a.json {
                        println!("{}", json(&InvalidView::new(&a.bundle, &e))?);
                    } else {
                        println!("INVALID {}", a.bundle.display());
                        println!("  reason: {e}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        BundleCmd::Inspect(a) => inspect(&a),
        BundleCmd::Extract(a) => {
            let root = SignedRoot::load(&a.root)?;
            let v = molt_bundle::verify_bundle(&a.bundle, &root, &VerifyOptions::default())?;
            // As verify --root: nothing below the root's rollback floor is laid out.
            molt_bundle::verify::check_floor(&v, &root)?;
            let r = molt_bundle::extract(&v, &a.bundle, &a.dest, &Limits::default())?;
            println!(
                "extracted {} files ({}) to {}",
                r.files.len(),
                human_size(r.bytes),
                a.dest.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect(a: &InspectArgs) -> anyhow::Result<ExitCode> {
    let info = molt_bundle::verify::inspect(&a.bundle)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &info.manifest;
    println!(
        "{} (NOT VERIFIED: use `molt bundle verify`)",
        a.bundle.display()
    );
    println!("  name:       {}", m.name);
    println!("  kind:       {} (role `{}`)", m.kind, m.kind.role());
    println!("  buildstamp: {}", m.buildstamp);
    println!("  target:     {}/{}", m.target.os, m.target.arch);
    println!("  sequence:   {}", m.sequence);
    println!("  created:    {}", m.created.to_rfc3339());
    println!("  expires:    {}", m.expires.to_rfc3339());
    println!("  digest:     sha256:{}", info.digest);
    println!("  signatures: {}", info.signatures.len());
    for s in &info.signatures {
        println!("              key {}", s.keyid);
    }
    if m.format >= 2 {
        println!(
            "  format:     {} ({} manifest signature(s): the manifest verifies alone, for ranged downloads)",
            m.format,
            info.manifest_signatures.len()
        );
    } else {
        println!("  format:     {} (whole-file signatures only)", m.format);
    }
    println!("  entries:    {}", m.entries.len());
    for e in &m.entries {
        println!(
            "    {:>04o} {:>12} {}  {}",
            e.mode,
            e.size,
            &e.sha256[..e.sha256.len().min(16)],
            e.path
        );
    }
    for c in &m.components {
        println!(
            "  component {}: world {}, capabilities [{}], preopens [{}]",
            c.path,
            c.world,
            c.capabilities.join(", "),
            c.preopens.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn buildstamp(a: BuildstampArgs) -> anyhow::Result<ExitCode> {
    let mut parsed = Vec::new();
    let mut failed = false;
    for n in &a.names {
        match n.parse::<Buildstamp>() {
            Ok(b) => parsed.push(b),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if a.sort {
        parsed.sort();
    }
    if a.json {
        let arr: Vec<BuildstampView> = parsed.iter().map(BuildstampView::from).collect();
        println!("{}", serde_json::to_string_pretty(&arr)?);
    } else if a.sort {
        for b in &parsed {
            println!("{b}");
        }
    } else {
        for b in &parsed {
            let v = &b.version;
            println!("{b}");
            println!("  product:     {}", b.product.as_str());
            println!("  kind:        {} ({})", b.kind_word(), b.kind);
            println!(
                "  family:      {} ({})",
                v.family,
                v.family_date.format("%m-%d-%Y")
            );
            // With a security patch's letter: `12a`, not `12`.
            println!("  patch:       {}{}", v.patch, v.patch_suffix);
            println!(
                "  hotfix:      {}",
                v.hotfix
                    .as_ref()
                    .map(|h| format!("{}{}", h.number, h.suffix))
                    .unwrap_or_else(|| "-".into())
            );
            println!("  patch date:  {}", v.patch_date.format("%m-%d-%Y"));
            println!("  built:       {}", v.built.format("%Y-%m-%d %H:%M"));
            println!("  os/arch:     {}/{}", b.os, b.arch);
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One `--json` document on one line.
fn json(v: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string(v)?)
}
