//! The `tollgate` command line: parses arguments and dispatches; everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tollgate", about = "An API gateway that speaks Kong's Admin API", version = tollgate::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGINT/SIGTERM.
    Start {
        /// Configuration file (kong.conf syntax).
        #[arg(short = 'c', long = "conf")]
        conf: Option<PathBuf>,
        /// Overrides `prefix`.
        #[arg(short = 'p', long = "prefix")]
        prefix: Option<PathBuf>,
    },
    /// Validate the configuration and print every error.
    Check {
        /// Configuration file (kong.conf syntax).
        #[arg(short = 'c', long = "conf")]
        conf: Option<PathBuf>,
        /// Configuration file, as `kong check <conf>` takes it.
        file: Option<PathBuf>,
    },
    /// Print the version.
    Version,
    /// Admin tokens (on the store of a control plane, or of a node with `admin_auth = on`).
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokensAction {
    /// Mint a token and print its secret (shown only this once).
    Create {
        #[arg(long)]
        name: String,
        /// `org_admin` (everything) or `viewer` (reads only).
        #[arg(long)]
        role: String,
        /// Configuration file (kong.conf syntax).
        #[arg(short = 'c', long = "conf")]
        conf: Option<PathBuf>,
        /// Overrides `prefix`.
        #[arg(short = 'p', long = "prefix")]
        prefix: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("Tollgate {}", tollgate::VERSION);
            ExitCode::SUCCESS
        }
        Command::Check { conf, file } => {
            let path = conf.or(file);
            match tollgate::config::load(path.as_deref()) {
                Ok(_) => {
                    match path {
                        Some(p) => println!("configuration at {} is valid", p.display()),
                        None => println!("configuration is valid"),
                    }
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("[error] {e}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tokens { action: TokensAction::Create { name, role, conf, prefix } } => {
            let Some(role) = tollgate::auth::Role::parse(&role) else {
                eprintln!("[error] role: expected one of: org_admin, viewer, got '{role}'");
                return ExitCode::FAILURE;
            };
            let Some(settings) = settings(conf, prefix) else { return ExitCode::FAILURE };
            match tollgate::node::create_token(&settings, name, role) {
                Ok(secret) => {
                    println!("{secret}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("[error] {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Start { conf, prefix } => {
            let Some(settings) = settings(conf, prefix) else { return ExitCode::FAILURE };
            match tollgate::node::run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("[error] {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the configuration (printing every error) and applies a `--prefix` override.
fn settings(conf: Option<PathBuf>, prefix: Option<PathBuf>) -> Option<tollgate::config::Settings> {
    match tollgate::config::load(conf.as_deref()) {
        Ok(mut s) => {
            if let Some(p) = prefix {
                s.prefix = p;
            }
            Some(s)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("[error] {e}");
            }
            None
        }
    }
}
