//! TLS fixtures made by the real `openssl` (installed by .ci/run): a private CA
//! and a server certificate it signed for 127.0.0.1 / localhost, as a
//! self-hosted control plane, an internal mirror or a TLS-inspecting proxy
//! presents.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Run `openssl args` in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A private CA and the server certificate it signed.
pub struct PrivateCa {
    /// The CA certificate (what `ca_bundle` names).
    pub ca: PathBuf,
    /// The server's certificate chain and key (`molt serve --tls-cert/--tls-key`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PrivateCa {
    /// `--tls-cert C --tls-key K` for `molt serve`.
    pub fn serve_args(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// Make a CA named `cn` and a server certificate for 127.0.0.1 and localhost
/// in `dir` (P-256 keys, valid 2 days).
pub fn private_ca(dir: &Path, cn: &str) -> PrivateCa {
    std::fs::create_dir_all(dir).unwrap();
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subj = format!("/CN={cn}");
    let mut ca = vec!["req", "-x509"];
    ca.extend(key);
    ca.extend([
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &subj,
    ]);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(key);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    PrivateCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}
