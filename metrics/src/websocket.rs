//! WebSocket sessions: opened and closed per pool (closed by how they ended), open now, and
//! bytes each way. Label values come from the closed enums here and the pool's tenant and
//! provider labels only.

use crate::{Builder, Metrics};
use prometheus::{IntCounter, IntCounterVec, IntGauge};

/// How a proxied WebSocket session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// The client closed (or dropped) its connection first.
    ClientClosed,
    /// The provider closed (or dropped) its connection first.
    UpstreamClosed,
    /// No bytes either way for the idle limit.
    IdleTimeout,
    /// The session reached its total time limit.
    MaxDuration,
    /// A read or write failed on either side.
    Error,
    /// The client's or the provider's side never completed the upgrade after the 101.
    UpgradeFailed,
    /// keyrelay is shutting down.
    Shutdown,
}

impl WsEnd {
    pub const ALL: [WsEnd; 7] = [
        WsEnd::ClientClosed,
        WsEnd::UpstreamClosed,
        WsEnd::IdleTimeout,
        WsEnd::MaxDuration,
        WsEnd::Error,
        WsEnd::UpgradeFailed,
        WsEnd::Shutdown,
    ];

    pub fn label(&self) -> &'static str {
        match self {
            WsEnd::ClientClosed => "client_closed",
            WsEnd::UpstreamClosed => "upstream_closed",
            WsEnd::IdleTimeout => "idle_timeout",
            WsEnd::MaxDuration => "max_duration",
            WsEnd::Error => "error",
            WsEnd::UpgradeFailed => "upgrade_failed",
            WsEnd::Shutdown => "shutdown",
        }
    }
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsDirection {
    /// Client to provider.
    Upstream,
    /// Provider to client.
    Downstream,
}

impl WsDirection {
    pub fn label(&self) -> &'static str {
        match self {
            WsDirection::Upstream => "upstream",
            WsDirection::Downstream => "downstream",
        }
    }
}

/// The WebSocket metric families.
pub(crate) struct WsFamilies {
    opened: IntCounterVec,
    closed: IntCounterVec,
    bytes: IntCounterVec,
    open: IntGauge,
}

impl WsFamilies {
    pub(crate) fn new(b: &Builder) -> WsFamilies {
        WsFamilies {
            opened: b.counter(
                "keyrelay_websocket_sessions_opened_total",
                "WebSocket sessions opened (101 from the provider), by tenant and provider.",
                &["tenant", "provider"],
            ),
            closed: b.counter(
                "keyrelay_websocket_sessions_closed_total",
                "WebSocket sessions ended, by tenant, provider and how they ended.",
                &["tenant", "provider", "end"],
            ),
            bytes: b.counter(
                "keyrelay_websocket_bytes_total",
                "Bytes passed through WebSocket sessions, by tenant, provider and direction.",
                &["tenant", "provider", "direction"],
            ),
            open: b.single_gauge(
                "keyrelay_websocket_open_sessions",
                "WebSocket sessions open now.",
            ),
        }
    }
}

/// One pool's WebSocket handles, resolved once (see [`crate::ProviderMetrics::websocket`]).
#[derive(Clone, Debug)]
pub struct WsMetrics {
    opened: IntCounter,
    closed: [IntCounter; 7],
    up: IntCounter,
    down: IntCounter,
    open: IntGauge,
}

impl WsMetrics {
    /// The series of the pool labelled `[tenant, provider]`.
    pub(crate) fn new(f: &WsFamilies, [tenant, provider]: [&str; 2]) -> WsMetrics {
        let bytes = |d: WsDirection| f.bytes.with_label_values(&[tenant, provider, d.label()]);
        WsMetrics {
            opened: f.opened.with_label_values(&[tenant, provider]),
            closed: WsEnd::ALL.map(|e| f.closed.with_label_values(&[tenant, provider, e.label()])),
            up: bytes(WsDirection::Upstream),
            down: bytes(WsDirection::Downstream),
            open: f.open.clone(),
        }
    }

    /// A session opened: counted, and in the gauge until [`WsMetrics::closed`].
    pub fn opened(&self) {
        self.opened.inc();
        self.open.inc();
    }

    /// A session ended, with the bytes it passed each way.
    pub fn closed(&self, end: WsEnd, upstream_bytes: u64, downstream_bytes: u64) {
        let i = WsEnd::ALL.iter().position(|e| *e == end).unwrap_or(0);
        self.closed[i].inc();
        self.open.dec();
        self.up.inc_by(upstream_bytes);
        self.down.inc_by(downstream_bytes);
    }
}

impl Metrics {
    /// WebSocket sessions open now.
    pub fn open_websockets(&self) -> i64 {
        self.families.websocket.open.get()
    }
}
