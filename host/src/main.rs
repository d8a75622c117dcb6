//! The `ficus` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Ficus: a WebAssembly plugin gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file until SIGINT/SIGTERM.
    Run {
        /// Path to the gateway config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and build every plugin it names, without serving.
    Check {
        /// Path to the gateway config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the JSON Schema of the config file.
    Schema,
    /// Start, build and inspect plugin projects (Rust, Python, JavaScript).
    Plugin {
        #[command(subcommand)]
        command: ficus::scaffold::cli::PluginCommand,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FICUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Schema => {
            println!("{}", ficus_config::schema());
            ExitCode::SUCCESS
        }
        Command::Check { config } => match runtime.block_on(ficus::app::check(&config)) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{} error(s) in {}:", errors.0.len(), config.display());
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Plugin { command } => command.run(),
        Command::Run { config: path } => {
            let config = match ficus_config::load(&path) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("error: {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            match runtime.block_on(ficus::app::run(config, &path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
