//! Read-through Redis cache with generation-checked invalidation.
//!
//! Owns cache keys, generation counters, single-flight loading and the admission policy (which
//! caches are worth using). Values are stored with the generation counters read *before* the
//! database load; a hit requires the stored generations to equal the current ones (fetched in
//! the same MGET). Invalidation bumps generations and deletes keys, so a load racing with a
//! write can never re-insert a stale value: the API invalidates its own writes right after
//! commit (`invalidate_many`), the listener (`invalidate.rs`) those of other database clients.
//! When Redis fails, or while the listener is disconnected, reads bypass the cache.
//!
//! Recent writes: besides Redis, the process remembers the entities it wrote itself last (their
//! JSON and the id of the writing transaction, the row's `xmin`), so that a status change can
//! decide without reading the row first. Never trusted: the status change's statement is
//! guarded by the row's version and `xmin` (any later update of the row, by anyone, changes
//! it), and its handler reads the row whenever the guard or a check does not hold. Forgotten
//! with the Redis entries (API writes, the listener's notifications, which also cover changes
//! of order or invoice items by other clients) and all at once when the cache resynchronises;
//! not used while the listener is down.
//!
//! Single flight: the first miss of a key spawns the load as its own task and later callers
//! await that task. A caller that gives up (client timeout, dropped request) therefore never
//! cancels a load half-way (which used to strand a pool permit and the flight forever); the
//! task finishes, stores the value and removes itself from the map.
//!
//! Policy: a cache that is invalidated faster than it is read costs a Redis round trip and a
//! store per read and saves little. Each cache kind measures its hit ratio over windows of
//! lookups; below `MIN_HIT_RATIO` the kind is switched off except for a fixed sample of keys
//! (one in `SAMPLE_EVERY` by hash) that keeps using it, so the ratio keeps being measured
//! without bias, and the kind switches back on when the sample shows it pays again.

use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

use crate::error::{ApiResult, AppError};
use crate::metrics::Metrics;

const GLOBAL_GEN: &str = "bss:g:all";
/// Hit ratio below which a cache kind costs more (MGET + SET on every miss) than it saves.
pub const MIN_HIT_RATIO: f64 = 0.35;
/// Lookups per measurement window of a cache kind.
const WINDOW: u64 = 2000;
/// While a kind is off, one key in this many (by hash) still uses the cache as a sample.
const SAMPLE_EVERY: u64 = 8;
/// Entities remembered as recently written, per generation (see `RecentWrites`).
const RECENT_PER_GENERATION: usize = 8_192;

type Flight = Shared<BoxFuture<'static, Result<Option<Arc<String>>, Arc<AppError>>>>;

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
    /// Set when an invalidation could not be applied: the listener resynchronises.
    resync_needed: AtomicBool,
    inflight: Mutex<HashMap<String, Flight>>,
    policy: Mutex<HashMap<&'static str, Arc<KindPolicy>>>,
    recent: Mutex<RecentWrites>,
}

/// An entity as this process last wrote it: its JSON and the writing transaction's id.
struct Recent {
    xmin: String,
    value: serde_json::Value,
}

type RecentKey = (&'static str, Uuid);

/// The recent writes in two generations: new entries go to `current`; when it is full it
/// becomes `previous` (the older one is dropped). Bounded at twice `RECENT_PER_GENERATION`,
/// and what is dropped is what was written longest ago.
#[derive(Default)]
struct RecentWrites {
    current: HashMap<RecentKey, Recent>,
    previous: HashMap<RecentKey, Recent>,
    /// Counts the forgets of other clients' changes (the listener's, a resync). A write
    /// remembers its entities only if none happened while it ran: a notification handled
    /// between its statement and its `remember` (say, of order items changed by psql, which
    /// leave the order's `xmin` alone) would otherwise be undone by the remember.
    epoch: u64,
}

impl RecentWrites {
    fn get(&self, k: &RecentKey) -> Option<&Recent> {
        self.current.get(k).or_else(|| self.previous.get(k))
    }
    fn insert(&mut self, k: RecentKey, r: Recent) {
        if self.current.len() >= RECENT_PER_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&k);
        self.current.insert(k, r);
    }
    fn remove(&mut self, k: &RecentKey) {
        self.current.remove(k);
        self.previous.remove(k);
    }
    fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }
    /// Inserts unless another client's change was forgotten since `epoch`.
    fn insert_since(&mut self, epoch: u64, k: RecentKey, r: Recent) {
        if self.epoch == epoch {
            self.insert(k, r);
        }
    }
    /// `other_client`: changes notified by the database (not this process's own writes).
    fn forget(&mut self, keys: impl IntoIterator<Item = RecentKey>, other_client: bool) {
        if other_client {
            self.epoch = self.epoch.wrapping_add(1);
        }
        for k in keys {
            self.remove(&k);
        }
    }
    fn forget_all(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.clear();
    }
}

