//! `nuop-standard`: script controllers baked into the image, plus the script author's
//! `check` and `exec` tools. Parses arguments and hands over to nuop-core.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nuop_core::protocol::Phase;
use nuop_core::script::ExecutorKind;

/// Kubernetes controllers written as Nushell scripts.
#[derive(Parser, Debug)]
#[command(name = "nuop-standard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load every `<DIR>/*/mod.nu`, run `config`, and print one line per controller.
    Check {
        /// The scripts root.
        #[arg(env = "NUOP_SCRIPT_PATH", default_value = "/scripts")]
        dir: PathBuf,
        /// Executor to load the scripts with.
        #[arg(long, env = "NUOP_EXECUTOR", default_value = "embedded")]
        executor: ExecutorKind,
    },
    /// Run one phase of one script on an object read from stdin (YAML or JSON).
    Exec {
        /// The script's directory (holding mod.nu).
        dir: PathBuf,
        /// reconcile, finalize or config.
        phase: Phase,
        /// Executor to run the script with.
        #[arg(long, env = "NUOP_EXECUTOR", default_value = "embedded")]
        executor: ExecutorKind,
        /// Seconds the call may run (default: 30).
        #[arg(long)]
        timeout: Option<f64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    match cli.command {
        Command::Check { dir, executor } => {
            let broken = nuop_core::devtools::check(&dir, executor, &mut out, &mut err).await?;
            Ok(if broken == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Exec {
            dir,
            phase,
            executor,
            timeout,
        } => {
            let mut input = String::new();
            if phase != Phase::Config {
                std::io::stdin().read_to_string(&mut input)?;
            }
            let timeout = timeout.map(Duration::from_secs_f64);
            let code = nuop_core::devtools::exec(
                &dir, phase, executor, timeout, &input, &mut out, &mut err,
            )
            .await?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}
