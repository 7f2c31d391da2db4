//! Unit tests for `replay`: attempts reading a spill file as it grows, the one-attempt path,
//! and pump failures reaching every attempt.

use super::*;
use crate::body::request::Budget;
use http_body_util::{BodyExt, StreamBody};
use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

const LIMITS: BodyLimits = BodyLimits {
    max_bytes: 1000,
    memory_bytes: 10,
    idle: Duration::from_secs(5),
};

type Feed = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A client body fed chunk by chunk by the test.
fn client() -> (Feed, impl Body<Data = Bytes> + Unpin + Send + 'static) {
    let (tx, rx) = mpsc::channel(16);
    let body = StreamBody::new(tokio_stream_from(rx));
    (tx, body)
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>> {
    Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

fn spill_dir(name: &str, space: usize) -> (Arc<SpillDir>, PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "keyrelay-replay-test-{name}-{}",
        std::process::id()
    ));
    super::super::spill::prepare_dir(&path).unwrap();
    (
        Arc::new(SpillDir::new(path.clone(), Budget::new(space))),
        path,
    )
}

fn prefix() -> Buffered {
    Buffered::empty(&Budget::new(0))
}

async fn collect(body: AttemptBody) -> Result<Vec<u8>, Fault> {
    Ok(body.collect().await?.to_bytes().to_vec())
}

async fn chunk(feed: &Feed, text: &'static str) {
    feed.send(Ok(Frame::data(Bytes::from_static(text.as_bytes()))))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_attempt_started_mid_upload_replays_then_follows_the_client() {
    let (dir, path) = spill_dir("follow", 10_000);
    let (feed, body) = client();
    let spooled = spool(body, prefix(), None, LIMITS, &dir, false).await;
    assert!(spooled.replayable());
    let first = tokio::spawn(collect(spooled.attempt().unwrap()));
    chunk(&feed, "hello ").await;
    chunk(&feed, "big ").await;
    // The first key answered early; the next attempt starts with the upload half done.
    let second = tokio::spawn(collect(spooled.attempt().unwrap()));
    chunk(&feed, "world").await;
    drop(feed);
    assert_eq!(second.await.unwrap().unwrap(), b"hello big world");
    assert_eq!(first.await.unwrap().unwrap(), b"hello big world");
    let third = collect(spooled.attempt().unwrap()).await.unwrap();
    assert_eq!(
        third, b"hello big world",
        "replayed from disk after the upload"
    );
    assert_eq!(
        std::fs::read_dir(&path).unwrap().count(),
        0,
        "no named file"
    );
    std::fs::remove_dir_all(&path).unwrap();
}

#[tokio::test]
async fn without_spill_space_the_body_goes_to_one_attempt_only() {
    let (dir, path) = spill_dir("once", 100);
    let (feed, body) = client();
    let spooled = spool(body, prefix(), Some(500), LIMITS, &dir, false).await;
    assert!(!spooled.replayable());
    let first = spooled.attempt().unwrap();
    assert_eq!(first.size_hint().exact(), Some(500), "sent with its length");
    assert!(spooled.attempt().is_none());
    let reading = tokio::spawn(collect(first));
    chunk(&feed, "abc").await;
    drop(feed);
    assert_eq!(reading.await.unwrap().unwrap(), b"abc");
    std::fs::remove_dir_all(&path).unwrap();
}

#[tokio::test]
async fn a_body_growing_past_the_limit_fails_every_attempt_as_413() {
    let (dir, path) = spill_dir("large", 10_000);
    let (feed, body) = client();
    let limits = BodyLimits {
        max_bytes: 8,
        ..LIMITS
    };
    let spooled = spool(body, prefix(), None, limits, &dir, false).await;
    let first = tokio::spawn(collect(spooled.attempt().unwrap()));
    chunk(&feed, "12345").await;
    chunk(&feed, "67890").await;
    assert_eq!(first.await.unwrap(), Err(Fault::TooLarge));
    assert!(matches!(
        spooled.failure(),
        Some(ProxyError::BodyTooLarge { limit: 8 })
    ));
    std::fs::remove_dir_all(&path).unwrap();
}

#[tokio::test]
async fn dropping_the_request_stops_the_pump_and_fails_readers() {
    let (dir, path) = spill_dir("drop", 10_000);
    let (feed, body) = client();
    let spooled = spool(body, prefix(), None, LIMITS, &dir, false).await;
    let reader = spooled.attempt().unwrap();
    chunk(&feed, "abc").await;
    drop(spooled);
    assert_eq!(collect(reader).await, Err(Fault::Gone));
    let closed = tokio::time::timeout(Duration::from_secs(5), feed.closed()).await;
    assert!(closed.is_ok(), "the client's body was dropped");
    std::fs::remove_dir_all(&path).unwrap();
}

#[tokio::test]
async fn a_streamed_attempt_says_when_the_upstream_took_all_of_it() {
    let (dir, path) = spill_dir("sent", 10_000);
    for declared in [Some(6), None] {
        let (feed, body) = client();
        let spooled = spool(body, prefix(), declared, LIMITS, &dir, false).await;
        let mut attempt = spooled.attempt().unwrap();
        let mut sent = attempt.take_sent().unwrap();
        chunk(&feed, "abc").await;
        let first = attempt.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        assert!(sent.try_recv().is_err(), "not all sent yet");
        chunk(&feed, "def").await;
        drop(feed);
        let rest = collect(attempt).await.unwrap();
        assert_eq!(rest, b"def");
        assert_eq!(sent.await, Ok(()), "{declared:?}");
    }
    assert!(AttemptBody::full(Bytes::from_static(b"x"))
        .take_sent()
        .is_none());
    std::fs::remove_dir_all(&path).unwrap();
}

#[tokio::test]
async fn an_http1_body_still_coming_when_the_request_ends_is_read_to_nowhere() {
    let (dir, path) = spill_dir("linger", 10_000);
    let (feed, body) = client();
    let spooled = spool(body, prefix(), None, LIMITS, &dir, true).await;
    let reader = spooled.attempt().unwrap();
    chunk(&feed, "abc").await;
    drop(spooled);
    assert_eq!(collect(reader).await, Err(Fault::Gone));
    for _ in 0..40 {
        // More than the channel holds: taken and thrown away, not left to block the client.
        chunk(&feed, "more").await;
    }
    assert!(!feed.is_closed());
    drop(feed);
    std::fs::remove_dir_all(&path).unwrap();
}