/// Hit-ratio bookkeeping of one cache kind.
#[derive(Default)]
struct KindPolicy {
    hits: AtomicU64,
    lookups: AtomicU64,
    off: AtomicBool,
}

impl KindPolicy {
    /// Records one lookup; at the end of a window decides whether the kind stays on.
    fn record(&self, hit: bool) -> Option<bool> {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        let n = self.lookups.fetch_add(1, Ordering::Relaxed) + 1;
        if n < WINDOW {
            return None;
        }
        let hits = self.hits.swap(0, Ordering::Relaxed);
        self.lookups.store(0, Ordering::Relaxed);
        let off = decide_off(hits, n);
        self.off.store(off, Ordering::Relaxed);
        Some(off)
    }
}

/// The policy decision, pure: a window with a hit ratio below `MIN_HIT_RATIO` turns a kind off.
pub fn decide_off(hits: u64, lookups: u64) -> bool {
    lookups > 0 && (hits as f64) / (lookups as f64) < MIN_HIT_RATIO
}

/// Whether `key` belongs to the sample that keeps using a switched-off cache kind.
pub fn in_sample(key: &str) -> bool {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() % SAMPLE_EVERY == 0
}

/// One committed change the cache must forget: an entity row and, when it has one, its
/// customer (whose cached lists depend on it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub entity: &'static str,
    pub id: Uuid,
    pub customer: Option<Uuid>,
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
pub fn customer_list_key(customer: Uuid, entity: &str, suffix: &str) -> String {
    format!("bss:c:cust:{customer}:{entity}:{suffix}")
}

/// What a read should do with the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Look up, and fill on a miss.
    Use,
    /// The kind does not pay for itself (or the cache is down): go to the database.
    Skip,
}

