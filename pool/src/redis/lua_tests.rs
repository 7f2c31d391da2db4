//! The scripts run in a real `redis-server` (started per test on a Unix socket in a temp dir,
//! TCP off), called exactly as the store calls them.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

use super::command::{act_cmd, MarkAction, Prepared, Scripts};
use crate::key::{Key, Secret};
use crate::select::Strategy;
use crate::store::KeyAction;
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
        local until_ms, kind, reason, since = parse_mark('1700|cooling|rate_limited')
        out[6] = until_ms .. ' ' .. kind .. ' ' .. reason .. ' ' .. since
        until_ms, kind, reason, since = parse_mark('1700|quarantined|1200|unauthorized')
        out[10] = until_ms .. ' ' .. kind .. ' ' .. reason .. ' ' .. since
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
        // A mark from before since_ms was stored reads as set at 0.
        "1700 cooling rate_limited 0",
        "true",
        "true",
        "f:42 61 60",
        "1700 quarantined unauthorized 1200",
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
    let act = |conn: &mut Connection, index: usize, action: KeyAction, at_ms: u64| {
        let fp = &spec.keys[index].fingerprint;
        let cmd = act_cmd(&scripts.act, &prepared.keys, fp, action, at_ms);
        cmd.query::<i64>(conn).unwrap()
    };
    assert_eq!(mark(&mut redis.conn, 0, MarkAction::Cooling, 30_000), 1);
    assert_eq!(
        mark(&mut redis.conn, 0, MarkAction::Cooling, 5_000),
        0,
        "a shorter cooldown is kept out"
    );
    assert_eq!(act(&mut redis.conn, 2, KeyAction::Disable, 1), 1);
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

    assert_eq!(act(&mut redis.conn, 2, KeyAction::Enable, 2), 1);
    assert_eq!(act(&mut redis.conn, 0, KeyAction::Reset, u64::MAX >> 12), 1);
    let rows: Vec<(u64, String, u64, u64)> = prepared.status().query(&mut redis.conn).unwrap();
    assert!(
        rows.iter().all(|(_, mark, _, _)| mark.is_empty()),
        "{rows:?}"
    );
}

/// Move everything the pool `lua` keeps `secs` seconds into the past, as if that much time
/// had gone by: buckets, oldest seconds, freeing times, the next due and the due set.
fn age(conn: &mut Connection, secs: i64) {
    let script = r"
        local state, buckets, dues, secs = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1])
        local b = redis.call('HGETALL', buckets)
        for i = 1, #b, 2 do
          local fp, s = string.match(b[i], '^(.+):(%d+)$')
          if fp then
            redis.call('HDEL', buckets, b[i])
            redis.call('HSET', buckets, fp .. ':' .. (tonumber(s) - secs), b[i + 1])
          end
        end
        local st = redis.call('HGETALL', state)
        for i = 1, #st, 2 do
          local kind = string.match(st[i], '^(%a+)')
          if kind == 'o' or st[i] == 'x' then
            redis.call('HSET', state, st[i], tonumber(st[i + 1]) - secs)
          elseif kind == 'f' then
            redis.call('HSET', state, st[i], tonumber(st[i + 1]) - secs * 1000)
          end
        end
        local d = redis.call('ZRANGE', dues, 0, -1, 'WITHSCORES')
        for i = 1, #d, 2 do redis.call('ZADD', dues, tonumber(d[i + 1]) - secs, d[i]) end
        return 1
    ";
    let _: i64 = redis::cmd("EVAL")
        .arg(script)
        .arg(3)
        .arg("keyrelay:{lua}:state")
        .arg("keyrelay:{lua}:b")
        .arg("keyrelay:{lua}:due")
        .arg(secs)
        .query(conn)
        .unwrap();
}

fn hget(conn: &mut Connection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(key).arg(field).query(conn).unwrap()
}

fn set_spec(prefix: &str, rpm: u32, keys: usize) -> PoolSpec {
    let keys = (0..keys)
        .map(|i| {
            Key::new(
                format!("{prefix}{i}"),
                Secret::new(format!("sk-{prefix}-{i}")),
                rpm,
                1,
            )
        })
        .collect();
    PoolSpec::new("lua", keys, Strategy::LeastLoaded)
}

