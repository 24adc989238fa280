//! A minimal stand-in for the `molt` binary's `deploy` and `run` subcommands,
//! calling the same library functions. Only for iterating on this crate's tests
//! without building the whole `molt` binary: `MOLT_BIN=target/debug/examples/deploy-mini`.
//! The real tests and CI use the real `molt`.
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let Some(home) = get("--home") else {
        if args.get(1).map(String::as_str) == Some("--version") {
            println!("deploy-mini");
            return ExitCode::SUCCESS;
        }
        eprintln!("usage: deploy-mini (deploy --home H (--plan P | --resume) | run --home H)");
        return ExitCode::from(64);
    };
    let home = molt_layout::Home::new(home);
    match args.get(1).map(String::as_str) {
        Some("deploy") => {
            let r = if args.iter().any(|a| a == "--resume") {
                molt_deploy::runner::resume(&home).map(|r| {
                    r.unwrap_or(molt_deploy::runner::DeployResult::Complete {
                        version: String::new(),
                    })
                })
            } else {
                molt_deploy::runner::run(&home, &get("--plan").unwrap_or_default())
            };
            match r {
                Ok(molt_deploy::runner::DeployResult::Complete { version }) => {
                    println!("Upgrade Complete: version {version} is Up");
                    ExitCode::SUCCESS
                }
                Ok(molt_deploy::runner::DeployResult::RolledBack { version, reason }) => {
                    println!("Upgrade Rolled Back: version {version} is Up again ({reason})");
                    ExitCode::from(2)
                }
                Ok(molt_deploy::runner::DeployResult::Failed { reason }) => {
                    eprintln!("Upgrade Failed: {reason}");
                    ExitCode::from(3)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some("run") => match molt_deploy::supervisor::run(&home, &Default::default()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        _ => ExitCode::from(64),
    }
}
