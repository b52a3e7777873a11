//! The operator's k8s socket: how `nu` children of the process executor run `k8s`
//! commands in the operator.
//!
//! Does I/O. One server per process, started on first use ([`server`]): a fresh
//! directory with mode 0700 under the temporary directory holds the Unix socket
//! (`k8s.sock`) and the generated module ([`FILE_NAME`], `k8s.nu`) the children
//! `use`. An HTTP/1 server (axum) on that socket answers `POST` [`INVOKE_PATH`] with a
//! JSON [`Invocation`] body: the bearer token in `Authorization` names the call it
//! belongs to ([`SocketServer::register`] hands one out per call, random and
//! unguessable, and dropping the [`Registration`] revokes it), and the answer is
//! `{"ok": <result>}` (200) or `{"error": {"msg": <K8sError's text>, "code":
//! <code string>}}` (422 for a failed command, 400 for a body that is no invocation,
//! 401 for an unknown or revoked token, 413 for a body over [`BODY_LIMIT`]).
//!
//! The server runs on a thread of its own with its own single-threaded runtime, so it
//! outlives whichever runtime first asked for it (tests run many). A directory left
//! behind by a process that died (statics are never dropped) is removed by the next
//! server that starts, once its owner's pid is gone.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::k8s::module::{FILE_NAME, INVOKE_PATH, Variant, generate};
use crate::k8s::{ErrorCode, Invocation, K8sError};

/// The largest invocation body the server reads (an `apply` of many objects fits).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The socket's file name inside the server's directory.
const SOCKET_NAME: &str = "k8s.sock";

/// The prefix of the server's directory name: `nuop-k8s-<pid>-<random>`.
const DIR_PREFIX: &str = "nuop-k8s-";

/// What a registered call runs commands with: the call's session.
pub trait Invoker: Send + Sync {
    /// Runs one command of the call.
    fn invoke(
        self: Arc<Self>,
        invocation: Invocation,
    ) -> BoxFuture<'static, Result<Value, K8sError>>;
    /// Stops the call's in-flight and later commands.
    fn cancel(&self);
}

impl Invoker for crate::k8s::Session {
    fn invoke(
        self: Arc<Self>,
        invocation: Invocation,
    ) -> BoxFuture<'static, Result<Value, K8sError>> {
        Box::pin(async move { crate::k8s::Session::invoke(&self, &invocation).await })
    }

    fn cancel(&self) {
        crate::k8s::Session::cancel(self);
    }
}

type Calls = Arc<Mutex<HashMap<String, Arc<dyn Invoker>>>>;

/// The running server: where its socket and module are, and the calls it serves.
pub struct SocketServer {
    dir: PathBuf,
    socket: PathBuf,
    module: PathBuf,
    calls: Calls,
}

impl std::fmt::Debug for SocketServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketServer")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The process's server, started on the first call (a failed start is retried by the
/// next call).
///
/// # Errors
/// When the directory, the module or the socket cannot be created.
pub fn server() -> std::io::Result<Arc<SocketServer>> {
    static SERVER: Mutex<Option<Arc<SocketServer>>> = Mutex::new(None);
    let mut slot = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = slot.as_ref() {
        return Ok(server.clone());
    }
    let server = Arc::new(SocketServer::start(&std::env::temp_dir())?);
    *slot = Some(server.clone());
    Ok(server)
}

