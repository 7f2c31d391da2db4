//! Leased request limits: with `[store] lease_time` above zero, an instance takes a few of a
//! limited client's requests from Redis in one script call (counted at once in the client's
//! and its tenant's request counters) and spends them here, so most of its requests make no
//! Redis call for their limits, as the pools' leased shares do for keys.
//!
//! A lease is spent only within `lease_time` of its call and within the minute window it was
//! counted in; what it did not use is given back (taken off that window's counters) on the
//! client's next call. One call is made at a time per client: requests that find no lease
//! wait for the call in flight and are served from it. What one call may take: twice what
//! the leases since the last call served when they ran out, what they served when some went
//! unused (at least one more than the requests waiting for it), at most
//! `lease_max` and 1% of the smallest request limit among the client's (at least one), and
//! never past a limit (the script grants what is left). So a limit is never exceeded: every
//! request is counted in Redis before it is spent; while leases are held, their unspent
//! requests count early, at most 1% of a limit per instance. Token limits are read when a
//! lease is taken. A replaced config's leases are not given back: what they held (at most
//! `lease_max` a client) stays counted until it leaves the minute.

use tokio::time::Instant;

/// One client's lease on this instance.
#[derive(Debug, Default)]
pub(super) struct Lease {
    /// Requests counted in Redis and not yet spent, in `window`, until `until`.
    left: u32,
    window: u64,
    until: Option<Instant>,
    /// Requests spent from leases since the last call, and whether a lease ran out.
    served: u32,
    ran_out: bool,
    /// An ended lease's unspent requests, to give back on the next call: (window, count).
    back: Option<(u64, u32)>,
}

impl Lease {
    /// Spend one leased request, if one is here for `window` and its time has not passed.
    pub(super) fn spend(&mut self, now: Instant, window: u64) -> bool {
        if self.left > 0 && self.window == window && self.until.is_some_and(|u| now < u) {
            self.left -= 1;
            self.served += 1;
            self.ran_out |= self.left == 0;
            return true;
        }
        if self.left > 0 {
            // Ended unspent: given back on the next call (an older one left over is dropped:
            // its window is past the one a call can still take it off).
            self.back = Some((self.window, self.left));
            self.left = 0;
        }
        false
    }

    /// How many requests the next call should ask for (see the module; at least one more than
    /// the requests `waiting` for it), at most `cap`, and what it gives back; the counts for
    /// sizing start again.
    pub(super) fn ask(&mut self, cap: u32, waiting: u32) -> (u32, Option<(u64, u32)>) {
        let want = if self.ran_out {
            self.served.saturating_mul(2)
        } else {
            self.served
        };
        self.served = 0;
        self.ran_out = false;
        let want = want.max(waiting.saturating_add(1));
        (want.clamp(1, cap.max(1)), self.back.take())
    }

    /// A call counted `granted` requests in `window`: one is spent by the request that made
    /// it, the rest are held until `until`.
    pub(super) fn took(&mut self, granted: u32, window: u64, until: Instant) {
        // The caller's request is served from it too (so a lease of one grows the next).
        self.served += 1;
        let rest = granted.saturating_sub(1);
        if rest == 0 {
            self.ran_out = true;
            return;
        }
        if self.left > 0 && self.window == window {
            // Another request's call landed first: both leases are held as one.
            self.left += rest;
            self.until = self.until.max(Some(until));
        } else {
            if self.left > 0 {
                self.back = Some((self.window, self.left));
            }
            self.left = rest;
            self.window = window;
            self.until = Some(until);
        }
    }

    /// A call failed: what it was to give back is kept for the next one.
    pub(super) fn keep_back(&mut self, back: Option<(u64, u32)>) {
        if self.back.is_none() {
            self.back = back;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_is_spent_in_its_time_and_window_and_its_rest_given_back_once() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        assert!(!l.spend(t0, 7), "nothing leased yet");
        assert_eq!(l.ask(64, 0), (1, None), "the first call asks for one");
        l.took(1, 7, t0 + Duration::from_millis(250));
        assert!(!l.spend(t0, 7), "a lease of one was the caller's");
        // It grows while leases run out: twice what they served.
        assert_eq!(l.ask(64, 0).0, 2);
        l.took(4, 7, t0 + Duration::from_millis(250));
        for _ in 0..3 {
            assert!(l.spend(t0, 7));
        }
        assert!(!l.spend(t0, 7));
        assert_eq!(l.ask(64, 0).0, 8);
        assert_eq!(l.ask(64, 0).0, 1, "served nothing since: one");
        // Held past its time: the rest goes back on the next call, once.
        l.took(5, 7, t0 + Duration::from_millis(250));
        assert!(l.spend(t0 + Duration::from_millis(100), 7));
        assert!(!l.spend(t0 + Duration::from_millis(300), 7));
        assert_eq!(l.ask(64, 0), (2, Some((7, 3))), "served two, unspent three");
        assert_eq!(l.ask(64, 0).1, None);
        // Not spent in another window, nor past the cap.
        l.took(3, 7, t0 + Duration::from_secs(1));
        assert!(!l.spend(t0, 8));
        assert_eq!(l.ask(2, 0), (1, Some((7, 2))));
        l.served = 100;
        l.ran_out = true;
        assert_eq!(l.ask(2, 0).0, 2, "capped");
        assert_eq!(l.ask(64, 9).0, 10, "the waiting requests and the caller's");
    }

    #[test]
    fn leases_that_land_together_are_held_as_one() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_millis(250);
        let mut l = Lease::default();
        l.took(3, 7, until);
        l.took(4, 7, until);
        let spent = (0..10).take_while(|_| l.spend(t0, 7)).count();
        assert_eq!(spent, 5, "2 + 3 held, the callers' own not");
        // A failed call keeps what it was to give back.
        l.keep_back(Some((7, 2)));
        assert_eq!(l.ask(64, 0).1, Some((7, 2)));
    }
}
