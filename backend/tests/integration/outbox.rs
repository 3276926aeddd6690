//! Transactional outbox: with the broker stopped writes still succeed; when it returns every
//! event arrives, in order per aggregate, none twice after deduplication by event id.

use crate::api::{customer, fixture};
use crate::test_support::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

async fn pending(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_drained(pool: &sqlx::PgPool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pending(pool).await > 0 {
        assert!(
            Instant::now() < deadline,
            "outbox not drained within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_delivers_every_event_after_a_broker_outage() {
    let mut f = fixture().await;
    let pool = f.running.state.write.clone();
    customer(&f.api, "Before").await;
    wait_drained(&pool, Duration::from_secs(30)).await;
    let cutoff: i64 = sqlx::query_scalar("SELECT max(seq) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();

    f.stack.kafka.stop();
    // Not ready without the broker: 503 problem+json naming the dependency.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let r = f.api.send("GET", "/health/ready", None, None).await;
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.status, 503);
    assert_eq!(ready.headers["content-type"], "application/problem+json");
    assert_eq!(ready.body["checks"]["broker"], "DOWN");
    // Writes during the outage succeed promptly; several events per aggregate.
    let mut ids = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let c = customer(&f.api, &format!("Outage{i}")).await;
        let id = c["id"].as_str().unwrap().to_string();
        for (version, to) in (1..).zip(["SUSPENDED", "ACTIVE", "INACTIVE"]) {
            let r = f
                .api
                .post(
                    &format!("/api/v1/customers/{id}/status"),
                    json!({"status": to, "version": version}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "writes must not wait for the broker"
        );
        ids.push(id);
    }
    assert_eq!(pending(&pool).await, 40);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = f.api.send("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("bss_outbox_pending 40"),
        "gauge shows the backlog"
    );

    let t = Instant::now();
    f.stack.kafka.restart();
    wait_drained(&pool, Duration::from_secs(60)).await;
    assert_eq!(
        f.api.send("GET", "/health/ready", None, None).await.status,
        200
    );
    eprintln!("outbox drained {:?} after the broker returned", t.elapsed());

    let expected: Vec<(uuid::Uuid, uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT event_id, aggregate_id, seq FROM outbox WHERE seq > $1 ORDER BY seq",
    )
    .bind(cutoff)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(expected.len(), 40);
    let got = consume_until(
        &f.stack.kafka.brokers(),
        "bss.customer.events",
        Duration::from_secs(30),
        |v| {
            v.iter()
                .map(|m| m.1["id"].as_str().unwrap_or("").to_string())
                .collect::<HashSet<_>>()
                .len()
                >= 40
        },
    );
    // Deduplicate by event id, keeping first occurrences in partition order.
    let mut seen = HashSet::new();
    let mut by_aggregate: HashMap<String, Vec<String>> = HashMap::new();
    for (key, ev, _p, _o, _ts) in &got {
        let id = ev["id"].as_str().unwrap().to_string();
        if seen.insert(id.clone()) {
            by_aggregate.entry(key.clone()).or_default().push(id);
        }
        assert_eq!(ev["specversion"], "1.0");
        assert_eq!(ev["source"], format!("urn:bss:customer:{key}"));
    }
    let want: HashSet<String> = expected.iter().map(|(e, _, _)| e.to_string()).collect();
    if seen != want {
        let mut offs: Vec<(i32, i64, String)> = got
            .iter()
            .map(|m| (m.2, m.3, m.1["id"].as_str().unwrap_or("").to_string()))
            .collect();
        offs.sort();
        eprintln!(
            "consumed (partition, offset): {:?}",
            offs.iter().map(|o| (o.0, o.1)).collect::<Vec<_>>()
        );
        for (e, a, s) in &expected {
            if !seen.contains(&e.to_string()) {
                eprintln!("missing event {e} aggregate {a} seq {s}");
            }
        }
        let log =
            std::fs::read_to_string(f.stack.kafka.dir.path().join("tansu.log")).unwrap_or_default();
        eprintln!("tansu log tail: {}", &log[log.len().saturating_sub(3000)..]);
    }
    assert_eq!(
        seen, want,
        "exactly the outbox events arrived: none lost, none phantom"
    );
    for id in &ids {
        let want_order: Vec<String> = expected
            .iter()
            .filter(|(_, a, _)| a.to_string() == *id)
            .map(|(e, _, _)| e.to_string())
            .collect();
        assert_eq!(
            by_aggregate.get(id),
            Some(&want_order),
            "per-aggregate order for {id}"
        );
    }
    f.running.shutdown().await;
}

/// A database that a backend from before migration 0003 left with unsent rows: the migration
/// lists exactly those as pending (the published row is not), so the relay publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_3_keeps_the_rows_an_older_backend_left_unsent() {
    let pg = Postgres::start().await;
    let pool = backend::db::pool(&pg.app_url(), Some(DB_PASSWORD), 2).unwrap();
    // The schema as it was before 0003: its first two migrations, from a copy of their files.
    let old = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for f in ["0001_schema.sql", "0002_no_notify_in_api_writes.sql"] {
        std::fs::copy(src.join(f), old.path().join(f)).unwrap();
    }
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let row = |n: i64, sent: &str| {
        format!(
            "INSERT INTO outbox (event_id, topic, aggregate_id, event_type, payload, sent_at) \
             VALUES (gen_random_uuid(), 'bss.customer.events', gen_random_uuid(), 't', '{{\"n\": {n}}}', {sent})"
        )
    };
    for (n, sent) in [(1, "now()"), (2, "NULL"), (3, "NULL")] {
        sqlx::raw_sql(&row(n, sent)).execute(&pool).await.unwrap();
    }
    backend::db::migrate(&pool).await.unwrap();
    let listed: Vec<i64> = sqlx::query_scalar(
        "SELECT (o.payload->>'n')::int8 FROM outbox_pending p JOIN outbox o USING (seq) ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(listed, vec![2, 3], "pending after the migration");
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_name = 'outbox' AND column_name = 'sent_at'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        columns, 0,
        "sent_at is gone: nothing updates outbox rows any more"
    );
}
