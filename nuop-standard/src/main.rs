//! `nuop-standard`: script controllers baked into the image, plus the script author's
//! `check` and `exec` tools. Parses arguments and hands over to nuop-core.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nuop_core::controller::ControllerOptions;
use nuop_core::health::Readiness;
use nuop_core::protocol::Phase;
use nuop_core::runtime::{OperateArgs, operate, run_to_exit};
use nuop_core::script::ExecutorKind;
use nuop_core::shutdown::shutdown_signal;

/// Kubernetes controllers written as Nushell scripts: one controller per
/// `<scripts>/*/mod.nu`.
#[derive(Parser, Debug)]
#[command(name = "nuop-standard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The scripts root: every `<DIR>/*/mod.nu` is a controller.
    #[arg(long, env = "NUOP_SCRIPT_PATH", default_value = "/scripts")]
    scripts: PathBuf,
    /// Executor for the scripts.
    #[arg(long, global = true, env = "NUOP_EXECUTOR", default_value = "embedded")]
    executor: ExecutorKind,
    /// Reconciles of one controller that may run at once.
    #[arg(long, env = "NUOP_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Emit a Normal Event for every successful write (update, status, finalizer).
    /// Warnings are always emitted. `false` halves the API writes of a busy controller.
    #[arg(long, env = "NUOP_WRITE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    write_events: bool,
    /// Log format: plain or json (filter with RUST_LOG, e.g. `info,nuop_core=debug`).
    #[arg(long, env = "NUOP_LOG_FORMAT", default_value = "plain")]
    log_format: String,
    #[command(flatten)]
    operate: OperateArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load every `<DIR>/*/mod.nu`, run `config`, and print one line per controller.
    Check {
        /// The scripts root.
        dir: PathBuf,
    },
    /// Run one phase of one script on an object read from stdin (YAML or JSON).
    Exec {
        /// The script's directory (holding mod.nu).
        dir: PathBuf,
        /// reconcile, finalize or config.
        phase: Phase,
        /// Seconds the call may run (default: the script's configured `timeout`, else 30).
        #[arg(long)]
        timeout: Option<f64>,
        /// Serve the script's `k8s` commands from the objects in FILE (a YAML list,
        /// multi-document YAML or a JSON list) and list the commands it issued on stderr.
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
    },
}

/// The Lease name used when `--leader-election-id` is not given.
const DEFAULT_LEADER_ELECTION_ID: &str = "nuop-standard";

fn main() -> anyhow::Result<ExitCode> {
    // As PID 1 (a container's entry point), become a reaping init first (see init.rs).
    if let Some(code) = nuop_core::init::run_if_pid1() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let dev_runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Some(Command::Check { dir }) => dev_runtime()?.block_on(async {
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            let broken = nuop_core::devtools::check(&dir, cli.executor, &mut out, &mut err).await?;
            Ok(if broken == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }),
        Some(Command::Exec {
            dir,
            phase,
            timeout,
            cluster,
        }) => dev_runtime()?.block_on(async {
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            let mut input = String::new();
            if phase != Phase::Config {
                std::io::stdin().read_to_string(&mut input)?;
            }
            let timeout = timeout.map(Duration::from_secs_f64);
            let cluster = match cluster {
                Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!("cannot read --cluster {}: {e}", path.display())
                })?),
                None => None,
            };
            let code = nuop_core::devtools::exec(
                &dir,
                phase,
                cli.executor,
                timeout,
                &input,
                cluster.as_deref(),
                &mut out,
                &mut err,
            )
            .await?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }),
        None => {
            let options = cli
                .operate
                .resolve(DEFAULT_LEADER_ELECTION_ID)
                .map_err(anyhow::Error::msg)?;
            let code = run_to_exit("nuop-standard", &cli.log_format, || async move {
                let client = kube::Client::try_default().await?;
                let readiness = Readiness::new();
                let termination = shutdown_signal(nuop_core::telemetry::termination());
                let controller_options = ControllerOptions {
                    concurrency: cli.concurrency,
                    readiness: readiness.clone(),
                    write_events: cli.write_events,
                    // One registry per process: every controller shares its watches.
                    informers: nuop_core::informers::Informers::default(),
                };
                let scripts = cli.scripts.clone();
                let executor = cli.executor;
                let stopped = operate(
                    client.clone(),
                    options,
                    readiness,
                    termination,
                    move |stop| async move {
                        nuop_core::standard::run(
                            client,
                            &scripts,
                            executor,
                            controller_options,
                            stop,
                        )
                        .await
                        .map_err(|e| {
                            format!("cannot read the scripts root {}: {e}", scripts.display())
                        })
                    },
                )
                .await?;
                anyhow::Ok(stopped)
            });
            std::process::exit(code);
        }
    }
}
