//! Tests of one key's state machine and window, in paused time.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn pass(d: Duration) {
    tokio::time::advance(d).await;
}

#[tokio::test(start_paused = true)]
async fn cooling_ends_by_time() {
    let clock = Clock::new();
    let mut k = KeyState::new("fp".into());
    let now = clock.now();
    k.mark(
        Mark::Cool {
            period: Duration::from_secs(5),
            reason: "rate_limited",
        },
        now.at,
    );
    k.advance(now);
    assert_eq!(k.ready_in(10, now), Some(Duration::from_secs(5)));
    pass(Duration::from_secs(5)).await;
    let later = clock.now();
    k.advance(later);
    assert_eq!(k.public_mode(later.at), KeyMode::Ready);
    assert_eq!(k.ready_in(10, later), Some(Duration::ZERO));
    k.disable();
    k.mark(
        Mark::Cool {
            period: Duration::from_secs(1),
            reason: "rate_limited",
        },
        later.at,
    );
    assert_eq!(
        k.ready_in(10, later),
        None,
        "a mark does not undo a disable"
    );
    k.reset();
    assert_eq!(k.public_mode(later.at), KeyMode::Disabled);
    k.enable();
    assert_eq!(k.public_mode(later.at), KeyMode::Ready);
}

#[tokio::test(start_paused = true)]
async fn shorter_mark_does_not_shorten_penalty() {
    let clock = Clock::new();
    let mut k = KeyState::new("fp".into());
    let now = clock.now();
    let q = Mark::Quarantine {
        period: Duration::from_secs(600),
        reason: "unauthorized",
    };
    k.mark(q, now.at);
    k.mark(
        Mark::Cool {
            period: Duration::from_secs(1),
            reason: "rate_limited",
        },
        now.at,
    );
    assert_eq!(k.ready_in(10, now), Some(Duration::from_secs(600)));
}

#[tokio::test(start_paused = true)]
async fn a_full_key_frees_up_when_its_oldest_buckets_leave() {
    let clock = Clock::new();
    let mut k = KeyState::new("fp".into());
    k.count(clock.now());
    pass(Duration::from_secs(20)).await;
    k.count(clock.now());
    let now = clock.now();
    k.advance(now);
    assert_eq!(k.used(), 2);
    // Second 0's bucket leaves when second 61 starts, second 20's when second 81 does.
    assert_eq!(k.ready_in(2, now), Some(Duration::from_secs(41)));
    assert_eq!(k.ready_in(1, now), Some(Duration::from_secs(61)));
    pass(Duration::from_secs(41)).await;
    k.advance(clock.now());
    assert_eq!(k.used(), 1);
    assert_eq!(k.ready_in(2, clock.now()), Some(Duration::ZERO));
    assert_eq!(k.total, 2);
}

#[tokio::test(start_paused = true)]
async fn a_bucket_counts_until_all_of_its_second_has_left_the_minute() {
    let clock = Clock::new();
    let mut k = KeyState::new("fp".into());
    pass(ms(500)).await;
    k.count(clock.now());
    // 60.9 s after second 0 started, a request of second 0 may be under 60 s old: still full.
    pass(ms(60_400)).await;
    let now = clock.now();
    k.advance(now);
    assert_eq!(k.used(), 1);
    assert_eq!(k.ready_in(1, now), Some(ms(100)));
    pass(ms(100)).await;
    let now = clock.now();
    k.advance(now);
    assert_eq!(k.used(), 0);
    assert_eq!(k.ready_in(1, now), Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn never_more_than_rpm_in_any_sixty_seconds() {
    // Take every request the key allows, 350 ms apart, for seven minutes; then check every
    // 60 s span of the requests granted.
    let clock = Clock::new();
    let mut k = KeyState::new("fp".into());
    let rpm = 7;
    let mut granted: Vec<Instant> = Vec::new();
    for _ in 0..1200 {
        let now = clock.now();
        k.advance(now);
        if k.ready_in(rpm, now) == Some(Duration::ZERO) {
            k.count(now);
            granted.push(now.at);
        }
        pass(ms(350)).await;
    }
    for (i, t) in granted.iter().enumerate() {
        let in_span = granted[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(60))
            .count();
        assert!(in_span <= rpm as usize, "{in_span} requests within 60 s");
    }
    // ... and, over the run, most of the limit: 7 minutes of 7 rpm, less a window.
    assert!(granted.len() >= 7 * 6, "{} granted", granted.len());
}

#[tokio::test(start_paused = true)]
async fn the_ring_holds_sixty_one_seconds_however_long_it_runs() {
    let clock = Clock::new();
    let mut k = KeyState::new("fp".into());
    for second in 0..300u64 {
        for _ in 0..3 {
            k.count(clock.now());
        }
        let now = clock.now();
        k.advance(now);
        assert_eq!(
            k.used(),
            3 * (second + 1).min(BUCKETS),
            "at second {second}"
        );
        pass(Duration::from_secs(1)).await;
    }
    assert_eq!(k.total, 900);
    // A silence longer than the window empties it at once.
    pass(Duration::from_secs(500)).await;
    let now = clock.now();
    k.advance(now);
    assert_eq!(k.used(), 0);
    assert_eq!(k.ready_in(1, now), Some(Duration::ZERO));
}
