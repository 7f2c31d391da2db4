//! Choosing one key among the eligible ones: least-loaded, round-robin or weighted.

use crate::key::Key;

/// How a pool spreads requests over its ready keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Lowest share of its own rpm limit used in the current window.
    LeastLoaded,
    /// Each key in turn, skipping keys that are not ready.
    RoundRobin,
    /// Traffic in proportion to each key's weight.
    Weighted,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "least-loaded" => Some(Strategy::LeastLoaded),
            "round-robin" => Some(Strategy::RoundRobin),
            "weighted" => Some(Strategy::Weighted),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::LeastLoaded => "least-loaded",
            Strategy::RoundRobin => "round-robin",
            Strategy::Weighted => "weighted",
        }
    }
}

/// An eligible key as the selector sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub index: usize,
    /// Requests counted in the current window.
    pub used: u64,
    pub rpm: u64,
    pub weight: u64,
}

/// Where the scan for a pick starts, by the rules the Redis store's script follows, so both
/// stores pick alike:
///
/// | strategy                          | scan starts at      | so a tie goes to            |
/// |-----------------------------------|---------------------|-----------------------------|
/// | round-robin                       | the pool's cursor   | (first ready key wins)      |
/// | least-loaded, every rpm equal     | key 0               | the lowest index            |
/// | weighted, every weight equal      | key 0               | the lowest index            |
/// | least-loaded or weighted, mixed   | `call % n`          | the first from there        |
///
/// `cursor` is the chosen round-robin key + 1; `call` counts the store's acquire calls; `n` is
/// the pool's key count. With equal limits (or weights) the least share is the least count,
/// and the count a pick adds breaks the next tie, so equal keys still take turns.
pub(crate) fn scan_start(
    strategy: Strategy,
    uniform: bool,
    cursor: usize,
    call: u64,
    n: usize,
) -> usize {
    let n = n.max(1);
    match strategy {
        Strategy::RoundRobin => cursor % n,
        _ if uniform => 0,
        // The remainder is below n, a usize.
        _ => (call % n as u64) as usize,
    }
}

/// Whether every key has the same limit (least-loaded) or weight (weighted): the case where
/// the Redis script compares plain counts and a tie goes to the lowest index.
pub(crate) fn uniform(strategy: Strategy, keys: &[Key]) -> bool {
    let same = |f: fn(&Key) -> u32| keys.windows(2).all(|pair| f(&pair[0]) == f(&pair[1]));
    match strategy {
        Strategy::RoundRobin => false,
        Strategy::LeastLoaded => same(|k| k.rpm),
        Strategy::Weighted => same(|k| k.weight),
    }
}

/// Pick one of `candidates` (sorted by index, non-empty for a pick) and return its key index.
///
/// The scan starts at the first candidate whose index is `start` or above (see
/// [`scan_start`]) and wraps around: round-robin takes the first candidate, least-loaded and
/// weighted the first strict minimum of their share.
pub fn choose(strategy: Strategy, candidates: &[Candidate], start: usize) -> Option<usize> {
    let first = candidates.first()?;
    let from = candidates
        .iter()
        .position(|c| c.index >= start)
        .unwrap_or(0);
    let rotated = candidates[from..].iter().chain(&candidates[..from]);
    let chosen = match strategy {
        Strategy::RoundRobin => candidates.get(from).unwrap_or(first),
        Strategy::LeastLoaded => min_by_ratio(rotated, |c| (c.used, c.rpm.max(1))),
        Strategy::Weighted => min_by_ratio(rotated, |c| (c.used, c.weight.max(1))),
    };
    Some(chosen.index)
}

/// The candidate with the smallest `num / den`, compared exactly in integers.
fn min_by_ratio<'a>(
    mut it: impl Iterator<Item = &'a Candidate>,
    ratio: impl Fn(&Candidate) -> (u64, u64),
) -> &'a Candidate {
    #[allow(clippy::expect_used, reason = "callers pass a non-empty list")]
    let mut best = it.next().expect("non-empty candidates");
    for c in it {
        let (bn, bd) = ratio(best);
        let (cn, cd) = ratio(c);
        if u128::from(cn) * u128::from(bd) < u128::from(bn) * u128::from(cd) {
            best = c;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: usize, used: u64, rpm: u64, weight: u64) -> Candidate {
        Candidate {
            index,
            used,
            rpm,
            weight,
        }
    }

    #[test]
    fn least_loaded_uses_share_of_own_limit() {
        let c = [cand(0, 50, 100, 1), cand(1, 60, 1000, 1), cand(2, 1, 2, 1)];
        assert_eq!(choose(Strategy::LeastLoaded, &c, 0), Some(1));
    }

    #[test]
    fn ties_rotate_with_cursor() {
        let c = [cand(0, 0, 10, 1), cand(1, 0, 10, 1), cand(2, 0, 10, 1)];
        assert_eq!(choose(Strategy::LeastLoaded, &c, 0), Some(0));
        assert_eq!(choose(Strategy::LeastLoaded, &c, 1), Some(1));
        assert_eq!(choose(Strategy::LeastLoaded, &c, 2), Some(2));
        assert_eq!(choose(Strategy::LeastLoaded, &c, 3), Some(0));
    }

    #[test]
    fn scan_starts_where_the_redis_script_starts() {
        let rr = Strategy::RoundRobin;
        assert_eq!(
            scan_start(rr, true, 4, 9, 3),
            1,
            "the cursor wraps modulo n"
        );
        assert_eq!(scan_start(rr, false, 2, 9, 3), 2);
        let ll = Strategy::LeastLoaded;
        assert_eq!(
            scan_start(ll, true, 2, 5, 3),
            0,
            "equal limits: lowest index"
        );
        assert_eq!(scan_start(ll, false, 2, 5, 3), 2, "mixed limits: call % n");
        assert_eq!(scan_start(Strategy::Weighted, false, 0, 7, 3), 1);
        assert_eq!(scan_start(Strategy::Weighted, true, 0, 7, 3), 0);
        assert_eq!(scan_start(ll, false, 0, 7, 0), 0, "no keys: no panic");
    }

    #[test]
    fn round_robin_skips_missing_keys() {
        let c = [cand(0, 9, 10, 1), cand(2, 0, 10, 1)];
        assert_eq!(choose(Strategy::RoundRobin, &c, 1), Some(2));
        assert_eq!(choose(Strategy::RoundRobin, &c, 3), Some(0));
    }

    #[test]
    fn weighted_follows_weights() {
        let c = [cand(0, 10, 100, 1), cand(1, 15, 100, 2)];
        assert_eq!(choose(Strategy::Weighted, &c, 0), Some(1));
        let c = [cand(0, 10, 100, 1), cand(1, 21, 100, 2)];
        assert_eq!(choose(Strategy::Weighted, &c, 0), Some(0));
        assert_eq!(choose(Strategy::Weighted, &[], 0), None);
    }
}
