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
    /// Hybrid mode tools.
    Hybrid {
        #[command(subcommand)]
        action: HybridAction,
    },
    /// Declarative configuration files (Kong's `kong config`).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Write an example file (default `./kong.yml`); never overwrites.
    Init { file: Option<PathBuf> },
    /// Check a file: every error, or `parse successful`.
    Parse {
        file: Option<PathBuf>,
        #[arg(short = 'c', long = "conf")]
        conf: Option<PathBuf>,
    },
    /// Create or replace a file's entities in the store, in one transaction (nothing is deleted).
    #[command(name = "db-import", alias = "db_import")]
    DbImport {
        file: Option<PathBuf>,
        #[arg(short = 'c', long = "conf")]
        conf: Option<PathBuf>,
        #[arg(short = 'p', long = "prefix")]
        prefix: Option<PathBuf>,
    },
    /// Write the store as a declarative file (to standard output without a file); never overwrites.
    #[command(name = "db-export", alias = "db_export")]
    DbExport {
        file: Option<PathBuf>,
        #[arg(short = 'c', long = "conf")]
        conf: Option<PathBuf>,
        #[arg(short = 'p', long = "prefix")]
        prefix: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum HybridAction {
    /// Make the cluster certificate and key both planes share (EC P-384, `CN=kong_clustering`).
    #[command(name = "gen-cert", alias = "gen_cert")]
    GenCert {
        /// Where to write the certificate (default `./cluster.crt`).
        cert: Option<PathBuf>,
        /// Where to write the key (default `./cluster.key`).
        key: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(short = 'd', long = "days", default_value_t = 1095, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
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
        Command::Hybrid { action: HybridAction::GenCert { cert, key, days } } => match gen_cert(cert, key, days) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        },
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
        Command::Config { action } => match config_command(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        },
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

/// `tollgate config …`, with Kong's messages; `Err` is printed after `Error: `.
fn config_command(action: ConfigAction) -> Result<(), String> {
    const NO_FILE: &str = "expected a declarative configuration file; see `tollgate config --help`";
    let refuse_existing = |path: &std::path::Path| match path.exists() {
        true => Err(format!("{} already exists.\nWill not overwrite it.", path.display())),
        false => Ok(()),
    };
    let read = |file: Option<PathBuf>| -> Result<tollgate::declarative::Declared, String> {
        let path = file.ok_or(NO_FILE)?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.to_string_lossy();
        let doc =
            tollgate::declarative::unserialize(&text, Some(&name)).map_err(|e| format!("Failed parsing:\n{e}"))?;
        let declared = tollgate::declarative::flatten(doc, &tollgate::plugins::Catalog)
            .map_err(|e| format!("Failed parsing:\n{}", e.pretty()))?;
        for warning in &declared.warnings {
            eprintln!("[warn] {warning}");
        }
        Ok(declared)
    };
    let load = |conf: Option<PathBuf>, prefix: Option<PathBuf>| settings(conf, prefix).ok_or("invalid configuration");
    match action {
        ConfigAction::Init { file } => {
            let path = file.unwrap_or_else(|| PathBuf::from("kong.yml"));
            refuse_existing(&path)?;
            std::fs::write(&path, tollgate::declarative::EXAMPLE).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("Successfully written {}", path.display());
        }
        ConfigAction::Parse { file, conf } => {
            load(conf, None)?;
            read(file)?;
            println!("parse successful");
        }
        ConfigAction::DbImport { file, conf, prefix } => {
            let settings = load(conf, prefix)?;
            if settings.database == tollgate::config::Database::Off {
                return Err("'tollgate config db-import' only works with a database.\nWhen using database=off, reload your declarative configuration\nusing the /config endpoint.".into());
            }
            let declared = read(file)?;
            println!("parse successful, beginning import");
            let written =
                tollgate::node::db_import(&settings, &declared).map_err(|e| format!("Failed importing:\n{e}"))?;
            println!("import successful ({written} entities)");
        }
        ConfigAction::DbExport { file, conf, prefix } => {
            let settings = load(conf, prefix)?;
            if settings.database == tollgate::config::Database::Off {
                return Err("'tollgate config db-export' only works with a database.".into());
            }
            if let Some(path) = &file {
                refuse_existing(path)?;
            }
            let text = tollgate::node::db_export(&settings).map_err(|e| format!("Failed exporting:\n{e}"))?;
            match file {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
                    println!("Successfully exported to {}", path.display());
                }
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}

/// `hybrid gen-cert`, with Kong's messages.
fn gen_cert(cert: Option<PathBuf>, key: Option<PathBuf>, days: u32) -> Result<String, String> {
    let (cert, key) = match (cert, key) {
        (None, None) => (PathBuf::from("cluster.crt"), PathBuf::from("cluster.key")),
        (Some(c), Some(k)) => (c, k),
        _ => return Err("both cert and key path needs to be provided".into()),
    };
    for path in [&cert, &key] {
        if path.exists() {
            return Err(format!("{} already exists.\nWill not overwrite it.", path.display()));
        }
    }
    let pair = tollgate::tls::generate::cluster_pair(days).map_err(|e| e.to_string())?;
    tollgate::tls::generate::write_file(&cert, &pair.cert_pem, 0o644)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    tollgate::tls::generate::write_file(&key, &pair.key_pem, 0o600).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok(format!(
        "Successfully generated certificate/key pairs, they have been written to: '{}' and '{}'.",
        cert.display(),
        key.display()
    ))
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
