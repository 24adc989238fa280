//! A misbehaving check for the sandbox tests; param `mode` picks how.
use molt_check_sdk::{Check, Finding, Severity, log_info, param};

struct Hostile;

/// A log line as the agent writes it, for the `forge` mode to inject.
const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO Pre-upgrade validation tests successful. Continuing with upgrade process";

fn f(sev: Severity, code: &str, msg: String) -> Finding {
    Finding {
        severity: sev,
        code: code.into(),
        message: msg,
        remediation: String::new(),
    }
}

/// Report what each attempt returned: `escape.blocked` when refused, `escape.succeeded` otherwise.
fn attempt(out: &mut Vec<Finding>, what: &str, r: std::io::Result<()>) {
    match r {
        Ok(()) => out.push(f(Severity::Blocking, "escape.succeeded", what.to_string())),
        Err(e) => out.push(f(Severity::Info, "escape.blocked", format!("{what}: {e}"))),
    }
}

impl Check for Hostile {
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str = "Misbehaves on purpose (sandbox tests only).";
    fn run(params: &[(String, String)]) -> Vec<Finding> {
        let mut out = Vec::new();
        match param(params, "mode").unwrap_or("") {
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "alloc" => {
                // 1 GiB, touched so it cannot be optimised away: far above the
                // host's cap, and small enough that the guest's allocator asks
                // the host (memory.grow) rather than refusing it itself.
                let v = std::hint::black_box(vec![1u8; 1 << 30]);
                out.push(f(
                    Severity::Info,
                    "alloc.done",
                    format!("{}", v[v.len() - 1]),
                ));
            }
            "alloc-try" => {
                let mut v: Vec<u8> = Vec::new();
                match v.try_reserve_exact(1 << 30) {
                    Ok(()) => out.push(f(Severity::Blocking, "alloc.granted", "1 GiB".into())),
                    Err(e) => out.push(f(Severity::Info, "alloc.refused", e.to_string())),
                }
            }
            "escape" => {
                attempt(
                    &mut out,
                    "read /etc/passwd",
                    std::fs::read("/etc/passwd").map(|_| ()),
                );
                attempt(
                    &mut out,
                    "read ../../../../etc/passwd",
                    std::fs::read("../../../../etc/passwd").map(|_| ()),
                );
                attempt(
                    &mut out,
                    "read /scratch/../../etc/passwd",
                    std::fs::read("/scratch/../../etc/passwd").map(|_| ()),
                );
                attempt(
                    &mut out,
                    "read /scratch/link-out",
                    std::fs::read("/scratch/link-out").map(|_| ()),
                );
                attempt(
                    &mut out,
                    "write /install/owned",
                    std::fs::write("/install/owned", b"x"),
                );
                attempt(&mut out, "list /", std::fs::read_dir("/").map(|_| ()));
                let env = std::env::vars().count() + std::env::args().count();
                if env > 0 {
                    out.push(f(
                        Severity::Blocking,
                        "escape.env",
                        format!("{env} env vars/args visible"),
                    ));
                }
            }
            "socket" => {
                attempt(
                    &mut out,
                    "connect 127.0.0.1:22",
                    std::net::TcpStream::connect("127.0.0.1:22").map(|_| ()),
                );
                attempt(
                    &mut out,
                    "connect 1.1.1.1:443",
                    std::net::TcpStream::connect("1.1.1.1:443").map(|_| ()),
                );
                attempt(
                    &mut out,
                    "bind 127.0.0.1:0",
                    std::net::TcpListener::bind("127.0.0.1:0").map(|_| ()),
                );
                attempt(
                    &mut out,
                    "udp bind",
                    std::net::UdpSocket::bind("0.0.0.0:0").map(|_| ()),
                );
            }
            "net" => {
                // Uses the `net` capability: the manifest of a greedy bundle asks for it.
                let urls = molt_check_sdk::allowed_urls();
                log_info("hostile check ran");
                out.push(f(
                    Severity::Info,
                    "greedy.ran",
                    format!("{} urls", urls.len()),
                ));
            }
            "panic" => panic!("hostile check panics on purpose"),
            "forge" => {
                // Text that would forge a log line, recolour and retitle the
                // terminal and clear the screen if the host printed it as is.
                let forged = format!(
                    "looks fine\n{FORGED}\x1b]0;owned\x07\x1b[2J\r{FORGED}\u{2028}{FORGED}"
                );
                log_info(&forged);
                out.push(Finding {
                    severity: Severity::Blocking,
                    code: "forge.error".into(),
                    message: forged.clone(),
                    remediation: format!("none\n{FORGED}"),
                });
                out.push(f(Severity::Warning, "forge.warning", forged.clone()));
                out.push(f(Severity::Info, "forge.long", "é".repeat(10_000)));
            }
            "fake-oom" => {
                // What the Rust runtime prints when an allocation fails, then a
                // crash: the host must not believe the guest ran out of memory.
                eprintln!("memory allocation of 4096 bytes failed");
                panic!("memory allocation of 4096 bytes failed");
            }
            "nonsense" => {
                out.push(f(Severity::Warning, "", "x".repeat(100_000)));
            }
            "many" => {
                for i in 0..100_000 {
                    out.push(f(Severity::Info, "many.findings", i.to_string()));
                }
            }
            other => out.push(f(
                Severity::Info,
                "hostile.mode",
                format!("unknown mode `{other}`"),
            )),
        }
        out
    }
}

molt_check_sdk::check!(Hostile);
