//! `--kind idle`: many keep-alive connections, each used for one request and then held open
//! with nothing in flight, to measure what an idle client connection costs a proxy. Prints
//! `idle open=N` once all are open (the caller samples memory then), holds them, and prints
//! how many were still open at the end.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The shape of the run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub url: String,
    pub token: String,
    pub connections: u64,
    /// Connections being opened at once.
    pub parallel: usize,
    pub hold: Duration,
}

type Sender = SendRequest<Full<Bytes>>;

/// `http://HOST:PORT/path` into (`HOST:PORT`, `/path`).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    Some((authority.to_owned(), path.to_owned()))
}

/// Open one connection, send one chat request on it, read the answer; keep the connection.
async fn open(authority: &str, path: &str, token: &str) -> Result<Sender, String> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", authority)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"mock","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    Ok(sender)
}

/// Print the first few failures only: ten thousand identical lines help no one.
fn report_failure(e: String) {
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("keyrelay-loadgen: connection failed: {e}");
    }
}

/// Run the plan and print its figures; returns the number of connections that failed or
/// were closed before the end of the hold.
pub async fn run(plan: Plan) -> u64 {
    let Some((authority, path)) = split_url(&plan.url) else {
        eprintln!("keyrelay-loadgen: --url must be http://HOST:PORT/path");
        return plan.connections;
    };
    let (authority, path, token) = (Arc::new(authority), Arc::new(path), Arc::new(plan.token));
    let gate = Arc::new(Semaphore::new(plan.parallel.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..plan.connections {
        let (a, p, t, gate) = (authority.clone(), path.clone(), token.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            open(&a, &p, &t).await.map_err(report_failure).ok()
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            held.push(s);
        }
    }
    let failed = plan.connections - held.len() as u64;
    println!(
        "idle open={} failed={failed} seconds={:.1}",
        held.len(),
        start.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    tokio::time::sleep(plan.hold).await;
    let still = held.iter().filter(|s| !s.is_closed()).count() as u64;
    println!("idle still_open={still} after {:?}", plan.hold);
    plan.connections - still
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:80/v1/chat/completions"),
            Some(("127.0.0.1:80".into(), "/v1/chat/completions".into()))
        );
        assert_eq!(
            split_url("http://127.0.0.1:80"),
            Some(("127.0.0.1:80".into(), "/".into()))
        );
        assert_eq!(split_url("https://x"), None);
    }
}
