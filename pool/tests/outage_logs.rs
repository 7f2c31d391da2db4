//! What the Redis store logs about an outage, read by a subscriber of the test's own: one
//! warning when Redis goes and one line when it is back, however often it flaps in between.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on what they did not expect"
)]

mod support;

use keyrelay_pool::{PoolSpec, RedisStore, Store, StoreState, Strategy};
use std::sync::{Arc, Mutex};
use support::{keys, ms, redis_store, RedisServer};
use tokio::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// Every event the store writes: its level and message.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<(Level, String)>>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Lines {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("keyrelay_pool")
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), m.0));
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

impl Lines {
    /// Lines at `level` (or above) whose message has `text`.
    fn count(&self, level: Level, text: &str) -> usize {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|(l, m)| *l <= level && m.contains(text))
            .count()
    }

    fn all(&self) -> String {
        let lines = self.0.lock().unwrap();
        lines.iter().map(|(l, m)| format!("{l} {m}\n")).collect()
    }
}

/// Acquire until the store is in `want` (a command is how it notices Redis went away).
async fn until_state(store: &Arc<RedisStore>, spec: &PoolSpec, want: StoreState) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.state() != want {
        let _ = store.acquire(spec, &[]).await;
        assert!(Instant::now() < deadline, "store never {want:?}");
        tokio::time::sleep(ms(5)).await;
    }
}

#[tokio::test]
async fn a_flapping_outage_logs_one_line_when_it_goes_and_one_when_it_is_back() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(lines.clone());
    let mut redis = RedisServer::start().await;
    let settle = Duration::from_secs(3);
    let store = redis_store(&redis, |s| s.recovery_settle = settle).await;
    let spec = PoolSpec::new("flap", keys(&[(1000, 1); 2]), Strategy::RoundRobin);
    until_state(&store, &spec, StoreState::Shared).await;

    redis.kill();
    until_state(&store, &spec, StoreState::Degraded).await;
    assert_eq!(lines.count(Level::WARN, "redis store unavailable"), 1);
    redis.restart().await;
    until_state(&store, &spec, StoreState::Shared).await;
    let back_at = Instant::now();
    assert_eq!(lines.count(Level::INFO, "redis is back"), 1);
    // Redis flaps: gone again, back for a moment, three times, within the settle time.
    for _ in 0..3 {
        redis.kill();
        until_state(&store, &spec, StoreState::Degraded).await;
        redis.restart().await;
        until_state(&store, &spec, StoreState::Shared).await;
    }
    assert!(
        back_at.elapsed() < settle,
        "the flaps outlasted the settle time"
    );
    // Nothing more, through the settle time and past it.
    while back_at.elapsed() < settle + ms(500) {
        let _ = store.acquire(&spec, &[]).await;
        tokio::time::sleep(ms(20)).await;
    }
    let gone = lines.count(Level::WARN, "redis store unavailable");
    let back = lines.count(Level::INFO, "redis is back");
    assert_eq!((gone, back), (1, 1), "{}", lines.all());
    assert!(store.errors() >= 4, "every flap failed a command");
    assert!(
        lines.count(Level::DEBUG, "outage logged already") >= 3,
        "{}",
        lines.all()
    );
}