#[test]
fn another_key_sets_counts_are_swept_a_bounded_number_per_call() {
    let mut redis = Server::start();
    let scripts = Scripts::new();
    load(&mut redis, &scripts);
    let ours_spec = set_spec("ours", 100, 2);
    let ours = Prepared::new(&ours_spec, &scripts);
    // Another deployment on the same pool name: 40 keys of its own, each counted once.
    let theirs_spec = set_spec("theirs", 100, 40);
    let theirs = Prepared::new(&theirs_spec, &scripts);
    for c in 0..40 {
        let got: i64 = theirs.acquire(c, &[]).query(&mut redis.conn).unwrap();
        assert!(got > 0);
    }
    let _: i64 = ours.acquire(0, &[]).query(&mut redis.conn).unwrap();
    let state = "keyrelay:{lua}:state";
    let counted = |conn: &mut Connection| {
        theirs_spec
            .keys
            .iter()
            .filter(|k| hget(conn, state, &format!("n:{}", k.fingerprint)).is_some())
            .count()
    };
    assert_eq!(counted(&mut redis.conn), 40);
    // A minute and more later only we serve: each of our calls sweeps at most 16 of theirs.
    age(&mut redis.conn, 62);
    let mut left = vec![counted(&mut redis.conn)];
    for c in 1..4 {
        let got: i64 = ours.acquire(c, &[]).query(&mut redis.conn).unwrap();
        assert!(got > 0, "we still serve: {got}");
        left.push(counted(&mut redis.conn));
    }
    // The 16 due entries a call takes may include our own keys, swept anyway.
    for pair in left.windows(2) {
        let swept = pair[0] - pair[1];
        assert!((14..=16).contains(&swept) || pair[1] == 0, "{left:?}");
    }
    assert_eq!(left[3], 0, "{left:?}");
    // Their totals stay (a key added back keeps its total); their buckets and counts are gone.
    for k in &theirs_spec.keys {
        let fp = &k.fingerprint;
        assert_eq!(
            hget(&mut redis.conn, state, &format!("t:{fp}")).as_deref(),
            Some("1")
        );
        assert_eq!(hget(&mut redis.conn, state, &format!("o:{fp}")), None);
    }
    let buckets: Vec<String> = redis::cmd("HKEYS")
        .arg("keyrelay:{lua}:b")
        .query(&mut redis.conn)
        .unwrap();
    assert!(
        buckets
            .iter()
            .all(|b| b == "_" || !b.starts_with(&theirs_spec.keys[0].fingerprint[..4])),
        "{buckets:?}"
    );
    let due: Vec<String> = redis::cmd("ZRANGE")
        .arg("keyrelay:{lua}:due")
        .arg(0)
        .arg(-1)
        .query(&mut redis.conn)
        .unwrap();
    let ours_fps: Vec<&str> = ours_fps(&ours_spec);
    assert!(
        due.iter().all(|fp| ours_fps.contains(&fp.as_str())),
        "{due:?}"
    );
}

fn ours_fps(spec: &PoolSpec) -> Vec<&str> {
    spec.keys.iter().map(|k| k.fingerprint.as_str()).collect()
}

#[test]
fn a_key_set_that_stopped_serving_is_still_counted_down_by_the_other() {
    let mut redis = Server::start();
    let scripts = Scripts::new();
    load(&mut redis, &scripts);
    let ours = Prepared::new(&set_spec("ours", 100, 1), &scripts);
    let theirs_spec = set_spec("theirs", 2, 1);
    let theirs = Prepared::new(&theirs_spec, &scripts);
    // Their key is full; we served before them, so the next due is ours.
    let _: i64 = ours.acquire(0, &[]).query(&mut redis.conn).unwrap();
    for c in 0..2 {
        let _: i64 = theirs.acquire(c, &[]).query(&mut redis.conn).unwrap();
    }
    let full: i64 = theirs.acquire(2, &[]).query(&mut redis.conn).unwrap();
    assert!(full < 0, "full: {full}");
    // A minute on, only we serve for a while; then they come back and find their key free.
    age(&mut redis.conn, 62);
    let _: i64 = ours.acquire(1, &[]).query(&mut redis.conn).unwrap();
    let fp = &theirs_spec.keys[0].fingerprint;
    assert_eq!(
        hget(&mut redis.conn, "keyrelay:{lua}:state", &format!("n:{fp}")),
        None
    );
    let back: i64 = theirs.acquire(3, &[]).query(&mut redis.conn).unwrap();
    assert_eq!(back, 1, "their key is free again");
}

