//! `keyrelay-mock`: the mock upstream as a standalone process, for benchmarks and compose demos.
//!
//! Usage: `keyrelay-mock [LISTEN_ADDR] [RATE_LIMITED_KEY ...]`

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let rate_limited: Vec<String> = args.collect();
    keyrelay_mock::serve_forever(addr, &rate_limited).await
}
