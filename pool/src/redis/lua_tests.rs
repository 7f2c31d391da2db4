//! The scripts run in a real `redis-server` (started per test on a Unix socket in a temp dir,
//! TCP off), called exactly as the store calls them.

use super::command::{MarkAction, Prepared, Scripts};
use crate::key::{Key, Secret};
use crate::select::Strategy;
use crate::store::PoolSpec;
use deadpool_redis::redis::{self, Connection};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A `redis-server` of this test's own, stopped (by its PID) and its directory removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    conn: Connection,
}

impl Server {
    fn start() -> Server {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keyrelay-pool-lua-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("redis.sock");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&sock)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let client = redis::Client::open(format!("unix://{}", sock.display())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            if let Ok(mut conn) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    break conn;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(10));
        };
        Server { child, dir, conn }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(strategy: Strategy, rpm: u32, keys: usize) -> PoolSpec {
    let keys = (0..keys)
        .map(|i| Key::new(format!("k{i}"), Secret::new(format!("sk-lua-{i}")), rpm, 1))
        .collect();
    PoolSpec::new("lua", keys, strategy)
}

#[test]
fn common_arithmetic() {
    let mut redis = Server::start();
    let probe = r"
        local out = {}
        out[1] = tostring(expired('f', 100, 160) == nil)
        local names, all = expired('f', 100, 161)
        out[2] = table.concat(names, ',') .. ' ' .. tostring(all)
        names, all = expired('f', 100, 220)
        out[3] = #names .. ' ' .. names[#names] .. ' ' .. tostring(all)
        names, all = expired('f', 100, 221)
        out[4] = #names .. ' ' .. names[1] .. ' ' .. names[#names] .. ' ' .. tostring(all)
        out[5] = tostring(expired('f', 0, 500) == nil)
        local until_ms, kind, reason = parse_mark('1700|cooling|rate_limited')
        out[6] = until_ms .. ' ' .. kind .. ' ' .. reason
        out[7] = tostring(parse_mark(false) == nil and parse_mark('junk') == nil)
        local t = redis.call('TIME')
        out[8] = tostring(now_ms(t) == tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
        out[9] = bucket('f', 42) .. ' ' .. BUCKETS .. ' ' .. WINDOW_S
        return out
    ";
    let script = format!("{}{probe}", include_str!("common.lua"));
    let got: Vec<String> = redis::cmd("EVAL")
        .arg(script)
        .arg(0)
        .query(&mut redis.conn)
        .unwrap();
    let want = [
        // A bucket leaves the window 61 s after its second began.
        "true",
        "f:100 false",
        "60 f:159 false",
        // The last of a key's buckets (oldest + 60) has left: all of them.
        "61 f:100 f:160 true",
        "true",
        "1700 cooling rate_limited",
        "true",
        "true",
        "f:42 61 60",
    ];
    assert_eq!(got, want);
}

fn load(redis: &mut Server, scripts: &Scripts) {
    for script in scripts.all() {
        script.prepare_invoke().load(&mut redis.conn).unwrap();
    }
}

#[test]
fn acquire_counts_spreads_skips_and_fills() {
    let mut redis = Server::start();
    let scripts = Scripts::new();
    load(&mut redis, &scripts);
    let spec = spec(Strategy::LeastLoaded, 2, 3);
    let prepared = Prepared::new(&spec, &scripts);
    let mut acquire = |call: u64, tried: &[usize]| -> i64 {
        prepared
            .acquire(call, tried)
            .query(&mut redis.conn)
            .unwrap()
    };
    // Least count, ties to the lowest index: 0, 1, 2; then all at 1, so the lowest untried.
    let picks: Vec<i64> = (0..3).map(|c| acquire(c, &[])).collect();
    assert_eq!(picks, [1, 2, 3], "index + 1, least count first");
    assert_eq!(acquire(3, &[0]), 2, "key 0 tried: key 1");
    assert_eq!(acquire(4, &[]), 1, "key 0 has the least count");
    assert_eq!(acquire(5, &[0, 1]), 3);
    // Every key at its rpm: a wait of about a minute, not a key.
    let wait = acquire(6, &[]);
    assert!((-61_000..=-59_000).contains(&wait), "wait {wait}");

    let state = "keyrelay:{lua}:state";
    for key in &spec.keys {
        let count: u64 = redis::cmd("HGET")
            .arg(state)
            .arg(format!("n:{}", key.fingerprint))
            .query(&mut redis.conn)
            .unwrap();
        assert_eq!(count, 2, "{}", key.name);
    }
    // Both hashes are hash tables (the '_' marker) with their TTLs.
    for (key, lo, hi) in [
        (state, 86_000_000, 86_400_000),
        ("keyrelay:{lua}:b", 120_000, 125_000),
    ] {
        let marker: String = redis::cmd("HGET")
            .arg(key)
            .arg("_")
            .query(&mut redis.conn)
            .unwrap();
        assert!(marker.len() > 64, "{key}: {marker}");
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut redis.conn).unwrap();
        assert!((lo..=hi).contains(&ttl), "{key}: ttl {ttl}");
    }
}

#[test]
fn marks_keep_keys_out_and_show_in_status() {
    let mut redis = Server::start();
    let scripts = Scripts::new();
    load(&mut redis, &scripts);
    let spec = spec(Strategy::RoundRobin, 100, 3);
    let prepared = Prepared::new(&spec, &scripts);
    let mark = |conn: &mut Connection, index: usize, action: MarkAction, period_ms: u64| {
        let period = Duration::from_millis(period_ms);
        let cmd = prepared.mark(&scripts.mark, index, action, "rate_limited", period);
        cmd.unwrap().query::<i64>(conn).unwrap()
    };
    assert_eq!(mark(&mut redis.conn, 0, MarkAction::Cooling, 30_000), 1);
    assert_eq!(
        mark(&mut redis.conn, 0, MarkAction::Cooling, 5_000),
        0,
        "a shorter cooldown is kept out"
    );
    assert_eq!(mark(&mut redis.conn, 2, MarkAction::Disabled, 0), 1);
    let picks: Vec<i64> = (0..4)
        .map(|c| prepared.acquire(c, &[]).query(&mut redis.conn).unwrap())
        .collect();
    assert_eq!(picks, [2, 2, 2, 2], "only key 1 serves");
    let wait: i64 = prepared.acquire(4, &[1]).query(&mut redis.conn).unwrap();
    assert!(
        (-30_000..=-29_000).contains(&wait),
        "key 0 cools: wait {wait}"
    );

    let rows: Vec<(u64, String, u64, u64)> = prepared.status().query(&mut redis.conn).unwrap();
    let modes: Vec<&str> = rows
        .iter()
        .map(|(_, mark, left, _)| super::marks::mode_of(mark, *left).label())
        .collect();
    assert_eq!(modes, ["cooling", "ready", "disabled"]);
    assert_eq!(rows[1].0, 4, "used this minute");
    assert_eq!(rows[1].3, 4, "total");

    assert_eq!(mark(&mut redis.conn, 2, MarkAction::Enable, 0), 1);
    assert_eq!(mark(&mut redis.conn, 0, MarkAction::Reset, 0), 1);
    let rows: Vec<(u64, String, u64, u64)> = prepared.status().query(&mut redis.conn).unwrap();
    assert!(
        rows.iter().all(|(_, mark, _, _)| mark.is_empty()),
        "{rows:?}"
    );
}
