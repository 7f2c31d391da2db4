//! keyrelay-pool: provider API keys, how an upstream answer is judged, and which key serves next.
//!
//! No HTTP server lives here. The proxy asks a [`Pool`] for a key, forwards with it, then reports
//! the [`Outcome`] it observed; a [`Store`] keeps the per-key state (in memory, or shared).

mod hints;
mod key;
mod memory;
mod outcome;
mod pool;
mod redis;
mod select;
mod state;
mod store;

pub use hints::{parse_go_duration, parse_retry_after, rate_limit_hint};
pub use key::{fingerprint, Key, Secret};
pub use memory::MemoryStore;
pub use outcome::{classify, Outcome};
pub use pool::{Pool, PoolSettings};
pub use redis::{RedisSettings, RedisStore, RedisTarget, StoreError};
pub use select::{choose, Candidate, Strategy};
pub use store::{
    Acquire, KeyAction, KeyMode, KeyStatus, Mark, PoolSpec, Report, Store, StoreFuture, StoreState,
    WINDOW,
};
