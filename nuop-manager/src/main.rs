//! `nuop-manager`: turns `NuOperator` custom resources into `nuop-managed` Deployments.
//! Parses arguments, starts logging and hands over to [`nuop_manager::run`] under the
//! shared operational runtime (probes, metrics, leader election, graceful shutdown).

use std::process::ExitCode;

use clap::Parser;
use nuop_core::controller::shutdown_signal;
use nuop_core::health::Readiness;
use nuop_core::runtime::{OperateArgs, Stopped, operate, run_to_exit};
use nuop_manager::Options;
use nuop_manager::build::Settings;

/// The managed image a NuOperator without `spec.image` runs.
const DEFAULT_MANAGED_IMAGE: &str =
    concat!("ghcr.io/nuop-dev/nuop-managed:v", env!("CARGO_PKG_VERSION"));

/// Keeps a `nuop-managed` Deployment in step with every NuOperator.
#[derive(Parser, Debug)]
#[command(name = "nuop-manager", version, about)]
struct Cli {
    /// Watch NuOperators in this namespace only [default: every namespace].
    #[arg(long, env = "NUOP_NAMESPACE")]
    namespace: Option<String>,
    /// Image of the managed Deployments when a NuOperator names none.
    #[arg(long, env = "NUOP_DEFAULT_IMAGE", default_value = DEFAULT_MANAGED_IMAGE)]
    default_image: String,
    /// NuOperators reconciled at once.
    #[arg(long, env = "NUOP_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Register the admission webhooks NuOperators' scripts declare, always confined to
    /// the NuOperator's own namespace (off: refused, said in status condition Webhooks).
    #[arg(long, env = "NUOP_ALLOW_WEBHOOKS", value_parser = clap::builder::BoolishValueParser::new())]
    allow_webhooks: bool,
    /// The Secret (in the manager's namespace: POD_NAMESPACE or the service account's)
    /// holding the CA that signs NuOperators' webhook certificates.
    #[arg(long, env = "NUOP_WEBHOOK_CA_SECRET", default_value = nuop_manager::webhooks::DEFAULT_CA_SECRET)]
    webhook_ca_secret: String,
    /// Log format: plain or json (filter with RUST_LOG). Spans go over OTLP when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[arg(long, env = "NUOP_LOG_FORMAT", default_value = "plain")]
    log_format: String,
    #[command(flatten)]
    operate: OperateArgs,
}

fn main() -> ExitCode {
    // As PID 1 (a container's entry point), become a reaping init first (see init.rs).
    if let Some(code) = nuop_core::init::run_if_pid1() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let log_format = cli.log_format.clone();
    ExitCode::from(run_to_exit("nuop-manager", &log_format, || run(cli)) as u8)
}

/// The webhook CA's place when webhooks are allowed.
fn webhook_settings(cli: &Cli) -> anyhow::Result<Option<nuop_manager::webhooks::WebhookSettings>> {
    if !cli.allow_webhooks {
        return Ok(None);
    }
    let file = std::fs::read_to_string(nuop_core::runtime::SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
    let pod = std::env::var("POD_NAMESPACE").ok();
    let namespace = nuop_core::runtime::lease_namespace(None, pod.as_deref(), file.as_deref())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--allow-webhooks needs the manager's namespace for its CA Secret: set POD_NAMESPACE"
            )
        })?;
    Ok(Some(nuop_manager::webhooks::WebhookSettings {
        ca_namespace: namespace,
        ca_secret: cli.webhook_ca_secret.clone(),
    }))
}

async fn run(cli: Cli) -> anyhow::Result<Stopped> {
    let runtime = cli
        .operate
        .resolve("nuop-manager")
        .map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_default().await?;
    let readiness = Readiness::new();
    let termination = shutdown_signal(nuop_core::telemetry::termination());
    // The manager runs no script controllers: its console shows leadership and
    // readiness only (the managed pods' consoles show their controllers).
    let _console = nuop_core::console::start(
        "nuop-manager",
        runtime.console_bind_address,
        runtime.console_history,
        readiness.clone(),
        termination.clone(),
    )
    .await?;
    let webhooks = webhook_settings(&cli)?;
    let options = Options {
        namespace: cli.namespace,
        settings: Settings {
            default_image: cli.default_image,
            webhooks,
        },
        concurrency: cli.concurrency,
        readiness: readiness.clone(),
    };
    let controller_client = client.clone();
    let stopped = operate(client, runtime, readiness, termination, move |shutdown| {
        nuop_manager::run(controller_client, options, shutdown)
    })
    .await?;
    Ok(stopped)
}