impl SocketServer {
    /// Creates a fresh 0700 directory under `parent`, writes the module and binds the
    /// socket there, and serves it on a thread of its own until the process exits.
    ///
    /// # Errors
    /// When the directory, the module or the socket cannot be created.
    pub fn start(parent: &Path) -> std::io::Result<Self> {
        remove_stale_dirs(parent);
        let dir = parent.join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            &random_token()?[..12]
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let module = dir.join(FILE_NAME);
        std::fs::write(&module, generate(Variant::Live))?;
        let socket = dir.join(SOCKET_NAME);
        let calls: Calls = Arc::default();

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::UnixListener::bind(&socket)?
        };
        let router = Router::new()
            .route(INVOKE_PATH, post(invoke))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(calls.clone());
        std::thread::Builder::new()
            .name("nuop-k8s-socket".into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(async { axum::serve(listener, router).await }) {
                    tracing::error!("the k8s socket server stopped: {e}");
                }
            })?;
        tracing::debug!(socket = %socket.display(), "k8s socket serving");
        Ok(Self {
            dir,
            socket,
            module,
            calls,
        })
    }

    /// The socket's path (`NUOP_K8S_SOCKET` for the children).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The generated `k8s.nu` the children `use`.
    pub fn module_path(&self) -> &Path {
        &self.module
    }

    /// Makes `call` reachable with a new random token until the returned registration
    /// is dropped (test `revoked_and_unknown_tokens_are_refused`).
    ///
    /// # Errors
    /// When no random token can be read from the operating system.
    pub fn register(&self, call: Arc<dyn Invoker>) -> std::io::Result<Registration> {
        let token = random_token()?;
        self.lock().insert(token.clone(), call.clone());
        Ok(Registration {
            token,
            call,
            calls: self.calls.clone(),
            cancel_on_drop: true,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Invoker>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One call's token. Dropping it revokes the token and, unless the call finished
/// ([`Registration::finished`]), cancels the call's commands (a timeout, or the
/// caller giving up).
pub struct Registration {
    token: String,
    call: Arc<dyn Invoker>,
    calls: Calls,
    cancel_on_drop: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").finish_non_exhaustive()
    }
}

impl Registration {
    /// The bearer token (`NUOP_K8S_TOKEN` for the child).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The call ended on its own: revoke the token without cancelling.
    pub fn finished(mut self) {
        self.cancel_on_drop = false;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token);
        if self.cancel_on_drop {
            self.call.cancel();
        }
    }
}

/// `POST /v1/invoke`: finds the call by its token and runs the invocation.
async fn invoke(
    State(calls): State<Calls>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let call = calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(token)
        .cloned();
    let Some(call) = call else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "k8s: this call's token is not valid (the call has ended?)",
            ErrorCode::OutsideCall,
        );
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            return refusal(
                e.status(),
                &format!("k8s: the invocation was not read: {}", e.body_text()),
                ErrorCode::Usage,
            );
        }
    };
    let invocation: Invocation = match serde_json::from_slice(&body) {
        Ok(invocation) => invocation,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                &format!("k8s: the invocation is not valid JSON: {e}"),
                ErrorCode::Usage,
            );
        }
    };
    match call.invoke(invocation).await {
        Ok(value) => answer(StatusCode::OK, &json!({ "ok": value })),
        Err(e) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({ "error": { "msg": e.to_string(), "code": e.code.as_str() } }),
        ),
    }
}

fn refusal(status: StatusCode, msg: &str, code: ErrorCode) -> Response {
    answer(
        status,
        &json!({ "error": { "msg": msg, "code": code.as_str() } }),
    )
}

