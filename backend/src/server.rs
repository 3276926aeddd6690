//! `serve`: wires configuration into pools, cache, producer, the outbox relay and the cache
//! invalidation listener, and runs the HTTP server until SIGINT/SIGTERM.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Shared};
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::{db, invalidate, kafka, outbox};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("failed to configure the database pool: {0}")]
    Database(#[from] sqlx::Error),
    #[error("failed to connect to Redis at {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("failed to create the Kafka producer: {0}")]
    Kafka(#[from] kafka::KafkaError),
    #[error("failed to bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub async fn redis_manager(cfg: &Config) -> Result<ConnectionManager, ServerError> {
    let err = |source| ServerError::Redis {
        url: cfg.redis.url.clone(),
        source,
    };
    let mut info = cfg.redis.url.as_str().into_connection_info().map_err(err)?;
    if let Some(p) = &cfg.redis.password {
        info.redis.password = Some(p.clone());
    }
    if let Some(u) = &cfg.redis.username {
        info.redis.username = Some(u.clone());
    }
    let client = redis::Client::open(info).map_err(err)?;
    let mgr_cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2));
    let mut attempt = 0;
    loop {
        match ConnectionManager::new_with_config(client.clone(), mgr_cfg.clone()).await {
            Ok(m) => return Ok(m),
            Err(e) if attempt < 30 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "Redis not reachable yet, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(err(e)),
        }
    }
}

pub async fn build_state(cfg: &Config) -> Result<Shared, ServerError> {
    let pw = cfg.database.password.as_deref();
    let wait = Duration::from_millis(cfg.limits.acquire_timeout_ms.max(1));
    let max = cfg.database.max_connections;
    let write = db::pool_with(&cfg.database.write_url, pw, max, wait, true)?;
    let read = db::pool_with(cfg.read_url(), pw, max, wait, true)?;
    let metrics = Metrics::new();
    let cache = Cache::new(
        redis_manager(cfg).await?,
        cfg.cache.ttl_seconds,
        metrics.clone(),
    );
    let producer = kafka::producer(&cfg.kafka.brokers)?;
    let api_key_hashes: HashSet<[u8; 32]> =
        cfg.auth.api_keys.iter().map(|k| api::hash_key(k)).collect();
    if api_key_hashes.is_empty() {
        tracing::warn!("no API keys configured: every /api/v1 request will be refused");
    }
    Ok(Arc::new(AppState {
        write,
        read,
        cache,
        metrics,
        api_key_hashes,
        topic_prefix: cfg.kafka.topic_prefix.clone(),
        brokers: cfg.kafka.brokers.clone(),
        producer: Some(producer),
        in_flight: AtomicUsize::new(0),
        max_in_flight: cfg.max_in_flight(),
        replay_jobs: Default::default(),
        product_refs: Default::default(),
    }))
}

/// A running service (HTTP server and background tasks).
pub struct Running {
    pub addr: SocketAddr,
    pub state: Shared,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

pub async fn start(cfg: Config) -> Result<Running, ServerError> {
    let state = build_state(&cfg).await?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Topics: created in the background, retried while the broker is down.
    {
        let brokers = cfg.kafka.brokers.clone();
        let topics = kafka::entity_topics(&cfg.kafka.topic_prefix);
        let mut rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match kafka::ensure_topics(&brokers, &topics).await {
                    Ok(()) => {
                        tracing::info!(?topics, "topics ensured");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot ensure topics yet"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = rx.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }));
    }
    if let Some(p) = &state.producer {
        // The relay and the listener have connections of their own: the relay holds its
        // connection while a batch is being acknowledged by the broker, and the listener
        // keeps one for good; neither may take a slot the API's requests queue for.
        let relay_pool = db::pool(&cfg.database.write_url, cfg.database.password.as_deref(), 2)?;
        let relay = outbox::Relay {
            pool: relay_pool,
            brokers: cfg.kafka.brokers.clone(),
            topics: kafka::entity_topics(&cfg.kafka.topic_prefix),
            producer: p.clone(),
            batch_size: cfg.outbox.batch_size,
            poll_interval: Duration::from_millis(cfg.outbox.poll_interval_ms.max(1)),
            batch_window: Duration::from_millis(
                cfg.outbox
                    .batch_window_ms
                    .max(cfg.outbox.poll_interval_ms.max(1)),
            ),
            metrics: state.metrics.clone(),
        };
        tasks.push(tokio::spawn(relay.run(rx.clone())));
    }
    let listen_pool = db::pool(&cfg.database.write_url, cfg.database.password.as_deref(), 1)?;
    tasks.push(tokio::spawn(invalidate::run(
        listen_pool,
        state.cache.clone(),
        state.metrics.clone(),
        rx.clone(),
    )));

    tasks.push(tokio::spawn(warm_hot_keys(state.clone(), rx.clone())));

    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let app = api::app(state.clone());
    let mut rx2 = rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx2.changed().await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server stopped with an error");
        }
    }));
    tracing::info!(%addr, "bss-backend listening");
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        tasks,
    })
}

/// Cache warming: each time the invalidation listener (re)subscribes (and has therefore
/// flushed the cache), the most recently changed customers and orders are loaded again.
async fn warm_hot_keys(state: Shared, mut shutdown: watch::Receiver<bool>) {
    const HOT: i64 = 200;
    let mut was_live = false;
    loop {
        let live = state.cache.is_live();
        if live && !was_live {
            let customers: Vec<uuid::Uuid> =
                sqlx::query_scalar("SELECT id FROM customers ORDER BY updated_at DESC LIMIT $1")
                    .bind(HOT)
                    .fetch_all(&state.read)
                    .await
                    .unwrap_or_default();
            let orders: Vec<uuid::Uuid> =
                sqlx::query_scalar("SELECT id FROM orders ORDER BY updated_at DESC LIMIT $1")
                    .bind(HOT)
                    .fetch_all(&state.read)
                    .await
                    .unwrap_or_default();
            for id in &customers {
                let _ = api::load_cached::<crate::model::Customer>(&state, *id).await;
            }
            for id in &orders {
                let _ = api::load_cached::<crate::model::Order>(&state, *id).await;
            }
            tracing::debug!(
                customers = customers.len(),
                orders = orders.len(),
                "cache warmed"
            );
        }
        was_live = live;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

pub async fn serve(cfg: Config) -> Result<(), ServerError> {
    let running = start(cfg).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
