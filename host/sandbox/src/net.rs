//! The host side of `net.probe`: DNS, TCP, TLS (for https) and one HTTP HEAD,
//! each with a short timeout, reporting the first stage that failed.
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use molt_check_logic::{Probe, Stage};

const TIMEOUT: Duration = Duration::from_secs(3);

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

fn http_status(stream: &mut dyn ReadWrite, p: &Parsed) -> Result<u16, String> {
    let req = format!(
        "HEAD {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: molt-precheck\r\nConnection: close\r\n\r\n",
        p.path, p.host
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") && got.len() < 256 {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!(
            "not an HTTP answer: `{}`",
            line.chars().take(60).collect::<String>()
        )),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Probe `url` for real. Never panics; every failure names its stage.
pub fn probe(url: &str) -> Probe {
    let Some(p) = parse(url) else {
        return fail(url, Stage::Dns, None, "not an http(s) URL".into());
    };
    let addrs: Vec<_> = match (p.host.as_str(), p.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return fail(url, Stage::Dns, None, e.to_string()),
    };
    if addrs.is_empty() {
        return fail(url, Stage::Dns, None, format!("{} has no address", p.host));
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
    let Some(tcp) = tcp else {
        return fail(url, Stage::Tcp, None, last);
    };
    let _ = tcp.set_read_timeout(Some(TIMEOUT));
    let _ = tcp.set_write_timeout(Some(TIMEOUT));
    let status = if p.https {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
            Err(e) => return fail(url, Stage::Tls, None, e.to_string()),
        };
        let name = match rustls::pki_types::ServerName::try_from(p.host.clone()) {
            Ok(n) => n,
            Err(e) => return fail(url, Stage::Tls, None, e.to_string()),
        };
        let conn = match rustls::ClientConnection::new(Arc::new(config), name) {
            Ok(c) => c,
            Err(e) => return fail(url, Stage::Tls, None, e.to_string()),
        };
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake first so a TLS failure is reported as such.
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                return fail(url, Stage::Tls, None, e.to_string());
            }
        }
        http_status(&mut tls, &p)
    } else {
        let mut s = tcp;
        http_status(&mut s, &p)
    };
    match status {
        Err(e) => fail(url, Stage::Http, None, e),
        Ok(code) if code >= 400 => fail(url, Stage::Http, Some(code), format!("HTTP {code}")),
        Ok(code) => Probe {
            url: url.to_string(),
            ok: true,
            failed_stage: None,
            http_status: Some(code),
            detail: format!("HTTP {code}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b);
                let _ = s.write_all(answer);
            }
        });
        port
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
