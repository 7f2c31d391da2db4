//! Tests of key groups: how each is kept, and a grouped attempt loop over a real pool.

use super::*;
use crate::key::Secret;

fn key(name: &str, group: Option<&str>) -> Key {
    Key::new(name, Secret::new(format!("s-{name}")), 10, 1).with_group(group.map(Into::into))
}

#[test]
fn each_group_is_kept_as_the_keys_outside_it() {
    let keys = [
        key("a", Some("batch")),
        key("b", None),
        key("c", Some("live")),
        key("d", Some("batch")),
    ];
    let groups = Groups::new(&keys);
    assert_eq!(groups.names().collect::<Vec<_>>(), ["batch", "live"]);
    let batch = groups.find("batch").unwrap();
    assert_eq!(groups.outside(batch), [1, 2]);
    assert_eq!(groups.outside(groups.find("live").unwrap()), [0, 1, 3]);
    assert_eq!(groups.find("other"), None);
    assert!(Groups::new(&keys[1..2]).names().next().is_none());
}

fn pool(keys: Vec<Key>) -> crate::Pool {
    let auth = crate::KeyAuth {
        header: http::header::AUTHORIZATION,
        bearer: true,
    };
    let spec = crate::PoolSpec::new("p", keys, crate::Strategy::RoundRobin);
    let store = std::sync::Arc::new(crate::MemoryStore::new());
    let observed = crate::Observed::default();
    crate::Pool::new(spec, crate::PoolSettings::default(), store, auth, &observed).unwrap()
}

async fn name<'a>(p: &'a crate::Pool, tried: &mut crate::Tried<'a>) -> Option<String> {
    match p.acquire(tried).await {
        crate::Acquired::Lease(l) => Some(l.key().name.clone()),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_grouped_loop_rotates_over_its_group_and_waits_for_it_alone() {
    let p = pool(vec![
        key("a", Some("batch")),
        key("b", None),
        key("c", Some("live")),
        key("d", Some("batch")),
    ]);
    let batch = p.group("batch").unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let mut tried = crate::Tried::new("/v1/chat", 3).within(&p, batch);
        seen.push(name(&p, &mut tried).await.unwrap());
    }
    assert_eq!(seen, ["a", "d", "a", "d", "a", "d"]);
    // Both tried: nothing left for this request, though b and c are ready.
    let mut tried = crate::Tried::new("/v1/chat", 3).within(&p, batch);
    name(&p, &mut tried).await.unwrap();
    name(&p, &mut tried).await.unwrap();
    assert!(matches!(
        p.acquire(&mut tried).await,
        crate::Acquired::Exhausted
    ));
    // Both cooling: the loop is told to wait, never given b or c.
    let mut h = http::HeaderMap::new();
    h.insert("retry-after", http::HeaderValue::from_static("30"));
    for _ in 0..2 {
        let mut tried = crate::Tried::new("/v1/chat", 3).within(&p, batch);
        if let crate::Acquired::Lease(l) = p.acquire(&mut tried).await {
            let answer = crate::Answer::Head {
                status: http::StatusCode::TOO_MANY_REQUESTS,
                headers: &h,
                body: None,
            };
            l.report(answer).await;
        }
    }
    let mut tried = crate::Tried::new("/v1/chat", 3).within(&p, batch);
    assert!(matches!(
        p.acquire(&mut tried).await,
        crate::Acquired::Wait(d) if d <= std::time::Duration::from_secs(30)
    ));
    // A pinned key outside the group is still its resource's only key.
    let mut pinned = crate::Tried::pinned("/v1/files/f", 3, 1).within(&p, batch);
    assert_eq!(name(&p, &mut pinned).await.as_deref(), Some("b"));
    // Without a group, every key still serves.
    let mut tried = crate::Tried::new("/v1/chat", 3);
    assert!(matches!(
        name(&p, &mut tried).await.as_deref(),
        Some("b" | "c")
    ));
}

#[test]
fn group_names_are_short_plain_words() {
    assert!(valid_group("batch"));
    assert!(valid_group("Batch-2_x"));
    assert!(valid_group(&"g".repeat(64)));
    assert!(!valid_group(&"g".repeat(65)));
    assert!(!valid_group(""));
    assert!(!valid_group("a b"));
    assert!(!valid_group("a.b"));
    assert!(!valid_group("é"));
}
