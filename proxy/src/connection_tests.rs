//! Unit tests of the connection limits: the descriptor budget, accept back-off, throttled logs.
#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn the_cap_fits_the_open_file_limit() {
    assert_eq!(fd_cap(None, 10_000), 10_000);
    assert_eq!(fd_cap(Some(1_048_576), 10_000), 10_000);
    assert_eq!(fd_cap(Some(1024), 10_000), 1024 - 256);
    // A tiny limit still leaves half of it to clients.
    assert_eq!(fd_cap(Some(300), 10_000), 150);
    assert_eq!(fd_cap(Some(1), 10_000), 1);
    assert_eq!(fd_cap(Some(1024), 5), 5);
}

#[cfg(target_os = "linux")]
#[test]
fn the_open_file_limit_is_read() {
    assert!(open_file_limit().is_some_and(|n| n > 0));
}

#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_and_log_once_a_second() {
    let mut errors = AcceptErrors::new();
    let emfile = io::Error::from_raw_os_error(24);
    let waits: Vec<u128> = (0..6).map(|_| errors.failed(&emfile).as_millis()).collect();
    assert_eq!(waits, [10, 20, 40, 80, 100, 100]);
    // Only the first of these six was written; the rest are held for the next line.
    assert_eq!(errors.log.held, 5);
    tokio::time::advance(LOG_EVERY).await;
    assert_eq!(errors.log.due(), Some(5));
    errors.accepted();
    assert_eq!(errors.failed(&emfile), ACCEPT_BACKOFF_MIN);
}

#[test]
fn a_connections_own_accept_error_is_skipped_at_once() {
    let mut errors = AcceptErrors::new();
    let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
    assert_eq!(errors.failed(&reset), Duration::ZERO);
    assert_eq!(errors.backoff, ACCEPT_BACKOFF_MIN);
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_drops_silent_connections_and_idles_out_quiet_ones() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(2),
        keepalive_timeout: Duration::from_secs(60),
        max_connections: 1,
    };
    let busy = Arc::new(Busy::default());
    let opened = Instant::now();
    assert_eq!(
        expired(&busy, opened, &limits, limits.keepalive_timeout).await,
        Expiry::Silent
    );
    assert_eq!(opened.elapsed(), limits.header_read_timeout);

    // A request in flight holds the connection however long it takes.
    let request = InFlight::start(&busy);
    let waited = tokio::time::timeout(
        Duration::from_secs(3600),
        expired(&busy, opened, &limits, limits.keepalive_timeout),
    )
    .await;
    assert!(waited.is_err());
    drop(request);
    let idle_from = Instant::now();
    assert_eq!(
        expired(&busy, opened, &limits, limits.keepalive_timeout).await,
        Expiry::Idle
    );
    assert_eq!(idle_from.elapsed(), limits.keepalive_timeout);
}
