//! `keyrelay demo`: keyrelay on the embedded store in front of the built-in mock upstream.

use crate::config::{Config, ConfigError, MapEnv};
use keyrelay_mock::{MockUpstream, Reply};
use std::net::SocketAddr;
use std::time::Duration;

/// The demo's client token. Only ever valid for the demo, which listens on loopback by default.
pub const DEMO_TOKEN: &str = "kr-demo-token";

/// The demo's admin token, for the dashboard.
pub const DEMO_ADMIN_TOKEN: &str = "kr-demo-admin";

/// The demo's fake provider keys; the third always answers 429.
pub const DEMO_KEYS: [&str; 3] = ["demo-key-1", "demo-key-2", "demo-key-3"];

/// What the demo sets; everything else is the loader's default, as for any config file.
/// `LISTEN` and `BASE_URL` are filled in; secrets come from [`demo_env`].
const DEMO_TOML: &str = r#"
[server]
listen = LISTEN
shutdown_grace = "5s"

[upstream]
first_byte_timeout = "60s"
idle_timeout = "60s"
# The built-in mock reads x-mock-* headers to shape its answers.
pass_headers = ["x-mock-*"]

[admin]
listen = "127.0.0.1:0"
token = "env:DEMO_ADMIN_TOKEN"

[[clients]]
name = "demo"
token = "env:DEMO_TOKEN"

[[providers]]
name = "openai"
base_url = BASE_URL
strategy = "round-robin"
rpm = 60
keys = [
  { name = "demo-key-1", secret = "env:DEMO_KEY_1" },
  { name = "demo-key-2", secret = "env:DEMO_KEY_2" },
  { name = "demo-key-3", secret = "env:DEMO_KEY_3" },
]
"#;

/// The demo's secrets, as the environment `DEMO_TOML` refers to.
fn demo_env() -> MapEnv {
    DEMO_KEYS.iter().enumerate().fold(
        MapEnv::default()
            .with("DEMO_TOKEN", DEMO_TOKEN)
            .with("DEMO_ADMIN_TOKEN", DEMO_ADMIN_TOKEN),
        |env, (i, key)| env.with(&format!("DEMO_KEY_{}", i + 1), key),
    )
}

/// The demo configuration in front of a mock at `mock_url`, loaded like any config file.
pub fn config(listen: SocketAddr, mock_url: &str) -> Result<Config, ConfigError> {
    let quoted = |s: String| toml::Value::String(s).to_string();
    let text = DEMO_TOML
        .replace("LISTEN", &quoted(listen.to_string()))
        .replace("BASE_URL", &quoted(format!("{mock_url}/v1")));
    Config::from_toml_str(&text, &demo_env())
}

/// Start the mock and keyrelay, print how to use them, and run until interrupted.
pub async fn run(listen: SocketAddr) -> Result<(), crate::StartError> {
    let mock = MockUpstream::start()
        .await
        .map_err(crate::StartError::MockUpstream)?;
    mock.set(DEMO_KEYS[2], Reply::rate_limited(&[("retry-after", "30")]));
    let config = config(listen, &mock.url()).map_err(crate::StartError::DemoConfig)?;
    let running = crate::start(config).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_loads_with_its_keys_and_tokens() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let c = config(listen, "http://127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.listen, listen);
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
        let p = &c.providers[0];
        assert_eq!(p.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(p.route, "/v1");
        assert_eq!(p.strategy, keyrelay_pool::Strategy::RoundRobin);
        let keys: Vec<_> = p.keys.iter().map(|k| (k.name.as_str(), k.rpm)).collect();
        assert_eq!(keys, DEMO_KEYS.map(|k| (k, 60)));
        assert!(p
            .keys
            .iter()
            .zip(DEMO_KEYS)
            .all(|(k, s)| k.secret.expose() == s));
        assert_eq!(c.clients[0].token.expose(), DEMO_TOKEN);
        let admin = c.admin.token.as_ref().map(|t| t.expose());
        assert_eq!(admin, Some(DEMO_ADMIN_TOKEN));
        assert_eq!(c.admin.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
    }
}
