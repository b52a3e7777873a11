//! What a script sees and can do, run through the real `nuop-standard exec`: the
//! environment it gets, its own timeout, the `http` commands against a loopback HTTPS
//! server with a private CA, and orphans reaped when the binary is PID 1 (issue 18).
//!
//! Needs `nu` (for the process executor), `openssl` (the test CA and its server) and
//! `unshare` (a PID namespace); each test panics with the reason when one is missing.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nuop_core::testing::nu_binary;

/// Generous: only here so that a hung call fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(120);

const CONFIG_MAP: &str =
    r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"n"},"data":{}}"#;

/// A script directory holding `mod.nu` with `source`.
fn script(source: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mod.nu"), source).expect("write mod.nu");
    dir
}

/// Runs `program args` with `env`, failing the test if it does not finish.
fn run_with(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("NUOP_NU", nu_binary())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let _ = input.write_all(CONFIG_MAP.as_bytes());
    });
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    finished
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
        .expect("wait")
}

fn exec(dir: &Path, executor: &str, env: &[(&str, &str)]) -> Output {
    let dir = dir.to_str().expect("utf-8 path");
    run_with(
        env!("CARGO_BIN_EXE_nuop-standard"),
        &["exec", dir, "reconcile", "--executor", executor],
        env,
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_operator_environment_is_not_passed_on() {
    let dir = script(
        "def \"main config\" [] { {name: env, version: v1, kind: ConfigMap} }\n\
         def \"main reconcile\" [] { print -e ($env | columns | str join ' '); print -e (^env | lines | str join ' '); exit 0 }\n",
    );
    for executor in ["embedded", "process"] {
        let out = exec(
            dir.path(),
            executor,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=secret-token"),
                ("NUOP_INTERNAL_SETTING", "x"),
                ("PLAIN_POD_VARIABLE", "y"),
            ],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{executor}: {stderr}");
        assert!(
            stderr.contains("PLAIN_POD_VARIABLE"),
            "{executor}: {stderr}"
        );
        assert!(stderr.contains("NUOP_CONTROLLER"), "{executor}: {stderr}");
        for hidden in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "NUOP_INTERNAL_SETTING",
            "secret-token",
        ] {
            assert!(
                !stderr.contains(hidden),
                "{executor}: {hidden} leaked: {stderr}"
            );
        }
    }
}

#[test]
fn exec_uses_the_scripts_own_timeout() {
    let dir = script(
        "def \"main config\" [] { {name: slow, version: v1, kind: ConfigMap, timeout: 1} }\n\
         def \"main reconcile\" [] { sleep 100sec; exit 0 }\n",
    );
    for executor in ["embedded", "process"] {
        let out = exec(dir.path(), executor, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{executor}: {stderr}");
        assert!(
            stderr.contains("timed out after 1s"),
            "{executor}: {stderr}"
        );
    }
}

/// A private CA and a serving certificate for 127.0.0.1, made with `openssl`.
struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sh = |script: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(dir.path())
                .output()
                .expect("this test needs sh and openssl");
            assert!(
                out.status.success(),
                "openssl failed: {}",
                text(&out.stderr)
            );
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=nuop-test-ca 2>/dev/null",
        );
        sh(
            "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null \
            && printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf \
            && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null",
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `openssl s_server -www` on a free loopback port; killed when dropped.
struct HttpsServer {
    child: Child,
    port: u16,
}

impl HttpsServer {
    fn start(ca: &TestCa) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(ca.path("server.pem"))
            .arg("-key")
            .arg(ca.path("server.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("this test needs openssl");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "openssl s_server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http_commands_reach_a_loopback_https_server_trusting_the_pods_ca() {
    let ca = TestCa::new();
    let server = HttpsServer::start(&ca);
    let dir = script(&format!(
        "def \"main config\" [] {{ {{name: web, version: v1, kind: ConfigMap}} }}\n\
         def \"main reconcile\" [] {{ let page = (http get --raw https://127.0.0.1:{}/); print -e $\"fetched ($page | str length) bytes: ($page | str substring 0..40)\"; exit 0 }}\n",
        server.port
    ));
    let ca_file = ca.path("ca.pem");
    let ca_file = ca_file.to_str().expect("utf-8 path");
    for executor in ["embedded", "process"] {
        let out = exec(dir.path(), executor, &[("SSL_CERT_FILE", ca_file)]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{executor}: {stderr}");
        assert!(stderr.contains("fetched"), "{executor}: {stderr}");
    }
    // Without the CA the same request is refused: the trust came from the CA bundle.
    let empty = ca.path("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let out = exec(
        dir.path(),
        "embedded",
        &[("SSL_CERT_FILE", empty.to_str().expect("utf-8 path"))],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn an_http_call_that_never_answers_ends_at_the_scripts_timeout() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let dir = script(&format!(
        "def \"main config\" [] {{ {{name: web, version: v1, kind: ConfigMap, timeout: 2}} }}\n\
         def \"main reconcile\" [] {{ http get http://127.0.0.1:{port}/; exit 0 }}\n"
    ));
    let out = exec(dir.path(), "embedded", &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
}

/// Runs a script that orphans a process (which then exits) inside a new PID namespace
/// where `nuop-standard` is PID 1, and returns how many zombies the script saw in that
/// namespace half a second after the orphan exited.
fn zombies_seen(extra_env: &[(&str, &str)]) -> usize {
    let dir = script(
        "def \"main config\" [] { {name: orphans, version: v1, kind: ConfigMap} }\n\
         def \"main reconcile\" [] {\n\
           let done = ($env.PWD | path join 'orphan-done')\n\
           with-env {DONE: $done} { ^sh -c '( sleep 0.1; touch \"$DONE\" ) &' }\n\
           while not ($done | path exists) { sleep 10ms }\n\
           sleep 500ms\n\
           let zombies = (glob /proc/*/stat | each {|f| try { open --raw $f } catch { '' } } | where {|s| ($s | str replace -r '^.*\\) ' '') starts-with 'Z' } | length)\n\
           print -e $'zombies: ($zombies)'\n\
           exit 0\n\
         }\n",
    );
    let dir_arg = dir.path().to_str().expect("utf-8 path").to_string();
    let out = run_with(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            env!("CARGO_BIN_EXE_nuop-standard"),
            "exec",
            &dir_arg,
            "reconcile",
        ],
        extra_env,
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "this test needs unshare (root): {stderr}"
    );
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("zombies: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the script did not report: {stderr}"))
}

#[test]
fn as_pid_1_the_binary_reaps_orphaned_processes() {
    // The probe works: without the init, the orphan stays a zombie of PID 1.
    assert!(
        zombies_seen(&[("NUOP_NO_INIT", "1")]) >= 1,
        "without the init an orphan must be left a zombie"
    );
    assert_eq!(zombies_seen(&[]), 0, "the init reaps orphans");
}

#[test]
fn check_names_commands_the_embedded_engine_leaves_out() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("sqlite-user");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("mod.nu"),
        "def \"main config\" [] { {name: sq, version: v1, kind: ConfigMap} }\n\
         def \"main reconcile\" [] {\n  stor create -t seen -c {name: str}\n  exit 0\n}\n",
    )
    .expect("write");
    let root_arg = root.path().to_str().expect("utf-8 path");
    let out = run_with(
        env!("CARGO_BIN_EXE_nuop-standard"),
        &["check", root_arg],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sqlite-user/mod.nu:3: `stor` is not in nuop's embedded engine"),
        "{stderr}"
    );
    // The process executor has it: the same script checks clean there.
    let out = run_with(
        env!("CARGO_BIN_EXE_nuop-standard"),
        &["check", root_arg, "--executor", "process"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
