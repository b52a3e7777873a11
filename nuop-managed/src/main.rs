//! `nuop-managed`: fetches script sources from git and runs one controller per mapping,
//! swapping in new script revisions without a restart. Parses arguments and hands over
//! to [`nuop_managed::run`] under the shared runtime (probes, metrics, leader election).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nuop_core::controller::{ControllerOptions, shutdown_signal};
use nuop_core::health::Readiness;
use nuop_core::runtime::{
    AuditArgs, OperateArgs, WebhookArgs, operate, parse_duration, run_to_exit,
};
use nuop_core::script::ExecutorKind;
use nuop_crd::ManagedConfig;

/// Kubernetes controllers written as Nushell scripts, fetched from git: one controller
/// per mapping of the configuration.
#[derive(Parser, Debug)]
#[command(name = "nuop-managed", version, about)]
struct Cli {
    /// The configuration the manager writes (`nuop.yaml`: sources and mappings).
    #[arg(long, env = "NUOP_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Seconds between two fetches of each source [default: the configuration's].
    #[arg(long, env = "NUOP_SYNC_INTERVAL")]
    sync_interval: Option<u64>,
    /// Where sources are cached and checked out.
    #[arg(long, env = "NUOP_CACHE_DIR", default_value = "/var/lib/nuop")]
    cache_dir: PathBuf,
    /// Mounted Secrets (`<DIR>/<secret>/<key>`), read before getting the Secret from
    /// the API.
    #[arg(long, env = "NUOP_SECRETS_DIR", default_value = "/etc/nuop/secrets")]
    secrets_dir: PathBuf,
    /// The longest one fetch may take.
    #[arg(long, env = "NUOP_FETCH_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    fetch_timeout: Duration,
    /// Executor for the scripts.
    #[arg(long, env = "NUOP_EXECUTOR", default_value = "embedded")]
    executor: ExecutorKind,
    /// Reconciles of one controller that may run at once.
    #[arg(long, env = "NUOP_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Emit a Normal Event for every successful write. Warnings are always emitted.
    #[arg(long, env = "NUOP_WRITE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    write_events: bool,
    /// Log format: plain or json (filter with RUST_LOG).
    #[arg(long, env = "NUOP_LOG_FORMAT", default_value = "plain")]
    log_format: String,
    #[command(flatten)]
    operate: OperateArgs,
    #[command(flatten)]
    audit: AuditArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

/// Where the managed configuration is mounted when no flag or env var says otherwise.
const DEFAULT_CONFIG: &str = "/etc/nuop/nuop.yaml";

fn main() -> anyhow::Result<()> {
    // As PID 1 (a container's entry point), become a reaping init first (see init.rs).
    if let Some(code) = nuop_core::init::run_if_pid1() {
        std::process::exit(code);
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let has_config = args
        .iter()
        .any(|a| a.to_string_lossy().starts_with("--config"))
        || std::env::var_os("NUOP_CONFIG").is_some()
        || std::path::Path::new(DEFAULT_CONFIG).exists();
    let mode = std::env::var("NUOP_MODE").ok();
    match nuop_managed::mode::decide(mode.as_deref(), has_config).map_err(anyhow::Error::msg)? {
        nuop_managed::mode::Mode::Managed => {}
        nuop_managed::mode::Mode::Standard => return become_standard(&args),
    }
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cli.config.display()))?;
    let config = ManagedConfig::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", cli.config.display()))?;
    // One Lease per NuOperator: several may run in one namespace.
    let lease = format!("nuop-managed-{}", config.nu_operator.name);
    let options = cli.operate.resolve(&lease).map_err(anyhow::Error::msg)?;
    let audit = cli.audit.open().map_err(anyhow::Error::msg)?;
    let webhooks = cli.webhooks.resolve().map_err(anyhow::Error::msg)?;
    if webhooks.url_base.is_some() || webhooks.service.is_some() {
        anyhow::bail!(
            "--webhook-url-base/--webhook-service: managed pods never register webhooks themselves (nuop-manager does, with --allow-webhooks)"
        );
    }
    let settings = nuop_managed::Settings {
        sync_interval: Duration::from_secs(
            cli.sync_interval.unwrap_or(config.sync_interval).max(1),
        ),
        config,
        cache_dir: cli.cache_dir,
        secrets_dir: Some(cli.secrets_dir),
        fetch_timeout: cli.fetch_timeout,
        executor: cli.executor,
        load_timeout: nuop_core::script::embedded::DEFAULT_LOAD_TIMEOUT,
        webhooks,
    };
    let code = run_to_exit("nuop-managed", &cli.log_format, || async move {
        let client = kube::Client::try_default().await?;
        let readiness = Readiness::new();
        let termination = shutdown_signal(nuop_core::telemetry::termination());
        let console = nuop_core::console::start(
            "nuop-managed",
            options.console_bind_address,
            options.console_history,
            readiness.clone(),
            termination.clone(),
        )
        .await?;
        let controller_options = ControllerOptions {
            concurrency: cli.concurrency,
            readiness: readiness.clone(),
            write_events: cli.write_events,
            // One registry per process: every controller shares its watches.
            informers: nuop_core::informers::Informers::default(),
            audit,
            console,
        };
        // Every replica serves the webhooks, leader or not; until the process exits
        // (the API server keeps calling during a graceful shutdown).
        nuop_managed::webhooks::serve(
            client.clone(),
            settings.clone(),
            shutdown_signal(std::future::pending::<()>()),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let stopped = operate(
            client.clone(),
            options,
            readiness,
            termination,
            move |stop| nuop_managed::run(client, settings, controller_options, stop),
        )
        .await?;
        anyhow::Ok(stopped)
    });
    std::process::exit(code);
}

/// Replaces this process with `nuop-standard` from the same directory, with the same
/// arguments: it stays PID 1 and receives the pod's signals itself.
fn become_standard(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let me = std::env::current_exe()?;
    let standard = me.with_file_name("nuop-standard");
    let error = std::process::Command::new(&standard)
        .args(args.iter().skip(1))
        .exec();
    Err(anyhow::anyhow!(
        "standard mode (NUOP_MODE unset and no managed configuration at {DEFAULT_CONFIG}): \
         cannot run {}: {error}",
        standard.display()
    ))
}
