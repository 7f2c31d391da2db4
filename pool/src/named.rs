//! Per-pool state kept by name in a read-mostly map: found under the read lock, created once
//! under the write lock (shared by the memory store and the Redis store's leases).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// The entry for `name`, made with its default the first time it is asked for.
pub(crate) fn entry<T: Default>(map: &RwLock<HashMap<String, Arc<T>>>, name: &str) -> Arc<T> {
    if let Some(found) = map.read().unwrap_or_else(PoisonError::into_inner).get(name) {
        return found.clone();
    }
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(name.to_owned())
        .or_default()
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_name_made_once() {
        let map: RwLock<HashMap<String, Arc<Vec<u8>>>> = RwLock::default();
        let a = entry(&map, "a");
        assert!(Arc::ptr_eq(&a, &entry(&map, "a")));
        assert!(!Arc::ptr_eq(&a, &entry(&map, "b")));
        assert_eq!(map.read().unwrap_or_else(PoisonError::into_inner).len(), 2);
    }
}
