//! Operator actions this instance took, kept so that each reaches Redis however long Redis is
//! away: the latest disable or enable per key (written again on every reconnect, in case Redis
//! came back without its data) and the resets not yet written. act.lua lets the newest action
//! win, so writing one again never undoes a newer action taken elsewhere.

use super::command::PoolKeys;
use crate::store::KeyAction;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// One operator action, as act.lua takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Action {
    pub(super) keys: PoolKeys,
    pub(super) fingerprint: String,
    pub(super) action: KeyAction,
    /// When the operator acted: Unix ms on this instance's clock.
    pub(super) at_ms: u64,
}

impl Action {
    pub(super) fn now(keys: PoolKeys, fingerprint: &str, action: KeyAction) -> Action {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Action {
            keys,
            fingerprint: fingerprint.to_owned(),
            action,
            at_ms,
        }
    }

    fn slot(&self) -> (PoolKeys, String) {
        (self.keys.clone(), self.fingerprint.clone())
    }
}

/// The actions to write (again) when Redis is back. Bounded by the keys acted on: one held
/// disable or enable and one unsent reset per key.
#[derive(Default)]
pub(super) struct Journal(Mutex<Entries>);

#[derive(Default)]
struct Entries {
    /// The latest disable or enable per key: written on every reconnect.
    held: HashMap<(PoolKeys, String), Action>,
    /// Resets that did not reach Redis yet: written once.
    resets: HashMap<(PoolKeys, String), Action>,
    /// Bumped by every action kept, so a writer sees one that came after its snapshot.
    version: u64,
}

impl Journal {
    /// Keep a disable or enable (the newer of it and the one held for its key).
    pub(super) fn hold(&self, action: &Action) {
        if action.action == KeyAction::Reset {
            return;
        }
        let mut e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        e.version += 1;
        let slot = e
            .held
            .entry(action.slot())
            .or_insert_with(|| action.clone());
        if slot.at_ms <= action.at_ms {
            *slot = action.clone();
        }
    }

    /// Queue a reset that did not reach Redis (the newer of it and one queued for its key).
    pub(super) fn queue_reset(&self, action: &Action) {
        let mut e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        e.version += 1;
        let slot = e
            .resets
            .entry(action.slot())
            .or_insert_with(|| action.clone());
        if slot.at_ms <= action.at_ms {
            *slot = action.clone();
        }
    }

    /// Every action to write now, oldest first, and the journal's version.
    pub(super) fn to_write(&self) -> (Vec<Action>, u64) {
        let e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Action> = e.held.values().chain(e.resets.values()).cloned().collect();
        all.sort_by_key(|a| a.at_ms);
        (all, e.version)
    }

    /// Whether an action was kept after `to_write` answered `version`.
    pub(super) fn changed_since(&self, version: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .version
            != version
    }

    /// `action` reached Redis: a reset is not written again.
    pub(super) fn written(&self, action: &Action) {
        if action.action != KeyAction::Reset {
            return;
        }
        let mut e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if e.resets.get(&action.slot()) == Some(action) {
            e.resets.remove(&action.slot());
        }
    }

    /// Resets still waiting for Redis.
    #[cfg(test)]
    pub(super) fn unsent_resets(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .resets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(fp: &str, action: KeyAction, at_ms: u64) -> Action {
        Action {
            keys: PoolKeys::new("p"),
            fingerprint: fp.to_owned(),
            action,
            at_ms,
        }
    }

    #[test]
    fn holds_the_newest_disable_or_enable_per_key_and_unsent_resets_once() {
        let j = Journal::default();
        j.hold(&act("a", KeyAction::Disable, 20));
        j.hold(&act("a", KeyAction::Enable, 10));
        j.hold(&act("b", KeyAction::Enable, 5));
        j.hold(&act("b", KeyAction::Reset, 50));
        j.queue_reset(&act("a", KeyAction::Reset, 30));
        j.queue_reset(&act("a", KeyAction::Reset, 25));
        let (all, version) = j.to_write();
        assert!(!j.changed_since(version));
        let got: Vec<(String, KeyAction, u64)> = all
            .into_iter()
            .map(|a| (a.fingerprint, a.action, a.at_ms))
            .collect();
        assert_eq!(
            got,
            [
                ("b".to_owned(), KeyAction::Enable, 5),
                ("a".to_owned(), KeyAction::Disable, 20),
                ("a".to_owned(), KeyAction::Reset, 30),
            ]
        );
        assert_eq!(j.unsent_resets(), 1);
        // An older reset written does not clear the newer one queued.
        j.written(&act("a", KeyAction::Reset, 25));
        assert_eq!(j.unsent_resets(), 1);
        j.written(&act("a", KeyAction::Reset, 30));
        assert_eq!(j.unsent_resets(), 0);
        // Holds are written on every reconnect.
        j.written(&act("a", KeyAction::Disable, 20));
        assert_eq!(j.to_write().0.len(), 2);
        j.hold(&act("c", KeyAction::Disable, 60));
        assert!(j.changed_since(version));
    }
}
