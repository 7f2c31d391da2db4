//! Choosing one key among the eligible ones: least-loaded, round-robin or weighted.

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

/// Pick one of `candidates` (sorted by index, non-empty for a pick) and return its key index.
///
/// `cursor` is the pool's round-robin position: the first key index to consider. Ties under
/// the other strategies are broken by it too, so equal keys take turns instead of the first
/// one always winning.
pub fn choose(strategy: Strategy, candidates: &[Candidate], cursor: usize) -> Option<usize> {
    let first = candidates.first()?;
    // Rotate so the scan starts at the cursor; the first strict minimum then wins ties.
    let start = candidates
        .iter()
        .position(|c| c.index >= cursor)
        .unwrap_or(0);
    let rotated = candidates[start..].iter().chain(&candidates[..start]);
    let chosen = match strategy {
        Strategy::RoundRobin => candidates.get(start).unwrap_or(first),
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
