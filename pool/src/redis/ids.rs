//! Resource ids mapped to the key that created them (`[affinity] mode = "map"`): the string
//! `keyrelay:{<pool>}:id:<provider id>` holds the key's fingerprint (never the key), with a
//! TTL. Remembering an answer's ids is one pipeline of `SET .. EX`; recalling a request's ids
//! one `MGET` (the pool's hash tag keeps them in one Cluster slot). Every id is also kept in
//! this process's map, which answers while Redis is away.

use super::{RedisStore, StoreError};
use deadpool_redis::redis;
use std::time::Duration;

/// The Redis key of `id` in `pool`.
fn id_key(pool: &str, id: &str) -> String {
    format!("keyrelay:{{{pool}}}:id:{id}")
}

impl RedisStore {
    pub(super) async fn remember_shared(
        &self,
        pool: &str,
        ids: &[String],
        fingerprint: &str,
        ttl: Duration,
    ) {
        self.local.remember_now(pool, ids, fingerprint, ttl);
        let Some(mut conn) = self.live(pool).filter(|_| !ids.is_empty()) else {
            return;
        };
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("SET")
                .arg(id_key(pool, id))
                .arg(fingerprint)
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .ignore();
        }
        let limit = self.settings.command_timeout;
        match tokio::time::timeout(limit, conn.query_pipe::<()>(&pipe)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(pool, &StoreError::Command(e)),
            Err(_) => self.fail(pool, &StoreError::Timeout(limit)),
        }
    }

    pub(super) async fn recall_shared(&self, pool: &str, ids: &[String]) -> Vec<Option<String>> {
        let Some(mut conn) = self.live(pool).filter(|_| !ids.is_empty()) else {
            return self.local.recall_now(pool, ids);
        };
        let mut cmd = redis::cmd("MGET");
        for id in ids {
            cmd.arg(id_key(pool, id));
        }
        let limit = self.settings.command_timeout;
        match tokio::time::timeout(limit, conn.query::<Vec<Option<String>>>(&cmd)).await {
            Ok(Ok(found)) if found.len() == ids.len() => found,
            Ok(Ok(_)) => self.local.recall_now(pool, ids),
            Ok(Err(e)) => {
                self.fail(pool, &StoreError::Command(e));
                self.local.recall_now(pool, ids)
            }
            Err(_) => {
                self.fail(pool, &StoreError::Timeout(limit));
                self.local.recall_now(pool, ids)
            }
        }
    }
}