impl Cache {
    pub fn new(conn: ConnectionManager, ttl_seconds: u64, metrics: Metrics) -> Self {
        Cache {
            inner: Arc::new(Inner {
                conn,
                ttl_seconds,
                metrics,
                live: AtomicBool::new(false),
                resync_needed: AtomicBool::new(false),
                inflight: Mutex::new(HashMap::new()),
                policy: Mutex::new(HashMap::new()),
                recent: Mutex::new(RecentWrites::default()),
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

    /// Asks the listener to resynchronise (an invalidation was lost); until it has, reads
    /// bypass the cache.
    pub fn request_resync(&self) {
        self.inner.resync_needed.store(true, Ordering::SeqCst);
        self.set_live(false);
        self.forget_all_recent();
    }

    /// The entity `id` as this process last wrote it, with the `xmin` of that write, if it is
    /// remembered and the invalidation listener is live (see the module header).
    pub fn recent(&self, entity: &'static str, id: Uuid) -> Option<(String, serde_json::Value)> {
        if !self.is_live() {
            return None;
        }
        let map = self.inner.recent.lock().ok()?;
        map.get(&(entity, id))
            .map(|r| (r.xmin.clone(), r.value.clone()))
    }

    /// Where the forgets of other clients' changes stand; taken before a write's statement
    /// and handed to `remember` after it.
    pub fn recent_epoch(&self) -> u64 {
        self.inner
            .recent
            .lock()
            .map(|m| m.epoch)
            .unwrap_or(u64::MAX)
    }

    /// Remembers an entity this process has just written (committed) in transaction `xmin`,
    /// unless another client's change was forgotten since `epoch` (see `RecentWrites::epoch`).
    pub fn remember(
        &self,
        epoch: u64,
        entity: &'static str,
        id: Uuid,
        xmin: String,
        value: serde_json::Value,
    ) {
        if let Ok(mut map) = self.inner.recent.lock() {
            map.insert_since(epoch, (entity, id), Recent { xmin, value });
        }
    }

    /// `other_client`: a change notified by the database (not this process's own write).
    fn forget_recent(&self, changes: &[Change], other_client: bool) {
        if let Ok(mut map) = self.inner.recent.lock() {
            map.forget(changes.iter().map(|c| (c.entity, c.id)), other_client);
        }
    }

    fn forget_all_recent(&self) {
        if let Ok(mut map) = self.inner.recent.lock() {
            map.forget_all();
        }
    }

    /// Takes the pending resync request, if any.
    pub fn take_resync_request(&self) -> bool {
        self.inner.resync_needed.swap(false, Ordering::SeqCst)
    }

    /// Number of loads in flight (single-flight map size), for tests and diagnostics.
    pub fn flights(&self) -> usize {
        self.inner.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Counts a lookup result (`hit`, `miss`, `bypass`, `error`) of a cache kind.
    pub fn note(&self, cache: &str, result: &str) {
        self.count(cache, result)
    }

    fn count(&self, cache: &str, result: &str) {
        self.inner
            .metrics
            .cache_requests_total
            .with_label_values(&[cache, result])
            .inc();
    }

    fn policy(&self, cache: &'static str) -> Option<Arc<KindPolicy>> {
        let mut map = self.inner.policy.lock().ok()?;
        Some(map.entry(cache).or_default().clone())
    }

    /// Whether a read of `key` (of kind `cache`) should use the cache right now.
    pub fn admission(&self, cache: &'static str, key: &str) -> Admission {
        if !self.is_live() {
            return Admission::Skip;
        }
        match self.policy(cache) {
            Some(p) if p.off.load(Ordering::Relaxed) && !in_sample(key) => Admission::Skip,
            _ => Admission::Use,
        }
    }

    fn record(&self, cache: &'static str, hit: bool) {
        if let Some(decided) = self.policy(cache).and_then(|p| p.record(hit)) {
            self.inner
                .metrics
                .cache_enabled
                .with_label_values(&[cache])
                .set(i64::from(!decided));
        }
    }

    /// Returns the cached value of `key`, or loads it with `load` (once per key and process at a
    /// time: concurrent callers share one load) and stores it. `gens` are the generation keys the
    /// value depends on. Reads of a kind the policy has switched off go straight to `load`.
    pub async fn get_or_load<T, F, Fut>(
        &self,
        cache: &'static str,
        key: String,
        gens: Vec<String>,
        load: F,
    ) -> ApiResult<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ApiResult<Option<T>>> + Send + 'static,
    {
        if self.admission(cache, &key) == Admission::Skip {
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
                        self.record(cache, true);
                        return Ok(Some(v));
                    }
                }
            }
        }
        self.count(cache, "miss");
        self.record(cache, false);
        // Single flight: the first caller spawns the load, the others await the same task.
        let flight_key = format!("{key}#{token}");
        let flight = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .map_err(|_| AppError::internal("cache single-flight map poisoned"))?;
            match map.get(&flight_key) {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    let loads = self
                        .inner
                        .metrics
                        .cache_loads_total
                        .with_label_values(&[cache]);
                    let (key2, token2, fk) = (key.clone(), token.clone(), flight_key.clone());
                    let task = tokio::spawn(async move {
                        loads.inc();
                        let out = async {
                            let loaded = load().await.map_err(Arc::new)?;
                            let Some(v) = loaded else { return Ok(None) };
                            let json = serde_json::to_value(&v)
                                .map_err(|e| Arc::new(AppError::internal(e)))?;
                            let text = serde_json::to_string(&Stored { g: token2, v: json })
                                .map_err(|e| Arc::new(AppError::internal(e)))?;
                            this.store(&key2, &text).await;
                            Ok(Some(Arc::new(text)))
                        }
                        .await;
                        if let Ok(mut map) = this.inner.inflight.lock() {
                            map.remove(&fk);
                        }
                        out
                    });
                    let fut: Flight = async move {
                        task.await.map_err(|e| {
                            Arc::new(AppError::internal(format!("cache load task failed: {e}")))
                        })?
                    }
                    .boxed()
                    .shared();
                    map.insert(flight_key.clone(), fut.clone());
                    fut
                }
            }
        };
        match flight.await {
            Ok(None) => Ok(None),
            Ok(Some(text)) => {
                let stored: Stored = serde_json::from_str(&text).map_err(AppError::internal)?;
                Ok(Some(
                    serde_json::from_value(stored.v).map_err(AppError::internal)?,
                ))
            }
            Err(e) => Err(AppError::shared(&e)),
        }
    }

    async fn store(&self, key: &str, text: &str) {
        let mut conn = self.inner.conn.clone();
        if let Err(e) = conn
            .set_ex::<_, _, ()>(key, text, self.inner.ttl_seconds)
            .await
        {
            tracing::debug!(error = %e, "failed to store cache entry");
        }
    }

    /// Invalidates committed changes in one pipeline (one Redis round trip): bumps the
    /// generation of every entity and customer involved and deletes the entity values. A
    /// customer's cached lists carry its generation in their token, so bumping it is enough;
    /// their values expire by TTL (and LRU) instead of costing a set lookup per write.
    pub async fn invalidate_many(&self, changes: &[Change]) -> redis::RedisResult<()> {
        self.forget_recent(changes, false);
        self.invalidate_redis(changes).await
    }

