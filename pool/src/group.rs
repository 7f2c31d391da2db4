//! Key groups: named subsets of a pool's keys (say "batch" and "interactive"). A request that
//! names a group is served by that group's keys only, so its rotation, its retries and its
//! "every key is cooling" answer are all computed over the group. Each group is kept as the
//! keys *outside* it, which an attempt loop skips from its start ([`crate::Tried::within`]):
//! selection itself is unchanged, and a request naming no group pays nothing.

use crate::key::Key;

/// The longest group name.
pub const MAX_GROUP_LEN: usize = 64;

/// Whether `name` may name a group: 1 to 64 ASCII letters, digits, '-' or '_'.
pub fn valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GROUP_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One of a pool's groups, as a request selected it ([`crate::Pool::group`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group(pub(crate) usize);

/// Every group of one pool: its name, and the index of every key not in it. Built once per
/// pool, with the pool.
#[derive(Debug, Default)]
pub(crate) struct Groups(Vec<(String, Vec<usize>)>);

impl Groups {
    pub(crate) fn new(keys: &[Key]) -> Groups {
        let mut names: Vec<&str> = keys.iter().filter_map(|k| k.group.as_deref()).collect();
        names.sort_unstable();
        names.dedup();
        Groups(
            names
                .into_iter()
                .map(|name| {
                    let outside = (0..keys.len())
                        .filter(|&i| keys[i].group.as_deref() != Some(name))
                        .collect();
                    (name.to_owned(), outside)
                })
                .collect(),
        )
    }

    /// The group named `name`, if any key is in it.
    pub(crate) fn find(&self, name: &str) -> Option<Group> {
        self.0.iter().position(|(n, _)| n == name).map(Group)
    }

    /// The keys outside `group`.
    pub(crate) fn outside(&self, group: Group) -> &[usize] {
        self.0.get(group.0).map_or(&[], |(_, o)| o.as_slice())
    }

    #[cfg(test)]
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
