//! The operational flags every nuop binary shares ([`OperateArgs`], each with an
//! environment variable) and their resolution into [`RuntimeOptions`].
//!
//! Pure apart from reading `POD_NAMESPACE` and the service-account namespace file in
//! [`OperateArgs::resolve`]; the decisions are tested below.

use std::net::SocketAddr;
use std::time::Duration;

use crate::health::parse_bind_address;
use crate::leader::{self, LeaseSettings};

/// Where a pod finds its own namespace.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The operational flags every nuop binary shares (flatten into a clap parser).
#[derive(clap::Args, Debug, Clone)]
pub struct OperateArgs {
    /// Address for /healthz and /readyz (`:8081`, `127.0.0.1:8081`; `0` turns it off).
    #[arg(long, env = "NUOP_HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: String,
    /// Address for /metrics in Prometheus text format (`0` turns it off).
    #[arg(long, env = "NUOP_METRICS_BIND_ADDRESS", default_value = ":8080")]
    pub metrics_bind_address: String,
    /// Run controllers only while holding a coordination.k8s.io Lease.
    #[arg(long, env = "NUOP_LEADER_ELECT", value_parser = clap::builder::BoolishValueParser::new())]
    pub leader_elect: bool,
    /// Name of the leader election Lease [default: the binary's name, e.g. nuop-standard].
    #[arg(long, env = "NUOP_LEADER_ELECTION_ID")]
    pub leader_election_id: Option<String>,
    /// Namespace of the Lease [default: $POD_NAMESPACE, else the service account's
    /// namespace].
    #[arg(long, env = "NUOP_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// How long a leader's claim lasts without renewal (whole seconds).
    #[arg(long, env = "NUOP_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up (and exits).
    #[arg(long, env = "NUOP_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// How often candidates try to take the lease and the leader renews it.
    #[arg(long, env = "NUOP_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_election_retry_period: Duration,
    /// How long in-flight reconciles may run after SIGTERM before they are cancelled.
    #[arg(long, env = "NUOP_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    // --- console (issue 16) ---
    /// Address of the read-only console and its `/debug/` JSON (off unless given;
    /// `:8082` or `8082` means 127.0.0.1:8082; reach it with `kubectl port-forward`).
    #[arg(long, env = "NUOP_CONSOLE_BIND_ADDRESS")]
    pub console_bind_address: Option<String>,
    /// Reconciles the console keeps per controller.
    #[arg(long, env = "NUOP_CONSOLE_HISTORY", default_value_t = crate::console::DEFAULT_HISTORY)]
    pub console_history: usize,
}

/// Where the audit trail goes ([`crate::audit`]): the flag of the binaries that run
/// scripts (nuop-standard, nuop-managed), flattened beside [`OperateArgs`].
#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    /// Audit records of every write made for a script, as JSON lines: `off`, `-` (or
    /// `stdout`; logs go to stderr), or a file path (appended to).
    #[arg(long, env = "NUOP_AUDIT_LOG", default_value = "off")]
    pub audit_log: String,
}

impl AuditArgs {
    /// Opens the audit log the flag names.
    ///
    /// # Errors
    /// When the file cannot be opened; the message names the flag and the file.
    pub fn open(&self) -> Result<crate::audit::AuditLog, String> {
        crate::audit::AuditLog::open(&crate::audit::AuditTarget::parse(&self.audit_log))
    }
}

/// What [`operate`] needs, resolved and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Where /healthz and /readyz answer; `None` turns them off.
    pub health_probe_bind_address: Option<SocketAddr>,
    /// Where /metrics answers; `None` turns it off.
    pub metrics_bind_address: Option<SocketAddr>,
    /// The lease to hold before running controllers; `None` runs them at once.
    pub leader_election: Option<LeaseSettings>,
    /// How long in-flight reconciles may run after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Where the console answers; `None` turns it (and its recording) off.
    pub console_bind_address: Option<SocketAddr>,
    /// Reconciles the console keeps per controller.
    pub console_history: usize,
}

