//! Per-pool degraded state on Redis Cluster: with one master down (and
//! `cluster-require-full-coverage no`), the pool whose slot lived there is served on local
//! state while a pool on another master stays shared, and the per-pool probe shares it again
//! once its master is back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "tests"
)]

mod support;

use keyrelay_pool::{
    Acquire, Key, PoolSpec, RedisSettings, RedisStore, RedisTarget, Secret, Store, StoreState,
    Strategy,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis::{RedisCluster, RedisServer};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// Every event the store writes: its level, message and `pool` field.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<(Level, String, String)>>>);

#[derive(Default)]
struct Fields {
    message: String,
    pool: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "pool" => self.pool = format!("{value:?}").trim_matches('"').to_owned(),
            _ => {}
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
        let mut f = Fields::default();
        event.record(&mut f);
        let level = *event.metadata().level();
        self.0.lock().unwrap().push((level, f.message, f.pool));
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

impl Lines {
    /// Lines at exactly `level` whose message has `text`, per pool field.
    fn count(&self, level: Level, text: &str, pool: &str) -> usize {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|(l, m, p)| *l == level && m.contains(text) && p == pool)
            .count()
    }

    fn all(&self) -> String {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .map(|(l, m, p)| format!("{l} {m} pool={p}\n"))
            .collect()
    }
}

/// Two pools whose hash tags fall in different thirds of the slots (865 and 15419), so the
/// three-master cluster keeps them on different masters (checked below).
const A: &str = "alpha";
const B: &str = "beta";

fn state_key(pool: &str) -> String {
    format!("keyrelay:{{{pool}}}:state")
}

fn spec(pool: &str) -> PoolSpec {
    let keys = (0..2)
        .map(|i| {
            Key::new(
                format!("k{i}"),
                Secret::new(format!("sk-cluster-{pool}-{i}")),
                100_000,
                1,
            )
        })
        .collect();
    PoolSpec::new(pool, keys, Strategy::RoundRobin)
}

async fn store_on(cluster: &RedisCluster) -> Arc<RedisStore> {
    let settings = RedisSettings {
        connect_timeout: Duration::from_millis(500),
        wait_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        probe_interval: Duration::from_millis(20),
        probe_max_interval: Duration::from_millis(200),
        pools: vec![A.to_owned(), B.to_owned()],
        ..RedisSettings::default()
    };
    let urls = cluster.nodes.iter().map(RedisServer::url).collect();
    RedisStore::connect(&RedisTarget::Cluster(urls), settings)
        .await
        .unwrap()
}

/// Requests counted in `pool`'s live buckets on `node` (the `n:<fp>` fields of its state).
fn counted(node: &RedisServer, pool: &str) -> u64 {
    node.pool_hash(&state_key(pool))
        .iter()
        .filter(|(f, _)| f.starts_with("n:"))
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

/// One acquire on `spec`, which must hand out a key.
async fn acquire_key(store: &RedisStore, spec: &PoolSpec) {
    let got = store.acquire(spec, &[]).await;
    assert!(
        matches!(got, Acquire::Key(_)),
        "pool {} gave no key: {got:?}",
        spec.name
    );
}

/// Acquire on `spec` until its pool is in `want` (a command is how the store notices).
async fn until_pool(store: &RedisStore, spec: &PoolSpec, want: StoreState, within: Duration) {
    let deadline = Instant::now() + within;
    while store.pool_state(&spec.name) != want {
        acquire_key(store, spec).await;
        assert!(
            Instant::now() < deadline,
            "pool {} never {want:?} (store {:?}, {} errors)",
            spec.name,
            store.state(),
            store.errors()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_master_down_degrades_only_the_pool_whose_slot_it_held() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(lines.clone());
    let mut cluster = RedisCluster::start_with(&["--cluster-require-full-coverage", "no"]).await;
    let store = store_on(&cluster).await;
    let (a, b) = (spec(A), spec(B));
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.state() != StoreState::Shared {
        assert!(Instant::now() < deadline, "store never shared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acquire_key(&store, &a).await;
    acquire_key(&store, &b).await;
    let port_of = |pool: &str| cluster.node_for(&state_key(pool)).port;
    let (port_a, port_b) = (port_of(A), port_of(B));
    assert_ne!(port_a, port_b, "the two pools share a master");
    let index_of = |port: u16| cluster.nodes.iter().position(|n| n.port == port).unwrap();
    let (ia, ib) = (index_of(port_a), index_of(port_b));
    let b_before = counted(&cluster.nodes[ib], B);
    assert!(b_before >= 1);

    // Pool A's master goes away: A degrades, its requests still get keys (local state).
    cluster.nodes[ia].kill();
    until_pool(&store, &a, StoreState::Degraded, Duration::from_secs(10)).await;
    assert_eq!(store.state(), StoreState::Degraded, "a pool is degraded");
    assert_eq!(store.pool_state(B), StoreState::Shared, "B went with A");
    let errors = store.errors();
    for _ in 0..20 {
        acquire_key(&store, &a).await;
        acquire_key(&store, &b).await;
    }
    assert_eq!(store.pool_state(B), StoreState::Shared);
    assert_eq!(
        store.errors(),
        errors,
        "a degraded pool, or the shared one, still failed commands"
    );
    let b_during = counted(&cluster.nodes[ib], B);
    assert!(
        b_during >= b_before + 20,
        "B's counts on its master did not follow its requests: {b_before} then {b_during}"
    );

    // A's master returns (same port, its cluster config kept, no data): the per-pool probe
    // shares A again, and A's requests are counted on its master.
    cluster.nodes[ia].restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.pool_state(A) != StoreState::Shared {
        assert!(
            Instant::now() < deadline,
            "pool A never shared again; node log:\n{}",
            cluster.nodes[ia].log()
        );
        acquire_key(&store, &a).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A's requests reach its master, which lost the scripts with its data: the first one
    // answered NOSCRIPT runs as EVAL there (SCRIPT LOAD would go to every master), so A does
    // not fail again.
    let errors = store.errors();
    let deadline = Instant::now() + Duration::from_secs(30);
    while counted(&cluster.nodes[ia], A) < 5 {
        assert!(
            Instant::now() < deadline,
            "A's requests never reached its master: pool A {:?}, {} errors, nodes {:?}, dump:\n{}",
            store.pool_state(A),
            store.errors(),
            cluster.nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
            cluster.nodes[ia].cli(&["CLUSTER", "NODES"]),
        );
        acquire_key(&store, &a).await;
        // A local acquire never waits: give the probe its turn.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.errors(), errors, "A failed again after its return");
    assert_eq!(store.state(), StoreState::Shared);
    assert_eq!(store.pool_state(B), StoreState::Shared);

    // One line when A's slot went and one when it was back (a flap just after its return is
    // not logged), none about B, none about the whole store.
    let gone = "redis unavailable for this pool's cluster slot";
    let back = "redis answers for this pool's cluster slot again";
    assert_eq!(
        (
            lines.count(Level::WARN, gone, A),
            lines.count(Level::INFO, back, A)
        ),
        (1, 1),
        "{}",
        lines.all()
    );
    assert_eq!(lines.count(Level::WARN, gone, B), 0, "{}", lines.all());
    assert_eq!(
        lines.count(Level::WARN, "redis store unavailable", ""),
        0,
        "{}",
        lines.all()
    );
}

#[tokio::test]
async fn every_master_down_is_the_whole_stores_outage() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(lines.clone());
    let mut cluster = RedisCluster::start_with(&["--cluster-require-full-coverage", "no"]).await;
    let store = store_on(&cluster).await;
    let (a, b) = (spec(A), spec(B));
    acquire_key(&store, &a).await;
    acquire_key(&store, &b).await;
    assert_eq!(store.state(), StoreState::Shared);

    // Nothing of the cluster answers: the pools' outages become the store's.
    for node in &mut cluster.nodes {
        node.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.is_degraded() {
        assert!(
            Instant::now() < deadline,
            "the store never degraded; {}",
            lines.all()
        );
        acquire_key(&store, &a).await;
        acquire_key(&store, &b).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.pool_state(A), StoreState::Degraded);
    assert_eq!(store.pool_state(B), StoreState::Degraded);
    acquire_key(&store, &a).await;
    acquire_key(&store, &b).await;

    for node in &mut cluster.nodes {
        node.restart().await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.state() != StoreState::Shared {
        assert!(
            Instant::now() < deadline,
            "the store never shared again; {}",
            lines.all()
        );
        acquire_key(&store, &a).await;
        acquire_key(&store, &b).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.pool_state(A), StoreState::Shared);
    assert_eq!(store.pool_state(B), StoreState::Shared);
    assert_eq!(
        (
            lines.count(Level::WARN, "redis store unavailable", ""),
            lines.count(Level::INFO, "redis is back", "")
        ),
        (1, 1),
        "{}",
        lines.all()
    );
}
