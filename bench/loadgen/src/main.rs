//! `keyrelay-loadgen`: a bounded load client for keyrelay's bench scripts. `--kind mix` (the
//! default) sends a fixed number of requests of a weighted mix (normal, stream, 429, 5xx, cut,
//! disconnect) at a fixed concurrency, judges each against what its kind expects, and prints
//! figures per kind and per second. `--kind streams` holds many long SSE streams open and times
//! every chunk (see `streams.rs`); `--kind idle` holds many idle keep-alive connections (see
//! `idle.rs`). Exits 1 when any outcome was unexpected. Loopback targets only.

mod idle;
mod mix;
mod stats;
mod streams;

use clap::Parser;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mix::{HttpClient, Mix};
use stats::Stats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "keyrelay-loadgen",
    about = "Bounded mixed load against keyrelay"
)]
struct Cli {
    /// keyrelay's chat completions URL (loopback only).
    #[arg(long)]
    url: String,
    /// The keyrelay client token.
    #[arg(long, env = "LOADGEN_TOKEN")]
    token: String,
    /// Requests to send in all.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Weighted kinds: normal, stream, 429, 5xx, cut, disconnect, long, refused, drop.
    #[arg(long, default_value = "normal=70,stream=30")]
    mix: String,
    /// The most one request may take.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// Start at most this many requests per second (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// What to run: mix, streams (long timed streams held open) or idle (idle connections).
    #[arg(long, default_value = "mix")]
    kind: String,
    /// streams: stream slots held open at once.
    #[arg(long, default_value_t = 2_000)]
    streams: u64,
    /// streams: chunks per stream.
    #[arg(long, default_value_t = 200)]
    chunks: u64,
    /// streams: milliseconds between chunks.
    #[arg(long, default_value_t = 20)]
    chunk_delay_ms: u64,
    /// streams: seconds over which the slots open.
    #[arg(long, default_value_t = 10.0)]
    ramp_secs: f64,
    /// streams and idle: seconds to hold everything open after the ramp.
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    /// idle: connections to hold open.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Stream requests ask for usage (`stream_options.include_usage`), as an app whose tokens
    /// are counted does: the mock then marks every chunk `"usage":null` and ends with the usage.
    #[arg(long)]
    usage: bool,
}

fn loopback(url: &str) -> bool {
    ["http://127.", "http://localhost:", "http://[::1]:"]
        .iter()
        .any(|p| url.starts_with(p))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !loopback(&cli.url) {
        eprintln!("keyrelay-loadgen: only loopback targets (http://127.x, localhost, [::1])");
        return std::process::ExitCode::from(2);
    }
    if cli.kind != "mix" {
        return other_kind(&cli).await;
    }
    let mix = match Mix::parse(&cli.mix) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("keyrelay-loadgen: --mix: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(cli.concurrency as usize)
        .build_http();
    let stats = run(&cli, mix, client).await;
    if stats.report() == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `--kind streams` or `--kind idle`.
async fn other_kind(cli: &Cli) -> std::process::ExitCode {
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let failed = match cli.kind.as_str() {
        "streams" => {
            let client: HttpClient = Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_max_idle_per_host(cli.streams as usize)
                .build_http();
            let plan = streams::Plan {
                url: cli.url.clone(),
                token: cli.token.clone(),
                streams: cli.streams,
                chunks: cli.chunks,
                delay_ms: cli.chunk_delay_ms,
                usage: cli.usage,
                ramp: secs(cli.ramp_secs),
                hold: secs(cli.hold_secs),
            };
            streams::run(plan, client).await
        }
        "idle" => {
            let plan = idle::Plan {
                url: cli.url.clone(),
                token: cli.token.clone(),
                connections: cli.connections,
                parallel: cli.concurrency as usize,
                hold: secs(cli.hold_secs),
            };
            idle::run(plan).await
        }
        other => {
            eprintln!("keyrelay-loadgen: --kind {other}: want mix, streams or idle");
            return std::process::ExitCode::from(2);
        }
    };
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `concurrency` workers take request numbers from one counter until `requests` are sent.
async fn run(cli: &Cli, mix: Mix, client: HttpClient) -> Stats {
    let next = Arc::new(AtomicU64::new(0));
    let rows = Arc::new(Mutex::new(Vec::with_capacity(cli.requests as usize)));
    let start = Instant::now();
    let timeout = Duration::from_secs(cli.timeout_secs);
    let rate = cli.rate;
    let mut workers = Vec::new();
    for _ in 0..cli.concurrency {
        let (next, rows, mix, client) = (next.clone(), rows.clone(), mix.clone(), client.clone());
        let (url, token, total) = (cli.url.clone(), cli.token.clone(), cli.requests);
        let usage = cli.usage;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                // Request i starts no earlier than i / rate seconds into the run.
                if let Some(micros) = (i * 1_000_000).checked_div(rate) {
                    let due = start + Duration::from_micros(micros);
                    tokio::time::sleep_until(due.into()).await;
                }
                let second = start.elapsed().as_secs();
                let kind = (mix.pick(i), usage);
                let outcome = mix::run(&client, &url, &token, kind, timeout).await;
                rows.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((second, outcome));
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let rows = std::mem::take(&mut *rows.lock().unwrap_or_else(PoisonError::into_inner));
    eprintln!(
        "keyrelay-loadgen: {} requests in {:.1} s",
        rows.len(),
        start.elapsed().as_secs_f64()
    );
    Stats { rows }
}
