//! Stream processors: consumer groups over the real broker, aggregates in PostgreSQL, published
//! to bss.analytics.events; killed mid-stream, restarted and replayed without double counting.

use crate::api::{customer, fixture, order, product};
use backend::streams::{self, Processor};
use rust_decimal::Decimal;
use serde_json::json;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn wait_until(pool: &sqlx::PgPool, sql: &str, want: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(pool, sql).await;
        if n >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n} < {want} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn advance(api: &crate::test_support::Api, o: &serde_json::Value, path: &[&str]) {
    let id = o["id"].as_str().unwrap();
    for (v, s) in (o["version"].as_i64().unwrap()..).zip(path) {
        let r = api
            .post(
                &format!("/api/v1/orders/{id}/status"),
                json!({"status": s, "version": v}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

const DONE: &[&str] = &["APPROVED", "IN_PROGRESS", "PROCESSING", "COMPLETED"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_survive_restarts_without_double_counting() {
    let f = fixture().await;
    let api = &f.api;
    let pool = f.running.state.write.clone();
    let p = product(api, "7.50").await;
    let pid = p["id"].as_str().unwrap().to_string();
    let mut customers = Vec::new();
    for i in 0..3 {
        let c = customer(api, &format!("Stream{i}")).await;
        let cid = c["id"].as_str().unwrap().to_string();
        for k in 0..4 {
            let o = order(api, &cid, &pid).await;
            match k {
                0 | 1 => advance(api, &o, DONE).await,
                2 => advance(api, &o, &["CANCELLED"]).await,
                _ => {}
            }
        }
        customers.push(cid);
    }
    let cfg = f.stack.config();
    let spawn = |p: Processor| {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, tokio::spawn(streams::run(cfg.clone(), p, rx)))
    };
    let processed =
        |p: &str| format!("SELECT count(*) FROM stream_processed_events WHERE processor = '{p}'");

    // First run: crash customer-analytics (abort, no offset commit), stop order-processor.
    let (_t1, ca) = spawn(Processor::CustomerAnalytics);
    let (t2, op) = spawn(Processor::OrderProcessor);
    wait_until(
        &pool,
        &processed("customer-analytics"),
        10,
        Duration::from_secs(60),
    )
    .await;
    ca.abort();
    wait_until(
        &pool,
        &processed("order-processor"),
        10,
        Duration::from_secs(60),
    )
    .await;
    t2.send(true).unwrap();
    op.await.unwrap().unwrap();

    // More traffic while they are down.
    for cid in &customers {
        let o = order(api, cid, &pid).await;
        advance(api, &o, DONE).await;
    }
    let order_events = count(
        &pool,
        "SELECT count(*) FROM outbox WHERE topic = 'bss.order.events'",
    )
    .await;
    let customer_events = count(
        &pool,
        "SELECT count(*) FROM outbox WHERE topic = 'bss.customer.events'",
    )
    .await;

    // Restart both; everything is processed exactly once.
    let (t1, ca) = spawn(Processor::CustomerAnalytics);
    let (t2, op) = spawn(Processor::OrderProcessor);
    wait_until(
        &pool,
        &processed("customer-analytics"),
        order_events + customer_events,
        Duration::from_secs(90),
    )
    .await;
    wait_until(
        &pool,
        &processed("order-processor"),
        order_events,
        Duration::from_secs(90),
    )
    .await;
    let check = || async {
        for cid in &customers {
            let (total, completed, cancelled, value, seen): (i64, i64, i64, Decimal, i64) = sqlx::query_as(
                "SELECT orders_total, orders_completed, orders_cancelled, order_value, events_seen FROM analytics_customers WHERE customer_id = $1::uuid",
            )
            .bind(cid)
            .fetch_one(&pool)
            .await
            .unwrap();
            // 5 orders; 3 completed at 3 × 7.50 × 1.2 + 0.10 = 27.10 each; 1 cancelled.
            assert_eq!((total, completed, cancelled), (5, 3, 1), "customer {cid}");
            assert_eq!(value, Decimal::from_str("81.30").unwrap());
            // 1 customer event + 5 created + 3×4 + 1 order transitions.
            assert_eq!(seen, 1 + 5 + 12 + 1);
        }
        let rows: Vec<(String, i64, sqlx::types::Json<serde_json::Value>)> =
            sqlx::query_as("SELECT status, transitions, status_durations FROM analytics_orders")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 15);
        for (status, transitions, durations) in rows {
            match status.as_str() {
                "COMPLETED" => {
                    assert_eq!(transitions, 4);
                    let keys: Vec<&String> = durations.0.as_object().unwrap().keys().collect();
                    assert_eq!(keys.len(), 4, "{durations:?}");
                }
                "CANCELLED" => assert_eq!(transitions, 1),
                "PENDING" => assert_eq!(transitions, 0),
                other => panic!("unexpected status {other}"),
            }
        }
    };
    check().await;

    // Rewind the groups to the beginning (a replay): still no double counting.
    t1.send(true).unwrap();
    t2.send(true).unwrap();
    ca.await.unwrap().unwrap();
    op.await.unwrap().unwrap();
    let brokers = f.stack.kafka.brokers();
    std::thread::spawn(move || {
        for (group, topics) in [
            (
                "bss.customer-analytics",
                vec!["bss.customer.events", "bss.order.events"],
            ),
            ("bss.order-processor", vec!["bss.order.events"]),
        ] {
            let offs: Vec<backend::replay::GroupOffset> = topics
                .iter()
                .flat_map(|t| {
                    (0..3).map(move |p| backend::replay::GroupOffset {
                        topic: t.to_string(),
                        partition: p,
                        offset: 0,
                    })
                })
                .collect();
            backend::replay::restore_offsets(&brokers, group, &offs).unwrap();
        }
    })
    .join()
    .unwrap();
    let published_before = analytics_count(&f.stack.kafka.brokers()).await;
    let (t1, ca) = spawn(Processor::CustomerAnalytics);
    // Re-reading everything publishes snapshots again, with the ids already published.
    let deadline = Instant::now() + Duration::from_secs(60);
    while analytics_count(&f.stack.kafka.brokers()).await.0 < published_before.0 + 20 {
        assert!(
            Instant::now() < deadline,
            "replayed processor did not republish"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    t1.send(true).unwrap();
    ca.await.unwrap().unwrap();
    check().await;
    let (raw, unique, latest) = analytics_count(&f.stack.kafka.brokers()).await;
    assert!(
        raw > unique,
        "re-published snapshots carry the same ids: {raw} messages, {unique} distinct"
    );
    for cid in &customers {
        assert_eq!(
            latest[cid]["ordersTotal"], 5,
            "latest analytics event of {cid}"
        );
    }
    f.running.shutdown().await;
}

/// (messages, distinct event ids, latest customer snapshot by customer id) on bss.analytics.events.
async fn analytics_count(brokers: &str) -> (usize, usize, HashMap<String, serde_json::Value>) {
    let b = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let all = crate::test_support::consume_until(
            &b,
            "bss.analytics.events",
            Duration::from_secs(3),
            |_| false,
        );
        let ids: std::collections::HashSet<String> = all
            .iter()
            .map(|m| m.1["id"].as_str().unwrap_or("").to_string())
            .collect();
        let mut latest: HashMap<String, serde_json::Value> = HashMap::new();
        for m in &all {
            if m.1["type"] == "com.bss.analytics.customer.updated.v1" {
                let d = m.1["data"].clone();
                let k = d["customerId"].as_str().unwrap().to_string();
                let newer = latest.get(&k).is_none_or(|o| {
                    o["aggregateVersion"].as_i64() < d["aggregateVersion"].as_i64()
                });
                if newer {
                    latest.insert(k, d);
                }
            }
        }
        (all.len(), ids.len(), latest)
    })
    .await
    .unwrap()
}

/// The `stream` subcommand of the real binary: consumes, aggregates, stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subcommand_runs_and_stops_on_sigterm() {
    let f = fixture().await;
    let api = &f.api;
    let pool = f.running.state.write.clone();
    let p = product(api, "3.00").await;
    let c = customer(api, "Binary").await;
    let o = order(api, c["id"].as_str().unwrap(), p["id"].as_str().unwrap()).await;
    advance(api, &o, DONE).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bss-backend"))
        .args(["stream", "order-processor", "--config"])
        .arg(&f.stack.config_path)
        .env("BSS_LOG", "warn")
        .spawn()
        .unwrap();
    wait_until(
        &pool,
        "SELECT count(*) FROM analytics_orders WHERE status = 'COMPLETED' AND transitions = 4",
        1,
        Duration::from_secs(60),
    )
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "stream processor did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    f.running.shutdown().await;
}
