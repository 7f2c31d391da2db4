//! The `[websocket]` section: whether WebSocket upgrades are proxied at all, and the idle and
//! total limits of each session. A provider may turn them off for itself (`websocket = false`).

use super::problems::Problems;
use super::raw::RawWebSocket;
use super::{defaults, WebSocketConfig};

pub(super) fn websocket(w: &RawWebSocket, p: &mut Problems) -> WebSocketConfig {
    WebSocketConfig {
        enabled: w.enabled.unwrap_or(defaults::WS_ENABLED),
        idle_timeout: p.period(
            "websocket.idle_timeout",
            w.idle_timeout.as_deref(),
            defaults::WS_IDLE_TIMEOUT,
        ),
        max_duration: p.period(
            "websocket.max_duration",
            w.max_duration.as_deref(),
            defaults::WS_MAX_DURATION,
        ),
    }
}
