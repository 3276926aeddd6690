//! Cache invalidated by the database: psql-made changes are visible through the API right
//! after, dependents are dropped, the listener reconnects and resynchronises, loads are
//! single-flight, hits and misses are counted.

use crate::api::{customer, fixture, order, product};
use serde_json::Value;
use std::time::{Duration, Instant};

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_for(
    api: &crate::test_support::Api,
    path: &str,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let r = api.get(path).await;
        if pred(&r.body) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{path} never showed the change: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_changes_invalidate_the_cache() {
    let f = fixture().await;
    let api = &f.api;
    let c = customer(api, "Cache").await;
    let id = c["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/customers/{id}");
    // Let the creation's own notification arrive first (it invalidates asynchronously).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.get(&path).await.status, 200);
    assert_eq!(api.get(&path).await.status, 200);
    let m = api
        .send("GET", "/metrics", None, None)
        .await
        .body
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        metric(
            &m,
            "bss_cache_requests_total{cache=\"customer\",result=\"hit\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "bss_cache_requests_total{cache=\"customer\",result=\"miss\"}"
        ) >= 1.0
    );

    // A change made with psql, not through the API.
    f.stack.pg.psql(&format!(
        "UPDATE customers SET first_name = 'Psql' WHERE id = '{id}'"
    ));
    let lag = wait_for(api, &path, |b| b["firstName"] == "Psql").await;
    eprintln!("psql update visible through the API after {lag:?}");
    assert!(lag < Duration::from_millis(500));

    // Dependent keys: a customer's cached order list is dropped when one of its orders changes.
    let p = product(api, "5.00").await;
    let o = order(api, &id, p["id"].as_str().unwrap()).await;
    let oid = o["id"].as_str().unwrap().to_string();
    let list = format!("/api/v1/customers/{id}/orders");
    let first = api.get(&list).await;
    assert_eq!(first.body["items"][0]["notes"], Value::Null);
    f.stack.pg.psql(&format!(
        "UPDATE orders SET notes = 'via psql' WHERE id = '{oid}'"
    ));
    wait_for(api, &list, |b| b["items"][0]["notes"] == "via psql").await;
    f.stack.pg.psql(&format!(
        "UPDATE order_items SET quantity = 7 WHERE order_id = '{oid}' AND line_no = 0"
    ));
    wait_for(api, &format!("/api/v1/orders/{oid}"), |b| {
        b["items"][0]["quantity"] == 7
    })
    .await;

    // The listener loses its connection: it reconnects and resynchronises, so a change made
    // while it was away is not served stale.
    assert_eq!(api.get(&path).await.body["firstName"], "Psql");
    f.stack
        .pg
        .psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'");
    f.stack.pg.psql(&format!(
        "UPDATE customers SET first_name = 'WhileAway' WHERE id = '{id}'"
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(backend::invalidate::wait_live(&f.running.state.cache, Duration::from_secs(10)).await);
    wait_for(api, &path, |b| b["firstName"] == "WhileAway").await;

    // Stampede: many concurrent misses on one key cause one database load.
    f.stack.pg.psql(&format!(
        "UPDATE customers SET last_name = 'Herd' WHERE id = '{id}'"
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = metric(
        api.send("GET", "/metrics", None, None)
            .await
            .body
            .as_str()
            .unwrap(),
        "bss_cache_loads_total{cache=\"customer\"}",
    );
    let futs: Vec<_> = (0..50).map(|_| api.get(&path)).collect();
    let rs = futures::future::join_all(futs).await;
    assert!(rs
        .iter()
        .all(|r| r.status == 200 && r.body["lastName"] == "Herd"));
    let after = metric(
        api.send("GET", "/metrics", None, None)
            .await
            .body
            .as_str()
            .unwrap(),
        "bss_cache_loads_total{cache=\"customer\"}",
    );
    assert!(
        after - before <= 2.0,
        "50 concurrent reads caused {} loads",
        after - before
    );
    f.running.shutdown().await;
}
