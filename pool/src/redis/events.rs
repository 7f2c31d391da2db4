//! The invalidation subscription that leases depend on: `PSUBSCRIBE keyrelay:*:ev` on a
//! connection of its own, dropping this instance's lease on a key whenever another instance
//! marks or disables it (see `shares.rs`). Leases are taken only while it is live.

use super::{RedisStore, RedisTarget, StoreError};
use deadpool_redis::redis;
use futures_util::StreamExt;
use std::sync::Weak;
use std::time::Duration;

/// The channels `mark.lua` and `act.lua` publish on: `keyrelay:{<pool>}:ev`.
const PATTERN: &str = "keyrelay:*:ev";

/// A client for the subscription: one Redis only (Cluster takes no leases).
pub(super) fn client(target: &RedisTarget) -> Result<Option<redis::Client>, StoreError> {
    let RedisTarget::Single(url) = target else {
        return Ok(None);
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|e| StoreError::config(&e))?;
    let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
        .map(Some)
        .map_err(|e| StoreError::config(&e))
}

/// The pool a channel `keyrelay:{<pool>}:ev` names.
fn pool_of(channel: &str) -> Option<&str> {
    let rest = channel.strip_prefix("keyrelay:{")?;
    rest.strip_suffix("}:ev")
}

/// While the store lives: subscribe, drop leases as messages say, and when the subscription
/// is lost stop leasing and subscribe again with growing backoff.
pub(super) async fn listen(store: Weak<RedisStore>, client: redis::Client) {
    let mut delay = Duration::ZERO;
    loop {
        tokio::time::sleep(delay).await;
        let Some(s) = store.upgrade() else { return };
        let (first, most) = (s.settings.probe_interval, s.settings.probe_max_interval);
        let limit = s.settings.connect_timeout + s.settings.command_timeout;
        drop(s);
        delay = (delay * 2).clamp(first, most.max(first));
        let subscribed = tokio::time::timeout(limit, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(PATTERN).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let Ok(Ok(pubsub)) = subscribed else {
            continue;
        };
        let Some(s) = store.upgrade() else { return };
        s.shares.set_listening(true);
        drop(s);
        delay = Duration::ZERO;
        let mut messages = pubsub.into_on_message();
        loop {
            // Wake now and then to see whether the store is gone.
            let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
            let Some(s) = store.upgrade() else { return };
            match next {
                Ok(Some(msg)) => {
                    let fp = String::from_utf8_lossy(msg.get_payload_bytes());
                    if let Some(pool) = pool_of(msg.get_channel_name()) {
                        s.shares.received(pool, &fp);
                    }
                }
                Ok(None) => {
                    tracing::debug!(
                        "lease invalidations lost; one script call per attempt until they are back"
                    );
                    s.shares.set_listening(false);
                    break;
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_pool() {
        assert_eq!(pool_of("keyrelay:{openai}:ev"), Some("openai"));
        assert_eq!(pool_of("keyrelay:{a:b}:ev"), Some("a:b"));
        assert_eq!(pool_of("keyrelay:{x}:state"), None);
    }
}
