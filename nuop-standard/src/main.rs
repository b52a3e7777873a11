//! `nuop-standard`: script controllers baked into the image, plus the script author's
//! `check`, `exec`, `test` and `stubs` tools. Parses arguments and hands over to nuop-core.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use nuop_core::controller::ControllerOptions;
use nuop_core::health::Readiness;
use nuop_core::protocol::Phase;
use nuop_core::runtime::{AuditArgs, OperateArgs, WebhookArgs, operate, run_to_exit};
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
    #[command(flatten)]
    audit: AuditArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load every `<DIR>/*/mod.nu`, run `config`, and print one line per controller.
    Check {
        /// The scripts root.
        dir: PathBuf,
        /// `plain` (lines on stderr) or `json` (one `nu --ide-check` diagnostic per line
        /// on stdout, for editors).
        #[arg(long, default_value = "plain", value_parser = ["plain", "json"])]
        format: String,
    },
    /// Run one phase of one script on an object read from stdin (YAML or JSON).
    Exec {
        /// The script's directory (holding mod.nu).
        dir: PathBuf,
        /// config, reconcile, finalize, map, validate, mutate or convert.
        phase: Phase,
        /// Seconds the call may run (default: the script's configured `timeout`, else 30).
        #[arg(long)]
        timeout: Option<f64>,
        /// Serve the script's `k8s` commands from the objects in FILE (a YAML list,
        /// multi-document YAML or a JSON list) and list the commands it issued on stderr.
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
    },
    /// Run the test cases of scripts (`<script>/tests/*.yaml`) without a cluster, on
    /// both executors unless `--executor` names one; ends with `N passed, N failed`.
    Test {
        /// Script directories (holding mod.nu) or scripts roots (default: `.`).
        dirs: Vec<PathBuf>,
        /// Rewrite the expectations that do not hold from the actual results.
        #[arg(long)]
        update: bool,
        /// Also write a JUnit XML report to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Cases run at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Run the cases against a real API server instead of the fake cluster, each
        /// in fresh namespaces (the case's namespaces renamed `<random>-<name>`, deleted
        /// afterwards), to show that the fake behaves like it. The kubeconfig comes from
        /// `NUOP_TEST_KUBECONFIG`, else `KUBECONFIG` or `~/.kube/config`.
        #[arg(long, conflicts_with = "update")]
        live: bool,
    },
    /// Write the signatures of nuop's commands (`k8s …`) as a Nushell module, for
    /// editors, language servers and `nu --ide-check`: save it as `nuop-k8s.nu` in a
    /// directory outside the scripts, `use nuop-k8s.nu *` in the script, and give the
    /// editor's `nu` that directory (`nu -I DIR --ide-check 100 mod.nu`). At run time
    /// nuop resolves `nuop-k8s.nu` to its real commands.
    Stubs {
        /// Write to FILE instead of stdout; it must not be named `k8s.nu` (a module may
        /// not export a command named like itself).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// The client `test --live` uses: `NUOP_TEST_KUBECONFIG`'s kubeconfig when set, else
/// kube's defaults (`KUBECONFIG`, `~/.kube/config`, in-cluster).
async fn live_client() -> anyhow::Result<kube::Client> {
    nuop_core::install_crypto_provider();
    let config = match std::env::var_os("NUOP_TEST_KUBECONFIG").filter(|p| !p.is_empty()) {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path).map_err(|e| {
                anyhow::anyhow!(
                    "--live: cannot read {}: {e}",
                    std::path::Path::new(&path).display()
                )
            })?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("--live: {e}"))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("--live: no kubeconfig: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("--live: {e}"))
}

/// The Lease name used when `--leader-election-id` is not given.
const DEFAULT_LEADER_ELECTION_ID: &str = "nuop-standard";

fn main() -> anyhow::Result<ExitCode> {
    // As PID 1 (a container's entry point), become a reaping init first (see init.rs).
    if let Some(code) = nuop_core::init::run_if_pid1() {
        std::process::exit(code);
    }
    let matches = Cli::command().get_matches();
    // `test` runs both executors unless `--executor` was given on the command line.
    let executor_given = matches.value_source("executor")
        == Some(clap::parser::ValueSource::CommandLine)
        || matches.subcommand().is_some_and(|(_, m)| {
            m.value_source("executor") == Some(clap::parser::ValueSource::CommandLine)
        });
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let dev_runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Some(Command::Check { dir, format }) => dev_runtime()?.block_on(async {
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            let broken = nuop_core::devtools::check(
                &dir,
                cli.executor,
                format == "json",
                &mut out,
                &mut err,
            )
            .await?;
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
        Some(Command::Test {
            dirs,
            update,
            junit,
            jobs,
            live,
        }) => dev_runtime()?.block_on(async {
            let live = if live {
                Some(live_client().await?)
            } else {
                None
            };
            let dirs = if dirs.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                dirs
            };
            let options = nuop_core::harness::Options {
                executors: if executor_given {
                    vec![cli.executor]
                } else {
                    vec![ExecutorKind::Embedded, ExecutorKind::Process]
                },
                update,
                live,
                jobs: jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
                }),
            };
            let mut out = std::io::stdout().lock();
            let runs = nuop_core::harness::run::run(&dirs, &options, &mut out).await?;
            if let Some(path) = junit {
                std::fs::write(&path, nuop_core::harness::run::junit_report(&runs))
                    .map_err(|e| anyhow::anyhow!("cannot write --junit {}: {e}", path.display()))?;
            }
            Ok(if !runs.is_empty() && runs.iter().all(|r| r.passed()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }),
        Some(Command::Stubs { output }) => {
            let stubs = nuop_core::k8s::module::generate(nuop_core::k8s::module::Variant::Stubs);
            match output {
                None => {
                    use std::io::Write;
                    std::io::stdout().lock().write_all(stubs.as_bytes())?;
                }
                Some(path) => {
                    if path.file_name().is_some_and(|n| n == "k8s.nu") {
                        anyhow::bail!(
                            "--output {}: a module named k8s.nu may not export `k8s`; name it {}",
                            path.display(),
                            nuop_core::k8s::module::FILE_NAME
                        );
                    }
                    std::fs::write(&path, stubs).map_err(|e| {
                        anyhow::anyhow!("cannot write --output {}: {e}", path.display())
                    })?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let options = cli
                .operate
                .resolve(DEFAULT_LEADER_ELECTION_ID)
                .map_err(anyhow::Error::msg)?;
            let audit = cli.audit.open().map_err(anyhow::Error::msg)?;
            let webhook_options = cli.webhooks.resolve().map_err(anyhow::Error::msg)?;
            let code = run_to_exit("nuop-standard", &cli.log_format, || async move {
                let client = kube::Client::try_default().await?;
                let readiness = Readiness::new();
                let termination = shutdown_signal(nuop_core::telemetry::termination());
                let console = nuop_core::console::start(
                    "nuop-standard",
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
                let scripts = cli.scripts.clone();
                // Loaded before leadership: every replica serves the webhooks, the
                // leader alone runs the controllers.
                let loaded = nuop_core::standard::load(&scripts, cli.executor)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot read the scripts root {}: {e}", scripts.display())
                    })?;
                let registry = nuop_core::standard::webhook_registry(&client, &loaded);
                // Served until the process exits: the API server keeps calling during
                // a graceful shutdown.
                let identity = nuop_core::webhook::Identity {
                    name: cli
                        .operate
                        .leader_election_id
                        .clone()
                        .unwrap_or_else(|| DEFAULT_LEADER_ELECTION_ID.to_string()),
                    namespace: nuop_core::runtime::lease_namespace(
                        None,
                        std::env::var("POD_NAMESPACE").ok().as_deref(),
                        std::fs::read_to_string(nuop_core::runtime::SERVICE_ACCOUNT_NAMESPACE_FILE)
                            .ok()
                            .as_deref(),
                    ),
                };
                nuop_core::webhook::start(
                    &client,
                    &webhook_options,
                    registry,
                    identity,
                    shutdown_signal(std::future::pending::<()>()),
                )
                .await
                .map_err(anyhow::Error::msg)?;
                let stopped = operate(
                    client.clone(),
                    options,
                    readiness,
                    termination,
                    move |stop| async move {
                        nuop_core::standard::run(client, loaded, controller_options, stop).await;
                        Ok(())
                    },
                )
                .await?;
                anyhow::Ok(stopped)
            });
            std::process::exit(code);
        }
    }
}