fn answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// 32 random bytes from the operating system, hex-encoded.
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes `nuop-k8s-<pid>-*` directories under `parent` whose process is gone (best
/// effort: a directory it cannot remove, or not ours, stays).
fn remove_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists but is someone else's.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Answers `get` with the invocation it got, fails every other verb.
    #[derive(Default)]
    struct Echo {
        cancelled: AtomicUsize,
    }

    impl Invoker for Echo {
        fn invoke(
            self: Arc<Self>,
            invocation: Invocation,
        ) -> BoxFuture<'static, Result<Value, K8sError>> {
            Box::pin(async move {
                if invocation.verb == "get" {
                    Ok(serde_json::to_value(&invocation).unwrap_or_default())
                } else {
                    Err(K8sError {
                        verb: invocation.verb,
                        target: "configmap a/b".into(),
                        reason: "already exists".into(),
                        code: ErrorCode::AlreadyExists,
                    })
                }
            })
        }

        fn cancel(&self) {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One HTTP/1.1 request over the socket: (status, body).
    async fn post(socket: &Path, token: &str, body: &[u8]) -> (u16, Value) {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect");
        let head = format!(
            "POST {INVOKE_PATH} HTTP/1.1\r\nhost: nuop\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        // A refused oversized body may be answered before it is all written.
        let _ = stream.write_all(body).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn a_registered_call_is_served_and_errors_carry_the_code() {
        let parent = tempfile::tempdir().expect("tempdir");
        let server = SocketServer::start(parent.path()).expect("start");
        let mode = std::fs::metadata(&server.dir)
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            std::fs::read_to_string(server.module_path()).expect("module"),
            generate(Variant::Live)
        );
        let echo = Arc::new(Echo::default());
        let registration = server.register(echo.clone()).expect("register");
        let inv = json!({"verb": "get", "args": {"kind": "ConfigMap", "name": "x"}, "input": null});
        let (status, body) = post(
            server.socket_path(),
            registration.token(),
            inv.to_string().as_bytes(),
        )
        .await;
        assert_eq!((status, body), (200, json!({ "ok": inv })));

        let (status, body) = post(
            server.socket_path(),
            registration.token(),
            br#"{"verb": "create", "input": {}}"#,
        )
        .await;
        assert_eq!(status, 422);
        assert_eq!(
            body,
            json!({"error": {"msg": "k8s create configmap a/b: already exists", "code": "nuop::k8s::already_exists"}})
        );

        let (status, body) = post(server.socket_path(), registration.token(), b"{not json").await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "nuop::k8s::usage");

        let big = vec![b' '; BODY_LIMIT + 1];
        let (status, body) = post(server.socket_path(), registration.token(), &big).await;
        assert_eq!(status, 413);
        assert_eq!(body["error"]["code"], "nuop::k8s::usage");

        registration.finished();
        assert_eq!(echo.cancelled.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn revoked_and_unknown_tokens_are_refused() {
        let parent = tempfile::tempdir().expect("tempdir");
        let server = SocketServer::start(parent.path()).expect("start");
        let echo = Arc::new(Echo::default());
        let registration = server.register(echo.clone()).expect("register");
        let other = server.register(echo.clone()).expect("register");
        assert_ne!(registration.token(), other.token());
        assert_eq!(registration.token().len(), 64);
        let token = registration.token().to_string();
        let inv = br#"{"verb": "get"}"#;
        assert_eq!(post(server.socket_path(), &token, inv).await.0, 200);
        // Dropped without `finished`: revoked and cancelled.
        drop(registration);
        assert_eq!(echo.cancelled.load(Ordering::SeqCst), 1);
        let (status, body) = post(server.socket_path(), &token, inv).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "nuop::k8s::outside_call");
        assert_eq!(post(server.socket_path(), "guess", inv).await.0, 401);
        assert_eq!(post(server.socket_path(), "", inv).await.0, 401);
        assert_eq!(post(server.socket_path(), other.token(), inv).await.0, 200);
    }

    #[test]
    fn a_dead_process_s_directory_is_removed_a_live_one_kept() {
        let parent = tempfile::tempdir().expect("tempdir");
        // pid_max is at most 2^22 on Linux: this pid cannot be running.
        let dead = parent.path().join(format!("{DIR_PREFIX}{}-abc", 1 << 23));
        let alive = parent
            .path()
            .join(format!("{DIR_PREFIX}{}-abc", std::process::id()));
        let unrelated = parent.path().join("nuop-k8s-notapid");
        for d in [&dead, &alive, &unrelated] {
            std::fs::create_dir(d).expect("mkdir");
        }
        remove_stale_dirs(parent.path());
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(unrelated.exists());
    }

    #[tokio::test]
    async fn real_nu_runs_the_generated_commands_over_the_socket() {
        let parent = tempfile::tempdir().expect("tempdir");
        let server = SocketServer::start(parent.path()).expect("start");
        let registration = server
            .register(Arc::new(Echo::default()))
            .expect("register");
        let script = format!(
            "use {:?} *; let got = k8s get configmap x -n team --live; let failed = try {{ {{a: 1}} | k8s create; null }} catch {{|e| {{msg: $e.msg, code: $e.details.code}} }}; {{got: $got, failed: $failed}} | to json --raw",
            server.module_path()
        );
        let out = tokio::process::Command::new(crate::testing::nu_binary())
            .args(["--no-config-file", "-c", &script])
            .env(crate::k8s::module::SOCKET_ENV, server.socket_path())
            .env(crate::k8s::module::TOKEN_ENV, registration.token())
            .output()
            .await
            .expect("run nu");
        let got: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(
            got,
            json!({
                "got": {"verb": "get", "args": {"kind": "configmap", "name": "x", "namespace": "team", "live": true}, "input": null},
                "failed": {"msg": "k8s create configmap a/b: already exists", "code": "nuop::k8s::already_exists"},
            })
        );
    }
}
