//! The `keyrelay` command: run the proxy, check a config, or run the demo.
//!
//! Before anything else it loads a `.env` file: the one given with `--env-file`, else `.env` in
//! the working directory if there is one (never a parent directory's). Variables already set
//! win. A line it cannot parse stops the start, naming the line but never its text.

use anyhow::Context;
use clap::{Parser, Subcommand};
use keyrelay::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "keyrelay",
    version,
    about = "LLM reverse proxy with API-key rotation"
)]
struct Cli {
    /// Config file.
    #[arg(
        long,
        short,
        env = "KEYRELAY_CONFIG",
        default_value = "config.toml",
        global = true
    )]
    config: PathBuf,
    /// Variables to load before anything else; by default `.env` in the working directory, if
    /// present (never searched for in parent directories).
    #[arg(long, global = true, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print the pools (names and fingerprints, never secrets).
    Check,
    /// Seal every registered key again under `[registry] master_key` (reading those under
    /// `previous_master_key`); run once after rotating the master key.
    Rekey,
    /// Run keyrelay in front of a built-in mock upstream with fake keys: no keys or internet needed.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn check(path: &std::path::Path) -> bool {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: ok", path.display());
            println!("listen {}", config.server.listen);
            let store_ok = check_store(&config).await;
            for p in &config.providers {
                println!(
                    "provider {} at {} -> {} ({}, {} keys, max {} attempts)",
                    p.name,
                    p.route,
                    p.base_url,
                    p.strategy.as_str(),
                    p.keys.len(),
                    p.max_attempts
                );
                for k in &p.keys {
                    println!("{}", keyrelay::tenants::check::key_line("  ", k));
                }
            }
            println!(
                "clients: {}",
                config
                    .clients
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for line in keyrelay::tenants::check::lines(&config) {
                println!("{line}");
            }
            store_ok
        }
        Err(e) => {
            eprint!("{}: {e}", path.display());
            false
        }
    }
}

/// Say which store is configured and whether it answers.
async fn check_store(config: &Config) -> bool {
    let Some(store) = &config.store else {
        println!("store: embedded (in memory, this instance only)");
        return true;
    };
    let mut settings = store.settings.clone();
    // A one-off check may take longer than a hot-path command.
    settings.connect_timeout = settings.connect_timeout.max(Duration::from_secs(2));
    settings.command_timeout = settings.command_timeout.max(Duration::from_secs(2));
    match keyrelay_pool::RedisStore::connect(&store.target, settings).await {
        Ok(s) => match s.ping().await {
            Ok(()) => {
                println!("store: redis at {} (answers)", store.display);
                true
            }
            Err(e) => {
                println!("store: redis at {} (does not answer: {e})", store.display);
                false
            }
        },
        Err(e) => {
            println!("store: redis at {} ({e})", store.display);
            false
        }
    }
}

async fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let running = keyrelay::start_from_file(path.to_owned())
        .await
        .context("starting keyrelay")?;
    let grace = running.shutdown_grace();
    tracing::info!(addr = %running.addr(), admin = ?running.admin_addr(), "keyrelay listening");
    announce(&running);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let live = running.live().clone();
        let path = path.to_owned();
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let who = keyrelay::tenants::audit::Who::Signal;
                    if let Err(e) = keyrelay::reload_from(&live, &path, &who) {
                        tracing::error!(error = %e, "reload refused; the previous configuration keeps serving");
                    }
                }
            });
        }
    }
    shutdown_signal().await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "draining: no new connections, in-flight requests may finish"
    );
    running.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// One line on stdout with the addresses actually bound, whatever the log level: with
/// `listen = "127.0.0.1:0"` this is how a supervisor (or a test) learns the ports.
fn announce(running: &keyrelay::Running) {
    match running.admin_addr() {
        Some(admin) => println!("keyrelay listening on {}, admin on {admin}", running.addr()),
        None => println!("keyrelay listening on {}", running.addr()),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Load `explicit`, or `.env` in the working directory if it exists. Every line is parsed
/// before any variable is set, so a bad file changes nothing.
fn load_env_file(explicit: Option<&Path>) -> anyhow::Result<()> {
    let path = explicit.unwrap_or(Path::new(".env"));
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot read env file {}: {}", path.display(), e.kind()),
    };
    let mut vars = Vec::new();
    for item in dotenvy::Iter::new(text.as_bytes()) {
        match item {
            Ok(var) => vars.push(var),
            Err(dotenvy::Error::LineParse(line, _)) => {
                // The line may hold a secret: say where it is, never what it says.
                let at = text.find(&line).unwrap_or(0);
                let number = text[..at].matches('\n').count() + 1;
                anyhow::bail!(
                    "env file {}: line {number} cannot be parsed (expected NAME=value, quotes closed); nothing was loaded",
                    path.display()
                );
            }
            Err(_) => anyhow::bail!("env file {} cannot be parsed", path.display()),
        }
    }
    for (name, value) in vars {
        if std::env::var_os(&name).is_none() {
            // Still single-threaded: the runtime starts after this.
            std::env::set_var(name, value);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let first = Cli::parse();
    load_env_file(first.env_file.as_deref())?;
    // Parsed again so that defaults taken from the environment see the file's variables.
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run_command(cli))
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    init_tracing(cli.log_json);
    match cli.command {
        Some(Command::Check) => {
            if !check(&cli.config).await {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Rekey) => {
            let config = Config::load(&cli.config)?;
            let done = keyrelay::tenants::registry::rekey(&config)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("rekey: {done} records sealed again under the current master key");
            Ok(())
        }
        Some(Command::Demo { listen }) => keyrelay::demo::run(listen).await.map_err(Into::into),
        None => run(&cli.config).await,
    }
}
