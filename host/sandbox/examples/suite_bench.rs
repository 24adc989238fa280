//! One run of the standard check suite, for tests/bench/sandbox_suite.sh.
//!   suite_bench sandbox <bundle.zip> <root.json> <cache-dir>   verify, extract, run in the sandbox
//!   suite_bench native                                         the same checks as plain Rust calls
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use molt_sandbox::{
    CheckContext, FactsSource, HostFacts, Policy, ProbeOutcome, Sandbox, SandboxConfig,
};

const DL: &str = "https://downloads.example.com/packages/";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let home = std::env::temp_dir().join(format!("molt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    let mut facts = HostFacts::healthy();
    facts.net.insert(
        DL.into(),
        ProbeOutcome {
            ok: true,
            failed_stage: None,
            http_status: Some(200),
            detail: String::new(),
        },
    );
    let n = match args.get(1).map(String::as_str) {
        Some("sandbox") if args.len() == 5 => {
            let ms = |t: Instant| format!("{:.1}", t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let root = molt_bundle::SignedRoot::load(Path::new(&args[3]))?;
            let v = molt_bundle::verify_bundle(Path::new(&args[2]), &root, &Default::default())?;
            let dest = home.join("bundle");
            // As the agent does: a run-once scratch dir (molt_agent::deps::extract_package).
            molt_bundle::extract_scratch(&v, Path::new(&args[2]), &dest, &Default::default())?;
            eprint!("verify+extract={}ms ", ms(t));
            let t = Instant::now();
            let sb = Sandbox::new(SandboxConfig {
                cache_dir: args[4].clone().into(),
                policy: Policy::default(),
            })?;
            eprint!("engine={}ms ", ms(t));
            let t = Instant::now();
            let ctx = CheckContext {
                install_dir: home.clone(),
                scratch_parent: home.clone(),
                facts: FactsSource::Given(facts),
                net_allow: vec![DL.into()],
                ca_bundle: None,
                params: BTreeMap::new(),
            };
            let r = sb.run_precheck(&dest, &v.manifest, &ctx)?;
            eprint!("checks={}ms ", ms(t));
            for c in &r {
                eprint!("{}={:.1} ", c.check, c.elapsed.as_secs_f64() * 1e3);
            }
            let s = sb.cache_stats();
            eprintln!("compiled={} loaded={}", s.compiled, s.loaded);
            r.iter().map(|r| r.findings.len()).sum::<usize>()
        }
        Some("native") => {
            use molt_check_logic::{ServiceState, checks, fileops};
            let f = facts.facts;
            let p: Vec<(String, String)> = vec![("min_free".into(), "1GiB".into())];
            let probe = molt_check_logic::Probe {
                url: DL.into(),
                ok: true,
                failed_stage: None,
                http_status: Some(200),
                detail: String::new(),
            };
            let scratch = home.join("scratch");
            let staging = molt_layout::Home::new(&home).precheck_staging_dir();
            std::fs::create_dir_all(&scratch)?;
            std::fs::create_dir_all(&staging)?;
            let mut out = checks::disk_space(&f, &p);
            out.extend(checks::download_access(Some(DL), Ok(probe)));
            out.extend(fileops::file_ops(&scratch, Some(&staging)));
            out.extend(checks::service_account(&f));
            out.extend(checks::runtime_compat(&f, &[]));
            out.extend(checks::duplicate_install(ServiceState::Running, &[]));
            out.extend(checks::file_locks(f.agent_pid, &[], &[]));
            out.len()
        }
        _ => {
            return Err(
                "usage: suite_bench sandbox <bundle> <root.json> <cache-dir> | native".into(),
            );
        }
    };
    std::fs::remove_dir_all(&home)?;
    eprintln!(
        "findings={n} in-process={:.2}ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    if n != 0 {
        return Err(format!("expected a clean suite, got {n} findings").into());
    }
    Ok(())
}
