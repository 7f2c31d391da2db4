//! `--kind streams`: many long SSE streams held open at once, each chunk timed. The mock stamps
//! every chunk with its send time (`x-mock-stamp: 1`, a `"t_us"` field in UNIX microseconds);
//! a chunk's delay is its arrival here minus that stamp, so through a proxy it includes what
//! the proxy adds. Stream slot `i` opens at `i * ramp / streams` and, when its stream ends,
//! opens the next one until `ramp + hold` has passed, so all slots are busy during the hold.

use crate::mix::HttpClient;
use crate::stats::quantile_ms;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shape of the run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub url: String,
    pub token: String,
    pub streams: u64,
    pub chunks: u64,
    pub delay_ms: u64,
    /// Ask for usage (see `--usage`).
    pub usage: bool,
    pub ramp: Duration,
    pub hold: Duration,
}

#[derive(Default)]
struct Tally {
    open: AtomicU64,
    opened: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    chunks: AtomicU64,
    /// Per-chunk delays in microseconds.
    delays: Mutex<Vec<u32>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `"t_us":N` stamps of the complete SSE events at the front of `buf`; the events are
/// removed, an incomplete one stays for the next frame.
fn take_stamps(buf: &mut Vec<u8>, out: &mut Vec<u64>) {
    let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") else {
        return;
    };
    let done: Vec<u8> = buf.drain(..end + 2).collect();
    let text = String::from_utf8_lossy(&done);
    for part in text.split("\"t_us\":").skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(t) = digits.parse() {
            out.push(t);
        }
    }
}

/// A stream request's body, asking for usage when `usage`.
pub fn body(usage: bool) -> &'static [u8] {
    if usage {
        br#"{"model":"mock","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        br#"{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    }
}

/// One stream: Ok(true) when it ended cleanly with `[DONE]` and every chunk.
async fn one(client: &HttpClient, plan: &Plan, tally: &Tally) -> Result<bool, String> {
    let req = Request::post(&plan.url)
        .header("authorization", format!("Bearer {}", plan.token))
        .header("content-type", "application/json")
        .header("x-mock-chunks", plan.chunks.to_string())
        .header("x-mock-delay-ms", plan.delay_ms.to_string())
        .header("x-mock-stamp", "1")
        .body(Full::new(Bytes::from_static(body(plan.usage))))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let (mut buf, mut stamps, mut delays, mut seen) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let arrived = now_us();
        buf.extend_from_slice(data);
        done |= buf.windows(6).any(|w| w == b"[DONE]");
        take_stamps(&mut buf, &mut stamps);
        for t in stamps.drain(..) {
            seen += 1;
            delays.push(u32::try_from(arrived.saturating_sub(t)).unwrap_or(u32::MAX));
        }
    }
    tally.chunks.fetch_add(seen, Ordering::Relaxed);
    tally
        .delays
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(delays);
    Ok(done && seen == plan.chunks)
}

/// Slot `i`: wait for its turn in the ramp, then streams back to back until the end.
async fn slot(i: u64, client: HttpClient, plan: Arc<Plan>, tally: Arc<Tally>, start: Instant) {
    let offset = plan.ramp.mul_f64(i as f64 / plan.streams.max(1) as f64);
    tokio::time::sleep_until((start + offset).into()).await;
    let end = start + plan.ramp + plan.hold;
    while Instant::now() < end {
        tally.open.fetch_add(1, Ordering::Relaxed);
        tally.opened.fetch_add(1, Ordering::Relaxed);
        let result = one(&client, &plan, &tally).await;
        tally.open.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(true) => tally.completed.fetch_add(1, Ordering::Relaxed),
            Ok(false) => tally.failed.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                if tally.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("keyrelay-loadgen: stream failed: {e}");
                }
                // A refused connection would otherwise spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                0
            }
        };
    }
}

/// Run the plan and print its figures; returns the number of failed streams.
pub async fn run(plan: Plan, client: HttpClient) -> u64 {
    let plan = Arc::new(plan);
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut slots = Vec::new();
    for i in 0..plan.streams {
        slots.push(tokio::spawn(slot(
            i,
            client.clone(),
            plan.clone(),
            tally.clone(),
            start,
        )));
    }
    // Midway through the hold, say how many are open: the caller samples memory then.
    let (t, p) = (tally.clone(), plan.clone());
    let marker = tokio::spawn(async move {
        tokio::time::sleep_until((start + p.ramp + p.hold / 2).into()).await;
        println!("plateau open={}", t.open.load(Ordering::Relaxed));
        let _ = std::io::stdout().flush();
    });
    for s in slots {
        let _ = s.await;
    }
    let _ = marker.await;
    report(&tally, start.elapsed())
}

fn report(tally: &Tally, took: Duration) -> u64 {
    let mut d = std::mem::take(&mut *tally.delays.lock().unwrap_or_else(PoisonError::into_inner));
    d.sort_unstable();
    let d: Vec<Duration> = d
        .into_iter()
        .map(|us| Duration::from_micros(us.into()))
        .collect();
    let failed = tally.failed.load(Ordering::Relaxed);
    println!(
        "streams opened={} completed={} failed={failed} chunks={} seconds={:.1}",
        tally.opened.load(Ordering::Relaxed),
        tally.completed.load(Ordering::Relaxed),
        tally.chunks.load(Ordering::Relaxed),
        took.as_secs_f64()
    );
    println!(
        "chunk delay ms: p50 {:.3} p99 {:.3} max {:.3}",
        quantile_ms(&d, 0.5),
        quantile_ms(&d, 0.99),
        quantile_ms(&d, 1.0)
    );
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_complete_events_only() {
        let mut buf = b"data: {\"t_us\":100,\"x\":1}\n\ndata: {\"t_us\":2".to_vec();
        let mut out = Vec::new();
        take_stamps(&mut buf, &mut out);
        assert_eq!(out, vec![100]);
        assert_eq!(buf, b"data: {\"t_us\":2");
        buf.extend_from_slice(b"05}\n\ndata: [DONE]\n\n");
        take_stamps(&mut buf, &mut out);
        assert_eq!(out, vec![100, 205]);
        assert!(buf.is_empty());
    }
}
