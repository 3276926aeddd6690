//! Cache invalidation of changes made outside the API: LISTEN on `bss_cache` (fed by triggers
//! for every session that is not the API's own; the API invalidates its writes itself after
//! commit), delete the affected keys and bump their customer's generation; reconnect with
//! backoff and resynchronise (invalidate everything) after every (re)connect, since
//! notifications sent meanwhile are lost, and whenever the API reports a lost invalidation.

use serde::Deserialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

use crate::cache::Cache;
use crate::metrics::Metrics;

pub const CHANNEL: &str = "bss_cache";

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub table: String,
    pub op: String,
    pub id: Uuid,
    pub customer_id: Option<Uuid>,
}

pub fn entity_of_table(table: &str) -> Option<&'static str> {
    Some(match table {
        "customers" => "customer",
        "products" => "product",
        "orders" => "order",
        "subscriptions" => "subscription",
        "invoices" => "invoice",
        "payments" => "payment",
        _ => return None,
    })
}

pub async fn run(
    pool: PgPool,
    cache: Cache,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        cache.set_live(false);
        match connect(&pool, &cache).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(100);
                cache.set_live(true);
                tracing::info!("cache invalidation listener subscribed and resynchronised");
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tick.tick() => {
                            if cache.take_resync_request() {
                                match cache.resync().await {
                                    Ok(n) => {
                                        tracing::info!(deleted = n, "cache resynchronised after a lost invalidation");
                                        cache.set_live(true);
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "cache resync failed; retrying");
                                        cache.request_resync();
                                    }
                                }
                            }
                        }
                        r = listener.try_recv() => match r {
                            Ok(Some(n)) => {
                                if let Err(e) = handle(&cache, &metrics, n.payload()).await {
                                    tracing::warn!(error = %e, "cache invalidation failed; resynchronising");
                                    break;
                                }
                            }
                            Ok(None) => {
                                tracing::warn!("cache invalidation listener lost its connection");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cache invalidation listener failed");
                                break;
                            }
                        }
                    }
                }
                cache.set_live(false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache invalidation listener cannot connect; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn connect(pool: &PgPool, cache: &Cache) -> Result<PgListener, String> {
    let mut l = PgListener::connect_with(pool)
        .await
        .map_err(|e| e.to_string())?;
    l.listen(CHANNEL).await.map_err(|e| e.to_string())?;
    // Subscribe first, then resync: any change after this point is notified.
    cache.take_resync_request();
    let n = cache.resync().await.map_err(|e| e.to_string())?;
    tracing::debug!(deleted = n, "cache resynchronised");
    Ok(l)
}

async fn handle(cache: &Cache, metrics: &Metrics, payload: &str) -> Result<(), String> {
    let c: Change = match serde_json::from_str(payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, payload, "ignoring malformed cache notification");
            return Ok(());
        }
    };
    let Some(entity) = entity_of_table(&c.table) else {
        return Ok(());
    };
    metrics
        .cache_invalidations_total
        .with_label_values(&[&c.table])
        .inc();
    cache
        .invalidate(entity, c.id, c.customer_id)
        .await
        .map_err(|e| e.to_string())
}

/// Waits until the listener is live, for tests and startup ordering.
pub async fn wait_live(cache: &Cache, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cache.is_live() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cache.is_live()
}
