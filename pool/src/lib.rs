//! keyrelay-pool: provider API keys, how an upstream answer is judged, and which key serves next.
//!
//! No HTTP server lives here. The proxy asks a [`Pool`] for a [`Lease`] on a key, forwards with
//! the lease's credential, then reports the answer through the lease, which classifies it into an
//! [`Outcome`], marks the key if need be and records what the provider said of its quota; a
//! [`Store`] keeps the per-key state (in memory, or shared).

mod budget;
mod group;
mod hints;
mod idmap;
mod key;
mod memory;
mod named;
mod observed;
mod outcome;
mod pool;
mod redis;
mod refusals;
mod select;
mod state;
mod store;

pub use budget::{BudgetSettings, RetryBudget};
pub use group::{valid_group, Group, MAX_GROUP_LEN};
pub use hints::{parse_go_duration, parse_retry_after, rate_limit_hint, remaining_quota};
pub use key::{fingerprint, Account, Fingerprinter, Key, Secret};
pub use memory::MemoryStore;
pub use observed::{Observed, Quota};
pub use outcome::{classify, needs_body, Outcome};
pub use pool::{Acquired, Answer, KeyAuth, Lease, Pool, PoolError, PoolSettings, Tried, Verdict};
pub use redis::{RedisSettings, RedisStore, RedisTarget, StoreError};
pub use select::{choose, Candidate, Strategy};
pub use store::{
    Acquire, KeyAction, KeyMode, KeyStatus, Mark, PoolSpec, Report, Store, StoreFuture, StoreState,
    WINDOW,
};
