//! Criterion: the response body wrapper (`ProxyBody`, proxy/src/body.rs) passing an upstream
//! answer of 20 SSE frames through to its end, against draining the same upstream body
//! directly in the same run (the difference is the wrapper's cost: idle timer, byte count,
//! the SSE tail kept for an error event, and the end hook).

#![allow(clippy::expect_used, reason = "a bench fails loudly on a broken setup")]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use keyrelay::body::{EndHook, ProxyBody, StreamEnd};
use keyrelay::error::ErrorShape;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

/// Sees the stream end, as the request log does.
struct Ended;

impl EndHook for Ended {
    fn ended(&mut self, end: StreamEnd, bytes: u64) {
        black_box((end, bytes));
    }
}

/// 20 chat-completion chunks as a provider streams them.
fn chunks() -> Vec<Bytes> {
    (0..20)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i}\"}}}}]}}\n\n"
            ))
        })
        .collect()
}

fn upstream(
    chunks: &[Bytes],
) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Unpin + Send + '_ {
    let frames = chunks.iter().cloned().map(|b| Ok(Frame::data(b)));
    StreamBody::new(futures_util::stream::iter(frames))
}

/// Read `body` to its end; the bytes passed.
async fn drain<B: http_body::Body<Data = Bytes> + Unpin>(mut body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame
            .expect("no error")
            .into_data()
            .map_or(0, |d: Bytes| d.len());
    }
    n
}

fn body(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let chunks = chunks();
    let mut group = c.benchmark_group("pass_20_frames");
    group.bench_function("upstream_alone", |b| {
        b.iter(|| rt.block_on(drain(upstream(&chunks))));
    });
    group.bench_function("through_proxy_body_sse", |b| {
        b.iter(|| {
            rt.block_on(async {
                let body = ProxyBody::streamed(
                    upstream(&chunks),
                    Duration::from_secs(60),
                    Some(ErrorShape::OpenAi),
                    Some(Box::new(Ended)),
                );
                drain(body).await
            })
        });
    });
    group.finish();
}

criterion_group!(benches, body);
criterion_main!(benches);