impl OperateArgs {
    /// Resolves the flags for a binary whose default lease name is `default_id`,
    /// reading the pod's namespace from `POD_NAMESPACE` or the service-account file.
    ///
    /// # Errors
    /// A message saying which flag is wrong.
    pub fn resolve(&self, default_id: &str) -> Result<RuntimeOptions, String> {
        let pod_namespace = std::env::var("POD_NAMESPACE").ok();
        let file_namespace = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
        self.resolve_with(
            default_id,
            pod_namespace.as_deref(),
            file_namespace.as_deref(),
            leader::default_identity,
        )
    }

    /// [`OperateArgs::resolve`] with the environment passed in.
    ///
    /// # Errors
    /// A message saying which flag is wrong.
    pub fn resolve_with(
        &self,
        default_id: &str,
        pod_namespace: Option<&str>,
        file_namespace: Option<&str>,
        identity: impl FnOnce() -> String,
    ) -> Result<RuntimeOptions, String> {
        let health_probe_bind_address = parse_bind_address(&self.health_probe_bind_address)
            .map_err(|e| format!("--health-probe-bind-address: {e}"))?;
        let metrics_bind_address = parse_bind_address(&self.metrics_bind_address)
            .map_err(|e| format!("--metrics-bind-address: {e}"))?;
        let console_bind_address = match &self.console_bind_address {
            Some(text) => {
                parse_console_address(text).map_err(|e| format!("--console-bind-address: {e}"))?
            }
            None => None,
        };
        if self.console_history == 0 {
            return Err("--console-history: must be at least 1".into());
        }
        let leader_election = if self.leader_elect {
            let namespace = lease_namespace(
                self.leader_election_namespace.as_deref(),
                pod_namespace,
                file_namespace,
            )
            .ok_or_else(|| {
                format!(
                    "--leader-elect needs the Lease's namespace: pass --leader-election-namespace, \
                     set POD_NAMESPACE, or run in a pod ({SERVICE_ACCOUNT_NAMESPACE_FILE})"
                )
            })?;
            let settings = LeaseSettings {
                name: self
                    .leader_election_id
                    .clone()
                    .unwrap_or_else(|| default_id.to_string()),
                namespace,
                identity: identity(),
                lease_duration: self.leader_election_lease_duration,
                renew_deadline: self.leader_election_renew_deadline,
                retry_period: self.leader_election_retry_period,
            };
            settings.validate()?;
            Some(settings)
        } else {
            None
        };
        Ok(RuntimeOptions {
            health_probe_bind_address,
            metrics_bind_address,
            leader_election,
            shutdown_timeout: self.shutdown_timeout,
            console_bind_address,
            console_history: self.console_history,
        })
    }
}

/// Parses the console's address: like [`parse_bind_address`], except that a bare port
/// (`:8082` or `8082`) means 127.0.0.1, not every interface: the console is for
/// `kubectl port-forward` and local use unless an address says otherwise.
///
/// # Errors
/// When the text is no address.
pub fn parse_console_address(text: &str) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    let port = text.strip_prefix(':').unwrap_or(text);
    if !port.is_empty() && port != "0" && port.bytes().all(|b| b.is_ascii_digit()) {
        return parse_bind_address(&format!("127.0.0.1:{port}"));
    }
    parse_bind_address(text)
}

// --- webhooks (issue 14) ---

/// The webhook server's flags, for every binary that runs scripts (flatten into its
/// clap parser).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Address of the HTTPS server for `main validate`/`mutate`/`convert` (`:9443`;
    /// `0` turns it off). It is started only when a script declares `webhooks` or
    /// `conversion`.
    #[arg(long, env = "NUOP_WEBHOOK_BIND_ADDRESS", default_value = ":9443")]
    pub webhook_bind_address: String,
    /// A directory with `tls.crt` and `tls.key` (a mounted Secret, as cert-manager
    /// provides) to serve webhooks with [default: a self-signed certificate kept in
    /// the Secret `<identity>-webhook-tls` of $POD_NAMESPACE].
    #[arg(long, env = "NUOP_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<std::path::PathBuf>,
    /// Where the API server reaches the webhook server, `https://HOST:PORT` (local
    /// development and tests; otherwise the Service): the base of the URLs written
    /// into the webhook configurations.
    #[arg(long, env = "NUOP_WEBHOOK_URL_BASE")]
    pub webhook_url_base: Option<String>,
    /// The Service in front of the pods, `NAMESPACE/NAME[:PORT]` (port 443 unless
    /// given), where the API server reaches the webhook server in a cluster: with a
    /// self-signed certificate, nuop signs it for the Service's DNS names and points
    /// the webhook configurations at the Service. Not with --webhook-url-base.
    #[arg(long, env = "NUOP_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,
}

