//! The `log` interface: guest log lines as tracing events naming the check,
//! sanitized and bounded per run.
use molt_bundle::text::{MAX_LOG_LINE, sanitize};

use crate::bindings::precheck as pb;
use crate::engine::HostState;

/// Lines one run may log; the rest are dropped.
const MAX_LOG_LINES: usize = 200;

impl pb::molt::check::log::Host for HostState {
    fn log(&mut self, level: pb::molt::check::log::Level, message: String) {
        use pb::molt::check::log::Level;
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let msg = sanitize(&message, MAX_LOG_LINE);
        let check = &self.check;
        match level {
            Level::Trace | Level::Debug => tracing::debug!(%check, "guest: {msg}"),
            Level::Info => tracing::info!(%check, "guest: {msg}"),
            Level::Warn => tracing::warn!(%check, "guest: {msg}"),
            Level::Error => tracing::error!(%check, "guest: {msg}"),
        }
    }
}
