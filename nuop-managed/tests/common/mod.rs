//! Test fixtures: real git repositories in temp dirs, served over file:// and by
//! `git daemon` on loopback. A missing `git` binary fails the test loudly.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `git args` in `dir` and returns its trimmed stdout.
///
/// # Panics
/// When git is missing or fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("these tests need the git binary: {e}"));
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A repository with a work tree on branch `main`.
pub struct Repo {
    /// Holds the repository (`<tmp>/repo`).
    pub tmp: tempfile::TempDir,
}

impl Repo {
    /// An empty repository.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("repo")).expect("mkdir");
        let repo = Self { tmp };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "test@nuop.dev"]);
        repo.git(&["config", "user.name", "nuop test"]);
        repo
    }

    /// The work tree.
    pub fn path(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    /// `file://` URL of the repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Runs git in the work tree.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path(), args)
    }

    /// Writes a file (creating directories).
    pub fn write(&self, path: &str, content: &str) -> &Self {
        let file = self.path().join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, content).expect("write");
        self
    }

    /// Commits everything and returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A `git daemon` serving a directory's repositories on 127.0.0.1; killed on drop.
pub struct Daemon {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Daemon {
    /// Serves every repository under `base` (read-only, all exported).
    pub fn serve(base: &Path) -> Self {
        let port = free_port();
        // `git daemon` would run `git-daemon` as its child, which killing `git` leaves
        // behind: start the daemon itself.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("these tests need `git daemon`: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    /// `git://` URL of the repository `name` under the base path.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A smart-HTTP git server on 127.0.0.1 (`git http-backend` behind a small axum
/// server) that, given a token, demands basic authentication with it as the password
/// (any user name). Stops when dropped.
pub struct HttpGit {
    /// The address it listens on.
    pub ip: String,
    /// Its port.
    pub port: u16,
    /// Requests refused for want of the right credentials.
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Requests served.
    pub served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpGit {
    /// Serves the repositories under `base` over plain http, requiring `token` as the
    /// password if given.
    pub async fn serve(base: &Path, token: Option<&str>) -> Self {
        Self::start(base, token, None).await
    }

    /// Like [`HttpGit::serve`], over https with `tls`'s certificate.
    pub async fn serve_tls(base: &Path, token: Option<&str>, tls: &Tls) -> Self {
        Self::start(base, token, Some(tls)).await
    }

    /// Like [`HttpGit::serve_tls`], listening on `ip` (another loopback address is
    /// another host).
    pub async fn serve_tls_on(ip: &str, base: &Path, token: Option<&str>, tls: &Tls) -> Self {
        Self::start_on(ip, base, token, Some(tls), None).await
    }

    /// An https server on 127.0.0.1 that answers every request with a redirect to the
    /// same path and query under `target` (e.g. `https://127.0.0.2:PORT`).
    pub async fn redirect_tls(target: &str, tls: &Tls) -> Self {
        Self::start_on(
            "127.0.0.1",
            &std::env::temp_dir(),
            None,
            Some(tls),
            Some(target),
        )
        .await
    }

    async fn start(base: &Path, token: Option<&str>, tls: Option<&Tls>) -> Self {
        Self::start_on("127.0.0.1", base, token, tls, None).await
    }

    async fn start_on(
        ip: &str,
        base: &Path,
        token: Option<&str>,
        tls: Option<&Tls>,
        redirect: Option<&str>,
    ) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let backend = Path::new(&git(base, &["--exec-path"])).join("git-http-backend");
        let refused = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let state = Arc::new((
            backend,
            base.to_path_buf(),
            token.map(str::to_string),
            refused.clone(),
            served.clone(),
            redirect.map(str::to_string),
        ));
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let state = state.clone();
            async move {
                let (backend, base, token, refused, served, redirect) = &*state;
                if let Some(target) = redirect {
                    served.fetch_add(1, Ordering::SeqCst);
                    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                    return axum::response::Response::builder()
                        .status(302)
                        .header("Location", format!("{target}{path}"))
                        .body(axum::body::Body::empty())
                        .expect("response");
                }
                let authorized = token.is_none()
                    || request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Basic "))
                        .and_then(base64_decode)
                        .and_then(|pair| {
                            pair.split_once(':')
                                .map(|(_, p)| Some(p) == token.as_deref())
                        })
                        .unwrap_or(false);
                if !authorized {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return axum::response::Response::builder()
                        .status(401)
                        .header("WWW-Authenticate", "Basic realm=\"git\"")
                        .body(axum::body::Body::empty())
                        .expect("response");
                }
                served.fetch_add(1, Ordering::SeqCst);
                cgi(backend, base, request).await
            }
        });
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"));
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        match tls {
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                });
            }
            Some(tls) => {
                let listener = TlsListener {
                    tcp: listener,
                    acceptor: tls.acceptor(),
                };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                });
            }
        }
        Self {
            ip: ip.to_string(),
            port,
            refused,
            served,
            stop: Some(stop),
        }
    }

    /// `http://` URL of the repository `name` under the base path.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// `https://` URL of the repository `name` (for a server started with TLS).
    pub fn https_url(&self, name: &str) -> String {
        format!("https://{}:{}/{name}", self.ip, self.port)
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs one request through `git http-backend` as a CGI program.
async fn cgi(
    backend: &Path,
    base: &Path,
    request: axum::extract::Request,
) -> axum::response::Response {
    use tokio::io::AsyncWriteExt;

    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .expect("request body");
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut child = tokio::process::Command::new(backend)
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&body).await.expect("write body");
    drop(stdin);
    let output = child.wait_with_output().await.expect("http-backend output");
    let split = output
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            output
                .stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .expect("CGI headers");
    let head = String::from_utf8_lossy(&output.stdout[..split.0]).into_owned();
    let mut response = axum::response::Response::builder();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.trim()[..3].parse().expect("status");
            response = response.status(code);
        } else {
            response = response.header(name.trim(), value.trim());
        }
    }
    response
        .body(axum::body::Body::from(
            output.stdout[split.0 + split.1..].to_vec(),
        ))
        .expect("response")
}

fn base64_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|b| *b == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A private CA and a server certificate for 127.0.0.1, made with the openssl CLI.
pub struct Tls {
    /// Holds the PEM files.
    pub dir: tempfile::TempDir,
}

impl Tls {
    /// Makes the CA and the certificate, and installs the process's rustls provider
    /// (the https client of the test that uses them needs it).
    pub fn new() -> Self {
        nuop_core::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("these tests need the openssl binary: {e}"));
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        std::fs::write(
            dir.path().join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,IP:127.0.0.2\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=nuop-test-ca",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
        Self { dir }
    }

    /// The CA certificate (what a client must trust, e.g. via `SSL_CERT_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(self.dir.path().join("leaf.pem"))
            .expect("leaf.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(self.dir.path().join("leaf.key")).expect("key");
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(
            std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }
}

/// Accepts TLS connections for axum; failed handshakes are dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