/// A Service reference, as `--webhook-service` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookService {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port the API server calls (443 unless given).
    pub port: i32,
}

impl WebhookService {
    /// Parses `NAMESPACE/NAME[:PORT]`. Pure.
    ///
    /// # Errors
    /// A message saying which part is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (namespace, rest) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not NAMESPACE/NAME[:PORT]"))?;
        let (name, port) = match rest.split_once(':') {
            Some((name, port)) => {
                let port: i32 = port
                    .parse()
                    .ok()
                    .filter(|p| (1..=65535).contains(p))
                    .ok_or_else(|| format!("`{port}` is not a port (1-65535)"))?;
                (name, port)
            }
            None => (rest, 443),
        };
        for (what, value) in [("namespace", namespace), ("name", name)] {
            let valid = !value.is_empty()
                && value.len() <= 63
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !value.starts_with('-')
                && !value.ends_with('-');
            if !valid {
                return Err(format!(
                    "the {what} `{value}` is not a DNS label (lowercase letters, digits, '-')"
                ));
            }
        }
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port,
        })
    }

    /// The names the API server may dial it by, for the serving certificate.
    pub fn dns_names(&self) -> Vec<String> {
        let short = format!("{}.{}.svc", self.name, self.namespace);
        vec![
            format!("{}.{}", self.name, self.namespace),
            format!("{short}.cluster.local"),
            short,
        ]
    }
}

/// The webhook server's settings, resolved; the default serves nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Where to serve; `None` turns webhooks off.
    pub bind_address: Option<SocketAddr>,
    /// `--webhook-cert-dir`.
    pub cert_dir: Option<std::path::PathBuf>,
    /// `--webhook-url-base`, without a trailing `/`.
    pub url_base: Option<String>,
    /// `--webhook-service`.
    pub service: Option<WebhookService>,
}

impl WebhookArgs {
    /// Resolves the flags.
    ///
    /// # Errors
    /// A message naming the flag that is wrong.
    pub fn resolve(&self) -> Result<WebhookOptions, String> {
        let bind_address = parse_bind_address(&self.webhook_bind_address)
            .map_err(|e| format!("--webhook-bind-address: {e}"))?;
        let url_base = match self.webhook_url_base.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) if url.starts_with("https://") => Some(url.trim_end_matches('/').to_string()),
            Some(url) => {
                return Err(format!(
                    "--webhook-url-base: `{url}` must start with https:// (the API server calls webhooks over TLS only)"
                ));
            }
        };
        let service = match self.webhook_service.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => {
                Some(WebhookService::parse(text).map_err(|e| format!("--webhook-service: {e}"))?)
            }
        };
        if url_base.is_some() && service.is_some() {
            return Err(
                "--webhook-url-base and --webhook-service both say where the API server calls: give one"
                    .into(),
            );
        }
        Ok(WebhookOptions {
            bind_address,
            cert_dir: self.webhook_cert_dir.clone(),
            url_base,
            service,
        })
    }
}

