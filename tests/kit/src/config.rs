//! The agent's `config.toml`.
use std::path::Path;

/// Write `<home>/config.toml`: control plane `url`, agent `name` and `token`,
/// a one-second heartbeat, then `extra` lines as given.
pub fn write_config(home: &Path, url: &str, name: &str, token: &str, extra: &str) {
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "control_plane_url = \"{url}\"\nagent_name = \"{name}\"\ntoken = \"{token}\"\nheartbeat_secs = 1\n{extra}"
        ),
    )
    .unwrap();
}
