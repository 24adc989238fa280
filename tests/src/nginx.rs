//! A real nginx (Debian's `nginx-light`) in a temporary directory: static
//! files for the delta downloads, a round-robin upstream in front of `molt
//! serve` replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nginx, stopped on drop with SIGTERM, which makes the master
/// stop its worker too (a SIGKILL would leave the worker running).
pub struct Nginx {
    master: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        molt_testkit::proc::signal(self.master.id(), "TERM");
        for _ in 0..100 {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

/// Start nginx with its files in `dir` and one server on a free loopback
/// port: `http` is extra `http`-level configuration (e.g. `max_ranges 0;`
/// or an `upstream` block), `server` the server block's body (e.g. `root
/// /srv;`). Waits (10 s at most) until it accepts connections.
pub fn start(dir: &Path, http: &str, server: &str) -> Nginx {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is required for this test (apt-get install nginx-light)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("nginx.conf");
    // `user root`: run as root (as in CI), the workers must read the test's
    // 0700 temporary directory (nginx ignores the line when not root). The
    // temporary files stay in `dir`, not in the package's /var/lib/nginx.
    std::fs::write(
        &cfg,
        format!(
            "worker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp-body;\n  \
             proxy_temp_path {d}/tmp-proxy;\n  {http}\n  server {{\n    listen 127.0.0.1:{port};\n    {server}\n  }}\n}}\n",
            d = dir.display(),
        ),
    )
    .unwrap();
    let master = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg(dir)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap())
        .spawn()
        .unwrap();
    let n = Nginx {
        master,
        url: format!("http://127.0.0.1:{port}"),
    };
    molt_testkit::wait::until("nginx to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    n
}

/// The configuration of an `upstream` named `name` over `urls`
/// (`http://host:port`), balanced by `balance` (`""`: round robin, request by
/// request, as tests/bench/serve_load.sh configures it; e.g. `hash
/// $http_authorization consistent;`: each client on one backend while it
/// lives), and the server body proxying every request to it. The `Host`
/// header keeps the port so the replicas' package URLs point back through
/// nginx.
pub fn upstream(name: &str, urls: &[&str], balance: &str) -> (String, String) {
    let servers: String = urls
        .iter()
        .map(|u| format!("    server {};\n", u.trim_start_matches("http://")))
        .collect();
    (
        format!("upstream {name} {{\n    {balance}\n{servers}    keepalive 16;\n  }}"),
        format!(
            "location / {{ proxy_pass http://{name}; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; proxy_set_header Host $http_host; \
             proxy_read_timeout 120s; proxy_buffering off; }}"
        ),
    )
}