#[test]
fn operator_actions_last_writer_wins_and_outlive_the_state_hash() {
    let mut redis = Server::start();
    let scripts = Scripts::new();
    load(&mut redis, &scripts);
    let spec = spec(Strategy::RoundRobin, 100, 2);
    let prepared = Prepared::new(&spec, &scripts);
    let act = |conn: &mut Connection, index: usize, action: KeyAction, at_ms: u64| {
        let fp = &spec.keys[index].fingerprint;
        let cmd = act_cmd(&scripts.act, &prepared.keys, fp, action, at_ms);
        cmd.query::<i64>(conn).unwrap()
    };
    let modes = |conn: &mut Connection| -> Vec<&'static str> {
        let rows: Vec<(u64, String, u64, u64)> = prepared.status().query(conn).unwrap();
        rows.iter()
            .map(|(_, mark, left, _)| super::marks::mode_of(mark, *left).label())
            .collect()
    };
    assert_eq!(act(&mut redis.conn, 0, KeyAction::Disable, 2_000), 1);
    // An enable taken earlier (queued during an outage, say) does not undo it.
    assert_eq!(act(&mut redis.conn, 0, KeyAction::Enable, 1_000), 0);
    assert_eq!(modes(&mut redis.conn), ["disabled", "ready"]);
    // The state hash expires (a quiet day): the disable holds, in status and in acquire.
    let _: i64 = redis::cmd("DEL")
        .arg("keyrelay:{lua}:state")
        .query(&mut redis.conn)
        .unwrap();
    assert_eq!(modes(&mut redis.conn), ["disabled", "ready"]);
    let picks: Vec<i64> = (0..3)
        .map(|c| prepared.acquire(c, &[]).query(&mut redis.conn).unwrap())
        .collect();
    assert_eq!(picks, [2, 2, 2], "the disabled key never serves");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("keyrelay:{lua}:ops")
        .query(&mut redis.conn)
        .unwrap();
    assert_eq!(ttl, -1, "the operator hash never expires");
    // A newer enable wins; an older disable arriving after it does not.
    assert_eq!(act(&mut redis.conn, 0, KeyAction::Enable, 3_000), 1);
    assert_eq!(act(&mut redis.conn, 0, KeyAction::Disable, 2_500), 0);
    assert_eq!(modes(&mut redis.conn), ["ready", "ready"]);
    // A reset clears only a mark set before it.
    let cool = prepared.mark(
        &scripts.mark,
        1,
        MarkAction::Cooling,
        "rate_limited",
        Duration::from_secs(30),
    );
    let _: i64 = cool.unwrap().query(&mut redis.conn).unwrap();
    assert_eq!(
        act(&mut redis.conn, 1, KeyAction::Reset, 1_000),
        0,
        "older reset"
    );
    assert_eq!(modes(&mut redis.conn), ["ready", "cooling"]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(
        act(&mut redis.conn, 1, KeyAction::Reset, now_ms + 60_000),
        1
    );
    assert_eq!(modes(&mut redis.conn), ["ready", "ready"]);
}

#[test]
fn a_due_entry_with_nothing_behind_it_is_dropped_not_swept_forever() {
    let mut redis = Server::start();
    let scripts = Scripts::new();
    load(&mut redis, &scripts);
    let spec = spec(Strategy::LeastLoaded, 100, 2);
    let prepared = Prepared::new(&spec, &scripts);
    let _: i64 = prepared.acquire(0, &[]).query(&mut redis.conn).unwrap();
    // A key nobody counts any more is listed as due (its state went, its entry stayed).
    let _: i64 = redis::cmd("ZADD")
        .arg("keyrelay:{lua}:due")
        .arg(1)
        .arg("0123456789ab")
        .query(&mut redis.conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("keyrelay:{lua}:state")
        .arg("x")
        .arg(1)
        .query(&mut redis.conn)
        .unwrap();
    let _: i64 = prepared.acquire(1, &[]).query(&mut redis.conn).unwrap();
    let score: Option<String> = redis::cmd("ZSCORE")
        .arg("keyrelay:{lua}:due")
        .arg("0123456789ab")
        .query(&mut redis.conn)
        .unwrap();
    assert_eq!(score, None);
    // x is the next real due again: a key's first bucket leaving the window.
    let x: u64 = hget(&mut redis.conn, "keyrelay:{lua}:state", "x")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 59..=now + 62).contains(&x), "x {x}, now {now}");
}
