//! Tests of the prepared script calls: the argument layouts the scripts draw at their tops.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

use super::*;
use crate::key::Secret;

fn spec(strategy: Strategy, limits: &[(u32, u32)]) -> PoolSpec {
    let keys = limits
        .iter()
        .enumerate()
        .map(|(i, &(rpm, weight))| {
            Key::new(format!("k{i}"), Secret::new(format!("sk-{i}")), rpm, weight)
        })
        .collect();
    PoolSpec::new("p", keys, strategy)
}

fn args(cmd: &Cmd) -> Vec<String> {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "<not a plain argument>".to_owned(),
        })
        .collect()
}

fn fps(spec: &PoolSpec) -> Vec<String> {
    spec.keys.iter().map(|k| k.fingerprint.clone()).collect()
}

#[test]
fn acquire_carries_the_fingerprints_as_their_own_run() {
    let scripts = Scripts::new();
    let spec = spec(Strategy::LeastLoaded, &[(60, 1), (60, 1), (60, 1)]);
    let fp = fps(&spec);
    let cmd = Prepared::new(&spec, &scripts).acquire(7, &[0, 2]);
    let mut want = vec![
        "EVALSHA".to_owned(),
        scripts.acquire.get_hash().to_owned(),
        "4".into(),
        "keyrelay:{p}:state".into(),
        "keyrelay:{p}:b".into(),
        "keyrelay:{p}:due".into(),
        "keyrelay:{p}:ops".into(),
        // Same rpm everywhere: least count. 7 % 3 keys; keys 0 and 2 tried.
        "lc".into(),
        "1".into(),
        ",0,2,".into(),
    ];
    want.extend(fp.iter().cloned());
    want.extend(["60", "60", "60", "x", "mk"].map(String::from));
    want.extend(fp.iter().map(|f| format!("n:{f}")));
    assert_eq!(args(&cmd), want);
}

#[test]
fn weighted_and_round_robin_add_their_runs() {
    let scripts = Scripts::new();
    let weighted = spec(Strategy::Weighted, &[(10, 1), (20, 3)]);
    let fp = fps(&weighted);
    let cmd = Prepared::new(&weighted, &scripts).acquire(0, &[]);
    let mut tail = vec!["w".to_owned(), "0".into(), ",".into()];
    tail.extend(fp.iter().cloned());
    tail.extend(["10", "20", "1", "3", "x", "mk"].map(String::from));
    tail.extend(fp.iter().map(|f| format!("n:{f}")));
    assert_eq!(args(&cmd)[7..], tail[..]);

    let rr = spec(Strategy::RoundRobin, &[(10, 1), (20, 1)]);
    let fp = fps(&rr);
    let cmd = Prepared::new(&rr, &scripts).acquire(3, &[1]);
    let mut tail = vec!["rr".to_owned(), "1".into(), ",1,".into()];
    tail.extend(fp.iter().cloned());
    tail.extend(["10", "20", "x", "mk", "rr"].map(String::from));
    tail.extend(fp.iter().map(|f| format!("n:{f}")));
    assert_eq!(args(&cmd)[7..], tail[..]);
}

#[test]
fn different_limits_are_compared_by_share() {
    let scripts = Scripts::new();
    let ll = spec(Strategy::LeastLoaded, &[(10, 1), (20, 1)]);
    assert_eq!(args(&Prepared::new(&ll, &scripts).acquire(0, &[]))[7], "ll");
    let same_weight = spec(Strategy::Weighted, &[(10, 2), (20, 2)]);
    assert_eq!(
        args(&Prepared::new(&same_weight, &scripts).acquire(0, &[]))[7],
        "lc"
    );
}

#[test]
fn mark_and_status_name_keys_by_fingerprint() {
    let scripts = Scripts::new();
    let spec = spec(Strategy::RoundRobin, &[(10, 1), (20, 1)]);
    let fp = fps(&spec);
    let prepared = Prepared::new(&spec, &scripts);
    let cmd = prepared
        .mark(
            &scripts.mark,
            1,
            MarkAction::Cooling,
            "rate_limited",
            Duration::from_millis(1500),
        )
        .expect("key 1 exists");
    let want = [
        "EVALSHA",
        scripts.mark.get_hash(),
        "1",
        "keyrelay:{p}:state",
        &fp[1],
        "cooling",
        "rate_limited",
        "1500",
    ];
    assert_eq!(args(&cmd), want);
    assert!(prepared
        .mark(
            &scripts.mark,
            2,
            MarkAction::Quarantined,
            "unauthorized",
            Duration::ZERO
        )
        .is_none());
    let mut want = vec![
        "EVALSHA".to_owned(),
        scripts.status.get_hash().to_owned(),
        "3".into(),
        "keyrelay:{p}:state".into(),
        "keyrelay:{p}:b".into(),
        "keyrelay:{p}:ops".into(),
    ];
    want.extend(fp.iter().cloned());
    assert_eq!(args(prepared.status()), want);
    let act = act_cmd(
        &scripts.act,
        &prepared.keys,
        &fp[0],
        KeyAction::Disable,
        1_700_000_000_123,
    );
    let want = [
        "EVALSHA",
        scripts.act.get_hash(),
        "2",
        "keyrelay:{p}:state",
        "keyrelay:{p}:ops",
        &fp[0],
        "disable",
        "1700000000123",
    ];
    assert_eq!(args(&act), want);
}

#[test]
fn every_script_starts_with_the_common_part() {
    let scripts = Scripts::new();
    let hashes: Vec<&str> = scripts.all().iter().map(|s| s.get_hash()).collect();
    let bodies = [
        include_str!("acquire.lua"),
        include_str!("mark.lua"),
        include_str!("act.lua"),
        include_str!("status.lua"),
    ];
    for (hash, body) in hashes.iter().zip(bodies) {
        assert_eq!(*hash, Script::new(&format!("{COMMON}{body}")).get_hash());
        assert_ne!(*hash, Script::new(body).get_hash());
    }
}

#[test]
fn an_evalsha_becomes_the_same_eval() {
    let scripts = Scripts::new();
    let spec = spec(Strategy::RoundRobin, &[(10, 1), (20, 1)]);
    let prepared = Prepared::new(&spec, &scripts);
    let evalsha = prepared.acquire(3, &[1]);
    let code = scripts.source(&scripts.acquire).unwrap();
    let eval = eval_cmd(&evalsha, code);
    let args = |c: &Cmd| -> Vec<Vec<u8>> {
        c.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    };
    let (before, after) = (args(&evalsha), args(&eval));
    assert_eq!(after[0], b"EVAL");
    assert_eq!(after[1], code.as_bytes());
    assert_eq!(before[0], b"EVALSHA");
    assert_eq!(before[2..], after[2..], "keys and arguments kept");
}
