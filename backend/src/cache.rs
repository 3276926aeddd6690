//! Read-through Redis cache with database-driven invalidation.
//!
//! Owns cache keys, generation counters and single-flight loading. Values are stored with the
//! generation counters read *before* the database load; a hit requires the stored generations to
//! equal the current ones (fetched in the same MGET). The invalidation listener (`invalidate.rs`)
//! bumps generations and deletes keys, so a load racing with a write can never re-insert a stale
//! value. When Redis fails, or while the invalidation listener is disconnected, reads bypass the
//! cache and go to the database.

use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

use crate::error::{ApiResult, AppError};
use crate::metrics::Metrics;

const GLOBAL_GEN: &str = "bss:g:all";

type Flight = Shared<BoxFuture<'static, Result<Option<Arc<String>>, Arc<String>>>>;

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    ttl_seconds: u64,
    metrics: Metrics,
    /// False until the invalidation listener has subscribed and resynchronised.
    live: AtomicBool,
    inflight: Mutex<HashMap<String, Flight>>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    g: String,
    v: serde_json::Value,
}

pub fn entity_key(entity: &str, id: Uuid) -> String {
    format!("bss:c:{entity}:{id}")
}
pub fn entity_gen(entity: &str, id: Uuid) -> String {
    format!("bss:g:{entity}:{id}")
}
pub fn customer_gen(customer: Uuid) -> String {
    format!("bss:g:cust:{customer}")
}
pub fn customer_deps(customer: Uuid) -> String {
    format!("bss:d:cust:{customer}")
}
pub fn customer_list_key(customer: Uuid, entity: &str, suffix: &str) -> String {
    format!("bss:c:cust:{customer}:{entity}:{suffix}")
}

impl Cache {
    pub fn new(conn: ConnectionManager, ttl_seconds: u64, metrics: Metrics) -> Self {
        Cache {
            inner: Arc::new(Inner {
                conn,
                ttl_seconds,
                metrics,
                live: AtomicBool::new(false),
                inflight: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    pub fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::SeqCst);
    }

    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::SeqCst)
    }

    fn count(&self, cache: &str, result: &str) {
        self.inner
            .metrics
            .cache_requests_total
            .with_label_values(&[cache, result])
            .inc();
    }

    /// Returns the cached value of `key`, or loads it with `load` (once per key and process at a
    /// time: concurrent callers share one load) and stores it. `gens` are the generation keys the
    /// value depends on; `deps_set` registers the key for deletion with its customer.
    pub async fn get_or_load<T, F, Fut>(
        &self,
        cache: &'static str,
        key: String,
        gens: Vec<String>,
        deps_set: Option<String>,
        load: F,
    ) -> ApiResult<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ApiResult<Option<T>>> + Send + 'static,
    {
        if !self.is_live() {
            self.count(cache, "bypass");
            return load().await;
        }
        let mut conn = self.inner.conn.clone();
        let mut keys = vec![key.clone(), GLOBAL_GEN.to_string()];
        keys.extend(gens.iter().cloned());
        let got: Result<Vec<Option<String>>, _> = conn.mget(&keys).await;
        let Ok(got) = got else {
            self.count(cache, "error");
            return load().await;
        };
        let token = got
            .iter()
            .skip(1)
            .map(|g| g.as_deref().unwrap_or("0"))
            .collect::<Vec<_>>()
            .join(".");
        if let Some(Some(raw)) = got.first() {
            if let Ok(stored) = serde_json::from_str::<Stored>(raw) {
                if stored.g == token {
                    if let Ok(v) = serde_json::from_value::<T>(stored.v) {
                        self.count(cache, "hit");
                        return Ok(Some(v));
                    }
                }
            }
        }
        self.count(cache, "miss");
        // Single flight: the first caller loads, the others await the same future.
        let flight_key = format!("{key}#{token}");
        let (flight, leader) = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .map_err(|_| AppError::internal("cache single-flight map poisoned"))?;
            if let Some(f) = map.get(&flight_key) {
                (f.clone(), false)
            } else {
                let this = self.clone();
                let key2 = key.clone();
                let token2 = token.clone();
                let loads = self
                    .inner
                    .metrics
                    .cache_loads_total
                    .with_label_values(&[cache]);
                let fut = async move {
                    loads.inc();
                    let loaded = load().await.map_err(|e| Arc::new(e.to_string()))?;
                    let Some(v) = loaded else { return Ok(None) };
                    let json = serde_json::to_value(&v).map_err(|e| Arc::new(e.to_string()))?;
                    let text = serde_json::to_string(&Stored { g: token2, v: json })
                        .map_err(|e| Arc::new(e.to_string()))?;
                    this.store(&key2, &text, deps_set).await;
                    Ok(Some(Arc::new(text)))
                }
                .boxed()
                .shared();
                map.insert(flight_key.clone(), fut.clone());
                (fut, true)
            }
        };
        let result = flight.await;
        if leader {
            if let Ok(mut map) = self.inner.inflight.lock() {
                map.remove(&flight_key);
            }
        }
        match result {
            Ok(None) => Ok(None),
            Ok(Some(text)) => {
                let stored: Stored = serde_json::from_str(&text).map_err(AppError::internal)?;
                Ok(Some(
                    serde_json::from_value(stored.v).map_err(AppError::internal)?,
                ))
            }
            Err(e) => Err(AppError::Internal(e.to_string())),
        }
    }

    async fn store(&self, key: &str, text: &str, deps_set: Option<String>) {
        let mut conn = self.inner.conn.clone();
        let mut pipe = redis::pipe();
        pipe.set_ex(key, text, self.inner.ttl_seconds).ignore();
        if let Some(set) = &deps_set {
            pipe.sadd(set, key).ignore();
            pipe.expire(set, (self.inner.ttl_seconds * 2) as i64)
                .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::debug!(error = %e, "failed to store cache entry");
        }
    }

    /// Invalidates one entity row and everything that depends on its customer.
    pub async fn invalidate(
        &self,
        entity: &str,
        id: Uuid,
        customer: Option<Uuid>,
    ) -> redis::RedisResult<()> {
        let mut conn = self.inner.conn.clone();
        let gen_ttl = (self.inner.ttl_seconds * 4).max(60) as i64;
        let mut pipe = redis::pipe();
        let g = entity_gen(entity, id);
        pipe.incr(&g, 1).ignore().expire(&g, gen_ttl).ignore();
        pipe.del(entity_key(entity, id)).ignore();
        if let Some(c) = customer {
            let cg = customer_gen(c);
            pipe.incr(&cg, 1).ignore().expire(&cg, gen_ttl).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        if let Some(c) = customer {
            let set = customer_deps(c);
            let members: Vec<String> = conn.smembers(&set).await?;
            let mut pipe = redis::pipe();
            for m in &members {
                pipe.del(m).ignore();
            }
            pipe.del(&set).ignore();
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    /// After a (re)connect of the listener: notifications may have been missed, so every cached
    /// value is invalidated (global generation bump) and the value keys are deleted.
    pub async fn resync(&self) -> redis::RedisResult<u64> {
        let mut conn = self.inner.conn.clone();
        let _: i64 = conn.incr(GLOBAL_GEN, 1).await?;
        let mut deleted = 0u64;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("bss:c:*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                deleted += keys.len() as u64;
                let _: () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(deleted)
    }

    pub async fn ping(&self) -> bool {
        let mut conn = self.inner.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }
}
