//! The `net` interface: `allowed` and `probe` against the run's allow-list.
//! A real probe is DNS, TCP, TLS (for https) and one HTTP HEAD, each with a
//! short timeout, reporting the first stage that failed; a facts.toml may
//! give simulated outcomes by URL.
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use molt_check_logic::{Probe, Stage};

use crate::bindings::precheck as pb;
use crate::engine::HostState;
use crate::policy::url_allowed;

const TIMEOUT: Duration = Duration::from_secs(3);
/// Redirects followed before giving up (curl's default is 50; browsers stop near 20).
pub const MAX_REDIRECTS: usize = 5;
/// The most of an answer's head read.
const HEAD_LIMIT: usize = 16 * 1024;

fn fail(url: &str, stage: Stage, status: Option<u16>, detail: String) -> Probe {
    Probe {
        url: url.to_string(),
        ok: false,
        failed_stage: Some(stage),
        http_status: status,
        detail,
    }
}

struct Parsed {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse(url: &str) -> Option<Parsed> {
    let (scheme, rest) = url.split_once("://")?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()?),
        None => (authority.to_string(), if https { 443 } else { 80 }),
    };
    if host.is_empty() || host.contains('@') {
        return None;
    }
    Some(Parsed {
        https,
        host,
        port,
        path,
    })
}

/// Why the HTTP stage of a probe failed (its text is the probe's detail).
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The first line of the answer, made printable.
    #[error("not an HTTP answer: `{0}`")]
    NotHttp(String),
}

/// The status line and the `Location` header of one `HEAD` answer.
struct Answer {
    code: u16,
    location: Option<String>,
}

fn http_status(stream: &mut dyn ReadWrite, p: &Parsed) -> Result<Answer, HttpError> {
    let req = format!(
        "HEAD {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: molt-precheck\r\nConnection: close\r\n\r\n",
        p.path, p.host
    );
    stream.write_all(req.as_bytes())?;
    // The head only, bounded: a HEAD answer has no body to wait for.
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < HEAD_LIMIT {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // A status line already read is an answer even if the server then
            // resets the connection.
            Err(_) if got.windows(2).any(|w| w == b"\r\n") => break,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let code = match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code,
        _ => {
            return Err(HttpError::NotHttp(printable(line, 60)));
        }
    };
    let location = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_string());
    Ok(Answer { code, location })
}

/// Server-supplied text made safe for a log line or a finding: printable
/// ASCII only, bounded.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