/// The Lease's namespace: the flag, else `POD_NAMESPACE`, else the service-account
/// namespace file's content; blank values count as unset.
pub fn lease_namespace(
    flag: Option<&str>,
    pod_namespace: Option<&str>,
    file_namespace: Option<&str>,
) -> Option<String> {
    [flag, pod_namespace, file_namespace]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses a duration: `30s`, `500ms`, `2m`, `1h`, or a plain number of seconds.
///
/// # Errors
/// When the text is none of those.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration `{text}`: expected e.g. 30s, 500ms, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration `{text}`: unknown unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration `{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        operate: OperateArgs,
    }

    fn parse(args: &[&str]) -> OperateArgs {
        let mut all = vec!["test"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parse").operate
    }

    #[derive(Parser, Debug)]
    struct WebhookCli {
        #[command(flatten)]
        webhooks: WebhookArgs,
    }

    #[test]
    fn webhook_flags_default_to_controller_runtimes_port() {
        let parse = |args: &[&str]| {
            let mut all = vec!["test"];
            all.extend_from_slice(args);
            WebhookCli::try_parse_from(all)
                .expect("parse")
                .webhooks
                .resolve()
        };
        let options = parse(&[]).expect("defaults");
        assert_eq!(
            options.bind_address,
            Some("0.0.0.0:9443".parse().expect("addr"))
        );
        assert_eq!(options.url_base, None);
        assert_eq!(
            parse(&["--webhook-bind-address", "0"])
                .expect("off")
                .bind_address,
            None
        );
        assert_eq!(
            parse(&["--webhook-url-base", "https://127.0.0.1:9443/"])
                .expect("url")
                .url_base
                .as_deref(),
            Some("https://127.0.0.1:9443")
        );
        let err = parse(&["--webhook-url-base", "http://x"]).expect_err("http");
        assert!(err.starts_with("--webhook-url-base"), "{err}");
        assert_eq!(
            parse(&["--webhook-service", "ops/nuop-webhook:8443"])
                .expect("service")
                .service,
            Some(WebhookService {
                namespace: "ops".into(),
                name: "nuop-webhook".into(),
                port: 8443
            })
        );
        let err = parse(&[
            "--webhook-service",
            "ops/nuop",
            "--webhook-url-base",
            "https://127.0.0.1:9443",
        ])
        .expect_err("both");
        assert!(err.contains("give one"), "{err}");
    }

    #[test]
    fn a_webhook_service_is_namespace_name_and_port() {
        let service = WebhookService::parse("ops/nuop-webhook").expect("no port");
        assert_eq!(service.port, 443);
        assert_eq!(
            service.dns_names(),
            [
                "nuop-webhook.ops",
                "nuop-webhook.ops.svc.cluster.local",
                "nuop-webhook.ops.svc"
            ]
        );
        for (text, says) in [
            ("nuop-webhook", "NAMESPACE/NAME"),
            ("ops/nuop:0", "not a port"),
            ("ops/nuop:https", "not a port"),
            ("Ops/nuop", "namespace `Ops`"),
            ("ops/", "name ``"),
            ("ops/-x", "name `-x`"),
        ] {
            let err = WebhookService::parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn the_audit_log_is_off_unless_named() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            audit: AuditArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("nuop").chain(args.iter().copied()))
                .expect("parses")
                .audit
        };
        assert!(!parse(&[]).open().expect("off").is_on());
        assert!(parse(&["--audit-log", "-"]).open().expect("stdout").is_on());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("audit.jsonl");
        let file = file.to_str().expect("utf-8");
        assert!(parse(&["--audit-log", file]).open().expect("file").is_on());
        let missing = dir.path().join("no/such/dir/audit.jsonl");
        let error = parse(&["--audit-log", missing.to_str().expect("utf-8")])
            .open()
            .expect_err("no such directory");
        assert!(error.starts_with("--audit-log: cannot open"), "{error}");
    }

    #[test]
    fn defaults_follow_controller_runtime() {
        let options = parse(&[])
            .resolve_with("nuop-standard", None, None, || "me".into())
            .expect("resolve");
        assert_eq!(
            options,
            RuntimeOptions {
                health_probe_bind_address: Some("0.0.0.0:8081".parse().expect("addr")),
                metrics_bind_address: Some("0.0.0.0:8080".parse().expect("addr")),
                leader_election: None,
                shutdown_timeout: Duration::from_secs(30),
                console_bind_address: None,
                console_history: crate::console::DEFAULT_HISTORY,
            }
        );
    }

    #[test]
    fn the_console_is_off_by_default_and_local_when_only_a_port_is_given() {
        let resolve = |args: &[&str]| {
            parse(args)
                .resolve_with("x", None, None, || "me".into())
                .map(|o| (o.console_bind_address, o.console_history))
        };
        let local: SocketAddr = "127.0.0.1:8082".parse().expect("addr");
        assert_eq!(
            resolve(&["--console-bind-address", ":8082"]),
            Ok((Some(local), 100))
        );
        assert_eq!(
            resolve(&["--console-bind-address", "8082"]),
            Ok((Some(local), 100))
        );
        assert_eq!(
            resolve(&[
                "--console-bind-address",
                "0.0.0.0:8082",
                "--console-history",
                "5"
            ]),
            Ok((Some("0.0.0.0:8082".parse().expect("addr")), 5))
        );
        assert_eq!(resolve(&["--console-bind-address", "0"]), Ok((None, 100)));
        let error = resolve(&["--console-bind-address", "nowhere"]).expect_err("invalid");
        assert!(error.contains("--console-bind-address"), "{error}");
        let error = resolve(&["--console-history", "0"]).expect_err("zero history");
        assert!(error.contains("--console-history"), "{error}");
    }

    #[test]
    fn metrics_can_be_turned_off_and_addresses_are_checked() {
        let options = parse(&["--metrics-bind-address", "0"])
            .resolve_with("x", None, None, || "me".into())
            .expect("resolve");
        assert_eq!(options.metrics_bind_address, None);
        let error = parse(&["--health-probe-bind-address", "nowhere"])
            .resolve_with("x", None, None, || "me".into())
            .expect_err("invalid address");
        assert!(error.contains("--health-probe-bind-address"), "{error}");
    }

    #[test]
    fn leader_election_uses_the_default_id_and_the_pods_namespace() {
        let options = parse(&["--leader-elect"])
            .resolve_with("nuop-standard", Some("ops"), Some("other\n"), || {
                "me".into()
            })
            .expect("resolve");
        let lease = options.leader_election.expect("leader election");
        assert_eq!(lease.name, "nuop-standard");
        assert_eq!(lease.namespace, "ops");
        assert_eq!(lease.identity, "me");
        assert_eq!(lease.lease_duration, Duration::from_secs(15));

        let options = parse(&[
            "--leader-elect",
            "--leader-election-id",
            "mine",
            "--leader-election-lease-duration",
            "5s",
            "--leader-election-renew-deadline",
            "3s",
            "--leader-election-retry-period",
            "500ms",
        ])
        .resolve_with("nuop-standard", None, Some("from-file\n"), || "me".into())
        .expect("resolve");
        let lease = options.leader_election.expect("leader election");
        assert_eq!(lease.name, "mine");
        assert_eq!(lease.namespace, "from-file");
        assert_eq!(lease.retry_period, Duration::from_millis(500));
    }

    #[test]
    fn leader_election_without_a_namespace_is_an_error() {
        let error = parse(&["--leader-elect"])
            .resolve_with("x", None, None, || "me".into())
            .expect_err("no namespace");
        assert!(error.contains("--leader-election-namespace"), "{error}");
        assert!(error.contains("POD_NAMESPACE"), "{error}");
        // Without --leader-elect no namespace is needed.
        assert!(
            parse(&[])
                .resolve_with("x", None, None, || "me".into())
                .is_ok()
        );
    }

    #[test]
    fn unsafe_lease_timings_are_rejected() {
        let error = parse(&[
            "--leader-elect",
            "--leader-election-namespace",
            "ns",
            "--leader-election-lease-duration",
            "5s",
        ])
        .resolve_with("x", None, None, || "me".into())
        .expect_err("renew deadline 10s >= lease duration 5s");
        assert!(error.contains("renew deadline"), "{error}");
    }

    #[test]
    fn lease_namespace_prefers_the_flag_then_the_pod_then_the_file() {
        assert_eq!(
            lease_namespace(Some("a"), Some("b"), Some("c")),
            Some("a".into())
        );
        assert_eq!(
            lease_namespace(None, Some("b"), Some("c")),
            Some("b".into())
        );
        assert_eq!(
            lease_namespace(Some(" "), Some(""), Some("c\n")),
            Some("c".into())
        );
        assert_eq!(lease_namespace(None, None, None), None);
    }

    #[test]
    fn durations_parse_like_go_flags() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn leader_elect_reads_boolean_env_values() {
        // clap reads flags from the environment as booleans ("true", "false", "1", "0").
        let cmd = <Cli as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "leader_elect")
            .expect("leader_elect flag");
        assert_eq!(
            arg.get_env(),
            Some(std::ffi::OsStr::new("NUOP_LEADER_ELECT"))
        );
    }
}
