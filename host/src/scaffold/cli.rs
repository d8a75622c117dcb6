//! The `ficus plugin` command line: `new`, `build` and `wit`.

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// `ficus plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin project: a filter with every hook stubbed, a README
    /// with the build command, and (Python/JS) the WIT contract.
    New {
        /// Plugin name: lower-case words joined by `-`, e.g. `api-key`.
        name: String,
        /// Language of the plugin.
        #[arg(long, value_enum)]
        lang: super::Lang,
        /// Project directory (default: ./NAME). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust: path to the ficus-sdk crate (default: the sdk/ of the Ficus
        /// source tree this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin project into a component (runs cargo, componentize-py
    /// or componentize-js); writes DIR/build/NAME.wasm.
    Build {
        /// The project directory (holding ficus-plugin.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Write the component here instead.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print the WIT contract this gateway speaks (ficus:gateway).
    Wit,
}

impl PluginCommand {
    /// Run the command; exit code 1 on any error, with a message saying what to do.
    pub fn run(self) -> ExitCode {
        let result = match self {
            PluginCommand::Wit => {
                print!("{}", super::GATEWAY_WIT);
                Ok(())
            }
            PluginCommand::New {
                name,
                lang,
                dir,
                sdk,
            } => super::new_project(&super::NewOptions {
                name,
                lang,
                dir,
                sdk,
            })
            .map(|created| {
                println!("created {} plugin project {}:", lang, created.dir.display());
                for file in &created.files {
                    println!("  {}", file.display());
                }
                println!(
                    "build it with: ficus plugin build {}",
                    created.dir.display()
                );
            }),
            PluginCommand::Build { dir, out } => super::build(
                &dir,
                &super::BuildOptions {
                    out,
                    toolbox: super::Toolbox::from_env(),
                },
            )
            .map(|built| {
                println!(
                    "built {} ({:.1} MB) in {:.1} s",
                    built.output.display(),
                    built.size as f64 / 1e6,
                    built.elapsed.as_secs_f64()
                );
                if let Some(grants) = built.grants.filter(|g| !g.is_empty()) {
                    println!(
                        "its world imports host capabilities: grant them in the gateway \
                         config: grants = [{}]",
                        grants
                            .iter()
                            .map(|g| format!("{g:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