/// Where a redirect from `from` to `location` goes (absolute, scheme-relative,
/// absolute-path or relative reference).
fn resolve(from: &Parsed, location: &str) -> String {
    let scheme = if from.https { "https" } else { "http" };
    let authority = format!("{}:{}", from.host, from.port);
    if location.contains("://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = from.path.split('?').next().unwrap_or("/");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{authority}{dir}{location}")
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One request: the answer, or the stage that failed and why.
fn probe_once(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(Parsed, Answer), (Stage, String)> {
    let p = parse(url).ok_or((Stage::Dns, "not an http(s) URL".to_string()))?;
    let addrs: Vec<_> = (p.host.as_str(), p.port)
        .to_socket_addrs()
        .map_err(|e| (Stage::Dns, e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err((Stage::Dns, format!("{} has no address", p.host)));
    }
    let mut last = String::new();
    let mut tcp = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, TIMEOUT) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    let tcp = tcp.ok_or((Stage::Tcp, last))?;
    let _ = tcp.set_read_timeout(Some(TIMEOUT));
    let _ = tcp.set_write_timeout(Some(TIMEOUT));
    let answer = if p.https {
        let name = rustls::pki_types::ServerName::try_from(p.host.clone())
            .map_err(|e| (Stage::Tls, e.to_string()))?;
        let conn = rustls::ClientConnection::new(tls.clone(), name)
            .map_err(|e| (Stage::Tls, e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake first so a TLS failure is reported as such.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| (Stage::Tls, e.to_string()))?;
        }
        http_status(&mut tls, &p)
    } else {
        let mut s = tcp;
        http_status(&mut s, &p)
    };
    let answer = answer.map_err(|e| (Stage::Http, e.to_string()))?;
    Ok((p, answer))
}

/// Probe `url` for real, following up to [`MAX_REDIRECTS`] redirects (a
/// package site is often a CDN or a mirror that redirects), trusting the web
/// PKI and the operator's CA bundle (`tls`). Never panics; every failure
/// names its stage, and the detail names the URL that failed.
pub fn probe(url: &str, tls: &Arc<rustls::ClientConfig>) -> Probe {
    let mut current = url.to_string();
    let mut hops = 0;
    let via = |current: &str, hops: usize| {
        if hops == 0 {
            String::new()
        } else {
            format!(" (at {current}, after {hops} redirect(s))")
        }
    };
    loop {
        let (p, answer) = match probe_once(&current, tls) {
            Ok(a) => a,
            Err((stage, detail)) => {
                return fail(url, stage, None, format!("{detail}{}", via(&current, hops)));
            }
        };
        let code = answer.code;
        if (300..400).contains(&code)
            && let Some(location) = answer.location
        {
            if hops == MAX_REDIRECTS {
                return fail(
                    url,
                    Stage::Http,
                    Some(code),
                    format!("more than {MAX_REDIRECTS} redirects{}", via(&current, hops)),
                );
            }
            current = printable(&resolve(&p, &location), 300);
            hops += 1;
            continue;
        }
        if code >= 400 {
            return fail(
                url,
                Stage::Http,
                Some(code),
                format!("HTTP {code}{}", via(&current, hops)),
            );
        }
        return Probe {
            url: url.to_string(),
            ok: true,
            failed_stage: None,
            http_status: Some(code),
            detail: format!("HTTP {code}{}", via(&current, hops)),
        };
    }
}

/// What `net.probe` may reach in one run, and which TLS servers it trusts.
pub(crate) struct NetGrant {
    pub(crate) allow: Vec<String>,
    /// `None` when nothing is allowed (the selector): never used.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl pb::molt::check::net::Host for HostState {
    fn allowed(&mut self) -> Vec<String> {
        self.net.allow.clone()
    }
    fn probe(&mut self, url: String) -> Result<pb::molt::check::net::ProbeResult, String> {
        use pb::molt::check::net::{ProbeResult, Stage as W};
        if !url_allowed(&self.net.allow, &url) {
            tracing::warn!(check = %self.check, %url, "Pre Upgrade Check: probe refused (not on the allow-list)");
            return Err(format!("URL {url} is not on the host's network allow-list"));
        }
        let stage = |s: &str| match s {
            "dns" => W::Dns,
            "tcp" => W::Tcp,
            "tls" => W::Tls,
            _ => W::Http,
        };
        if let Some(o) = self.facts.net.get(&url) {
            return Ok(ProbeResult {
                url,
                ok: o.ok,
                failed_stage: o.failed_stage.as_deref().map(stage),
                http_status: o.http_status,
                detail: o.detail.clone(),
            });
        }
        let Some(tls) = &self.net.tls else {
            return Err(format!(
                "URL {url}: no network is granted to this component"
            ));
        };
        let p = probe(&url, tls);
        tracing::info!(check = %self.check, %url, ok = p.ok, detail = %p.detail, "Pre Upgrade Check: probed URL");
        use molt_check_logic::Stage as L;
        Ok(ProbeResult {
            url: p.url,
            ok: p.ok,
            failed_stage: p.failed_stage.map(|s| match s {
                L::Dns => W::Dns,
                L::Tcp => W::Tcp,
                L::Tls => W::Tls,
                L::Http => W::Http,
            }),
            http_status: p.http_status,
            detail: p.detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static [u8]) -> u16 {
        serve_n(answer.to_vec(), 1)
    }

    /// Answers `n` connections with `answer`; `{port}` in it becomes its own port.
    fn serve_n(answer: Vec<u8>, n: usize) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let answer = String::from_utf8(answer)
            .unwrap()
            .replace("{port}", &port.to_string());
        std::thread::spawn(move || {
            for _ in 0..n {
                if let Ok((mut s, _)) = l.accept() {
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b);
                    let _ = s.write_all(answer.as_bytes());
                }
            }
        });
        port
    }

    fn probe(url: &str) -> Probe {
        super::probe(url, &molt_layout::tls::client_config(None).unwrap())
    }

    #[test]
    fn follows_redirects_to_another_site() {
        // A mirror that answers 200 at /pkg/a.zip ...
        let mirror = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        // ... behind a CDN edge that redirects there (absolute URL), and a
        // front that redirects to the edge with an absolute path.
        let edge = serve_once(
            format!("HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{mirror}/pkg/a.zip\r\n\r\n")
                .leak()
                .as_bytes(),
        );
        let p = probe(&format!("http://127.0.0.1:{edge}/packages/a.zip"));
        assert!(p.ok, "{p:?}");
        assert_eq!(p.http_status, Some(200));
        assert!(p.detail.contains("after 1 redirect"), "{p:?}");
        assert!(
            p.detail.contains(&format!("127.0.0.1:{mirror}/pkg/a.zip")),
            "{p:?}"
        );
        assert_eq!(p.url, format!("http://127.0.0.1:{edge}/packages/a.zip"));

        // A redirect (relative reference) whose target cannot be reached fails,
        // naming the target.
        let port = serve_n(
            b"HTTP/1.1 301 Moved\r\nLocation: gone.zip\r\n\r\n".to_vec(),
            1,
        );
        let p = probe(&format!("http://127.0.0.1:{port}/d/a.zip"));
        assert!(!p.ok, "{p:?}");
        assert!(
            p.detail.contains(&format!("127.0.0.1:{port}/d/gone.zip")),
            "{p:?}"
        );
    }

    #[test]
    fn a_redirect_loop_ends_with_a_named_failure() {
        let port = serve_n(
            b"HTTP/1.1 302 Found\r\nLocation: /again\r\n\r\n".to_vec(),
            MAX_REDIRECTS + 1,
        );
        let p = probe(&format!("http://127.0.0.1:{port}/x"));
        assert_eq!(
            (p.ok, p.failed_stage, p.http_status),
            (false, Some(Stage::Http), Some(302)),
            "{p:?}"
        );
        assert!(p.detail.contains("more than 5 redirects"), "{p:?}");
    }

    #[test]
    fn a_hostile_location_is_not_echoed_raw() {
        let port = serve_n(
            b"HTTP/1.1 302 Found\r\nLocation: /a\x1b[2Jb\r\n\r\n".to_vec(),
            2,
        );
        let p = probe(&format!("http://127.0.0.1:{port}/x"));
        assert!(!p.detail.contains('\x1b'), "{p:?}");
    }

    #[test]
    fn stages() {
        let port = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let p = probe(&format!("http://127.0.0.1:{port}/x"));
        assert!(p.ok, "{p:?}");
        let port = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\n");
        let p = probe(&format!("http://127.0.0.1:{port}/x"));
        assert_eq!(
            (p.failed_stage, p.http_status),
            (Some(Stage::Http), Some(404))
        );
        let port = serve_once(b"HTTP/1.1 200 OK\r\n\r\n");
        let p = probe(&format!("https://127.0.0.1:{port}/x"));
        assert_eq!(p.failed_stage, Some(Stage::Tls), "{p:?}");
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = probe(&format!("http://127.0.0.1:{closed}/"));
        assert_eq!(p.failed_stage, Some(Stage::Tcp), "{p:?}");
        let p = probe("http://no-such-host.invalid/");
        assert_eq!(p.failed_stage, Some(Stage::Dns), "{p:?}");
    }
}
