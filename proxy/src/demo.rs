//! `keyrelay demo`: keyrelay on the embedded store in front of the built-in mock upstream.

use crate::config::{
    AuthStyle, ClientConfig, Config, ProviderConfig, ServerConfig, UpstreamConfig,
};
use keyrelay_mock::{MockUpstream, Reply};
use keyrelay_pool::{Key, PoolSettings, Secret, Strategy};
use std::net::SocketAddr;
use std::time::Duration;

/// The demo's client token. Only ever valid for the demo, which listens on loopback by default.
pub const DEMO_TOKEN: &str = "kr-demo-token";

/// The demo's admin token, for the dashboard.
pub const DEMO_ADMIN_TOKEN: &str = "kr-demo-admin";

/// The demo's fake provider keys; the third always answers 429.
pub const DEMO_KEYS: [&str; 3] = ["demo-key-1", "demo-key-2", "demo-key-3"];

/// The demo configuration in front of a mock at `mock_url`.
pub fn config(listen: SocketAddr, mock_url: &str) -> Config {
    Config {
        server: ServerConfig {
            listen,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            allow_unauthenticated: false,
            shutdown_grace: Duration::from_secs(5),
            tls: None,
        },
        upstream: UpstreamConfig {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        },
        clients: vec![ClientConfig {
            name: "demo".into(),
            token: Secret::new(DEMO_TOKEN),
        }],
        providers: vec![ProviderConfig {
            name: "openai".into(),
            base_url: format!("{mock_url}/v1"),
            auth: AuthStyle::Bearer,
            route: "/v1".into(),
            strategy: Strategy::RoundRobin,
            settings: PoolSettings::default(),
            max_attempts: 3,
            max_wait: Duration::ZERO,
            keys: DEMO_KEYS
                .iter()
                .map(|k| Key::new(*k, Secret::new(*k), 60, 1))
                .collect(),
        }],
        store: None,
        admin: crate::config::AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: Some(Secret::new(DEMO_ADMIN_TOKEN)),
        },
    }
}

/// Start the mock and keyrelay, print how to use them, and run until interrupted.
pub async fn run(listen: SocketAddr) -> Result<(), crate::StartError> {
    let mock = MockUpstream::start()
        .await
        .map_err(crate::StartError::MockUpstream)?;
    mock.set(DEMO_KEYS[2], Reply::rate_limited(&[("retry-after", "30")]));
    let running = crate::start(config(listen, &mock.url())).await?;
    let addr = running.addr();
    println!("keyrelay demo listening on http://{addr}");
    println!(
        "  mock upstream: {} (keys demo-key-1, demo-key-2; demo-key-3 always answers 429)",
        mock.url()
    );
    println!();
    println!("Try it:");
    println!(
        "  curl -s http://{addr}/v1/chat/completions -H 'Authorization: Bearer {DEMO_TOKEN}' -H 'Content-Type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
    );
    println!("Streaming: add \"stream\":true to the JSON and -N to curl (and -H 'x-mock-delay-ms: 200' to watch it flow).");
    println!();
    println!("For an OpenAI SDK:");
    println!("  export OPENAI_BASE_URL=http://{addr}/v1");
    println!("  export OPENAI_API_KEY={DEMO_TOKEN}");
    println!();
    if let Some(admin) = running.admin_addr() {
        println!("Dashboard: http://{admin}/admin (admin token {DEMO_ADMIN_TOKEN}); metrics: http://{admin}/metrics");
        println!();
    }
    println!("Press Ctrl-C to stop.");
    let stopper = running.stopper();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stopper.send(Some(Duration::from_secs(5)));
    });
    running.wait().await;
    drop(mock);
    Ok(())
}