    async fn invalidate_redis(&self, changes: &[Change]) -> redis::RedisResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let gen_ttl = (self.inner.ttl_seconds * 4).max(60) as i64;
        let mut entities = BTreeSet::new();
        let mut customers = BTreeSet::new();
        for c in changes {
            entities.insert((c.entity, c.id));
            if let Some(cust) = c.customer {
                customers.insert(cust);
            }
        }
        let mut pipe = redis::pipe();
        for (entity, id) in &entities {
            let g = entity_gen(entity, *id);
            pipe.incr(&g, 1).ignore().expire(&g, gen_ttl).ignore();
            pipe.del(entity_key(entity, *id)).ignore();
        }
        for c in &customers {
            let cg = customer_gen(*c);
            pipe.incr(&cg, 1).ignore().expire(&cg, gen_ttl).ignore();
        }
        let mut conn = self.inner.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Invalidates one entity row changed by another database client (the listener's
    /// notifications) and everything that depends on its customer.
    pub async fn invalidate(
        &self,
        entity: &'static str,
        id: Uuid,
        customer: Option<Uuid>,
    ) -> redis::RedisResult<()> {
        let changes = [Change {
            entity,
            id,
            customer,
        }];
        self.forget_recent(&changes, true);
        self.invalidate_redis(&changes).await
    }

    /// After a (re)connect of the listener: notifications may have been missed, so every cached
    /// value is invalidated (global generation bump) and the value keys are deleted.
    pub async fn resync(&self) -> redis::RedisResult<u64> {
        self.forget_all_recent();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_switched_off_below_the_hit_ratio_and_back_on_above() {
        assert!(decide_off(10, 100));
        assert!(!decide_off(50, 100));
        assert!(!decide_off(0, 0));
        let p = KindPolicy::default();
        for i in 0..WINDOW {
            let r = p.record(i % 10 == 0);
            assert_eq!(r.is_some(), i == WINDOW - 1);
        }
        assert!(
            p.off.load(Ordering::Relaxed),
            "10 % hits must switch the kind off"
        );
        for i in 0..WINDOW {
            p.record(i % 10 != 0);
        }
        assert!(
            !p.off.load(Ordering::Relaxed),
            "90 % hits must switch it on again"
        );
    }

    #[test]
    fn the_sample_is_a_stable_fraction_of_keys() {
        let n = (0..8000)
            .filter(|i| in_sample(&format!("bss:c:order:{i}")))
            .count();
        assert!((600..1400).contains(&n), "{n} of 8000 keys sampled");
        assert_eq!(in_sample("bss:c:x"), in_sample("bss:c:x"));
    }

    #[test]
    fn recent_writes_keep_the_newest_and_stay_bounded() {
        let r = |x: &str| Recent {
            xmin: x.to_string(),
            value: serde_json::Value::Null,
        };
        let mut w = RecentWrites::default();
        let first = ("order", Uuid::new_v4());
        w.insert(first, r("1"));
        w.insert(first, r("2"));
        assert_eq!(w.get(&first).map(|e| e.xmin.as_str()), Some("2"));
        let ids: Vec<Uuid> = (0..3 * RECENT_PER_GENERATION)
            .map(|_| Uuid::new_v4())
            .collect();
        for id in &ids {
            w.insert(("order", *id), r("3"));
        }
        assert!(w.current.len() + w.previous.len() <= 2 * RECENT_PER_GENERATION);
        assert!(w.get(&first).is_none(), "the oldest write is dropped first");
        let newest = ("order", ids[ids.len() - 1]);
        assert!(w.get(&newest).is_some());
        w.remove(&newest);
        assert!(w.get(&newest).is_none());
        w.clear();
        assert!(w.get(&("order", ids[ids.len() - 2])).is_none());
    }

    #[test]
    fn a_write_remembers_nothing_if_another_clients_change_was_forgotten_meanwhile() {
        let r = || Recent {
            xmin: "7".into(),
            value: serde_json::Value::Null,
        };
        let mut w = RecentWrites::default();
        let (a, b) = (("order", Uuid::new_v4()), ("order", Uuid::new_v4()));
        // This process's own writes do not move the epoch.
        let e0 = w.epoch;
        w.forget([a], false);
        w.insert_since(e0, a, r());
        assert!(w.get(&a).is_some());
        // A notification (say, of b's items changed by psql) handled while a write of b ran.
        let e1 = w.epoch;
        w.forget([b], true);
        w.insert_since(e1, b, r());
        assert!(
            w.get(&b).is_none(),
            "the write's stale view must not be remembered"
        );
        // A resync forgets everything and, too, what was being written during it.
        let e2 = w.epoch;
        w.forget_all();
        assert!(w.get(&a).is_none());
        w.insert_since(e2, a, r());
        assert!(w.get(&a).is_none());
        w.insert_since(w.epoch, a, r());
        assert!(w.get(&a).is_some());
    }
}
