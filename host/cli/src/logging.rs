//! Logging set-up: logs are the operator's UI, so one format everywhere.
//! Colour only when a person is looking: stderr is often a file (`serve.log`,
//! `runner.log`, `supervisor.log`) or journald, where escape codes are noise
//! that `grep` and log shippers then read.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// ANSI colour on stderr: only on a terminal, and never when `NO_COLOR` is set
/// to a non-empty value (https://no-color.org).
pub fn stderr_colour() -> bool {
    colour_allowed(std::env::var_os("NO_COLOR").as_deref()) && std::io::stderr().is_terminal()
}

fn colour_allowed(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_none_or(|v| v.is_empty())
}

pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colour())
        .with_target(false)
        .try_init();
}

/// `molt ... | head -1`: when the reader of stdout (or stderr) goes away, end
/// the way command-line tools conventionally do, killed by SIGPIPE (status 141
/// in a shell), instead of panicking in `println!`. SIGPIPE itself stays
/// ignored for the process (Rust's default), so a socket write to a vanished
/// peer in `molt serve` or the agent remains an error, never a silent death.
pub fn end_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or("");
        if is_broken_pipe_print(msg) {
            // SAFETY: restoring the default disposition of one signal and
            // raising it; no handler runs, the process ends here.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            std::process::exit(128 + libc::SIGPIPE);
        }
        default(info)
    }));
}

/// The panic `print!`/`eprint!` raise when their stream's reader is gone.
fn is_broken_pipe_print(msg: &str) -> bool {
    (msg.starts_with("failed printing to stdout") || msg.starts_with("failed printing to stderr"))
        && msg.ends_with(&format!("(os error {})", libc::EPIPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_set_and_non_empty_turns_colour_off() {
        assert!(colour_allowed(None));
        assert!(colour_allowed(Some(std::ffi::OsStr::new(""))));
        assert!(!colour_allowed(Some(std::ffi::OsStr::new("1"))));
    }

    #[test]
    fn only_a_print_to_a_closed_pipe_is_a_quiet_end() {
        assert!(is_broken_pipe_print(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(is_broken_pipe_print(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_pipe_print(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_broken_pipe_print("Broken pipe (os error 32)"));
    }
}
